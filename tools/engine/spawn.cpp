#include "engine/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "engine/cgroup.h"

namespace hbwatch::tool {
namespace {

// Whether clone3 can place a child in a cgroup here (Linux 5.7+): learnt at the first try.
bool clone_into_cgroup = true;

// fork(), straight into `cgroup` when there is one and the kernel may be trusted with it (see
// Cgroup::clone_safe): no migration afterwards, which costs milliseconds. The child only makes system calls before exec, so bypassing glibc's fork
// handlers is safe. `joined` says whether the child is in its cgroup already.
pid_t fork_into(const Cgroup* cgroup, bool& joined, int* pidfd) {
    joined = false;
    // Exit signal 0: a "clone child" that waitpid(-1) does not report (only __WALL waits do),
    // so that a supervision loop reaping every child leaves it to its own waiter; its pidfd
    // comes with it (x86-64 argument order: flags, stack, parent_tid, child_tid, tls).
    if (cgroup != nullptr && clone_into_cgroup && cgroup->clone_safe()) {
        clone_args args{};
        args.flags = CLONE_INTO_CGROUP | (pidfd != nullptr ? CLONE_PIDFD : 0);
        args.exit_signal = pidfd != nullptr ? 0 : SIGCHLD;
        args.pidfd = reinterpret_cast<std::uint64_t>(pidfd);
        args.cgroup = static_cast<std::uint64_t>(cgroup->dir_fd());
        const long pid = ::syscall(SYS_clone3, &args, sizeof args);
        if (pid >= 0) {
            joined = true;
            return static_cast<pid_t>(pid);
        }
        if (errno != ENOSYS && errno != E2BIG && errno != EINVAL) return -1;
        clone_into_cgroup = false;  // an older kernel: fork, and the child joins by itself
    }
    if (pidfd != nullptr) return static_cast<pid_t>(::syscall(SYS_clone, static_cast<unsigned long>(CLONE_PIDFD), nullptr, pidfd, nullptr, 0UL));
    return ::fork();
}

// execvpe would look a bare name up on the calling process's PATH, procctl's own: the
// program's is in its environment. The lookup itself, with nothing that allocates. Returns
// only on failure, with errno as execvpe's would be.
void exec_on_path(const SpawnPlan& plan) {
    const char* name = plan.argv[0];
    if (std::strchr(name, '/') != nullptr) {
        ::execve(name, plan.argv, plan.envp);
        return;
    }
    const char* search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char* const* entry = plan.envp; *entry != nullptr; ++entry)
        if (std::strncmp(*entry, "PATH=", 5) == 0) search = *entry + 5;
    const std::size_t name_length = std::strlen(name);
    char candidate[4096];
    bool denied = false;
    for (const char* dir = search;;) {
        const char* end = ::strchrnul(dir, ':');
        const auto dir_length = static_cast<std::size_t>(end - dir);
        if (dir_length + name_length + 2 <= sizeof candidate) {
            std::size_t at = 0;
            if (dir_length > 0) {  // an empty entry is the current directory
                std::memcpy(candidate, dir, dir_length);
                candidate[dir_length] = '/';
                at = dir_length + 1;
            }
            std::memcpy(candidate + at, name, name_length + 1);
            ::execve(candidate, plan.argv, plan.envp);
            if (errno == EACCES) denied = true;
            else if (errno != ENOENT && errno != ENOTDIR) return;  // found, but it cannot run: say why
        }
        if (*end == '\0') break;
        dir = end + 1;
    }
    errno = denied ? EACCES : ENOENT;
}

[[noreturn]] void become(const SpawnPlan& plan, bool joined, pid_t parent, int report) {
    auto fail = [&](SpawnFailure::Stage stage) {
        const SpawnFailure failure{stage, errno};
        (void)!::write(report, &failure, sizeof failure);
        ::_exit(127);
    };
    if (plan.cgroup != nullptr && !joined && ::write(plan.cgroup->procs_fd(), "0", 1) != 1) fail(SpawnFailure::Stage::cgroup);
    ::setsid();  // its own session and process group, no controlling terminal
    // The caller reset every other disposition once (exec resets handlers, not SIG_IGN): only
    // procctl's own ignored SIGPIPE is left to undo.
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null_in = ::open("/dev/null", O_RDONLY);
    const int null_out = ::open("/dev/null", O_WRONLY);
    if (null_in < 0 || null_out < 0 || ::dup2(null_in, 0) < 0) fail(SpawnFailure::Stage::stdio);
    const bool quiet = !plan.keep_stdio;
    if (plan.stdout_fd >= 0 ? ::dup2(plan.stdout_fd, 1) < 0 : (quiet && ::dup2(null_out, 1) < 0)) fail(SpawnFailure::Stage::stdio);
    if (plan.stderr_fd >= 0 ? ::dup2(plan.stderr_fd, 2) < 0 : (quiet && ::dup2(null_out, 2) < 0)) fail(SpawnFailure::Stage::stdio);
    // Nothing else crosses exec: not procctl's descriptors, nor any its caller leaked.
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    if (plan.directory != nullptr && !plan.directory->empty() && ::chdir(plan.directory->c_str()) != 0)
        fail(SpawnFailure::Stage::chdir);
    if (plan.uid) {
        // The system calls themselves, not glibc's setgroups/setgid/setuid: after a raw clone
        // glibc still lists procctl's other threads, and its setxid would wait for ever for
        // them to change their credentials too. The child has one thread; the kernel's calls
        // change just that thread's, which is all of it.
        const std::size_t count = plan.groups != nullptr ? plan.groups->size() : 0;
        const uid_t uid = *plan.uid;
#ifdef SYS_setresuid32  // i386 and arm32: the plain ones take 16-bit ids
        constexpr long kSetGroups = SYS_setgroups32, kSetResGid = SYS_setresgid32, kSetResUid = SYS_setresuid32;
#else
        constexpr long kSetGroups = SYS_setgroups, kSetResGid = SYS_setresgid, kSetResUid = SYS_setresuid;
#endif
        if (::syscall(kSetGroups, count, count ? plan.groups->data() : nullptr) != 0 ||
            ::syscall(kSetResGid, plan.gid, plan.gid, plan.gid) != 0 || ::syscall(kSetResUid, uid, uid, uid) != 0)
            fail(SpawnFailure::Stage::user);
    }
    if (plan.own_pid != nullptr) {  // digits by hand: nothing that may allocate after a fork
        char digits[kPidDigits];
        std::size_t count = 0;
        for (auto pid = static_cast<unsigned long>(::getpid()); pid > 0 && count < kPidDigits; pid /= 10) digits[count++] = static_cast<char>('0' + pid % 10);
        for (std::size_t i = 0; i < count; ++i) plan.own_pid[i] = digits[count - 1 - i];
        plan.own_pid[count] = '\0';
    }
    // If procctl dies, even by SIGKILL, the program goes with it (the cgroup keeps the rest).
    // After setuid, which clears it; then a parent that died before it was set is caught.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    exec_on_path(plan);
    fail(SpawnFailure::Stage::exec);
    ::_exit(127);
}

}  // namespace

