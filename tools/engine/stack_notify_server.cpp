// The stack's sd_notify server: what a program says on its NOTIFY_SOCKET (READY=1, STATUS=,
// WATCHDOG=1, ...), taken only from the processes that may speak for it. stack_notify.cpp is
// the other direction: procctl speaking to its own supervisor.

#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {
namespace {

// A flood waits in the socket's 8 MiB buffer rather than stalling supervision.
constexpr int kMessagesPerTurn = 64;
constexpr std::size_t kShownStatus = 512;
constexpr std::size_t kRefusalsSaid = 16;
constexpr int kAncestorsLookedAt = 64;
constexpr std::uint64_t kMaxExtensionUsec = 24ull * 3600 * 1000 * 1000;  // a day at a time, as the config's ranges

std::optional<std::uint64_t> number(const std::string& text) {
    std::uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

// STATUS= as an operator's screen may show it: printable, bounded.
std::string shown_status(const std::string& text) {
    std::string shown = text.substr(0, kShownStatus);
    for (char& c : shown)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return shown;
}

std::string fields_text(const NotifyMessage& message) {
    std::string text;
    for (const auto& [key, value] : message.fields) {
        if (text.size() > 80) return text + " ...";
        text += (text.empty() ? "" : " ") + key + "=" + shown_status(value.substr(0, 32));
    }
    return text;
}

}  // namespace

void Stack::open_notify_socket(Member& member) {
    const std::string directory = config_.run_dir + "/notify";
    if (::mkdir(directory.c_str(), 0755) != 0 && errno != EEXIST)
        throw Error(errno, "cannot make " + directory + " for the programs' notify sockets: " + std::strerror(errno));
    member.notify = std::make_unique<NotifySocket>(notify_socket_path(config_.run_dir, member.name()), member.uid, member.gid);
}

// Who may speak for a program: its main process, anything in its cgroup, or without one what
// descends from its main process (systemd's NotifyAccess=all, within the unit). With the
// sender's pidfd the answer is about that very process: alive, its pid is not another's.
bool Stack::may_speak_for(Member& member, const NotifyMessage& message) const {
    const pid_t pid = message.pid;
    bool inside = pid == member.unit.pid() && member.unit.running();
    if (!inside && member.cgroup) {
        const auto pids = member.cgroup->pids();
        inside = std::find(pids.begin(), pids.end(), pid) != pids.end();
    } else if (!inside && member.unit.running()) {
        pid_t at = pid;
        for (int depth = 0; depth < kAncestorsLookedAt && at > 1 && !inside; ++depth) {
            const auto stat = read_proc_stat(at);
            if (!stat) break;
            at = stat->ppid;
            inside = at == member.unit.pid();
        }
    }
    // Its pidfd, where the kernel gives one, must still be a live process: else the pid just
    // looked up may be another's by now. A pidfd the kernel could not make: nobody's message.
    if (message.sender_lost) return false;
    if (inside && message.sender.get() >= 0)
        inside = ::syscall(SYS_pidfd_send_signal, message.sender.get(), 0, nullptr, 0) == 0;
    return inside;
}

void Stack::read_notifications(Member& member, std::uint64_t now) {
    for (int i = 0; i < kMessagesPerTurn && member.notify; ++i) {
        bool taken = false;
        auto message = member.notify->receive(member.notify_drops, taken);
        if (!taken) return;
        if (!message) continue;  // dropped, and counted
        if (!may_speak_for(member, *message)) {
            ++member.notify_refused;
            auto& said = member.refusals_said;
            if (said.size() < kRefusalsSaid && std::find(said.begin(), said.end(), message->pid) == said.end()) {
                said.push_back(message->pid);
                log_.warn("{}: a notify message from pid {} (uid {}), which is not in {}'s cgroup nor its main process, refused: {}",
                          member.name(), message->pid, message->uid, member.name(), fields_text(*message));
            }
            continue;
        }
        take_notification(member, *message, now);
    }  // every message's fds close with it: a BARRIER's once all before it were taken
}

void Stack::take_notification(Member& member, const NotifyMessage& message, std::uint64_t now) {
    if (const auto* status = message.find("STATUS")) member.said_status = shown_status(*status);
    if (const auto* text = message.find("ERRNO"))
        if (const auto value = number(*text); value && *value < 4096) member.said_errno = static_cast<int>(*value);
    if (const auto* value = message.find("RELOADING"); value && *value == "1") member.said_state = "reloading";
    if (const auto* value = message.find("STOPPING"); value && *value == "1") member.said_state = "stopping";
    if (const auto* text = message.find("WATCHDOG_USEC")) {
        // 0 or systemd's infinity turn it off; anything else within the config's range.
        const auto usec = number(*text);
        if (usec && (*usec == 0 || *usec == UINT64_MAX)) {
            member.watchdog = std::chrono::milliseconds(0);
            member.watchdog_due_ns = 0;
        } else if (usec && *usec / 1000 >= static_cast<std::uint64_t>(kWatchdogRange.low.count()) &&
                   *usec / 1000 <= static_cast<std::uint64_t>(kWatchdogRange.high.count())) {
            member.watchdog = std::chrono::milliseconds(*usec / 1000);
            member.watchdog_due_ns = member.unit.running() && !member.unit.is_stopping() ? now + to_ns(member.watchdog) : 0;
        } else if (!member.said_bad_watchdog) {
            member.said_bad_watchdog = true;
            log_.warn("{}: WATCHDOG_USEC={} ignored: give 0 (off) or 100ms to 1d in microseconds", member.name(), shown_status(*text));
        }
    }
    if (const auto* value = message.find("WATCHDOG")) {
        if (*value == "1") {
            member.last_ping_ns = now;
            if (member.watchdog_due_ns != 0) member.watchdog_due_ns = now + to_ns(member.watchdog);
        } else if (*value == "trigger" && member.unit.running()) {
            member.watchdog_due_ns = 0;
            UnitEvent hung{UnitEvent::Kind::hung};
            hung.what = "asked for its watchdog to fire (WATCHDOG=trigger)";
            apply(member, hung, now);
        }
    }
    if (const auto* text = message.find("EXTEND_TIMEOUT_USEC")) {
        if (const auto usec = number(*text)) {
            UnitEvent extend{UnitEvent::Kind::extend};
            extend.until_ns = now + std::min<std::uint64_t>(*usec, kMaxExtensionUsec) * 1000;
            if (member.watchdog_due_ns != 0) member.watchdog_due_ns = std::max(member.watchdog_due_ns, extend.until_ns);
            apply(member, extend, now);
        }
    }
    if ((message.find("MAINPID") || message.find("MAINPIDFD") || message.find("FDSTORE")) && !member.said_unsupported) {
        member.said_unsupported = true;
        log_.warn("{}: MAINPID=, MAINPIDFD= and FDSTORE= are not supported yet: procctl keeps watching pid {}, and closes stored fds",
                  member.name(), member.unit.pid());
    }
    if (const auto* value = message.find("READY"); value && *value == "1") {
        member.said_ready = true;
        member.said_state.clear();
        if (member.unit.phase() == Phase::starting && member.program().ready.kind == ReadyCheck::Kind::notify) {
            UnitEvent ready{UnitEvent::Kind::ready};
            ready.what = "READY=1";
            apply(member, ready, now);
        }
    }
}

// A WATCHDOG=1 missed: the program is stopped as a hang and started again, never before its
// deadline (the loop may only be late).
void Stack::check_watchdogs(std::uint64_t now) {
    for (auto& member : members_) {
        if (member->watchdog_due_ns == 0) continue;
        if (member->unit.is_stopping() || !member->unit.running()) {  // being stopped: no hang to find
            member->watchdog_due_ns = 0;
            continue;
        }
        if (now < member->watchdog_due_ns) continue;
        member->watchdog_due_ns = 0;
        const auto since = ms_between(member->last_ping_ns != 0 ? member->last_ping_ns : member->unit.started_ns(), now);
        UnitEvent hung{UnitEvent::Kind::hung};
        hung.what = "missed its watchdog: no WATCHDOG=1 for " + human_duration(since) + " (watchdog " + human_duration(member->watchdog) + ")";
        emit_for(*member, EventKind::heartbeat_hung, member->name() + " " + hung.what,
                 {{"source", "sd_notify"}, {"watchdog_seconds", static_cast<double>(member->watchdog.count()) / 1000.0},
                  {"since_ping_seconds", static_cast<double>(since.count()) / 1000.0}});
        apply(*member, hung, now);
    }
}

}  // namespace hbwatch::tool
