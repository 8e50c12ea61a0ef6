// A start in flight: the child forked, its exec not yet seen. The loop never waits on it
// (spawn.h's StartedChild); the unit hears of it once its report comes (settle_launch), and one
// its unit no longer wants, or that never gets to its exec, is killed (watch_launch).
#include <signal.h>

#include <cerrno>
#include <cstring>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "engine/spawn.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {

std::optional<UnitEvent> Stack::start_process(Member& member) {
    if (!member.cgroup_taken) take_cgroup(member);  // a unit a reload added
    // Its notify socket at its first start: a reload that fails never made one (nor took the
    // path from the unit it would have replaced).
    if (member.program().notify && !member.notify) {
        try {
            open_notify_socket(member);
        } catch (const Error& e) {
            UnitEvent failed{UnitEvent::Kind::spawn_failed};
            failed.what = "make its notify socket";
            failed.error = e.code();
            log_.error("{}: {}", member.name(), e.what());
            return failed;
        }
    }
    auto ends = pipes_.open_for(member.out, member.err);
    SpawnPlan plan = plan_for(member, member.argv);
    plan.stdout_fd = ends.out;
    plan.stderr_fd = ends.err;
    plan.keep_stdio = true;  // without a stdout or stderr file: procctl's own
    plan.own_pid = member.watchdog_pid;
    // What it says on its notify socket is about this start from here on.
    member.said_ready = false;
    member.said_status.clear();
    member.said_state.clear();
    member.said_errno = 0;
    std::optional<SpawnFailure> failure;
    auto started = start_child(plan, failure);
    ends.close();  // the child has its copies since the fork
    if (!started) {
        UnitEvent failed{UnitEvent::Kind::spawn_failed};
        failed.what = failure->what();
        failed.error = failure->error;
        return failed;
    }
    // Our unreaped child: its pid cannot change hands, so the pidfd and identity are its.
    auto pinned = Pidfd::pin(started->pid(), nullptr, /*for_signal=*/false);
    member.launching.emplace(std::move(*started), std::move(pinned));
    return std::nullopt;
}

// The child's report came: the unit hears that its program started, or could not. A unit that
// no longer wants it (stopped meanwhile) never hears of it, and the child, never told to
// anyone, is killed: it is milliseconds old and ours, unreaped.
void Stack::settle_launch(Member& member, std::uint64_t now) {
    auto& launching = *member.launching;
    const pid_t pid = launching.child.pid();
    const auto failure = launching.child.outcome();
    auto pinned = std::move(launching.pinned);
    const auto exit_status = launching.exit_status;
    const std::uint64_t forked_ns = launching.forked_ns;
    const bool killed = launching.killed;  // a start stopped, then asked for again: the next one
    member.launching.reset();
    const bool wanted = !killed && wants_launch(member);
    if (failure) {  // the child exits 127 at once; reap() takes it as nobody's
        if (!wanted) return;
        UnitEvent failed{UnitEvent::Kind::spawn_failed};
        failed.what = failure->what();
        failed.error = failure->error;
        apply(member, failed, now);
        return;
    }
    if (!wanted) {
        if (!killed && !exit_status) {  // it exec'd as its unit was stopped: it and what it started go
            if (!(pinned && pinned->pidfd.send(SIGKILL, nullptr))) ::kill(pid, SIGKILL);
            if (member.cgroup && !member.unit.running()) member.cgroup->kill();
        }
        if (!killed) log_.info("{}: not started after all (stopped while it was being started): pid {} killed", member.name(), pid);
        return;
    }
    if (pinned) {
        member.identity = pinned->identity;
        member.pidfd.emplace(std::move(pinned->pidfd));
    }
    member.main_handed_over = false;
    // Its watchdog runs from its exec seen: a program cannot ping before it runs, and a host
    // slow to run it (see README, Limits) must not make that a hang.
    member.watchdog = member.program().watchdog;
    member.last_ping_ns = 0;
    member.watchdog_due_ns = member.watchdog.count() > 0 ? now + to_ns(member.watchdog) : 0;
    member.watchdog_look.reset();
    member.watchdog_extended = member.watchdog_spared_said = false;
    UnitEvent spawned{UnitEvent::Kind::spawned};
    spawned.pid = pid;
    spawned.forked_ns = forked_ns;
    apply(member, spawned, now);
    if (exit_status) main_exited(member, *exit_status, now);
}

// Where begin_start() left it (backoff until its next tick), or waiting, and still to run.
bool Stack::wants_launch(const Member& member) {
    const Phase phase = member.unit.phase();
    return (phase == Phase::waiting || phase == Phase::backoff) && member.unit.goal() == Goal::up;
}

Phase Stack::shown_phase(const Member& member) {
    return member.launching && wants_launch(member) ? Phase::starting : member.unit.phase();
}

// A start in flight that its unit no longer wants, or that has not reached its exec within
// ready_timeout (a cgroup left frozen, an exec from a hung mount): killed, the latter a failed
// start with its backoff. One that outlives SIGKILL (D state) is let go after kLaunchKillWait,
// so that nothing waits on it forever; reap() takes it as nobody's if it ever ends.
void Stack::watch_launch(Member& member, std::uint64_t now) {
    auto& launching = *member.launching;
    if (launching.exit_status) return;  // its report is at hand
    if (launching.killed) {
        if (now < launching.killed_ns + to_ns(kLaunchKillWait)) return;
        log_.error("{}: pid {} is still there {} after SIGKILL, before its exec; leaving it", member.name(), launching.child.pid(),
                   human_duration(kLaunchKillWait));
        member.launching.reset();
        return;
    }
    // (`now` is the turn's: a fork in this very turn is later than it)
    const bool timed_out = now >= launching.forked_ns + to_ns(member.program().ready_timeout);
    if (wants_launch(member) && !timed_out) return;
    launching.killed = true;
    launching.killed_ns = now;
    // Our unreaped child: without a pidfd its pid is still its own.
    if (!(launching.pinned && launching.pinned->pidfd.send(SIGKILL, nullptr))) ::kill(launching.child.pid(), SIGKILL);
    if (!wants_launch(member)) {
        log_.info("{}: not started after all (stopped while it was being started): pid {} killed", member.name(), launching.child.pid());
        return;
    }
    UnitEvent failed{UnitEvent::Kind::spawn_failed};
    failed.what = "its exec within its ready_timeout (" + human_duration(member.program().ready_timeout) + ")";
    failed.error = ETIME;
    apply(member, failed, now);
}

}  // namespace hbwatch::tool
