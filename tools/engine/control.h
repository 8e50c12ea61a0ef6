#pragma once
// The stack supervisor's control socket: HTTP/1.1 with JSON over a unix socket in run_dir
// (Boost.Beast over Boost.Asio's local sockets). The server runs on a thread of its own and
// hands each request to the supervision loop through a queue and an eventfd, so that a slow,
// malformed or hostile client can never stall supervision: reads and writes have deadlines,
// requests have size limits, and the loop only ever takes finished requests off the queue.

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace hbwatch::tool {

struct ControlRequest {
    std::string method;  // "GET", "POST"
    std::string target;  // "/v1/programs/api/restart"
};

struct ControlReply {
    int status = 200;
    std::string body;  // JSON; with `stream`, NDJSON lines (each ending in a newline)
    // The connection stays open after `body`: what broadcast() sends follows it, as NDJSON in
    // HTTP chunks, until the client leaves (or stops reading).
    bool stream = false;
};

class ControlServer {
public:
    /// Listens on `socket_path` (a stale socket left by a dead procctl is replaced), mode 0660,
    /// group `group` when given. Throws hbwatch::Error naming the path and what to do.
    ControlServer(const std::string& socket_path, std::optional<gid_t> group);
    ~ControlServer();  // stops the thread, closes every connection, removes the socket
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    /// Readable when requests wait: the loop polls it, then calls serve().
    [[nodiscard]] int wake_fd() const noexcept;
    /// Answers waiting requests with `handler`, on the caller's thread: a few at a time (the
    /// wake fd stays readable while more wait).
    void serve(const std::function<ControlReply(const ControlRequest&)>& handler);

    /// Sends `lines` (NDJSON, each ending in a newline) to every client a `stream` reply is
    /// following. Never blocks: a client that has more than 1 MiB unread is dropped.
    void broadcast(std::string lines);

    struct State;

private:
    std::shared_ptr<State> state_;
};

/// A client's request to the socket at `socket_path`: the reply, or throws hbwatch::Error
/// (no socket: is procctl --config running with this run_dir?).
ControlReply control_request(const std::string& socket_path, const std::string& method, const std::string& target);

/// A GET whose reply is a stream (ControlReply::stream): calls `line` with each NDJSON line as
/// it comes, until procctl ends the stream (returns normally) or `line` returns false. A reply
/// that is not 200 throws hbwatch::Error with procctl's message.
void control_stream(const std::string& socket_path, const std::string& target, const std::function<bool(const std::string&)>& line);

}  // namespace hbwatch::tool
