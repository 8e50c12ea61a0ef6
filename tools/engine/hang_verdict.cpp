#include "engine/hang_verdict.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <sstream>

#include "core/duration.h"
#include "core/process.h"

namespace hbwatch::tool {
namespace {

std::uint64_t first_number(const std::string& text, std::size_t skip_fields) {
    std::istringstream in(text);
    std::uint64_t value = 0;
    for (std::size_t i = 0; i <= skip_fields && in >> value; ++i) {
    }
    return value;
}

// The cgroup v2 of `pid` is frozen: its cgroup.events says so (the "0::" line of
// /proc/PID/cgroup, under the cgroup2 mount).
bool cgroup_frozen(pid_t pid) {
    const auto groups = read_proc_file("/proc/" + std::to_string(pid) + "/cgroup");
    if (!groups) return false;
    std::istringstream lines(*groups);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("0::", 0) != 0) continue;
        for (const char* mount : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
            const auto events = read_proc_file(std::string(mount) + line.substr(3) + "/cgroup.events");
            if (events) return events->find("frozen 1") != std::string::npos;
        }
    }
    return false;
}

std::string seconds_text(std::uint64_t ns) { return human_duration(std::chrono::milliseconds(ns / 1'000'000)); }

}  // namespace

const char* to_string(HangVerdict::Kind kind) noexcept {
    switch (kind) {
        case HangVerdict::Kind::hung: return "hung";
        case HangVerdict::Kind::stopped: return "stopped";
        case HangVerdict::Kind::traced: return "traced";
        case HangVerdict::Kind::frozen: return "frozen";
        case HangVerdict::Kind::starved: return "starved";
        case HangVerdict::Kind::look_again: return "look_again";
    }
    return "unknown";
}

ProcessLook look_at(pid_t pid, std::uint64_t now_ns) {
    ProcessLook look;
    look.at_ns = now_ns;
    const std::string base = "/proc/" + std::to_string(pid);
    static const std::uint64_t tick_ns = 1'000'000'000ull / static_cast<std::uint64_t>(std::max(1L, ::sysconf(_SC_CLK_TCK)));
    if (DIR* tasks = ::opendir((base + "/task").c_str())) {
        while (const dirent* entry = ::readdir(tasks)) {
            if (look.threads.size() >= kMaxThreadsLooked) break;
            if (entry->d_name[0] == '.') continue;
            pid_t tid = 0;
            const char* end = entry->d_name + std::char_traits<char>::length(entry->d_name);
            if (std::from_chars(entry->d_name, end, tid).ec != std::errc() || tid <= 0) continue;
            const auto stat = read_task_stat(pid, tid);
            if (!stat) continue;  // exited meanwhile
            ProcessLook::Thread thread;
            thread.tid = tid;
            thread.state = stat->state;
            thread.blkio_ns = stat->blkio_ticks * tick_ns;
            if (const auto sched = read_proc_file(base + "/task/" + entry->d_name + "/schedstat")) {
                thread.cpu_ns = first_number(*sched, 0);
                thread.run_delay_ns = first_number(*sched, 1);
            }
            look.threads.push_back(thread);
        }
        ::closedir(tasks);
    }
    if (const auto status = read_proc_file(base + "/status")) {
        if (const auto at = status->find("\nTracerPid:"); at != std::string::npos)
            look.tracer = static_cast<pid_t>(std::strtol(status->c_str() + at + 11, nullptr, 10));
    }
    if (look.tracer > 0)
        if (const auto tracer = read_proc_stat(look.tracer)) look.tracer_name = tracer->comm;
    look.frozen = cgroup_frozen(pid);
    return look;
}

std::uint64_t look_window_ns(std::uint64_t timeout_ns) noexcept {
    return std::clamp<std::uint64_t>(timeout_ns / 4, 50'000'000ull, 1'000'000'000ull);
}

HangVerdict judge_hang(const ProcessLook& first, const ProcessLook* later) {
    using Kind = HangVerdict::Kind;
    const ProcessLook& now = later != nullptr ? *later : first;
    if (now.threads.empty()) return {Kind::hung, "its threads could not be read"};
    // Held by a debugger: a thread in a ptrace stop. A traced process that runs (under strace,
    // say) is judged like any other.
    const bool traced = std::any_of(now.threads.begin(), now.threads.end(), [](const auto& t) { return t.state == 't'; });
    if (traced)
        return {Kind::traced, now.tracer > 0 ? "traced by pid " + std::to_string(now.tracer) + " (" + now.tracer_name + ")"
                                             : std::string("stopped by a debugger (state t)")};
    if (std::all_of(now.threads.begin(), now.threads.end(), [](const auto& t) { return t.state == 'T'; }))
        return {Kind::stopped, "stopped by a signal (state T: SIGSTOP, SIGTSTP, ...)"};
    if (now.frozen) return {Kind::frozen, "its cgroup is frozen (cgroup.freeze)"};
    auto waiting = [](const auto& t) { return t.state == 'R' || t.state == 'D'; };
    if (later == nullptr)
        return std::any_of(first.threads.begin(), first.threads.end(), waiting) ? HangVerdict{Kind::look_again, "runnable or in I/O"}
                                                                                 : HangVerdict{Kind::hung, "asleep, not waiting to run"};
    // The thread that waited most between the two looks: for a CPU, or for block I/O.
    const std::uint64_t span = later->at_ns > first.at_ns ? later->at_ns - first.at_ns : 0;
    std::map<pid_t, const ProcessLook::Thread*> before;
    for (const auto& t : first.threads) before[t.tid] = &t;
    std::uint64_t cpu_wait = 0, io_wait = 0;
    bool in_io_throughout = false;
    for (const auto& t : later->threads) {
        const auto it = before.find(t.tid);
        if (it == before.end()) continue;
        const auto* was = it->second;
        // The kernel adds a wait to run_delay only when it ends: a thread runnable at both looks
        // that barely ran between them has waited for a CPU all the while.
        const std::uint64_t ran = t.cpu_ns >= was->cpu_ns ? t.cpu_ns - was->cpu_ns : 0;
        const std::uint64_t queued = t.state == 'R' && was->state == 'R' && span > ran ? span - ran : 0;
        cpu_wait = std::max({cpu_wait, t.run_delay_ns >= was->run_delay_ns ? t.run_delay_ns - was->run_delay_ns : 0, queued});
        io_wait = std::max(io_wait, t.blkio_ns >= was->blkio_ns ? t.blkio_ns - was->blkio_ns : 0);
        in_io_throughout = in_io_throughout || (t.state == 'D' && was->state == 'D');
    }
    if (span > 0 && 2 * cpu_wait >= span) return {Kind::starved, "CPU-starved, " + seconds_text(cpu_wait) + " of " + seconds_text(span) + " runnable"};
    if (span > 0 && 2 * io_wait >= span) return {Kind::starved, "I/O-starved, " + seconds_text(io_wait) + " of " + seconds_text(span) + " waiting for I/O"};
    if (in_io_throughout) return {Kind::starved, "in uninterruptible I/O (state D) at both looks, " + seconds_text(span) + " apart"};
    return {Kind::hung, "not starved: " + seconds_text(cpu_wait) + " of " + seconds_text(span) + " runnable"};
}

}  // namespace hbwatch::tool
