#pragma once
// Stopping a running procctl by its run_dir (procctl --stop, which scripts/stop.sh wraps).
// Whoever can plant a pidfile must not be able to aim root's SIGTERM at another process, so
// the pid is trusted only after three checks, all made on one pidfd that is then signalled.

#include <chrono>
#include <cstdio>
#include <string>

namespace hbwatch::tool {

/// Exit codes of stop_procctl.
inline constexpr int kStopDone = 0;      // stopped, or nothing was running
inline constexpr int kStopFailed = 1;    // refused (untrusted run_dir or pidfile, not a procctl), or still running

/// Stops the procctl that holds `pidfile` locked: SIGTERM, then waits up to `wait` for it to
/// be gone. The pidfile and its directories must be as procctl itself requires (owned by root
/// or this user, not writable by others: open_safe_directory); the pid named in it must run
/// this very procctl binary and hold the pidfile's lock. An unlocked pidfile is stale: nothing
/// is signalled. Says what it did on `out`, one line each.
int stop_procctl(const std::string& pidfile, std::chrono::milliseconds wait, std::FILE* out);

}  // namespace hbwatch::tool
