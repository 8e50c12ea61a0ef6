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

/// What a hook's environment says of `event`: HBWATCH_EVENT, HBWATCH_PROGRAM, HBWATCH_INSTANCE,
/// HBWATCH_PID, HBWATCH_MESSAGE, HBWATCH_DETAILS (JSON), HBWATCH_SEQ, HBWATCH_TIME,
/// HBWATCH_MONOTONIC_NS, HBWATCH_HOST and HBWATCH_EVENT_JSON (the whole event).
[[nodiscard]] std::vector<std::string> hook_environment(const Event& event);

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
