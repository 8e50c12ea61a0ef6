#pragma once
// The stack's control protocol in one place: the commands a client may send, how a request
// says them (HTTP method and target), and how a refusal is said. The server parses requests
// into commands with parse_command; proctab builds its requests with to_request. A transport
// (the unix socket with SO_PEERCRED today) only authenticates and hands requests over.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "engine/control.h"
#include "engine/output.h"

namespace hbwatch::tool {

struct ControlCommand {
    enum class Verb { list, start, stop, restart, signal, output, reload, events, heartbeats, ports, port_kill, metrics, page };
    Verb verb = Verb::list;
    std::string name = "all";  // a program, an instance NAME@I, or all; unused by reload
    int signal = 0;            // signal: one of TERM, INT, HUP, QUIT, USR1, USR2, KILL
    bool stderr_stream = false;  // output: stderr instead of stdout
    std::size_t tail = 10;       // output: the last lines, 0 to kMaxTailLines
    std::optional<OutputFile::Cursor> from;  // output: what came after this cursor instead
    std::uint64_t since = 0;     // events: from this cursor on (0: the oldest kept)
    std::size_t limit = 1000;    // events: at most this many in the reply
    bool follow = false;         // events: then stream new ones as NDJSON until the client leaves
    std::uint16_t port = 0;      // port_kill: the port whose holders are stopped
    bool any = false;            // port_kill: holders outside the stack too
    std::optional<std::chrono::milliseconds> grace;  // port_kill: SIGTERM to SIGKILL (default 10s)
    bool operator==(const ControlCommand&) const = default;
};

inline constexpr std::size_t kMaxTailLines = 10000;
inline constexpr std::size_t kMaxEventsPerReply = 10000;

/// A refusal: an HTTP status and what to say. The one rendering of every error reply.
struct ControlError {
    int status;
    std::string message;
    [[nodiscard]] ControlReply reply() const;
};

/// The role a caller needs for `verb`: none for the page, read to look, operate to act.
[[nodiscard]] Role required_role(ControlCommand::Verb verb) noexcept;

/// What answers to `command` may be shared as (one made for all who ask within a second):
/// "metrics", "heartbeats", "ports"; empty for the rest.
[[nodiscard]] std::string share_key(const ControlCommand& command);

/// The command a request says, or why it says none (its method, path or parameters).
/// Whether its program exists is for the one who answers it.
[[nodiscard]] std::variant<ControlCommand, ControlError> parse_command(const ControlRequest& request);
/// The request that says `command`.
[[nodiscard]] ControlRequest to_request(const ControlCommand& command);

/// A reader's cursor on the wire: "INODE:GENERATION:OFFSET".
[[nodiscard]] std::string cursor_text(const OutputFile::Cursor& cursor);
[[nodiscard]] std::optional<OutputFile::Cursor> parse_cursor(const std::string& text);

/// A request's words shown in a reply: never echoed raw (they are whatever a client sent).
[[nodiscard]] std::string shown_target(const std::string& text);

}  // namespace hbwatch::tool
