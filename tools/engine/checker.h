#pragma once
// checkproc's engine: one decision per table entry, each one logged.
//   - the process is gone, reused or a zombie: free the slot, signal nothing;
//   - the entry is garbage (pid <= 1, checkproc itself, bad name or timeout): free, signal nothing;
//   - the service is hung (last beat older than its timeout, on CLOCK_MONOTONIC): verify it,
//     SIGTERM through a pidfd, SIGKILL after the grace, then free the slot if it still holds
//     the same registration. All hung entries of a scan are stopped at once.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/stopper.h"
#include "core/table.h"
#include "engine/event.h"
#include "engine/hang_diagnosis.h"
#include "engine/hang_verdict.h"
#include "engine/log_sink.h"

namespace hbwatch::tool {

enum class Health { ok, late, hung };

/// `ok` up to half the timeout since the last beat, `late` up to deadline_ns(), `hung` past it.
[[nodiscard]] Health health_of(const SlotSnapshot& slot, std::uint64_t now_ns) noexcept;
[[nodiscard]] const char* to_string(Health health) noexcept;

struct CheckOptions {
    std::chrono::milliseconds grace{std::chrono::seconds(5)};  // SIGTERM to SIGKILL
    std::chrono::milliseconds kill_wait{std::chrono::seconds(5)};  // SIGKILL to giving up
    bool dry_run = false;  // log what would be done; signal and change nothing
    bool report_only = false;  // hangs are judged, diagnosed and reported, never signalled (dead slots are still freed)
    bool spare_stopped = true;  // a stopped or traced process (SIGSTOP, a debugger) is not signalled
    DiagnosisOptions diagnosis;  // what is kept of a hung process before its SIGTERM
    bool log_healthy = false;  // a debug line per healthy entry (costly: off unless -v)
    // Hears every hang stop as events: heartbeat_hung and hang_stopped (SIGTERM) when one
    // begins, hang_stopped (SIGKILL) when the grace runs out, exited when it ends.
    std::function<void(Event)> on_event;
    // --watch polls this fd too, and calls on_event_log when it is readable (the event hooks'
    // log lines, handed over from their thread). -1: none.
    int event_log_fd = -1;
    std::function<void()> on_event_log;
};

/// When `slot` turns hung: its last beat plus its timeout plus beat_lag_bound_ns() (how long
/// after its coarse stamp the beat may really have happened), so that no service is ever
/// judged before its real deadline.
[[nodiscard]] std::uint64_t deadline_ns(const SlotSnapshot& slot) noexcept;

struct ScanSummary {
    std::size_t entries = 0;
    std::size_t healthy = 0;
    std::size_t hung = 0;      // hung entries found (stopped, skipped or left alone)
    std::size_t stopping = 0;  // stops started by this scan
    std::size_t freed = 0;     // slots freed without a signal (dead or garbage)
    std::optional<std::uint64_t> next_deadline_ns;  // earliest moment a healthy entry turns hung
};

class Checker {
public:
    Checker(Table& table, CheckOptions options, LogSink log);

    /// One pass over the table at `now_ns` (CLOCK_MONOTONIC): frees what is dead or garbage and
    /// starts stopping what is hung. Stops then progress through stopper().
    ScanSummary scan(std::uint64_t now_ns);

    /// The decision for one entry. An entry that is not due gets a cheap look (is its pid there
    /// at all?); its identity is verified in full when it is acted on: hung, gone, or
    /// `exited` (its pidfd said so).
    void check(const SlotSnapshot& slot, std::uint64_t now_ns, ScanSummary& summary, bool exited = false);

    /// Drops what is remembered of registration `token` (its slot now holds another).
    void forget(std::uint64_t token);
    /// Whether a stop of registration `token` is in flight.
    [[nodiscard]] bool stopping(std::uint64_t token) const { return pending_.count(token) != 0; }

    /// When registration `token`'s hang verdict wants another look (a second look at a runnable
    /// process, the end of a starved one's extension, the next report of a stopped one).
    [[nodiscard]] std::optional<std::uint64_t> look_again_at(std::uint32_t index, std::uint64_t token) const;
    /// The slots whose verdicts wait for a second look by `now_ns`, and the earliest later one
    /// (one-shot mode: spared ones are left to the next run).
    [[nodiscard]] std::vector<std::uint32_t> due_second_looks(std::uint64_t now_ns, std::optional<std::uint64_t>& next) const;

