#include "engine/unit.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "core/clock.h"
#include "core/duration.h"
#include "engine/spawn.h"

namespace hbwatch::tool {
namespace {

// What the kernel cannot announce (a port that starts to listen, a registration written into
// shared memory) is looked for on a doubling ladder: soon after the start, when most programs
// become ready, then less often. A tcp connect in progress, an exec check's exit and READY=1
// are events, answered as they come.
constexpr std::uint64_t kFirstLookNs = to_ns(std::chrono::milliseconds(1));
constexpr std::uint64_t kLookEveryNs = to_ns(std::chrono::milliseconds(100));
// An exec check is a process each time: its ladder starts later and ends at half a second.
constexpr std::uint64_t kFirstExecRetryNs = to_ns(std::chrono::milliseconds(10));
constexpr std::uint64_t kExecRetryEveryNs = to_ns(std::chrono::milliseconds(500));
constexpr std::chrono::seconds kKillWait{5};  // after SIGKILL, before giving up on what is left
constexpr std::uint64_t kRssEveryNs = to_ns(std::chrono::seconds(1));
constexpr unsigned kRssChecks = 3;  // in a row above max_rss: one spike does not restart

RestartPolicy policy_for(const ProgramConfig& program) {
    return RestartPolicy(RestartRules{program.restart_delay, std::chrono::minutes(5),
                                      program.max_restarts ? std::optional(program.max_restarts) : std::nullopt,
                                      program.max_restarts_window, std::chrono::seconds(1)});
}

}  // namespace

const char* to_string(Phase phase) noexcept {
    switch (phase) {
        case Phase::waiting: return "waiting";
        case Phase::starting: return "starting";
        case Phase::ready: return "ready";
        case Phase::stop_queued:
        case Phase::stopping:
        case Phase::killing: return "stopping";
        case Phase::backoff: return "backoff";
        case Phase::stopped: return "stopped";
        case Phase::exited: return "exited";
        case Phase::gave_up: return "gave-up";
    }
    return "unknown";
}

Unit::Unit(std::shared_ptr<const ProgramConfig> program, std::string name, Goal goal)
    : program_(std::move(program)),
      name_(std::move(name)),
      phase_(goal == Goal::up ? Phase::waiting : Phase::stopped),  // autostart: false waits for a start
      goal_(goal),
      policy_(policy_for(*program_)) {}

bool Unit::start_check_due(std::uint64_t now) const noexcept {
    return (phase_ == Phase::waiting && goal_ == Goal::up) || (phase_ == Phase::backoff && now >= due_ns_);
}

std::uint64_t Unit::next_wake() const noexcept {
    switch (phase_) {
        case Phase::backoff: return due_ns_;
        case Phase::starting: return std::min(due_ns_, deadline_ns_);
        case Phase::ready: return next_rss_ns_;
        case Phase::stopping:
        case Phase::killing: return deadline_ns_;
        default: return 0;  // waits for an event, or for what it waits for to change
    }
}

void Unit::enter(Phase next) {
    const Phase from = phase_;
    phase_ = next;
    if (observer_ && from != next && cause_ != nullptr) observer_(*this, Change{from, next, *cause_});
}

void Unit::log(Effects& out, Effect::Level level, std::string text) const {
    out.emplace_back(level, std::move(text));
}

std::vector<Effect> Unit::on(const UnitEvent& event, std::uint64_t now, const Facts& facts) {
    Effects out;
    cause_ = &event;
    using Kind = UnitEvent::Kind;
    switch (event.kind) {
        case Kind::tick:
            switch (phase_) {
                case Phase::waiting:
                    if (goal_ == Goal::up && facts.may_start) begin_start(out, now);
                    break;
                case Phase::backoff:  // what it waits for may have gone meanwhile: then it waits again
                    if (now < due_ns_) break;
                    if (facts.may_start) begin_start(out, now);
                    else enter(Phase::waiting);
                    break;
                case Phase::starting:
                    if (now >= deadline_ns_) {
                        stop_for_failure(out, now, Effect::Level::error,
                                         name_ + " was not ready within " + human_duration(program_->ready_timeout));
                    } else if (now >= due_ns_) {
                        due_ns_ = now + look_gap_ns_;
                        look_gap_ns_ = std::min(2 * look_gap_ns_, kLookEveryNs);
                        out.push_back(Effect{Effect::Kind::probe});
                    }
                    break;
                case Phase::ready:
                    if (next_rss_ns_ != 0 && now >= next_rss_ns_) {
                        next_rss_ns_ = now + kRssEveryNs;
                        out.push_back(Effect{Effect::Kind::sample_rss});
                    }
                    break;
                case Phase::stop_queued:
                    if (!facts.dependents_stopping) begin_stop(out, now);
                    break;
                case Phase::stopping:
                case Phase::killing: stopping_step(out, now, facts); break;
                default: break;
            }
            break;
        case Kind::spawned:
            pid_ = event.pid;
            // Its uptime and its ready_timeout count from the fork: a slow exec is its start's.
            started_ns_ = event.forked_ns != 0 && event.forked_ns <= now ? event.forked_ns : now;
            ++starts_;
            log(out, Effect::Level::info, "started " + name_ + " as pid " + std::to_string(pid_));
            if (program_->ready.kind == ReadyCheck::Kind::started) {
                become_ready(out, now, "started");
            } else {
                due_ns_ = now;
                look_gap_ns_ = kFirstLookNs;
                retry_gap_ns_ = kFirstExecRetryNs;
                deadline_ns_ = started_ns_ + to_ns(program_->ready_timeout);
                enter(Phase::starting);
            }
            break;
        case Kind::spawn_failed: {
            const auto delay = policy_.after_start_failure();
            log(out, Effect::Level::error,
                "cannot start " + name_ + ": " + event.what + " failed: " + std::strerror(event.error) + "; next attempt in " +
                    human_duration(delay));
            last_exit_ = "could not start: " + event.what + " failed: " + std::strerror(event.error);
            due_ns_ = now + to_ns(delay);
            deadline_ns_ = 0;
            enter(Phase::backoff);
            break;
        }
        case Kind::ready:
            if (phase_ == Phase::starting) {
                become_ready(out, now, event.what);
            } else if (phase_ == Phase::stop_queued && queued_from_ == Phase::starting) {
                become_ready(out, now, event.what, false);  // ready underneath: a start that calls the stop off finds it ready
                queued_from_ = Phase::ready;
            }
            break;
        case Kind::probe_failed:
            if (phase_ == Phase::starting) {
                due_ns_ = now + retry_gap_ns_;
                retry_gap_ns_ = std::min(2 * retry_gap_ns_, kExecRetryEveryNs);
            }
            break;
        case Kind::exited:
            if (observer_ && running()) observer_(*this, Change{phase_, phase_, event});  // the exit itself, pid still known
            on_exit(out, now, event, facts);
            break;
        case Kind::main_pid:
            if (!running() || event.pid <= 0 || event.pid == pid_) break;
            log(out, Effect::Level::info,
                name_ + "'s main process is pid " + std::to_string(event.pid) + " now, not " + std::to_string(pid_) + " (" + event.what + ")");
            pid_ = event.pid;
            break;
        case Kind::rss: {
            if (phase_ != Phase::ready || program_->max_rss == 0) break;
            if (event.bytes <= program_->max_rss) {
                rss_over_ = 0;
                break;
            }
            if (++rss_over_ < kRssChecks) break;
            rss_over_ = 0;
            stop_for_failure(out, now, Effect::Level::warn,
                             name_ + " (pid " + std::to_string(pid_) + ") uses " + std::to_string(event.bytes >> 20) +
                                 " MiB, above its max_rss of " + std::to_string(program_->max_rss >> 20) + " MiB for 3 checks in a row");
            break;
        }
        case Kind::hung:
            if (phase_ != Phase::starting && phase_ != Phase::ready) break;
            stop_for_failure(out, now, Effect::Level::error, name_ + " (pid " + std::to_string(pid_) + ") " + event.what);
            break;
        case Kind::extend:
            // The ready timeout, or the stop's grace before SIGKILL: never shortened.
            // Not while procctl stops everything: its own stop has an end.
            if ((phase_ == Phase::starting || phase_ == Phase::stopping) && !halting_) deadline_ns_ = std::max(deadline_ns_, event.until_ns);
            break;
        case Kind::start:
        case Kind::stop:
        case Kind::restart:
        case Kind::retire:
        case Kind::stop_all: on_command(event.kind); break;
    }
    cause_ = nullptr;
    return out;
}

// start, stop and restart by an operator; retire by a reload; stop_all by SIGTERM. A stop of
// a running unit is queued: it begins once what waits for it and is stopping has stopped.
void Unit::on_command(UnitEvent::Kind command) {
    using Kind = UnitEvent::Kind;
    const bool running_phase = phase_ == Phase::starting || phase_ == Phase::ready || phase_ == Phase::stop_queued;
    auto queue_stop = [&] {
        if (phase_ == Phase::stop_queued) return;
        queued_from_ = phase_;
        enter(Phase::stop_queued);
    };
    auto rest = [&](Phase phase) {
        due_ns_ = deadline_ns_ = 0;
        enter(phase);
    };
    switch (command) {
        case Kind::stop_all:
            halting_ = true;
            if (goal_ != Goal::retire) goal_ = Goal::down;  // a retiring unit is still dropped once stopped
            after_stop_ = AfterStop::nothing;
            if (running_phase) queue_stop();
            else if (!is_stopping() && phase_ != Phase::exited && phase_ != Phase::gave_up) rest(Phase::stopped);
            return;
        case Kind::retire:
        case Kind::stop:
            if (command == Kind::stop) operator_set_ = true;
            goal_ = command == Kind::stop ? Goal::down : Goal::retire;
            after_stop_ = AfterStop::nothing;
            if (running_phase) queue_stop();
            else if (!is_stopping()) rest(Phase::stopped);
            return;
        case Kind::start:
        case Kind::restart:
            // procctl is stopping everything, or a reload replaced the unit: nothing starts again.
            if (halting_ || goal_ == Goal::retire) return;
            operator_set_ = true;
            goal_ = Goal::up;
            if (phase_ == Phase::stopping || phase_ == Phase::killing || (running_phase && command == Kind::restart)) {
                after_stop_ = AfterStop::start_now;  // started again once stopped
                if (running_phase) queue_stop();
            } else if (running_phase) {  // a start: a stop not yet begun is called off
                after_stop_ = AfterStop::nothing;
                if (phase_ == Phase::stop_queued) enter(queued_from_);
            } else {
                if (phase_ == Phase::gave_up) policy_ = policy_for(*program_);
                rest(Phase::waiting);  // starts as soon as what it waits for is ready
            }
            return;
        default: return;
    }
}

void Unit::begin_start(Effects& out, std::uint64_t now) {
    if (!policy_.start(now)) {
        log(out, Effect::Level::error,
            "giving up on " + name_ + ": started " + std::to_string(policy_.recent_starts()) + " times within " +
                human_duration(program_->max_restarts_window));
        due_ns_ = deadline_ns_ = 0;
        enter(Phase::gave_up);
        return;
    }
    out.push_back(Effect{Effect::Kind::spawn});
}

// A hang, a ready timeout or max_rss: a failure, so what follows its stop is the restart
// policy's, as for a crash (restart: never leaves it exited, as systemd's Restart=no would).
void Unit::stop_for_failure(Effects& out, std::uint64_t now, Effect::Level level, const std::string& what) {
    const bool restart = program_->restart != RestartMode::never;
    log(out, level, what + (restart ? ": stopping it, to start it again" : ": stopping it; not restarted (restart: never)"));
    after_stop_ = restart ? AfterStop::start_later : AfterStop::end;
    begin_stop(out, now);
}

// The stop signal now, SIGKILL (to the whole cgroup) after the grace.
void Unit::begin_stop(Effects& out, std::uint64_t now) {
    out.push_back(Effect{Effect::Kind::close_probe});
    next_rss_ns_ = 0;
    if (!running()) {
        due_ns_ = now;
        deadline_ns_ = 0;
        enter(halting_ || after_stop_ == AfterStop::nothing ? Phase::stopped
              : after_stop_ == AfterStop::end               ? Phase::exited
                                                            : Phase::backoff);
        after_stop_ = AfterStop::nothing;
        return;
    }
    deadline_ns_ = now + to_ns(program_->stop_grace);
    due_ns_ = 0;
    enter(Phase::stopping);
    out.push_back(Effect{Effect::Kind::signal, program_->stop_signal});
    log(out, Effect::Level::info,
        "stopping " + name_ + " (pid " + std::to_string(pid_) + "): " + signal_name(program_->stop_signal) + ", SIGKILL after " +
            human_duration(program_->stop_grace));
}

void Unit::stopping_step(Effects& out, std::uint64_t now, const Facts& facts) {
    if (!running() && !facts.cgroup_populated) {
        finish_stop(out, now);
    } else if (now >= deadline_ns_ && phase_ == Phase::stopping) {
        log(out, Effect::Level::warn, name_ + " did not stop within " + human_duration(program_->stop_grace) + ": SIGKILL");
        out.push_back(Effect{Effect::Kind::kill});
        deadline_ns_ = now + to_ns(kKillWait);
        enter(Phase::killing);
    } else if (now >= deadline_ns_) {  // killing, and still there
        log(out, Effect::Level::error, name_ + ": processes are still there " + human_duration(kKillWait) + " after SIGKILL; leaving them");
        out.push_back(Effect{Effect::Kind::abandon});
        pid_ = 0;
        finish_stop(out, now);
    } else if (!running() && facts.cgroup_populated && phase_ == Phase::stopping) {
        out.push_back(Effect{Effect::Kind::kill_leftovers});  // the main process is gone: what it left goes with it
        deadline_ns_ = now + to_ns(kKillWait);
        enter(Phase::killing);
    }
}

void Unit::finish_stop(Effects& out, std::uint64_t now) {
    deadline_ns_ = 0;
    const AfterStop next = halting_ ? AfterStop::nothing : after_stop_;
    after_stop_ = AfterStop::nothing;
    if (next == AfterStop::start_now) {
        due_ns_ = 0;
        log(out, Effect::Level::info, name_ + " stopped; starting it again");
        enter(Phase::waiting);  // started again as soon as what it waits for is ready
    } else if (next == AfterStop::start_later) {
        const auto delay = policy_.after_start_failure();
        due_ns_ = now + to_ns(delay);
        log(out, Effect::Level::info, name_ + " stopped; next start in " + human_duration(delay));
        enter(Phase::backoff);
    } else if (next == AfterStop::end) {
        due_ns_ = 0;
        log(out, Effect::Level::info, name_ + " stopped; not restarted (restart: never)");
        enter(Phase::exited);
    } else {
        due_ns_ = 0;
        log(out, Effect::Level::info, name_ + " stopped");
        enter(Phase::stopped);
    }
}

void Unit::become_ready(Effects& out, std::uint64_t now, const std::string& how, bool enter_ready) {
    due_ns_ = deadline_ns_ = 0;
    rss_over_ = 0;
    next_rss_ns_ = program_->max_rss > 0 ? now + kRssEveryNs : 0;
    out.push_back(Effect{Effect::Kind::close_probe});
    log(out, Effect::Level::info,
        name_ + " is ready (" + how + ") " + human_duration(ms_between(started_ns_, now)) + " after its start");
    if (enter_ready) enter(Phase::ready);
}

std::string describe_exit(const UnitEvent& exit) {
    return exit.status_known ? describe_exit(exit.status) : "exited (its status unknown: it was not procctl's child)";
}

void Unit::on_exit(Effects& out, std::uint64_t now, const UnitEvent& exit, const Facts& facts) {
    const auto runtime = ms_between(started_ns_, now);
    pid_ = 0;
    next_rss_ns_ = 0;
    // A main process it handed over (MAINPID=) that was not procctl's child when it ended: its
    // status is its parent's to read. Counted as a failure, so on-failure restarts it.
    const std::string how = describe_exit(exit);
    last_exit_ = how + " after " + human_duration(runtime);
    if (phase_ == Phase::stop_queued) enter(Phase::stopping);  // it exited before its stop began: the stop is done
    if (phase_ == Phase::stopping || phase_ == Phase::killing) {
        log(out, Effect::Level::info, name_ + " " + how + " after " + human_duration(runtime));
        stopping_step(out, now, facts);
        return;
    }
    out.push_back(Effect{Effect::Kind::close_probe});
    out.push_back(Effect{Effect::Kind::kill_leftovers});  // what it left running goes with it
    const bool success = exit.status_known && WIFEXITED(exit.status) && WEXITSTATUS(exit.status) == 0;
    const RestartMode mode = program_->restart;
    const auto level = success ? Effect::Level::info : Effect::Level::warn;
    if (mode == RestartMode::never || (mode == RestartMode::on_failure && success)) {
        log(out, level,
            name_ + " " + how + " after " + human_duration(runtime) + "; not restarted (restart: " +
                (mode == RestartMode::never ? "never" : "on-failure") + ")");
        due_ns_ = deadline_ns_ = 0;
        enter(Phase::exited);
        return;
    }
    const auto delay = policy_.after_exit(success, runtime);
    log(out, level, name_ + " " + how + " after " + human_duration(runtime) + "; next start in " + human_duration(delay));
    due_ns_ = now + to_ns(delay);
    deadline_ns_ = 0;
    enter(Phase::backoff);
}

}  // namespace hbwatch::tool
