#pragma once
// The stack supervisor's control API: HTTP/1.1 with JSON over a unix socket in run_dir, and,
// when the config has an `http:` section, over TCP (optionally TLS) with bearer tokens (Boost.
// Beast over Boost.Asio). One server thread serves every listener and hands each request to
// the supervision loop through one queue and an eventfd, so that a slow, malformed or hostile
// client can never stall supervision: reads and writes have deadlines, requests have size
// limits, connections have caps per user and per address, unauthenticated requests are
// answered on the server's thread, and the loop only ever takes finished requests off the queue.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace hbwatch::tool {

/// What a caller may do: read (status, heartbeats, ports, metrics, events, output) or operate
/// (also start, stop, restart, signal, reload and port kill). The unix socket's users (its mode
/// and group admit them) operate; a TCP caller has its token's role.
enum class Role { none, read, operate };
[[nodiscard]] const char* to_string(Role role) noexcept;

struct ControlRequest {
    ControlRequest() = default;
    ControlRequest(std::string verb, std::string path) : method(std::move(verb)), target(std::move(path)) {}
    std::string method;  // "GET", "POST"
    std::string target;  // "/v1/programs/api/restart"
    Role role = Role::operate;
    std::optional<uid_t> uid;  // a local caller's uid (SO_PEERCRED); none over TCP
    std::string caller;        // for log lines: "uid 1000", "token 'grafana' from 10.0.0.7"
};

struct ControlReply {
    ControlReply() = default;
    ControlReply(int status_code, std::string text, bool streamed = false, std::string type = "application/json")
        : status(status_code), body(std::move(text)), stream(streamed), content_type(std::move(type)) {}
    int status = 200;
    std::string body;  // JSON; with `stream`, NDJSON lines (each ending in a newline)
    // The connection stays open after `body`: what broadcast() sends follows it, as NDJSON in
    // HTTP chunks, until the client leaves (or stops reading).
    bool stream = false;
    std::string content_type = "application/json";
    // Work too long for the supervision loop (a port's holders stopped, 65,536 table entries
    // read): run on a worker thread of the server, and its reply sent instead of this one.
    std::function<ControlReply()> later;
    // With `later`: the name of what it makes (`metrics`). Everyone who asks while it is made,
    // or within a second after, gets that one answer.
    std::string share_as;
    // Set instead of `body` for an answer handed to many (a shared scrape): sent from here.
    std::shared_ptr<const std::string> shared_body;
};

struct HttpConfig;

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

    /// Listens on TCP as `http` says (no addresses: not at all), keeping the listeners whose
    /// address stays, closing the others, and taking the tokens and certificate anew. Throws
    /// hbwatch::Error (an address it cannot bind, a tokens file or key it refuses) with every
    /// listener as it was.
    void listen_http(const HttpConfig& http);

    /// Readable once the server is stopping: a job that waits (a port kill's grace) polls it
    /// and ends. Valid until the server is destroyed, which joins the jobs first.
    [[nodiscard]] int cancel_fd() const noexcept;
    /// Lets go of shared answers older than a second; the loop calls it on each turn.
    void forget_old_answers();

    struct Counters {
        std::uint64_t auth_failures = 0;  // TCP requests answered 401
        std::uint64_t rate_limited = 0;   // and 429
        std::uint64_t turned_away = 0;    // connections over a cap (either listener)
    };
    [[nodiscard]] Counters counters() const;

    struct State;

private:
    void start_job(std::function<ControlReply()> work, std::function<void(ControlReply)> answer, const std::string& share_as);
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
