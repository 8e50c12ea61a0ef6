#include <hbwatch/pidfd.h>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace hbwatch {
namespace {

// Raw syscalls: glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++ callers.
int pidfd_open_raw(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int pidfd_send_signal_raw(int fd, int sig) { return static_cast<int>(::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0)); }

}  // namespace

std::string protected_reason(pid_t pid) {
    if (pid <= 0) return "pid " + std::to_string(pid) + " is not a single process";
    if (pid == 1) return "pid 1 is init";
    if (pid == ::getpid()) return "pid " + std::to_string(pid) + " is this process";
    for (pid_t ancestor = ::getppid(); ancestor > 1;) {
        if (ancestor == pid) return "pid " + std::to_string(pid) + " is an ancestor of this process";
        auto stat = read_proc_stat(ancestor);
        if (!stat) break;
        ancestor = stat->ppid;
    }
    return {};
}

std::optional<Pidfd> Pidfd::open(const ProcessIdentity& who, std::string* why) {
    auto fail = [&](std::string reason) -> std::optional<Pidfd> {
        if (why) *why = std::move(reason);
        return std::nullopt;
    };
    if (auto reason = protected_reason(who.pid); !reason.empty()) return fail("protected: " + reason);
    const int fd = pidfd_open_raw(who.pid);
    if (fd < 0) return fail(errno == ESRCH ? "gone" : std::string("pidfd_open failed: ") + std::strerror(errno));
    Pidfd pidfd(fd, who.pid);  // closes on every return below
    // Checked after opening: if the pid still has the registered start time now, the pidfd
    // (opened earlier) cannot refer to an older or newer holder of the pid.
    switch (liveness(who)) {
        case Liveness::alive: break;
        case Liveness::gone: return fail("gone");
        case Liveness::reused: return fail("pid reused by another process");
        case Liveness::zombie: return fail("zombie");
    }
    if (pidfd.has_exited()) return fail("gone");
    return pidfd;
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

bool Pidfd::send(int sig, std::string* error) const {
    if (pidfd_send_signal_raw(fd_, sig) == 0 || errno == ESRCH) return true;
    if (error) *error = std::strerror(errno);
    return false;
}

bool Pidfd::has_exited() const { return wait_exit(std::chrono::milliseconds(0)); }

bool Pidfd::wait_exit(std::chrono::milliseconds timeout) const {
    pollfd p{fd_, POLLIN, 0};
    int n;
    do {
        n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (n < 0 && errno == EINTR);
    return n == 1;
}

}  // namespace hbwatch
