// procctl as a `Type=notify` service (README, "Under systemd"): READY=1 once the stack's first
// wave has settled, STATUS= with the counts of ready and failing programs as they change,
// WATCHDOG=1 from the loop itself when systemd set WatchdogSec=, STOPPING=1 and RELOADING=1.
#include <algorithm>

#include "core/clock.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {

std::string Stack::supervisor_status() const {
    std::size_t ready = 0, failing = 0, starting = 0, waiting = 0, programs = 0;
    for (const auto& member : members_) {
        if (member->unit.goal() == Goal::retire) continue;
        ++programs;
        switch (member->unit.phase()) {
            case Phase::ready: ++ready; break;
            case Phase::backoff:
            case Phase::exited:
            case Phase::gave_up: ++failing; break;
            case Phase::waiting: ++waiting; break;  // for what it waits for: on its way, or blocked
            case Phase::starting: ++starting; break;
            default: break;
        }
    }
    if (stopping_all_) return "stopping every program";
    std::string text = std::to_string(ready) + " of " + std::to_string(programs) + " programs ready";
    if (starting > 0) text += ", " + std::to_string(starting) + " starting";
    if (failing > 0) text += ", " + std::to_string(failing) + " failing";
    if (waiting > 0) text += ", " + std::to_string(waiting) + " waiting";
    return text;
}

// Starting, or waiting with every program it waits for ready or on its way up too. `depth`
// bounds the walk (the config has no cycles; a reload's retiring units are not waited for).
bool Stack::on_its_way_up(const Member& member, std::size_t depth) const {
    if (member.unit.phase() == Phase::starting) return true;
    // Being stopped to be started again (not ready in time, an exit it must be restarted after):
    // its failure shows once it is in backoff.
    if (member.unit.is_stopping() && member.unit.goal() == Goal::up) return true;
    if (member.unit.phase() != Phase::waiting || member.unit.goal() != Goal::up || depth == 0) return false;
    const auto unready = unready_dependencies(member);
    return std::all_of(unready.begin(), unready.end(), [&](const Member* dependency) { return on_its_way_up(*dependency, depth - 1); });
}

void Stack::tell_supervisor_now(const std::string& message) {
    if (notify_ && !notify_->send(message)) log_.debug("NOTIFY_SOCKET {}: could not send {}", notify_->address(), message);
}

void Stack::tell_supervisor(std::uint64_t now) {
    if (!notify_) return;
    std::string message;
    // Ready once nothing is on its way up any more: every program is up, or has had its try (a
    // program that crashed, could not start or was not ready in time: in backoff it counts as
    // failing in STATUS, and is not waited for), or waits for one that has, or for one that is
    // stopped (autostart: false): waits that may last for ever. STATUS says what is failing.
    if (!told_ready_ && !stopping_all_ &&
        std::none_of(members_.begin(), members_.end(), [&](const auto& m) { return on_its_way_up(*m, members_.size()); })) {
        told_ready_ = true;
        message += "READY=1\n";
    }
    if (const std::string status = supervisor_status(); status != told_status_) {
        told_status_ = status;
        message += "STATUS=" + status + "\n";
    }
    // From the loop itself: a loop that stops turning stops the pings, and systemd acts.
    if (next_watchdog_ns_ != 0 && now >= next_watchdog_ns_) {
        message += "WATCHDOG=1\n";
        next_watchdog_ns_ = now + static_cast<std::uint64_t>(notify_->watchdog_every()->count()) * 1000;
    }
    if (!message.empty()) tell_supervisor_now(message);
}

}  // namespace hbwatch::tool
