#pragma once
// A stack program's life as one explicit state table, in the spirit of s6-supervise's
// actions[state][event]: a Unit takes typed events at given instants and answers with the
// effects the stack must carry out (start it, signal it, probe it, log a line). It makes no
// system call and reads no clock, so a test drives it with chosen events and times.
//
//   waiting --start due--> (spawn) --spawned--> starting --ready--> ready
//   starting --ready timeout--> stopping, then backoff          ready --exited--> backoff | exited
//   starting|ready --stop/restart/retire--> stop_queued --its dependents stopped--> stopping
//   stopping --grace over--> killing --kill wait over--> (abandoned)   stopping|killing --gone--> stopped | waiting | backoff
//   backoff --due--> (spawn), or waiting again when a dependency went   too many starts: gave_up
//
// Every change of phase, and every exit of its main process, passes through one observer
// (set_observer), with the event that caused it: nothing else writes the phase. The stack's
// events (event.h) are made there and nowhere else.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/restart_policy.h"
#include "engine/stack_config.h"

namespace hbwatch::tool {

enum class Phase { waiting, starting, ready, stop_queued, stopping, killing, backoff, stopped, exited, gave_up };
/// What an operator (or the config) wants of the unit: running, stopped, or stopped and then
/// dropped (a reload removed or replaced its program).
enum class Goal { up, down, retire };

/// The name the control API and proctab show: stop_queued and killing show as "stopping".
const char* to_string(Phase phase) noexcept;

/// What the stack knows around a unit when it hands it an event.
struct Facts {
    bool may_start = false;             // what it waits for is ready (asked only when a start is due)
    bool dependents_stopping = false;   // a program that waits for it is being stopped too
    bool cgroup_populated = false;      // processes are left in its cgroup
};

struct UnitEvent {
    enum class Kind {
        tick,          // time passed: deadlines, due starts, due probes
        spawned,       // the stack started it: `pid`, exec'd; forked at `forked_ns`
        spawn_failed,  // it could not: `what`, `error`
        ready,         // its readiness check passed: `what` says how
        probe_failed,  // an exec check exited non-zero: try again later
        exited,        // its main process ended: `status`, unless `status_known` is false
        main_pid,      // its main process is another now: `pid` (sd_notify MAINPID=, checked by the stack)
        rss,           // its resident memory now: `bytes`
        hung,          // its watchdog was missed (`what` says how): stopped, then started again
        extend,        // it asked for more time (sd_notify EXTEND_TIMEOUT_USEC): to `until_ns`
        start,         // an operator's start
        stop,          // an operator's stop
        restart,       // an operator's restart
        retire,        // a reload removed or replaced its program
        stop_all,      // procctl stops every program
    };
    explicit UnitEvent(Kind what_happened) : kind(what_happened) {}
    Kind kind;
    pid_t pid = 0;
    int status = 0;
    bool status_known = true;  // exited: false for a main process that was not our child when it ended
    int error = 0;
    std::uint64_t bytes = 0;
    std::uint64_t forked_ns = 0;  // spawned: 0 for now
    std::uint64_t until_ns = 0;   // extend
    std::string what;
};

/// An exited event's words: "exited with code 1", "killed by SIGKILL", or that its status is unknown.
[[nodiscard]] std::string describe_exit(const UnitEvent& exit);

struct Effect {
    enum class Kind {
        spawn,          // start the program (answer with spawned or spawn_failed)
        signal,         // send `signal` to its main process
        kill,           // SIGKILL to its whole cgroup (or the main process without one)
        kill_leftovers, // SIGKILL to what it left in its cgroup
        probe,          // look at its readiness once (answer with ready or probe_failed, maybe later)
        close_probe,    // end a readiness check in flight
        sample_rss,     // read its resident memory (answer with rss)
        abandon,        // forget its main process: it outlived SIGKILL
        log,            // `text` at `level`
    };
    enum class Level { debug, info, warn, error };
    explicit Effect(Kind what, int sig = 0) : kind(what), signal(sig) {}
    Effect(Level at, std::string line) : kind(Kind::log), level(at), text(std::move(line)) {}
    Kind kind;
    int signal = 0;
    Level level = Level::info;
    std::string text;
};

/// What the observer sees: a change of phase, or an exit of the main process (`from` == `to`
/// when the exit alone changed nothing yet), with the event that caused it.
struct Change {
    Phase from;
    Phase to;
    const UnitEvent& cause;
};

class Unit {
public:
    using Observer = std::function<void(const Unit&, const Change&)>;

    Unit(std::shared_ptr<const ProgramConfig> program, std::string name, Goal goal);

