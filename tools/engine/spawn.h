#pragma once
// Starting a program, the one way every procctl mode does it: fork (straight into the
// program's cgroup with clone3 where the kernel allows), the child's set-up in one order, exec,
// and a report of the stage that failed. The child only makes system calls.

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hbwatch::tool {

class Cgroup;

/// What the child becomes. Built before the fork: pointers into storage the caller keeps.
struct SpawnPlan {
    char* const* argv = nullptr;  // argv[0]: a path, or a name looked up on envp's PATH
    char* const* envp = nullptr;
    const std::string* directory = nullptr;  // null or empty: the parent's
    std::optional<uid_t> uid;                // set: setgroups(groups), setgid(gid), setuid(uid)
    gid_t gid = 0;
    const std::vector<gid_t>* groups = nullptr;
    const Cgroup* cgroup = nullptr;  // null: the parent's cgroup
    int stdout_fd = -1;              // -1: see keep_stdio
    int stderr_fd = -1;
    bool keep_stdio = false;  // with no fd given: the parent's own stdout/stderr, else /dev/null
    // Set: the child writes its own pid there, in decimal and NUL-terminated, before its exec
    // (room for kPidDigits + 1): an environment entry such as WATCHDOG_PID= that only the child knows.
    char* own_pid = nullptr;
    // Set: the child sends no SIGCHLD and waitpid(-1) does not see it; its pidfd is stored here,
    // and the caller waits on it (waitid P_PIDFD with __WALL). For helpers run beside a loop
    // that reaps every child.
    int* pidfd = nullptr;
};

inline constexpr std::size_t kPidDigits = 10;

/// What a child could not do before exec, as it reports it on its CLOEXEC pipe.
struct SpawnFailure {
    enum class Stage : int { exec, chdir, stdio, cgroup, user, fork };
    Stage stage;
    int error;  // errno
    /// "exec", "chdir to its directory", "clone3 into its cgroup", ...
    [[nodiscard]] const char* what() const noexcept;
};

/// Resets every signal disposition to its default, but SIGPIPE's (which the tools ignore, and
/// spawn() resets in the child): a caller's SIG_IGN would cross exec into every program.
/// Called once by a supervisor before its first spawn; its own signals come through a
/// signalfd, blocked.
void default_signal_dispositions();

/// A child forked and not yet known to have exec'd. Its report pipe becomes readable when it
/// exec'd (EOF) or failed before (a SpawnFailure, then it exits 127): a supervision loop polls
/// it, so that a child the kernel is slow to schedule never holds the loop up.
class StartedChild {
public:
    StartedChild(pid_t pid, int report_fd) noexcept : pid_(pid), report_fd_(report_fd) {}
    StartedChild(StartedChild&& other) noexcept : pid_(other.pid_), report_fd_(std::exchange(other.report_fd_, -1)) {}
    StartedChild& operator=(StartedChild&&) = delete;
    StartedChild(const StartedChild&) = delete;
    ~StartedChild();

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    /// Poll it for POLLIN.
    [[nodiscard]] int report_fd() const noexcept { return report_fd_; }
    /// Once report_fd() is readable: nothing when the child exec'd (or died before it said
    /// anything: its exit tells the rest), else what it could not do. Reads the pipe.
    [[nodiscard]] std::optional<SpawnFailure> outcome();

private:
    pid_t pid_;
    int report_fd_;
};

/// Forks `plan`'s child and returns at once: the StartedChild, or the failure to fork. The child's
/// set-up is spawn()'s. The caller reaps the child (it sends SIGCHLD).
[[nodiscard]] std::optional<StartedChild> start_child(const SpawnPlan& plan, std::optional<SpawnFailure>& failure);

/// Starts `plan` and returns once the child has exec'd (its pid), or the failure (the child,
/// if there was one, reaped). The child: in its cgroup, a session of its own, default signal
/// dispositions (SIG_IGN would cross exec) and an empty mask, stdin from /dev/null, stdout and
/// stderr as planned, no other descriptor, its directory, its user, and SIGKILL when the
/// parent dies (set last: a credential change clears it).
[[nodiscard]] pid_t spawn(const SpawnPlan& plan, std::optional<SpawnFailure>& failure);

/// "exited with code 3", "was killed by SIGSEGV (core dumped)", for a waitpid status.
[[nodiscard]] std::string describe_exit(int status);

}  // namespace hbwatch::tool
