#include "engine/event.h"

#include <unistd.h>

#include <array>
#include <ctime>

#include "core/clock.h"

namespace hbwatch::tool {
namespace {

constexpr std::array<const char*, kEventKinds> kKindNames = {
    "started",        "ready",          "exited",           "backoff",       "gave_up",         "stopping",
    "stopped",        "heartbeat_late", "heartbeat_hung",   "heartbeat_recovered", "hang_stopped", "max_rss_exceeded",
    "restart_storm",  "reload_applied", "reload_refused",   "start_failed",  "output_dropped",  "events_dropped",
};

}  // namespace

const char* to_string(EventKind kind) noexcept {
    const auto index = static_cast<std::size_t>(kind);
    return index < kKindNames.size() ? kKindNames[index] : "unknown";
}

std::optional<EventKind> event_kind_named(std::string_view name) noexcept {
    for (std::size_t i = 0; i < kKindNames.size(); ++i)
        if (name == kKindNames[i]) return static_cast<EventKind>(i);
    return std::nullopt;
}

std::string event_kind_names() {
    std::string out;
    for (const char* name : kKindNames) out += (out.empty() ? "" : ", ") + std::string(name);
    return out;
}

const std::string& host_name() {
    static const std::string name = [] {
        char buffer[256] = {};
        if (::gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0') return std::string("localhost");
        return std::string(buffer);
    }();
    return name;
}

Event make_event(EventKind kind, const std::string& unit, pid_t pid, std::string message, nlohmann::json details) {
    Event event;
    event.wall_ns = realtime_now_ns();
    event.mono_ns = monotonic_now_ns();
    event.kind = kind;
    event.instance = unit;
    event.program = unit.substr(0, unit.find('@'));
    event.pid = pid;
    event.message = std::move(message);
    event.details = std::move(details);
    return event;
}

std::string rfc3339(std::uint64_t wall_ns) {
    const std::time_t seconds = static_cast<std::time_t>(wall_ns / 1'000'000'000u);
    std::tm utc{};
    ::gmtime_r(&seconds, &utc);
    char text[40];
    const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
    char millis[8];
    std::snprintf(millis, sizeof millis, ".%03uZ", static_cast<unsigned>(wall_ns / 1'000'000u % 1000u));
    return std::string(text, n) + millis;
}

nlohmann::json to_json(const Event& event) {
    return {{"seq", event.seq},
            {"time", rfc3339(event.wall_ns)},
            {"monotonic_ns", event.mono_ns},
            {"host", host_name()},
            {"kind", to_string(event.kind)},
            {"program", event.program},
            {"instance", event.instance},
            {"pid", event.pid},
            {"message", event.message},
            {"details", event.details}};
}

bool EventFilter::accepts(const Event& event) const {
    return (kinds.empty() || kinds.count(event.kind) != 0) && (programs.empty() || programs.count(event.program) != 0);
}

std::uint64_t EventRing::push(Event& event) {
    event.seq = next_seq_++;
    if (events_.size() == capacity_) events_.pop_front();
    events_.push_back(event);
    return event.seq;
}

EventRing::Page EventRing::since(std::uint64_t cursor, std::size_t limit) const {
    Page page;
    const std::uint64_t oldest = events_.empty() ? next_seq_ : events_.front().seq;
    if (cursor == 0) cursor = oldest;
    if (cursor < oldest) {
        page.missed = oldest - cursor;
        cursor = oldest;
    }
    if (cursor > next_seq_) cursor = next_seq_;  // a cursor from a procctl that ran before this one
    for (std::size_t i = static_cast<std::size_t>(cursor - oldest); i < events_.size() && page.events.size() < limit; ++i)
        page.events.push_back(events_[i]);
    page.next = page.events.empty() ? cursor : page.events.back().seq + 1;
    return page;
}

}  // namespace hbwatch::tool