void default_signal_dispositions() {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig)
        if (sig != SIGKILL && sig != SIGSTOP && sig != SIGPIPE) ::sigaction(sig, &dfl, nullptr);
}

const char* SpawnFailure::what() const noexcept {
    switch (stage) {
        case Stage::chdir: return "chdir to its directory";
        case Stage::stdio: return "set up its stdio";
        case Stage::cgroup: return "join its cgroup";
        case Stage::user: return "take its user";
        case Stage::fork: return "fork";
        case Stage::exec: break;
    }
    return "exec";
}

StartedChild::~StartedChild() {
    if (report_fd_ >= 0) ::close(report_fd_);
}

std::optional<SpawnFailure> StartedChild::outcome() {
    SpawnFailure reported{};
    ssize_t n;
    do {
        n = ::read(report_fd_, &reported, sizeof reported);  // EOF: exec succeeded
    } while (n < 0 && errno == EINTR);
    ::close(std::exchange(report_fd_, -1));
    if (n != sizeof reported) return std::nullopt;
    return reported;
}

namespace {
// The fork, with the child's end of its report pipe closed in the parent: the read end, or -1.
int fork_child(const SpawnPlan& plan, pid_t& pid, std::optional<SpawnFailure>& failure) {
    failure.reset();
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) {
        failure = SpawnFailure{SpawnFailure::Stage::fork, errno};
        return -1;
    }
    const pid_t parent = ::getpid();
    bool joined = false;
    pid = fork_into(plan.cgroup, joined, plan.pidfd);
    if (pid == 0) become(plan, joined, parent, report[1]);
    const int fork_error = errno;
    ::close(report[1]);
    if (pid < 0) {
        ::close(report[0]);
        failure = SpawnFailure{SpawnFailure::Stage::fork, fork_error};
        return -1;
    }
    return report[0];
}
}  // namespace

std::optional<StartedChild> start_child(const SpawnPlan& plan, std::optional<SpawnFailure>& failure) {
    pid_t pid = -1;
    const int report = fork_child(plan, pid, failure);
    if (report < 0) return std::nullopt;
    return StartedChild(pid, report);
}

pid_t spawn(const SpawnPlan& plan, std::optional<SpawnFailure>& failure) {
    pid_t pid = -1;
    const int report = fork_child(plan, pid, failure);
    if (report < 0) return -1;
    failure = StartedChild(pid, report).outcome();
    if (!failure) return pid;
    int status;
    ::waitpid(pid, &status, __WALL);
    if (plan.pidfd != nullptr) {
        ::close(*plan.pidfd);
        *plan.pidfd = -1;
    }
    return -1;
}

std::string describe_exit(int status) {
    if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return std::string("was killed by SIG") + sigabbrev_np(WTERMSIG(status)) + (WCOREDUMP(status) ? " (core dumped)" : "");
    return "stopped with status " + std::to_string(status);
}

}  // namespace hbwatch::tool
