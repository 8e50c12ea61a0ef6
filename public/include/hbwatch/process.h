#pragma once
// Who a process is, read from /proc. A pid alone is not an identity: pids are reused, so hbwatch
// pairs the pid with the process start time (field 22 of /proc/PID/stat, in clock ticks since boot).

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hbwatch {

struct ProcessIdentity {
    pid_t pid = 0;
    std::uint64_t start_time = 0;  // clock ticks since boot
    friend bool operator==(const ProcessIdentity&, const ProcessIdentity&) = default;
};

/// The fields of /proc/PID/stat that hbwatch uses.
struct ProcStat {
    pid_t pid = 0;
    std::string comm;        // the name in parentheses, which may itself hold spaces or ')'
    char state = '?';        // R, S, D, Z, T, t, X, I ...
    pid_t ppid = 0;
    pid_t pgrp = 0;
    pid_t session = 0;
    std::uint64_t utime_ticks = 0;
    std::uint64_t stime_ticks = 0;
    std::uint64_t start_time = 0;  // clock ticks since boot
    std::uint64_t rss_pages = 0;
};

/// Reads /proc/PID/stat; nullopt when there is no such process (or it cannot be parsed).
[[nodiscard]] std::optional<ProcStat> read_proc_stat(pid_t pid);

/// The identity of the process that holds `pid` now; nullopt when none does.
[[nodiscard]] std::optional<ProcessIdentity> identity_of(pid_t pid);

/// The identity of the calling process. Throws hbwatch::Error when /proc is not mounted.
[[nodiscard]] ProcessIdentity self_identity();

enum class Liveness {
    alive,   // the pid runs, with the recorded start time
    gone,    // no process holds the pid
    reused,  // the pid belongs to another process now (its start time differs)
    zombie,  // the process has exited and waits for its parent to reap it
};

/// Whether the process `who` still exists. Only `alive` means a signal could reach it.
[[nodiscard]] Liveness liveness(const ProcessIdentity& who);
/// The same, judged from a /proc/PID/stat the caller has already read (nullopt: none).
[[nodiscard]] Liveness liveness(const ProcessIdentity& who, const std::optional<ProcStat>& stat) noexcept;

/// Whether the process has exited: a zombie awaiting its parent, or dead.
[[nodiscard]] bool has_exited(const ProcStat& stat) noexcept;

/// Whether some process holds `pid` and has not exited (whatever its start time).
[[nodiscard]] bool is_running(pid_t pid);

[[nodiscard]] const char* to_string(Liveness liveness) noexcept;

/// The children of `pid` (from /proc/PID/task/*/children); empty when it has none or is gone.
[[nodiscard]] std::vector<pid_t> children_of(pid_t pid);

/// Every descendant of `pid`, parents before their children.
[[nodiscard]] std::vector<pid_t> descendants_of(pid_t pid);

}  // namespace hbwatch
