#pragma once
// A supervisor frees the heartbeat entries that the processes it stopped left behind.

#include <string>
#include <vector>

#include "core/process.h"
#include "engine/log_sink.h"

namespace hbwatch::tool {

/// Frees the heartbeat entries of the processes in `ended` (which it empties) once they are
/// dead, and only those: a program stopped without releasing its slot leaves no stale entry.
/// The table is the one at HBWATCH_KEY in `env` (KEY=VALUE entries), else the caller's own.
void release_slots_of(std::vector<ProcessIdentity>& ended, const std::vector<std::string>& env, const LogSink& log);

}  // namespace hbwatch::tool
