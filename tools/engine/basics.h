#pragma once
// What every hbwatch tool process does the same way, with nothing but libc: exit codes,
// signals, malloc. procctl-loop links this and not support.h (spdlog, CLI11).

#include <poll.h>

#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace hbwatch::tool {

/// Exit codes shared by the tools.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the work could not be done (table unreadable, ...)
inline constexpr int kExitUsage = 2;    // bad arguments

/// Blocks `signals` and returns a CLOEXEC signalfd that becomes readable when one arrives.
int signalfd_for(std::initializer_list<int> signals);

/// Ignores SIGPIPE: a closed pipe on stdout is an error to report, not a death.
void ignore_sigpipe();

/// One malloc arena for the whole process, called first in main, before any thread. glibc gives
/// a thread that meets contention an arena of its own, each reserving 64 MiB of address space
/// and keeping its own free memory: under a memory limit (RLIMIT_AS, a cgroup) a new arena that
/// cannot be had fails an allocation that the main arena could serve, and a long-running tool
/// with a few mostly idle threads gains nothing from more.
void one_malloc_arena();

/// poll() for a supervision loop: false, after logging it and pausing 100 ms, when poll itself
/// failed (ENOMEM, say), so that the loop retries instead of spinning or dying. `Logger` is
/// spdlog's (the stack) or LineLog (procctl-loop): both take the same checked format.
template <class Logger>
bool poll_events(std::vector<pollfd>& fds, int timeout_ms, Logger& log) {
    if (::poll(fds.data(), fds.size(), timeout_ms) >= 0 || errno == EINTR) return true;
    log.error("poll failed: {}; retrying in 100ms", std::strerror(errno));
    ::poll(nullptr, 0, 100);
    return false;
}

}  // namespace hbwatch::tool
