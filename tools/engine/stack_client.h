#pragma once
// proctab's commands for a running procctl --config, through its control socket in RUN_DIR.
// Each returns proctab's exit code, or throws hbwatch::Error (ENOENT for an unknown program)
// with procctl's own words.

#include <string>
#include <vector>

namespace hbwatch::tool {

inline constexpr int kExitNotRunning = 3;  // proctab status: a program is not ready (as supervisorctl's non-zero)

/// A program or instance name, as a path segment: only the bytes a name may hold.
void check_program_name(const std::string& name);

/// proctab status [NAME...]: each program's state, pid, uptime, restarts, heartbeat and last exit.
int stack_status(const std::string& run_dir, const std::vector<std::string>& names, bool as_json);
/// proctab start|stop|restart NAME...: every name checked before anything is done.
int stack_action(const std::string& run_dir, const std::string& action, const std::vector<std::string>& names);
/// proctab signal NAME SIGNAL
int stack_signal(const std::string& run_dir, const std::string& name, const std::string& signal);
/// proctab reload: what procctl added, removed, changed and kept.
int stack_reload(const std::string& run_dir);
/// proctab tail NAME [-n N] [-f] [--stderr]
int stack_tail(const std::string& run_dir, const std::string& name, unsigned lines, bool follow, bool stderr_stream);

/// proctab events [-f] [--json]: what happened to the stack's programs, oldest first.
int stack_events(const std::string& run_dir, bool follow, bool as_json);

}  // namespace hbwatch::tool
