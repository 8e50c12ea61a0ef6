#pragma once
// Where events go to reach people: exec hooks, webhooks, and Alertmanager. Each sink has a
// thread of its own and a bounded queue; publish() only copies the event into the queues, so
// a hook that hangs, a webhook that never answers or a slow Alertmanager can never slow down
// supervision. A full queue drops its oldest events, counted, and says so in one log line.
// The sink threads never touch the caller's logger (spdlog's are single-threaded here): their
// lines wait in a queue that the caller's loop writes out when log_fd() is readable.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "engine/event.h"
#include "engine/event_config.h"

namespace hbwatch::tool {

/// http://user:password@host/path shown as http://user:***@host/path: credentials never reach a log.
[[nodiscard]] std::string redacted_url(const std::string& url);

/// What a hook's environment says of `event`: HBWATCH_EVENT, HBWATCH_PROGRAM, HBWATCH_INSTANCE,
/// HBWATCH_PID, HBWATCH_MESSAGE, HBWATCH_DETAILS (JSON), HBWATCH_SEQ, HBWATCH_TIME, HBWATCH_HOST
/// and HBWATCH_EVENT_JSON (the whole event).
[[nodiscard]] std::vector<std::string> hook_environment(const Event& event);

/// The alerts Alertmanager should hold at `now` (the sink's state, for tests and for the
/// sink itself): one per condition that holds.
class AlertBook {
public:
    explicit AlertBook(std::chrono::milliseconds quiet_window) : quiet_ns_(to_ns(quiet_window)) {}
    struct Alert {
        std::string name;  // alertname: HbwatchProgramHung, ...
        std::string unit;
        std::string program;
        std::string severity;
        std::string summary;
        std::string description;
        std::uint64_t starts_wall_ns = 0;
        std::uint64_t last_mono_ns = 0;  // the last event that kept it firing
        bool quiet_resolves = false;      // resolved once quiet_window passes without such an event
        bool resolved = false;
        std::uint64_t ends_wall_ns = 0;
    };
    /// Fires, refreshes or resolves alerts for `event`; returns whether anything changed.
    bool on(const Event& event);
    /// Resolves the quiet ones whose window has passed; returns whether any was.
    bool expire(std::uint64_t now_mono_ns, std::uint64_t now_wall_ns);
    /// The Alertmanager payload: every alert, firing ones with endsAt `valid_ns` ahead,
    /// resolved ones with their end. Then forgets the resolved ones once `delivered`.
    [[nodiscard]] nlohmann::json payload(std::uint64_t now_wall_ns, std::uint64_t valid_ns) const;
    void forget_resolved();
    [[nodiscard]] const std::vector<Alert>& alerts() const noexcept { return alerts_; }
    /// The next instant a quiet alert resolves (0: none).
    [[nodiscard]] std::uint64_t next_expiry() const noexcept;

private:
    static constexpr std::uint64_t to_ns(std::chrono::milliseconds d) { return static_cast<std::uint64_t>(d.count()) * 1'000'000u; }
    Alert* find(const std::string& name, const std::string& unit);
    void fire(const Event& event, const char* name, const char* severity, const std::string& summary, bool quiet);
    bool resolve(const std::string& unit, std::initializer_list<const char*> names, std::uint64_t wall_ns);
    std::uint64_t quiet_ns_;
    std::vector<Alert> alerts_;
};

class EventSinks {
public:
    /// Starts a thread per sink. `tool` names the tool in hook log lines. Throws
    /// hbwatch::Error for a hook user that does not exist or that a non-root tool may not take.
    EventSinks(const EventsConfig& config, std::string tool);
    ~EventSinks();  // stops the threads at once; call finish() first to deliver what is queued
    EventSinks(const EventSinks&) = delete;
    EventSinks& operator=(const EventSinks&) = delete;

    /// Hands `event` to every sink that takes it. Never blocks on a sink.
    void publish(const Event& event);
    [[nodiscard]] bool empty() const noexcept;

    /// Readable when log lines from the sinks wait; write_log() writes them to `log`.
    [[nodiscard]] int log_fd() const noexcept;
    void write_log(spdlog::logger& log);

    /// Gives the sinks until `deadline` (CLOCK_MONOTONIC) to deliver what is queued, stops
    /// them, and returns how many events were not delivered (dropped or left in queues).
    std::uint64_t finish(std::uint64_t deadline_ns, spdlog::logger& log);

    struct Sink;
    struct Shared;

private:
    std::shared_ptr<Shared> shared_;
    std::vector<std::unique_ptr<Sink>> sinks_;
};

}  // namespace hbwatch::tool
