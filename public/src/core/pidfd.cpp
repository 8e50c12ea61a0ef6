#include "core/pidfd.h"
#include "core/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace hbwatch {
namespace {

// Raw syscalls: glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++ callers.
int pidfd_open_raw(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int pidfd_send_signal_raw(int fd, int sig) { return static_cast<int>(::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0)); }

constexpr long kPidfsMagic = 0x50494446;  // PID_FS_MAGIC: pidfds are pidfs inodes (Linux 6.9+)
#ifndef P_PIDFD
constexpr idtype_t P_PIDFD = static_cast<idtype_t>(3);  // Linux 5.4; glibc headers may lack it
#endif

}  // namespace

const char* to_string(Refusal refusal) noexcept {
    switch (refusal) {
        case Refusal::gone: return "gone";
        case Refusal::reused: return "pid reused by another process";
        case Refusal::zombie: return "a zombie";
        case Refusal::not_a_process: return "not a single process (pid <= 0)";
        case Refusal::init: return "init (pid 1)";
        case Refusal::self: return "this process itself";
        case Refusal::ancestor: return "an ancestor of this process";
        case Refusal::kernel_thread: return "a kernel thread";
        case Refusal::system_error: return "not openable as a pidfd";
    }
    return "unknown";
}

bool means_exited(Refusal refusal) noexcept {
    return refusal == Refusal::gone || refusal == Refusal::reused || refusal == Refusal::zombie;
}

bool means_protected(Refusal refusal) noexcept {
    return refusal == Refusal::not_a_process || refusal == Refusal::init || refusal == Refusal::self ||
           refusal == Refusal::ancestor || refusal == Refusal::kernel_thread;
}

std::optional<Refusal> protected_pid(pid_t pid) {
    if (pid <= 0) return Refusal::not_a_process;
    if (pid == 1) return Refusal::init;
    if (pid == ::getpid()) return Refusal::self;
    for (pid_t ancestor = ::getppid(); ancestor > 1;) {
        if (ancestor == pid) return Refusal::ancestor;
        auto stat = read_proc_stat(ancestor);
        if (!stat) break;
        ancestor = stat->ppid;
    }
    return std::nullopt;
}

std::optional<Pidfd> Pidfd::open_pid(pid_t pid, int* error) {
    if (pid <= 0) {
        if (error) *error = EINVAL;
        return std::nullopt;
    }
    const int fd = pidfd_open_raw(pid);  // CLOEXEC always
    if (fd < 0) {
        if (error) *error = errno;
        return std::nullopt;
    }
    return Pidfd(fd, pid);
}

std::optional<Pinned> Pidfd::pin(pid_t pid, Refusal* why, bool for_signal) {
    auto fail = [&](Refusal refusal) -> std::optional<Pinned> {
        if (why) *why = refusal;
        return std::nullopt;
    };
    if (auto refusal = protected_pid(pid); refusal && (for_signal || *refusal != Refusal::ancestor)) return fail(*refusal);
    int error = 0;
    auto pidfd = open_pid(pid, &error);
    if (!pidfd) return fail(error == ESRCH ? Refusal::gone : Refusal::system_error);
    auto stat = read_proc_stat(pid);  // after opening: it describes the pidfd's process or a later one
    if (!stat) return fail(Refusal::gone);
    if (is_kernel_thread(*stat)) return fail(Refusal::kernel_thread);
    if (hbwatch::has_exited(*stat)) return fail(Refusal::zombie);
    // Still running now, so the pid has not changed hands since it was opened: the stat is its.
    if (pidfd->has_exited()) return fail(Refusal::gone);
    ProcessIdentity identity{pid, stat->start_time, pidfd->pidfs_inode()};
    return Pinned{std::move(*pidfd), std::move(*stat), identity};
}

std::optional<Pidfd> Pidfd::open(const ProcessIdentity& who, Refusal* why) {
    auto pinned = pin(who.pid, why);
    if (!pinned) return std::nullopt;
    if (!same_process(who, pinned->identity)) {
        if (why) *why = Refusal::reused;
        return std::nullopt;
    }
    return std::move(pinned->pidfd);
}

Pidfd::Pidfd(Pidfd&& other) noexcept : fd_(std::exchange(other.fd_, -1)), pid_(other.pid_) {}

Pidfd& Pidfd::operator=(Pidfd&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
        pid_ = other.pid_;
    }
    return *this;
}

Pidfd::~Pidfd() {
    if (fd_ >= 0) ::close(fd_);
}

std::uint64_t Pidfd::pidfs_inode() const noexcept {
    // Before pidfs, every pidfd is the same anonymous inode: no identity in it.
    struct statfs fs {};
    struct stat st {};
    if (::fstatfs(fd_, &fs) != 0 || fs.f_type != kPidfsMagic || ::fstat(fd_, &st) != 0) return 0;
    return static_cast<std::uint64_t>(st.st_ino);
}

std::optional<Pidfd> Pidfd::duplicate() const {
    const int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return std::nullopt;
    return Pidfd(fd, pid_);
}

bool Pidfd::send(int sig, std::string* error) const {
    if (pidfd_send_signal_raw(fd_, sig) == 0 || errno == ESRCH) return true;
    if (error) *error = std::strerror(errno);
    return false;
}

bool Pidfd::may_signal() const { return pidfd_send_signal_raw(fd_, 0) == 0 || errno == ESRCH; }

bool Pidfd::has_exited() const { return wait_exit(std::chrono::milliseconds(0)); }

bool Pidfd::wait_exit(std::chrono::milliseconds timeout) const {
    pollfd p{fd_, POLLIN, 0};
    int n;
    do {
        n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (n < 0 && errno == EINTR);
    return n == 1;
}

std::optional<int> Pidfd::reap_if_exited() const {
    siginfo_t info{};
    if (::waitid(P_PIDFD, static_cast<id_t>(fd_), &info, WEXITED | WNOHANG) != 0 || info.si_pid == 0) return std::nullopt;
    switch (info.si_code) {
        case CLD_EXITED: return (info.si_status & 0xff) << 8;
        case CLD_KILLED: return info.si_status & 0x7f;
        case CLD_DUMPED: return (info.si_status & 0x7f) | 0x80;
        default: return 0;
    }
}

std::optional<pid_t> Pidfd::pid_of(int fd) {
    // A pidfd links as "anon_inode:[pidfd]", or "pidfd:[INODE]" on pidfs; its fdinfo's Pid:
    // is -1 once its process was reaped.
    char link[64] = {};
    const std::string fd_path = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t length = ::readlink(fd_path.c_str(), link, sizeof link - 1);
    if (length <= 0 || std::strstr(link, "pidfd") == nullptr) return std::nullopt;
    const auto info = read_proc_file("/proc/self/fdinfo/" + std::to_string(fd));
    if (!info) return std::nullopt;
    const auto at = info->starts_with("Pid:") ? 0 : info->find("\nPid:");
    if (at == std::string::npos) return std::nullopt;
    // "Pid:\t-1" for a reaped process reads as no number.
    const auto numbers = whole_numbers(std::string_view(*info).substr(info->find(':', at) + 1));
    if (!numbers.empty() && numbers.front() > 0 && numbers.front() <= std::numeric_limits<pid_t>::max())
        return static_cast<pid_t>(numbers.front());
    return std::nullopt;
}

}  // namespace hbwatch
