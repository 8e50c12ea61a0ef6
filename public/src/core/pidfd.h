#pragma once
// Signalling one exact process. A pidfd names a process, not a pid: whatever is read from
// /proc/PID after the pidfd was opened, and before the pidfd is seen still alive, describes
// that very process, so a check made that way cannot be fooled by a reused pid. Every signal
// hbwatch sends goes through a pidfd verified so.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "core/process.h"

namespace hbwatch {

/// Why a process was not pinned or not verified. Decisions compare these, never text.
enum class Refusal {
    gone,           // no process holds the pid (ESRCH): nothing to do
    reused,         // the pid belongs to another process now
    zombie,         // it has exited; its parent has not reaped it yet
    not_a_process,  // pid 0 or negative: a group or everyone, never one process
    init,           // pid 1
    self,           // the calling process
    ancestor,       // an ancestor of the calling process
    kernel_thread,  // a kernel thread: never a service
    system_error,   // pidfd_open failed otherwise (EMFILE, EPERM, ...)
};

/// Short text for logs: "gone", "pid reused by another process", "a kernel thread", ...
[[nodiscard]] const char* to_string(Refusal refusal) noexcept;
/// Whether the refusal means the process no longer exists (gone, reused, zombie): then there
/// is nothing to signal and nothing was refused.
[[nodiscard]] bool means_exited(Refusal refusal) noexcept;
/// Whether hbwatch must never signal this process at all (pid <= 1, itself, an ancestor, a
/// kernel thread).
[[nodiscard]] bool means_protected(Refusal refusal) noexcept;

/// Why this process must never signal `pid` (not_a_process, init, self, ancestor), if so.
[[nodiscard]] std::optional<Refusal> protected_pid(pid_t pid);

struct Pinned;

/// An open pidfd. Move-only; CLOEXEC.
class Pidfd {
public:
    /// A pidfd for whatever process holds `pid` now: nothing is verified. nullopt with the
    /// errno in `error` when pidfd_open fails.
    static std::optional<Pidfd> open_pid(pid_t pid, int* error = nullptr);
    /// Takes ownership of `fd`, a pidfd of `pid` made elsewhere (clone's CLONE_PIDFD).
    static Pidfd adopt(int fd, pid_t pid) noexcept { return Pidfd(fd, pid); }
    /// The pid of the process that `fd`, a pidfd another process handed over, names (its
    /// fdinfo's Pid:); nullopt when `fd` is not a pidfd or its process has been reaped.
    [[nodiscard]] static std::optional<pid_t> pid_of(int fd);

    /// Pins the process holding `pid`: opens a pidfd, then reads /proc/PID/stat, then checks
    /// that the pidfd is still alive, so the stat belongs to the pidfd's process. Refuses
    /// protected pids, kernel threads and zombies. A caller that reads more of /proc/PID
    /// confirms it with still_running() afterwards.
    /// `for_signal` false (registering, not signalling) lets an ancestor be pinned.
    static std::optional<Pinned> pin(pid_t pid, Refusal* why = nullptr, bool for_signal = true);

    /// Pins `who.pid` and checks it is `who` (pidfs inode where both have one, else start time).
    static std::optional<Pidfd> open(const ProcessIdentity& who, Refusal* why = nullptr);

    Pidfd(Pidfd&& other) noexcept;
    Pidfd& operator=(Pidfd&& other) noexcept;
    Pidfd(const Pidfd&) = delete;
    Pidfd& operator=(const Pidfd&) = delete;
    ~Pidfd();

    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    /// The pidfs inode: unique for the boot on Linux 6.9+; 0 on older kernels.
    [[nodiscard]] std::uint64_t pidfs_inode() const noexcept;
    /// Another descriptor for the same process.
    [[nodiscard]] std::optional<Pidfd> duplicate() const;

    /// Sends `sig`. True when it was sent or the process had already exited (ESRCH means done);
    /// false with errno's text in `error` otherwise (EPERM: not ours to signal).
    bool send(int sig, std::string* error = nullptr) const;
    /// Whether the caller may signal the process (a signal 0 through the pidfd).
    [[nodiscard]] bool may_signal() const;
    /// Whether the process has exited (it may be a zombie awaiting its parent).
    [[nodiscard]] bool has_exited() const;
    /// Whether it has not: what was read of /proc/PID since opening belongs to this process.
    [[nodiscard]] bool still_running() const { return !has_exited(); }
    /// Waits for the exit, at most `timeout`; true when it exited.
    bool wait_exit(std::chrono::milliseconds timeout) const;
    /// Reaps this very process if it is the caller's child and has exited (waitid P_PIDFD, so
    /// never another that took its pid): its wait status, else nullopt (running, or not ours).
    [[nodiscard]] std::optional<int> reap_if_exited() const;

private:
    Pidfd(int fd, pid_t pid) noexcept : fd_(fd), pid_(pid) {}
    int fd_ = -1;
    pid_t pid_ = 0;
};

/// A process held by a pidfd, with its /proc/PID/stat read after the pidfd was opened.
struct Pinned {
    Pidfd pidfd;
    ProcStat stat;
    ProcessIdentity identity;  // pid, start time and pidfs inode of this very process
};

}  // namespace hbwatch
