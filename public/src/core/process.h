#pragma once
// Who a process is, read from /proc. A pid alone is not an identity: pids are reused. Where the
// kernel has pidfs (Linux 6.9+), the inode of a pidfd names one process for the whole boot;
// elsewhere hbwatch pairs the pid with the start time (field 22 of /proc/PID/stat, in clock
// ticks since boot), which leaves a pid reused within the same 10 ms tick indistinguishable.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hbwatch {

struct ProcessIdentity {
    pid_t pid = 0;
    std::uint64_t start_time = 0;   // clock ticks since boot
    std::uint64_t pidfs_inode = 0;  // 0 when unknown (no pidfs on this kernel)
    friend bool operator==(const ProcessIdentity&, const ProcessIdentity&) = default;
};

/// Whether `observed` is the process that `recorded` names: same pid and start time, and the
/// same pidfs inode when both carry one (which also tells apart two holders of one tick).
[[nodiscard]] bool same_process(const ProcessIdentity& recorded, const ProcessIdentity& observed) noexcept;

/// The fields of /proc/PID/stat that hbwatch uses.
struct ProcStat {
    pid_t pid = 0;
    std::string comm;        // the name in parentheses, which may itself hold spaces or ')'
    char state = '?';        // R, S, D, Z, T, t, X, I ...
    pid_t ppid = 0;
    pid_t pgrp = 0;
    pid_t session = 0;
    std::uint32_t flags = 0;  // PF_* (field 9)
    std::uint64_t utime_ticks = 0;
    std::uint64_t stime_ticks = 0;
    std::uint64_t start_time = 0;   // clock ticks since boot
    std::uint64_t rss_pages = 0;
    std::uint64_t start_stack = 0;  // field 28: set anew by every exec; 0 unless we may ptrace-read it
    std::uint64_t blkio_ticks = 0;  // field 42: clock ticks waited for block I/O (0 unless delay accounting is on)
};

/// Reads /proc/PID/stat; nullopt when there is no such process (or it cannot be parsed).
[[nodiscard]] std::optional<ProcStat> read_proc_stat(pid_t pid);
/// The same for one thread: /proc/PID/task/TID/stat (its `pid` is the tid).
[[nodiscard]] std::optional<ProcStat> read_task_stat(pid_t pid, pid_t tid);

/// Whether the task is a kernel thread (PF_KTHREAD): never a service, never signalled.
[[nodiscard]] bool is_kernel_thread(const ProcStat& stat) noexcept;

/// The real, effective and saved uids of a process (from /proc/PID/status).
struct ProcessUids {
    uid_t real = 0, effective = 0, saved = 0;
};
[[nodiscard]] std::optional<ProcessUids> read_uids(pid_t pid);

/// Whether a process running as `user` (real = effective = user) could send a signal to a
/// process with `target` uids, by kill(2)'s rule: root, or the target's real or saved uid.
[[nodiscard]] bool user_may_signal(uid_t user, const ProcessUids& target) noexcept;

/// The identity of the process that holds `pid` now; nullopt when none does. Without a pidfd
/// the pidfs inode is left 0.
[[nodiscard]] std::optional<ProcessIdentity> identity_of(pid_t pid);

/// The identity of the calling process, pidfs inode included. Throws hbwatch::Error when
/// /proc is not mounted.
[[nodiscard]] ProcessIdentity self_identity();

enum class Liveness {
    alive,   // the pid runs, with the recorded start time
    gone,    // no process holds the pid
    reused,  // the pid belongs to another process now (its start time differs)
    zombie,  // the process has exited and waits for its parent to reap it
};

/// Whether the process `who` still exists. Only `alive` means a signal could reach it. Every
/// other answer rests on proof, because a slot is freed on it: `gone` only when no process
/// holds the pid (a /proc entry hidden by hidepid is not proof), `zombie` only when every
/// thread has exited (a main thread that called pthread_exit shows Z while the others run).
[[nodiscard]] Liveness liveness(const ProcessIdentity& who);
/// The same, judged from a /proc/PID/stat the caller has already read (nullopt: none).
[[nodiscard]] Liveness liveness(const ProcessIdentity& who, const std::optional<ProcStat>& stat);

/// Whether the process has exited: a zombie awaiting its parent, or dead. From stat alone,
/// which cannot tell a zombie main thread whose other threads run: see liveness().
[[nodiscard]] bool has_exited(const ProcStat& stat) noexcept;

/// Whether some process holds `pid` and has not exited (whatever its start time).
[[nodiscard]] bool is_running(pid_t pid);

[[nodiscard]] const char* to_string(Liveness liveness) noexcept;

/// The children of `pid` (from /proc/PID/task/*/children); empty when it has none or is gone.
[[nodiscard]] std::vector<pid_t> children_of(pid_t pid);

/// Reads a small /proc file whole; nullopt when it cannot be opened.
[[nodiscard]] std::optional<std::string> read_proc_file(const std::string& path);

/// The whole decimal numbers that `text` begins with, separated by blanks or newlines, up to
/// the first word that is not one (as /proc's lists and columns are written).
[[nodiscard]] std::vector<std::uint64_t> whole_numbers(std::string_view text);

/// The lines of `text`, without their newlines (a last line without one included).
[[nodiscard]] std::vector<std::string_view> lines_of(std::string_view text);

/// The first `count` blank-separated words of `line`, then the rest of it after its leading
/// blanks, if any, as one more (as /proc/PID/maps writes a path that may hold blanks).
[[nodiscard]] std::vector<std::string_view> leading_words(std::string_view line, std::size_t count);

}  // namespace hbwatch
