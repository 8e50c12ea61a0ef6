#include "engine/inspect.h"

#include "engine/hang_verdict.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <unordered_map>

#include "engine/checker.h"
#include "core/duration.h"
#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

double uptime_seconds() {
    std::ifstream in("/proc/uptime");
    double seconds = 0;
    in >> seconds;
    return seconds;
}

std::string read_link(const std::string& path) {
    char buffer[4096];
    const ssize_t n = ::readlink(path.c_str(), buffer, sizeof buffer - 1);
    std::string target = n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
    constexpr std::string_view kDeleted = " (deleted)";  // the binary was replaced since it started
    if (target.ends_with(kDeleted)) target.resize(target.size() - kDeleted.size());
    return target;
}

std::string argv0_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::string argv0;
    std::getline(in, argv0, '\0');
    return argv0;
}

std::string base_name(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// `exe` when the caller has read it already; else it is read here.
HostProcess host_process(const ProcStat& stat, std::optional<std::string> exe = std::nullopt) {
    HostProcess p;
    p.pid = stat.pid;
    p.ppid = stat.ppid;
    p.state = stat.state;
    p.comm = stat.comm;
    p.exe = exe ? std::move(*exe) : read_link("/proc/" + std::to_string(stat.pid) + "/exe");
    if (auto parent = read_proc_stat(stat.ppid)) p.parent_comm = parent->comm;
    p.usage = usage_of(stat);
    return p;
}

}  // namespace

Usage usage_of(const ProcStat& stat) {
    static const long ticks = ::sysconf(_SC_CLK_TCK);
    static const long page = ::sysconf(_SC_PAGESIZE);
    Usage usage;
    const double age = uptime_seconds() - static_cast<double>(stat.start_time) / static_cast<double>(ticks);
    usage.uptime = std::chrono::milliseconds(static_cast<std::int64_t>(std::max(age, 0.0) * 1000));
    usage.rss_bytes = stat.rss_pages * static_cast<std::uint64_t>(page);
    const double cpu = static_cast<double>(stat.utime_ticks + stat.stime_ticks) / static_cast<double>(ticks);
    usage.cpu_percent = age > 0 ? 100.0 * cpu / age : 0;
    return usage;
}

const char* to_string(EntryState state) noexcept {
    switch (state) {
        case EntryState::ok: return "ok";
        case EntryState::late: return "late";
        case EntryState::hung: return "hung";
        case EntryState::dead: return "dead";
        case EntryState::revoked: return "revoked";
    }
    return "unknown";
}

std::vector<pid_t> all_pids() {
    std::vector<pid_t> pids;
    DIR* dir = ::opendir("/proc");
    if (dir == nullptr) return pids;
    while (const dirent* entry = ::readdir(dir)) {
        char* end = nullptr;
        const long pid = std::strtol(entry->d_name, &end, 10);
        if (pid > 0 && end != nullptr && *end == '\0') pids.push_back(static_cast<pid_t>(pid));
    }
    ::closedir(dir);
    std::sort(pids.begin(), pids.end());
    return pids;
}

std::vector<Entry> inspect(const Table& table, std::uint64_t now_ns, const std::function<bool(const SlotSnapshot&)>& wanted) {
    std::vector<Entry> entries;
    // One read of /proc per process, however many entries it holds: one pass is one instant.
    struct Read {
        std::optional<ProcStat> stat;
        std::optional<Usage> usage;
    };
    std::unordered_map<pid_t, Read> reads;
    table.for_each([&](const SlotSnapshot& slot) {
        if (slot.phase == SlotPhase::claiming || (wanted && !wanted(slot))) return;
        Entry e;
        e.slot = slot;
        e.since_beat = slot.since_beat(now_ns);
        auto [found, fresh] = reads.try_emplace(slot.process.pid);
        Read& read = found->second;
        if (fresh) read.stat = read_proc_stat(slot.process.pid);  // for liveness and for usage
        const Liveness life = liveness(slot.process, read.stat);
        if (life != Liveness::alive) {
            e.state = EntryState::dead;
            e.dead_reason = to_string(life);
        } else if (slot.phase == SlotPhase::revoked) {
            if (!read.usage) read.usage = usage_of(*read.stat);
            e.usage = read.usage;
            e.state = EntryState::revoked;
        } else {
            if (!read.usage) read.usage = usage_of(*read.stat);
            e.usage = read.usage;
            switch (health_of(slot, now_ns)) {
                case Health::ok: e.state = EntryState::ok; break;
                case Health::late: e.state = EntryState::late; break;
                case Health::hung: {
                    e.state = EntryState::hung;
                    // What checkproc sees too: one it spares says why (hang_verdict.h).
                    const auto verdict = judge_hang(look_at(slot.process.pid, now_ns), nullptr);
                    using Kind = HangVerdict::Kind;
                    if (verdict.kind == Kind::stopped || verdict.kind == Kind::traced || verdict.kind == Kind::frozen) e.verdict = verdict.words;
                    break;
                }
            }
        }
        entries.push_back(std::move(e));
    });
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
        return std::pair(a.slot.name(), a.slot.process.pid) < std::pair(b.slot.name(), b.slot.process.pid);
    });
    return entries;
}

