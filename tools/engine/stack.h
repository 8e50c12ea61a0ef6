#pragma once
// procctl --config: every program of a stack supervised in one loop. Programs start in the
// order of their `after` lists, each once the programs it names are ready (started, its first
// heartbeat, a TCP port that accepts, or a command that succeeds); each restarts by its own
// policy; SIGTERM or SIGINT stops them in reverse order, each with its own signal and grace.

#include <functional>

#include <spdlog/spdlog.h>

#include "engine/stack_config.h"

namespace hbwatch::tool {

/// Runs the stack until SIGTERM or SIGINT arrives on `signal_fd` (a signalfd for SIGTERM,
/// SIGINT, SIGHUP and SIGCHLD, blocked), then stops every program and returns 0. SIGHUP, like
/// POST /v1/reload, reads config.path again and applies what changed. Opens the
/// programs' output files first (throwing hbwatch::Error when one cannot be opened), then
/// calls `ready`. Never throws once `ready` has been called.
int run_stack(StackConfig config, spdlog::logger& log, int signal_fd, const std::function<void()>& ready = {});

}  // namespace hbwatch::tool
