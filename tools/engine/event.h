#pragma once
// The one event type: every state change procctl and checkproc report (a start, an exit, a
// hang, a reload) is an Event, kept in a bounded ring that the control API pages through with
// a cursor, and handed to the sinks (event_sinks.h) that tell people.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace hbwatch::tool {

enum class EventKind : std::uint8_t {
    started,
    ready,
    exited,
    backoff,
    gave_up,
    stopping,
    stopped,
    heartbeat_late,
    heartbeat_hung,
    heartbeat_recovered,
    hang_stopped,
    max_rss_exceeded,
    restart_storm,
    reload_applied,
    reload_refused,
    start_failed,
    output_dropped,
    events_dropped,
};
inline constexpr std::size_t kEventKinds = static_cast<std::size_t>(EventKind::events_dropped) + 1;

[[nodiscard]] const char* to_string(EventKind kind) noexcept;
[[nodiscard]] std::optional<EventKind> event_kind_named(std::string_view name) noexcept;
/// "started, ready, ..." for error messages.
[[nodiscard]] std::string event_kind_names();

struct Event {
    std::uint64_t seq = 0;      // the ring's cursor: 1, 2, 3, ... in the order they happened
    std::uint64_t wall_ns = 0;  // CLOCK_REALTIME, for people; order and ages use mono_ns
    std::uint64_t mono_ns = 0;  // CLOCK_MONOTONIC
    EventKind kind = EventKind::started;
    std::string program;   // "api"; empty for the tool's own events (a reload)
    std::string instance;  // "api@2", or the program's name when it has one instance
    pid_t pid = 0;
    std::string message;  // one line an operator can act on
    nlohmann::json details = nlohmann::json::object();
};

/// An event of `kind` about unit `unit` ("api" or "api@2"; empty for the tool's own) now.
[[nodiscard]] Event make_event(EventKind kind, const std::string& unit, pid_t pid, std::string message,
                               nlohmann::json details = nlohmann::json::object());

/// This host's name, read once.
[[nodiscard]] const std::string& host_name();

/// The event as one JSON object: seq, time (RFC 3339, UTC), monotonic_ns, host, kind,
/// program, instance, pid, message, details.
[[nodiscard]] nlohmann::json to_json(const Event& event);
/// "2026-12-06T02:24:57.123Z".
[[nodiscard]] std::string rfc3339(std::uint64_t wall_ns);

/// Which events a sink takes: every kind and program when the sets are empty.
struct EventFilter {
    std::set<EventKind> kinds;
    std::set<std::string> programs;  // program names (all of a program's instances)
    [[nodiscard]] bool accepts(const Event& event) const;
    bool operator==(const EventFilter&) const = default;
};

/// The last `capacity` events, by sequence number.
class EventRing {
public:
    explicit EventRing(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

    /// Numbers `event` and keeps it (the oldest falls off when full); returns its number.
    std::uint64_t push(Event& event);

    struct Page {
        std::vector<Event> events;
        std::uint64_t next = 1;    // the cursor for the next page
        std::uint64_t missed = 0;  // events after the cursor that fell off the ring before it was read
    };
    /// Events numbered `cursor` and later, at most `limit` of them. Cursor 0: from the oldest kept.
    [[nodiscard]] Page since(std::uint64_t cursor, std::size_t limit) const;
    /// The number the next event will get.
    [[nodiscard]] std::uint64_t next_seq() const noexcept { return next_seq_; }

private:
    std::size_t capacity_;
    std::deque<Event> events_;
    std::uint64_t next_seq_ = 1;
};

}  // namespace hbwatch::tool
