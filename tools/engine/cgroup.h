#pragma once
// A cgroup v2 of procctl's own for the program it supervises: whatever the program starts,
// however it daemonizes or changes credentials, stays inside, is killed at once with
// cgroup.kill, and is found again by the next procctl if this one is SIGKILLed.

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace hbwatch::tool {

class Cgroup {
public:
    /// Takes the cgroup `name` (or `name.2`, `name.3`, ... the first that no running procctl
    /// holds: each is held by a flock on its directory) in `hbwatch/` beside procctl's own
    /// cgroup in the cgroup v2 hierarchy, creating it if needed. nullopt, with the reason in `why`, when
    /// there is no cgroup v2 mount or no permission to use it.
    static std::optional<Cgroup> take(const std::string& name, std::string* why);

    Cgroup(Cgroup&& other) noexcept;
    Cgroup& operator=(Cgroup&&) = delete;
    Cgroup(const Cgroup&) = delete;
    ~Cgroup();  // removes the directory once it is empty, and hbwatch/ when no other procctl's is in it

    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    /// The directory, for clone3's CLONE_INTO_CGROUP.
    [[nodiscard]] int dir_fd() const noexcept { return dir_fd_; }
    /// cgroup.procs, open for writing: a forked child writes "0" to it to enter the cgroup.
    [[nodiscard]] int procs_fd() const noexcept { return procs_fd_; }
    /// cgroup.events: poll it for POLLPRI to learn that `populated` changed.
    [[nodiscard]] int events_fd() const noexcept { return events_fd_; }
    /// Whether any process is in the cgroup.
    [[nodiscard]] bool populated() const;
    /// The processes in it now.
    [[nodiscard]] std::vector<pid_t> pids() const;
    /// SIGKILL to every process in it (cgroup.kill, Linux 5.14+). False when unavailable.
    bool kill();
    /// Whether a child may be cloned straight into it (clone3 with CLONE_INTO_CGROUP): only
    /// into a cgroup this procctl created and never killed. Some kernels (6.18 here) SIGKILL at
    /// birth a child cloned into a cgroup that cgroup.kill ever struck: they compare the kill
    /// count of the parent's cgroup with the target's. A child that joins by cgroup.procs is
    /// not struck.
    [[nodiscard]] bool clone_safe() const noexcept { return created_ && !killed_; }

private:
    Cgroup() = default;
    std::string path_, parent_;
    bool held_ = false;  // our flock is on it
    bool created_ = false;  // this procctl made the directory
    bool killed_ = false;   // cgroup.kill was written to it
    int dir_fd_ = -1, procs_fd_ = -1, events_fd_ = -1;
};

}  // namespace hbwatch::tool
