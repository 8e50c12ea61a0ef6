#pragma once
// Stopping processes gracefully, many at once: SIGTERM, a deadline, then SIGKILL. A state
// machine over pidfds, so that it fits in a caller's poll loop and ten stops cost one grace.

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/pidfd.h"

namespace hbwatch {

struct StopEvent {
    enum class Kind {
        exited,       // gone: after SIGTERM, or after SIGKILL when `killed`
        kill_sent,    // the grace ran out; SIGKILL sent
        kill_failed,  // still there `kill_wait` after SIGKILL (uninterruptible sleep?), or not signallable
        kill_skipped, // the grace ran out, but the check given to start() said SIGKILL must not be sent
    };
    std::uint64_t id = 0;
    Kind kind = Kind::exited;
    bool killed = false;                 // SIGKILL was needed
    std::chrono::milliseconds elapsed{};  // since SIGTERM was sent
    std::string detail;
};

class Stopper {
public:
    using Observer = std::function<void(const StopEvent&)>;

    /// `observer` hears every event; `kill_wait` bounds the wait after SIGKILL.
    Stopper(std::chrono::milliseconds grace, Observer observer,
            std::chrono::milliseconds kill_wait = std::chrono::seconds(5));

    /// Sends SIGTERM through `target` and follows it under `id`. False, with the reason in
    /// `why`, when SIGTERM could not be sent (then nothing is followed).
    bool start(std::uint64_t id, Pidfd target, std::string* why = nullptr);
    /// The same, with SIGKILL due at `kill_at_ns` (CLOCK_MONOTONIC) instead of after the grace:
    /// for processes found late in a stop that has one deadline for all. `may_kill`, when
    /// given, is asked right before SIGKILL (is it still the process that was judged?).
    bool start(std::uint64_t id, Pidfd target, std::uint64_t kill_at_ns, std::string* why = nullptr,
               std::function<bool()> may_kill = {});
    /// Whether a stop is in flight for process `pid`.
    [[nodiscard]] bool stopping(pid_t pid) const noexcept;

    /// Appends a pollfd per process being stopped (readable when it exits).
    void add_pollfds(std::vector<pollfd>& out) const;
    /// Reports exits and sends the SIGKILLs that are due at `now_ns` (CLOCK_MONOTONIC).
    void advance(std::uint64_t now_ns);
    /// The next escalation deadline (CLOCK_MONOTONIC ns), if any stop is in flight.
    [[nodiscard]] std::optional<std::uint64_t> next_deadline_ns() const;
    [[nodiscard]] bool idle() const noexcept { return stops_.empty(); }
    /// Waits on the pidfds, escalating on time, until every stop has finished.
    void run_until_idle();

private:
    struct Stop {
        std::uint64_t id;
        Pidfd target;
        std::uint64_t term_sent_ns;
        std::uint64_t deadline_ns;
        bool killed;
        std::function<bool()> may_kill;
    };
    std::chrono::milliseconds grace_;
    std::chrono::milliseconds kill_wait_;
    Observer observer_;
    std::vector<Stop> stops_;
};

/// The outcome of stop_all().
struct StopTally {
    std::size_t stopped = 0;  // exited, on SIGTERM or after SIGKILL
    std::size_t killed = 0;   // of those, how many needed SIGKILL
    std::size_t failed = 0;   // refused (protected), not signallable, or still there after SIGKILL
    std::vector<std::string> notes;  // one line per process that did not simply exit on SIGTERM
};

/// Stops every process in `targets` at once through the pidfds the caller verified (Pidfd::pin
/// at the very read that selected each one): SIGTERM, SIGKILL after `grace`. A target already
/// gone counts as stopped. Returns when all are done.
StopTally stop_all(std::vector<Pidfd> targets, std::chrono::milliseconds grace);

}  // namespace hbwatch
