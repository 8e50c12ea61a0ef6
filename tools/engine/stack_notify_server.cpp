// The stack's sd_notify server: what a program says on its NOTIFY_SOCKET (READY=1, STATUS=,
// WATCHDOG=1, ...), taken only from the processes that may speak for it. stack_notify.cpp is
// the other direction: procctl speaking to its own supervisor.

#include <signal.h>
#include <fcntl.h>
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
#include "engine/hang_diagnosis.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {
namespace {

// A flood waits in the socket's 8 MiB buffer rather than stalling supervision.
constexpr int kMessagesPerTurn = 64;
constexpr std::size_t kShownStatus = 512;
constexpr std::size_t kRefusalsSaid = 16;
constexpr std::size_t kCloserBacklog = 16;  // a program's fds waiting to be closed before its socket is read no more
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

// Whether `pid` is one of the program's processes: in its cgroup, or without one a descendant
// of its main process (as far as the parents still say so).
bool Stack::belongs_to(const Member& member, pid_t pid) const {
    if (!member.unit.running()) return false;
    if (pid == member.unit.pid()) return true;
    if (member.cgroup) {
        const auto pids = member.cgroup->pids();
        return std::find(pids.begin(), pids.end(), pid) != pids.end();
    }
    pid_t at = pid;
    for (int depth = 0; depth < kAncestorsLookedAt && at > 1; ++depth) {
        const auto stat = read_proc_stat(at);
        if (!stat) return false;
        at = stat->ppid;
        if (at == member.unit.pid()) return true;
    }
    return false;
}

// Who may speak for a program: its main process, anything in its cgroup, or without one what
// descends from its main process (systemd's NotifyAccess=all, within the unit). With the
// sender's pidfd the answer is about that very process: alive, its pid is not another's.
bool Stack::may_speak_for(Member& member, const NotifyMessage& message) const {
    // A pidfd the kernel could not make: nobody's message.
    if (message.sender_lost) return false;
    bool inside = belongs_to(member, message.pid);
    // Its pidfd, where the kernel gives one, must still be a live process: else the pid just
    // looked up may be another's by now.
    if (inside && message.sender.get() >= 0)
        inside = ::syscall(SYS_pidfd_send_signal, message.sender.get(), 0, nullptr, 0) == 0;
    return inside;
}

void Stack::refuse_main_pid(Member& member, const std::string& said, const std::string& why) {
    if (member.main_pid_refusals++ < kRefusalsSaid)
        log_.warn("{}: {} refused: {}; procctl keeps pid {} as its main process", member.name(), said, why, member.unit.pid());
}

// MAINPID=N, or MAINPIDFD=1 with the pidfd: a daemon that forked names its new main process,
// which procctl then watches, stops and restarts after. Only a process of the program's own
// (belongs_to), that its user could signal, and never one procctl must not signal (init,
// itself, its ancestors, a kernel thread): the program cannot point procctl at anyone else.
void Stack::take_main_pid(Member& member, const NotifyMessage& message, std::uint64_t now) {
    const std::string* by_fd = message.find("MAINPIDFD");
    const std::string* by_pid = message.find("MAINPID");
    std::string said;
    std::optional<pid_t> pid;
    if (by_fd && *by_fd == "1") {  // systemd's order: the pidfd first, then the number
        said = "MAINPIDFD=1";
        if (message.fds.size() == 1) pid = Pidfd::pid_of(message.fds[0].get());
        if (!pid && !by_pid) return refuse_main_pid(member, said, "it did not come with exactly one fd, a pidfd of a live process");
    }
    if (!pid && by_pid) {
        said = "MAINPID=" + shown_status(by_pid->substr(0, 16));
        if (const auto value = number(*by_pid); value && *value > 0 && *value < 1u << 30) pid = static_cast<pid_t>(*value);
        if (!pid) return refuse_main_pid(member, said, "not a pid");
    }
    if (!pid) return;
    if (!member.unit.running() || member.launching) return refuse_main_pid(member, said, "the program has no main process now");
    if (member.unit.phase() != Phase::starting && member.unit.phase() != Phase::ready)
        return refuse_main_pid(member, said, "the program is being stopped");
    if (*pid == member.unit.pid()) return;
    for (const auto& other : members_)  // a child procctl started for something else: its pid is procctl's to reap
        if (*pid == other->probe_pid || (other->launching && *pid == other->launching->child.pid()) ||
            (other.get() != &member && *pid == other->unit.pid()) || (other->former_main && *pid == other->former_main->pid()))
            return refuse_main_pid(member, said, "that process is one procctl started for another purpose");
    Refusal refusal{};
    auto pinned = Pidfd::pin(*pid, &refusal);
    if (!pinned) return refuse_main_pid(member, said, std::string("that process is ") + to_string(refusal));
    if (!belongs_to(member, *pid))
        return refuse_main_pid(member, said, member.cgroup ? "that process is not in the program's cgroup"
                                                           : "that process does not descend from the program's main process");
    const uid_t runner = member.uid.value_or(::geteuid());
    const auto uids = read_uids(*pid);
    if (!uids || !user_may_signal(runner, *uids))
        return refuse_main_pid(member, said, "the program's user (uid " + std::to_string(runner) + ") could not signal that process");
    // All of the above was read of the pinned process only if it still runs now; a pidfd
    // handed over must name it too (both alive at once with one pid: the same process).
    if (pinned->pidfd.has_exited()) return refuse_main_pid(member, said, "that process exited meanwhile");
    if (said == "MAINPIDFD=1") {
        const int copy = ::fcntl(message.fds[0].get(), F_DUPFD_CLOEXEC, 0);
        if (copy < 0 || Pidfd::adopt(copy, *pid).has_exited()) return refuse_main_pid(member, said, "the pidfd's process exited meanwhile");
    }
    if (!member.main_handed_over && member.pidfd && !member.former_main) member.former_main = std::move(member.pidfd);
    member.pidfd.emplace(std::move(pinned->pidfd));
    member.identity = pinned->identity;
    member.main_handed_over = true;
    UnitEvent handed{UnitEvent::Kind::main_pid};
    handed.pid = *pid;
    handed.what = "it said " + said;
    apply(member, handed, now);
}

bool Stack::notify_paused(Member& member) {
    const bool paused = member.closer.backlog() > kCloserBacklog;
    if (paused && !member.said_closer_backlog)
        log_.warn("{}: {} fds it sent on its notify socket wait to be closed (a close that blocks: a file on FUSE or NFS, a tty): "
                  "its notify socket is not read until they are",
                  member.name(), member.closer.backlog());
    member.said_closer_backlog = paused;
    return paused;
}

void Stack::read_notifications(Member& member) {
    for (int i = 0; i < kMessagesPerTurn && member.notify && !notify_paused(member); ++i) {
        bool taken = false;
        auto message = member.notify->receive(member.notify_drops, taken, member.closer);
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
        } else if (const auto* barrier = message->find("BARRIER"); barrier && *barrier == "1") {
            // As systemd: a barrier and nothing else, its one fd closed once every message
            // before it is taken. Other fields, or another count of fds, are ignored (the fds
            // closed), and said once: a READY=1 sent with a barrier would otherwise vanish.
            if ((message->fds.size() != 1 || message->fields.size() > 1) && !member.said_bad_barrier) {
                member.said_bad_barrier = true;
                log_.warn("{}: a BARRIER=1 from pid {} came with {} fds and {} other fields ({}): as under systemd, a barrier "
                          "carries one fd and nothing else, so the rest is ignored; send other fields in a message of their own",
                          member.name(), message->pid, message->fds.size(), message->fields.size() - 1, fields_text(*message));
            }
        } else {
            // Read after the receive: a ping sent during this drain must not get a deadline
            // counted from before it was sent.
            take_notification(member, *message, monotonic_now_ns());
        }
        member.closer.close_later(message->fds);  // a BARRIER's once all before it were taken
    }
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
            member.watchdog_look.reset();  // it pinged: whatever was judged of its silence is over
            member.watchdog_extended = member.watchdog_spared_said = false;
            if (member.watchdog_due_ns != 0) member.watchdog_due_ns = now + to_ns(member.watchdog);
        } else if (*value == "trigger" && member.unit.running() && !member.unit.is_stopping()) {
            stop_as_hung(member, kWatchdogTriggered, {{"source", "sd_notify"}, {"trigger", true}}, now);
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
    if (message.find("MAINPID") || message.find("MAINPIDFD")) take_main_pid(member, message, now);
    if (const auto* value = message.find("FDSTORE"); value && *value == "1" && !member.said_unsupported) {
        member.said_unsupported = true;
        log_.warn("{}: FDSTORE=1 is not supported: procctl closes the fds it was sent, and the program gets none back at its restart",
                  member.name());
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

// A missed watchdog, judged as checkproc judges a hang: a main process stopped (SIGSTOP), traced
// (a debugger) or frozen is spared, looked at again every watchdog interval; one runnable or in
// I/O gets a second look a window later, and if starved one more interval, once. True while
// it is spared (watchdog_due_ns moved to its next look).
bool Stack::spare_watchdog(Member& member, std::uint64_t now) {
    const auto interval = to_ns(member.watchdog);
    const ProcessLook look = look_at(member.unit.pid(), monotonic_now_ns());
    const HangVerdict verdict = member.watchdog_look ? judge_hang(*member.watchdog_look, &look) : judge_hang(look, nullptr);
    member.watchdog_look.reset();
    using Kind = HangVerdict::Kind;
    switch (verdict.kind) {
        case Kind::look_again:
            member.watchdog_look = look;
            member.watchdog_due_ns = look.at_ns + look_window_ns(interval);
            return true;
        case Kind::stopped:
        case Kind::traced:
        case Kind::frozen:
            if (!member.watchdog_spared_said)
                log_.warn("{} (pid {}) missed its watchdog, but is {}: spared, not stopped; looked at again every {}", member.name(),
                          member.unit.pid(), verdict.words, human_duration(member.watchdog));
            member.watchdog_spared_said = true;
            member.watchdog_due_ns = now + interval;
            return true;
        case Kind::starved:
            if (member.watchdog_extended) return false;  // once: then it is stopped
            member.watchdog_extended = true;
            log_.warn("{} (pid {}) missed its watchdog, late: {}; spared for one more interval ({})", member.name(), member.unit.pid(),
                      verdict.words, human_duration(member.watchdog));
            emit_for(member, EventKind::heartbeat_late, member.name() + " missed its watchdog, late: " + verdict.words,
                     {{"source", "sd_notify"}, {"verdict", "starved"}, {"verdict_words", verdict.words}});
            member.watchdog_due_ns = now + interval;
            return true;
        case Kind::hung: break;
    }
    return false;
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
        if (spare_watchdog(*member, now)) continue;
        const auto since = ms_between(member->last_ping_ns != 0 ? member->last_ping_ns : member->unit.started_ns(), now);
        stop_as_hung(*member,
                     "missed its watchdog: no WATCHDOG=1 for " + human_duration(since) + " (watchdog " + human_duration(member->watchdog) + ")",
                     {{"source", "sd_notify"},
                      {"watchdog_seconds", static_cast<double>(member->watchdog.count()) / 1000.0},
                      {"since_ping_seconds", static_cast<double>(since.count()) / 1000.0}},
                     now);
    }
}

// A hang of the stack's watchdog (a missed ping, or WATCHDOG=trigger): its diagnosis kept, its
// heartbeat_hung event said, then the unit stops it as a failure.
void Stack::stop_as_hung(Member& member, const std::string& what, nlohmann::json details, std::uint64_t now) {
    member.watchdog_due_ns = 0;
    keep_diagnosis(member, what, details);
    emit_for(member, EventKind::heartbeat_hung, member.name() + " " + what, std::move(details));
    UnitEvent hung{UnitEvent::Kind::hung};
    hung.what = what;
    apply(member, hung, now);
}

// What a hung main process was doing, kept before its stop as checkproc keeps it, at the kernel
// level only: /proc reads of at most 256 threads (0.3 ms for three, about 9 ms for thousands),
// so the loop is not held long (eu-stack, which stops the process for up to its bound, is
// checkproc's). The newest 50 it wrote are kept; it never lists or trims the directory.
void Stack::keep_diagnosis(Member& member, const std::string& why, nlohmann::json& details) {
    if (config_.diagnoses.empty() || !member.pidfd) return;
    DiagnosisOptions options;
    options.level = DiagnoseLevel::kernel;
    options.directory = config_.diagnoses;
    options.keep = 0;  // no listing of a shared directory in the loop: its own, counted here
    const Diagnosis diagnosis = write_diagnosis(options, *member.pidfd, member.name(), why);
    if (!diagnosis.path.empty()) {
        diagnoses_written_.push_back(diagnosis.path);
        for (; diagnoses_written_.size() > kDiagnosesKept; diagnoses_written_.pop_front()) ::unlink(diagnoses_written_.front().c_str());
        details["diagnosis"] = diagnosis.path;
        log_.info("{} (pid {}): what it was doing before its stop is kept in {}", member.name(), member.unit.pid(), diagnosis.path);
    } else if (!diagnosis.error.empty()) {
        log_.warn("{} (pid {}): no diagnosis kept before its stop: {}", member.name(), member.unit.pid(), diagnosis.error);
    }
}

}  // namespace hbwatch::tool
