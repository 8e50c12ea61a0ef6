#pragma once
// What procctl's one-program mode does, as procctl hands it to procctl-loop: procctl parses and
// checks the command line (CLI11, --help), then execs procctl-loop with these options written
// out plainly, so that the process that supervises for months maps no CLI11, spdlog, YAML or
// OpenSSL (issue 25: the footprint of one supervised program).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
    bool operator==(const SuperviseOptions&) const = default;
};

/// How the loop runs: detached or not, its pidfile and its log.
struct LoopLaunch {
    bool foreground = false;
    std::string pidfile;   // empty: none
    std::string log_file;  // empty: stderr in the foreground, syslog in the background
    bool verbose = false;
    bool operator==(const LoopLaunch&) const = default;
};

struct LoopRequest {
    SuperviseOptions options;
    LoopLaunch launch;
    bool operator==(const LoopRequest&) const = default;
};

/// Exit codes of supervise(), as procctl documents them.
inline constexpr int kExitGaveUp = 3;

/// procctl-loop's arguments (after argv[0]) for `request`: one option per setting, then "--",
/// PROGRAM and its arguments.
[[nodiscard]] std::vector<std::string> loop_arguments(const LoopRequest& request);

/// Reads what loop_arguments() wrote, checking every value again (procctl-loop may be run by
/// hand): throws hbwatch::Error(EINVAL) naming the argument that is wrong.
[[nodiscard]] LoopRequest parse_loop_arguments(int argc, char** argv);

/// Replaces this process with procctl-loop running `request`, with `original_argv` as its argv
/// (so ps, pidof and pgrep -f see the command typed) and the request in a memfd named by
/// HBWATCH_LOOP_REQUEST_FD. The binary is the one beside this program's own (a build tree),
/// else in ../libexec/hbwatch from it (an install, wherever it was moved), else where it was
/// installed (HBWATCH_LIBEXEC_DIR); each only when no other user could have placed or changed
/// it (open_trusted_file). Returns only when none could be run, saying what went wrong.
[[nodiscard]] std::string exec_procctl_loop(const LoopRequest& request, char** original_argv);

/// In procctl-loop: the request procctl handed over (exec_procctl_loop), read and closed, its
/// variable removed from the environment. Throws hbwatch::Error: not run by procctl, or by a
/// procctl of another build (the request's first word names its version), or a bad argument.
[[nodiscard]] LoopRequest receive_loop_request();

}  // namespace hbwatch::tool
