#pragma once
// procctl's loop: run PROGRAM, wait for it, sleep INTERVAL, run it again; back off when it
// cannot start or crash-loops; on SIGTERM or SIGINT stop it and every descendant, then return.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/process.h"

namespace hbwatch::tool {

struct SuperviseOptions {
    std::vector<std::string> argv;  // PROGRAM [ARGS...]; PROGRAM is a path or a name on PATH
    std::chrono::milliseconds interval{0};
    std::string chdir;                        // for the child; empty: procctl's own
    std::vector<std::string> env;             // KEY=VALUE, over procctl's environment
    std::string stdout_file, stderr_file;     // appended and rotated; empty: see inherit_output
    bool inherit_output = false;              // no file given: procctl's own stdout/stderr, else /dev/null
    std::uint64_t output_max_size = 10u << 20;  // rotate an output file at this size
    std::size_t output_files = 5;               // rotated files kept
    std::chrono::milliseconds grace{std::chrono::seconds(10)};        // SIGTERM to SIGKILL when stopping
    std::chrono::milliseconds max_backoff{std::chrono::minutes(5)};   // cap on the crash-loop backoff
    std::optional<unsigned> max_restarts;     // give up after this many starts within `window`
    std::chrono::milliseconds window{std::chrono::minutes(1)};
    std::string cgroup_name;                  // the program's cgroup (v2); empty: no cgroup
};

/// Frees the heartbeat entries of the processes in `ended` (which it empties) once they are
/// dead, and only those: a program stopped without releasing its slot leaves no stale entry.
/// The table is the one at HBWATCH_KEY in `env` (KEY=VALUE entries), else procctl's own.
void release_slots_of(std::vector<ProcessIdentity>& ended, const std::vector<std::string>& env, spdlog::logger& log);

/// Exit codes of supervise(), as procctl documents them.
inline constexpr int kExitGaveUp = 3;

/// Runs the loop. `signal_fd` is a signalfd for SIGTERM, SIGINT, SIGHUP and SIGCHLD (blocked).
/// Opens the output files first (throwing hbwatch::Error when one cannot be opened), then calls
/// `ready`, then supervises. Returns 0 after a requested stop, kExitGaveUp when
/// --max-restarts was reached. Never throws once `ready` has been called.
int supervise(const SuperviseOptions& options, spdlog::logger& log, int signal_fd,
              const std::function<void()>& ready = {});

}  // namespace hbwatch::tool
