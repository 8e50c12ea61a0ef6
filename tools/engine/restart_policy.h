#pragma once
// When procctl starts its program again: every decision takes the time as an argument, so
// the rules are tested with chosen instants and no sleeping.

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>

#include "core/duration.h"

namespace hbwatch::tool {

// The ranges of the durations a supervisor takes, the same on procctl's command line and in a
// stack config: a pause before a start (INTERVAL, restart_delay), the grace between the stop
// signal and SIGKILL (--grace, stop_grace), the cap on the crash backoff, and the window of a
// restart limit (--window, max_restarts.window).
inline constexpr DurationRange kRestartDelayRange{std::chrono::milliseconds(0), std::chrono::hours(24)};
inline constexpr DurationRange kStopGraceRange{std::chrono::milliseconds(0), std::chrono::hours(24)};
inline constexpr DurationRange kMaxBackoffRange{std::chrono::seconds(1), std::chrono::hours(24)};
inline constexpr DurationRange kRestartWindowRange{std::chrono::seconds(1), std::chrono::hours(24 * 30)};

struct RestartRules {
    std::chrono::milliseconds interval{0};                           // after an ordinary exit
    std::chrono::milliseconds max_backoff{std::chrono::minutes(5)};  // cap on the doubling delay
    std::optional<unsigned> max_restarts;                            // starts allowed within `window`
    std::chrono::milliseconds window{std::chrono::minutes(1)};
    std::chrono::milliseconds crash_window{std::chrono::seconds(1)};  // an unsuccessful exit sooner is a crash
};

class RestartPolicy {
public:
    explicit RestartPolicy(RestartRules rules) : rules_(rules) {}

    /// Whether a start at `now_ns` is allowed; false once max_restarts starts fall within the
    /// window (then procctl gives up). Records the start when allowed.
    bool start(std::uint64_t now_ns);
    /// Starts counted within the window ending at the last start (at most max_restarts).
    [[nodiscard]] std::size_t recent_starts() const noexcept { return starts_.size(); }

    /// The pause after the program exited, having run `runtime`; `success` for exit code 0.
    /// Crashes (unsuccessful and shorter than crash_window) back off, doubling from INTERVAL
    /// (at least 1 s) up to max_backoff; anything else resets the backoff.
    std::chrono::milliseconds after_exit(bool success, std::chrono::milliseconds runtime);
    /// The pause after the program could not be started at all: always a backoff.
    std::chrono::milliseconds after_start_failure();

    [[nodiscard]] bool crashed(bool success, std::chrono::milliseconds runtime) const noexcept {
        return !success && runtime < rules_.crash_window;
    }
    [[nodiscard]] unsigned failures_in_a_row() const noexcept { return failures_; }
    [[nodiscard]] const RestartRules& rules() const noexcept { return rules_; }

private:
    std::chrono::milliseconds backoff() const;

    RestartRules rules_;
    unsigned failures_ = 0;
    std::deque<std::uint64_t> starts_;  // only with max_restarts, and never more than it
};

}  // namespace hbwatch::tool