    /// Reports exits and escalates due stops (call after polling stopper()'s pidfds).
    void advance(std::uint64_t now_ns) { stopper_.advance(now_ns); }
    [[nodiscard]] const Stopper& stopper() const noexcept { return stopper_; }
    [[nodiscard]] bool idle() const noexcept { return stopper_.idle(); }
    /// Waits until every stop in flight has finished.
    void finish() { stopper_.run_until_idle(); }

private:
    struct Pending {
        std::uint32_t index;
        std::string who;
        SlotSnapshot slot;  // as judged: its name, pid, timeout and last beat for the events
    };
    void tell(EventKind kind, const SlotSnapshot& slot, std::string message, nlohmann::json details) const;
    void note_healthy(const SlotSnapshot& slot, std::uint64_t now_ns, ScanSummary& summary);
    // What may be done to a hung entry's process: signal it; free its slot without a signal
    // (it is gone, another process, or the entry is garbage); or leave both (it cannot be
    // verified, or its writers could not signal it), with why.
    struct Verdict {
        enum class Action { signal, free_unsignalled, keep_unsignalled } action;
        std::string why;
    };
    Verdict judge(const SlotSnapshot& slot, const Pinned* target, Refusal refusal) const;
    // A hang, before any signal: what the process is doing (hang_verdict.h). True when it is
    // spared for now (stopped, traced, frozen, starved within its extension) or looked at again.
    bool spare_for_now(const SlotSnapshot& slot, const std::string& who, const std::string& hung, std::uint64_t now_ns);
    Diagnosis diagnose(const Pidfd& target, const SlotSnapshot& slot, const std::string& why);
    /// The details every hang event of `slot` carries: its slot, last beat and timeout.
    static nlohmann::json hang_facts(const SlotSnapshot& slot, std::uint64_t now_ns);
    struct Stall {
        std::uint32_t index = 0;
        std::uint64_t last_beat_ns = 0;        // the hang it is about: a beat since starts another
        std::optional<ProcessLook> first;      // a look that asked for a second one
        std::uint64_t look_again_ns = 0;       // then, or the next report or the extension's end
        bool said = false;                     // its spared verdict, or its starvation, was reported
        std::string words;                     // the verdict, for the stop's log line
    };
    void stop_hung(const SlotSnapshot& slot, const std::string& who, const std::string& hung, ScanSummary& summary);
    void free_unsignalled(const SlotSnapshot& slot, LogLevel level, const std::string& message, ScanSummary& summary);
    void on_stop_event(const StopEvent& event);

    Table& table_;
    CheckOptions options_;
    LogSink log_;
    ProcessIdentity self_;
    Stopper stopper_;
    std::map<std::uint64_t, Pending> pending_;  // stops in flight, by token (which is the stop's id)
    std::set<std::uint64_t> given_up_;          // tokens whose SIGKILL did not end them
    std::set<std::uint64_t> reported_;          // tokens whose "not signalled" was logged: once is enough
    // Hangs being judged or spared, by slot and token: two fresh slots of one process share a token.
    std::map<std::pair<std::uint32_t, std::uint64_t>, Stall> stalls_;
    std::uint64_t diagnosis_window_ns_ = 0;  // diagnoses' time spent within the second from here
    std::uint64_t diagnosis_spent_ns_ = 0;
};

/// The one-shot mode: scan the table at `table_options` once, stop what is hung and wait for
/// the stops. A missing table is not an error: it logs that there is nothing to watch.
/// Throws hbwatch::Error when the table cannot be read.
ScanSummary check_once(const TableOptions& table_options, const CheckOptions& options, const LogSink& log);

/// Throws Error(EPERM) for a table owned or created by a user who is neither root nor us: a
/// read-write open already refuses one, and a dry run (read-only) must not act on one either.
void require_trusted(const Table& table);

}  // namespace hbwatch::tool
