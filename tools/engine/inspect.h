#pragma once
// What operators look at: the table's entries with their state and resources, and any process
// on the host found by name over /proc. Read-only; proctab formats it.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/pidfd.h"
#include "core/process.h"
#include "core/table.h"

namespace hbwatch::tool {

/// Resource use of a process, from /proc/PID/stat and /proc/uptime.
struct Usage {
    std::chrono::milliseconds uptime{0};
    std::uint64_t rss_bytes = 0;
    double cpu_percent = 0;  // average over the process's lifetime, as ps shows it
};
[[nodiscard]] Usage usage_of(const ProcStat& stat);

/// revoked: an operator removed the entry while its process runs; the slot is freed when
/// the process unregisters or exits.
enum class EntryState { ok, late, hung, dead, revoked };
[[nodiscard]] const char* to_string(EntryState state) noexcept;

/// One live table entry as proctab shows it.
struct Entry {
    SlotSnapshot slot;
    EntryState state = EntryState::ok;
    std::string dead_reason;  // with `dead`: gone, reused, zombie
    std::string verdict;      // with `hung`, when checkproc spares it: "stopped by a signal ...", "traced by pid N (gdb)", ...
    std::chrono::milliseconds since_beat{0};
    std::optional<Usage> usage;  // absent when dead
};

/// Every live (not free, not mid-claim) entry, judged at `now_ns`, sorted by name then pid;
/// with `wanted`, only the slots it accepts (looked at before any /proc read).
[[nodiscard]] std::vector<Entry> inspect(const Table& table, std::uint64_t now_ns,
                                         const std::function<bool(const SlotSnapshot&)>& wanted = {});

/// Every pid in /proc, ascending.
[[nodiscard]] std::vector<pid_t> all_pids();

/// A process on the host.
struct HostProcess {
    pid_t pid = 0;
    pid_t ppid = 0;
    char state = '?';
    std::string comm;  // the kernel's name (15 bytes at most)
    std::string exe;   // /proc/PID/exe, empty when unreadable (kernel threads, zombies)
    std::string parent_comm;
    Usage usage;
    /// The process that was matched, pinned before anything of it was read: signal it through
    /// this and nothing else. Null for a zombie, which no signal reaches.
    std::shared_ptr<const Pidfd> pidfd;
};

/// Processes whose program is named `name` in full: the base name of its executable
/// (/proc/PID/exe) or of its argv[0]. Never the 15-byte command name, except for a zombie
/// (which has neither) when `name` is shorter than 15 bytes. With `path`, only processes
/// running that executable (and zombies of that name, whose executable cannot be read). Never this process, never a kernel thread. Throws Error(EINVAL)
/// for an empty name.
[[nodiscard]] std::vector<HostProcess> find_processes(const std::string& name, const std::string& path = {});

/// Every zombie on the host, with its parent.
[[nodiscard]] std::vector<HostProcess> find_zombies();

/// The answer of `proctab health`: the issues found, each with what to do.
struct HealthReport {
    struct Issue {
        std::string problem;
        std::string recommendation;
    };
    std::vector<HostProcess> processes;
    std::vector<Issue> issues;
    [[nodiscard]] bool healthy() const { return issues.empty(); }
};

/// Is it running, are several instances running, are any zombies, is any above `max_rss`?
[[nodiscard]] HealthReport check_health(const std::string& name, const std::string& path,
                                        std::optional<std::uint64_t> max_rss_bytes);

}  // namespace hbwatch::tool
