#pragma once
// procctl's loop: run PROGRAM, wait for it, sleep INTERVAL, run it again; back off when it
// cannot start or crash-loops; on SIGTERM or SIGINT stop it and every descendant, then return.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/line_log.h"
#include "engine/supervise_options.h"

namespace hbwatch::tool {

/// Runs the loop. `signal_fd` is a signalfd for SIGTERM, SIGINT, SIGHUP and SIGCHLD (blocked).
/// Opens the output files first (throwing hbwatch::Error when one cannot be opened), then calls
/// `ready`, then supervises. Returns 0 after a requested stop, kExitGaveUp when
/// --max-restarts was reached. Never throws once `ready` has been called.
int supervise(const SuperviseOptions& options, LineLog& log, int signal_fd,
              const std::function<void()>& ready = {});

}  // namespace hbwatch::tool