std::vector<HostProcess> find_processes(const std::string& name, const std::string& path) {
    if (name.empty()) throw Error(EINVAL, "an empty name matches nothing: give the program's name");
    constexpr std::size_t kCommBytes = 15;  // the kernel cuts command names there
    std::vector<HostProcess> found;
    const pid_t self = ::getpid();
    for (pid_t pid : all_pids()) {
        if (pid == self) continue;
        // Pinned first: what is read below, then confirmed on the pidfd, is this process's.
        Refusal refusal{};
        auto pinned = Pidfd::pin(pid, &refusal);
        if (!pinned) {
            if (refusal != Refusal::zombie) continue;  // gone, a kernel thread, or an ancestor
            auto stat = read_proc_stat(pid);
            if (!stat || is_kernel_thread(*stat) || !has_exited(*stat)) continue;
            // A zombie has no executable or argv left: its untruncated command name must do.
            if (name.size() < kCommBytes && stat->comm == name) found.push_back(host_process(*stat));
            continue;
        }
        const std::string exe = read_link("/proc/" + std::to_string(pid) + "/exe");
        const bool named = base_name(exe) == name || base_name(argv0_of(pid)) == name;
        if (!named || (!path.empty() && exe != path)) continue;
        HostProcess process = host_process(pinned->stat, exe);
        if (!pinned->pidfd.still_running()) continue;  // the reads above may be a later holder's
        process.pidfd = std::make_shared<const Pidfd>(std::move(pinned->pidfd));
        found.push_back(std::move(process));
    }
    return found;
}

std::vector<HostProcess> find_zombies() {
    std::vector<HostProcess> zombies;
    for (pid_t pid : all_pids()) {
        auto stat = read_proc_stat(pid);
        if (stat && stat->state == 'Z' && !is_kernel_thread(*stat)) zombies.push_back(host_process(*stat));
    }
    return zombies;
}

HealthReport check_health(const std::string& name, const std::string& path, std::optional<std::uint64_t> max_rss_bytes) {
    HealthReport report;
    report.processes = find_processes(name, path);
    const std::string what = "'" + name + "'" + (path.empty() ? "" : " at " + path);
    std::vector<HostProcess> running, zombies;
    for (const auto& p : report.processes) (p.state == 'Z' ? zombies : running).push_back(p);
    if (running.empty()) {
        report.issues.push_back({"no " + what + " is running",
                                 "start it, or check why it exits: under procctl, see procctl's log for its exit code"});
    }
    if (running.size() > 1) {
        std::string pids;
        for (const auto& p : running) pids += (pids.empty() ? "" : ", ") + std::to_string(p.pid);
        report.issues.push_back({std::to_string(running.size()) + " instances of " + what + " are running (pids " + pids + ")",
                                 "if only one should run, stop the extra ones by pid, and give its procctl a "
                                 "--pidfile so that a second one cannot start"});
    }
    for (const auto& z : zombies) {
        report.issues.push_back({"pid " + std::to_string(z.pid) + " of " + what + " is a zombie",
                                 "its parent, pid " + std::to_string(z.ppid) + " (" + z.parent_comm +
                                     "), does not reap it: fix or restart the parent; the zombie goes with it"});
    }
    if (max_rss_bytes) {
        for (const auto& p : running) {
            if (p.usage.rss_bytes <= *max_rss_bytes) continue;
            report.issues.push_back({"pid " + std::to_string(p.pid) + " of " + what + " uses " +
                                         human_size(p.usage.rss_bytes) + " of memory, above the " +
                                         human_size(*max_rss_bytes) + " limit",
                                     "look for a leak (heaptrack, valgrind --tool=massif), or restart it during a quiet "
                                     "moment: proctab kill " + name + " under procctl brings it back"});
        }
    }
    return report;
}

}  // namespace hbwatch::tool
