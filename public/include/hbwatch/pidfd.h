#pragma once
// Signalling one exact process. A pidfd names a process, not a pid: once opened and checked
// against the registered start time, no signal sent through it can reach a later holder of
// the same pid.

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>

#include <hbwatch/process.h>

namespace hbwatch {

/// Why this process must never signal `pid`, or empty when it may: pid 0, 1 or negative,
/// this process itself, or one of its ancestors.
[[nodiscard]] std::string protected_reason(pid_t pid);

/// An open pidfd for a process whose identity was verified after opening. Move-only; CLOEXEC.
class Pidfd {
public:
    /// Opens a pidfd for `who` and checks, after opening, that the pid still carries who's
    /// start time and has not exited. nullopt otherwise, with the reason in `why`
    /// ("gone", "pid reused by another process", "zombie", "protected: ...").
    static std::optional<Pidfd> open(const ProcessIdentity& who, std::string* why = nullptr);

    Pidfd(Pidfd&& other) noexcept;
    Pidfd& operator=(Pidfd&& other) noexcept;
    Pidfd(const Pidfd&) = delete;
    Pidfd& operator=(const Pidfd&) = delete;
    ~Pidfd();

    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    /// Sends `sig`. True when it was sent or the process had already exited (ESRCH means done);
    /// false with errno's text in `error` otherwise (EPERM: not ours to signal).
    bool send(int sig, std::string* error = nullptr) const;
    /// Whether the process has exited (it may be a zombie awaiting its parent).
    [[nodiscard]] bool has_exited() const;
    /// Waits for the exit, at most `timeout`; true when it exited.
    bool wait_exit(std::chrono::milliseconds timeout) const;

private:
    Pidfd(int fd, pid_t pid) noexcept : fd_(fd), pid_(pid) {}
    int fd_ = -1;
    pid_t pid_ = 0;
};

}  // namespace hbwatch