    /// The one transition function: the unit's next phase and the effects, for `event` at `now`.
    std::vector<Effect> on(const UnitEvent& event, std::uint64_t now, const Facts& facts);

    void set_observer(Observer observer) { observer_ = std::move(observer); }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    [[nodiscard]] const ProgramConfig& program() const noexcept { return *program_; }
    [[nodiscard]] const std::shared_ptr<const ProgramConfig>& program_ptr() const noexcept { return program_; }
    [[nodiscard]] Phase phase() const noexcept { return phase_; }
    [[nodiscard]] Goal goal() const noexcept { return goal_; }
    [[nodiscard]] bool running() const noexcept { return pid_ != 0; }  // its main process is ours and unreaped
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    [[nodiscard]] std::uint64_t started_ns() const noexcept { return started_ns_; }
    [[nodiscard]] unsigned starts() const noexcept { return starts_; }
    [[nodiscard]] const std::string& last_exit() const noexcept { return last_exit_; }
    /// backoff: when the next start is due (CLOCK_MONOTONIC ns).
    [[nodiscard]] std::uint64_t due_ns() const noexcept { return due_ns_; }
    /// How many starts the restart limit has counted within its window.
    [[nodiscard]] std::size_t recent_starts() const noexcept { return policy_.recent_starts(); }
    /// Whether a tick now would look at starting it (then the stack says whether it may).
    [[nodiscard]] bool start_check_due(std::uint64_t now) const noexcept;
    /// The earliest instant it needs a tick at, 0 for none (it waits for an event).
    [[nodiscard]] std::uint64_t next_wake() const noexcept;
    /// Ready, not about to stop: what waits for it may run.
    [[nodiscard]] bool is_ready() const noexcept { return phase_ == Phase::ready; }
    /// Stopping, or about to: what it waits for must wait for it.
    [[nodiscard]] bool is_stopping() const noexcept {
        return phase_ == Phase::stop_queued || phase_ == Phase::stopping || phase_ == Phase::killing;
    }
    /// Stopped for good, to be dropped (a reload removed or replaced it).
    [[nodiscard]] bool retired() const noexcept { return goal_ == Goal::retire && !running() && !is_stopping(); }
    /// An operator started, stopped or restarted it: a reload that changes it keeps that.
    [[nodiscard]] bool operator_set() const noexcept { return operator_set_; }
    /// A unit a reload made anew in place of one an operator had set: it keeps the mark.
    void keep_operator_choice() noexcept { operator_set_ = true; }

private:
    using Effects = std::vector<Effect>;
    void enter(Phase next);
    void log(Effects& out, Effect::Level level, std::string text) const;
    void begin_start(Effects& out, std::uint64_t now);
    void begin_stop(Effects& out, std::uint64_t now);
    void stopping_step(Effects& out, std::uint64_t now, const Facts& facts);
    void finish_stop(Effects& out, std::uint64_t now);
    void become_ready(Effects& out, std::uint64_t now, const std::string& how, bool enter_ready = true);
    void on_exit(Effects& out, std::uint64_t now, const UnitEvent& exit, const Facts& facts);
    void on_command(UnitEvent::Kind command);
    void stop_for_failure(Effects& out, std::uint64_t now, Effect::Level level, const std::string& what);

    std::shared_ptr<const ProgramConfig> program_;  // shared: a reload keeps an unchanged program's
    std::string name_;
    Phase phase_;
    Goal goal_;
    Observer observer_;
    const UnitEvent* cause_ = nullptr;  // the event on() is handling, for the observer
    // What follows the stop in progress: nothing, a start at once (an operator's restart), a
    // start after the crash backoff, or an end as exited (a failure under restart: never).
    enum class AfterStop { nothing, start_now, start_later, end } after_stop_ = AfterStop::nothing;
    Phase queued_from_ = Phase::ready;  // stop_queued: where a start that calls the stop off returns
    bool halting_ = false;             // procctl stops every program: no restart after any stop
    bool operator_set_ = false;
    pid_t pid_ = 0;
    std::uint64_t started_ns_ = 0;
    std::uint64_t due_ns_ = 0;       // backoff: the next start; starting: the next probe
    std::uint64_t look_gap_ns_ = 0;  // starting: from this probe to the next, doubling
    std::uint64_t retry_gap_ns_ = 0;  // starting: from a failed exec check to the next, doubling
    std::uint64_t deadline_ns_ = 0;  // starting: the ready timeout; stopping: SIGKILL; killing: giving up
    std::uint64_t next_rss_ns_ = 0;
    unsigned rss_over_ = 0;  // max_rss samples in a row above the limit
    unsigned starts_ = 0;
    RestartPolicy policy_;
    std::string last_exit_;
};

}  // namespace hbwatch::tool
