#pragma once
// Helpers for tests on real processes and real segments: a private table key per test,
// forked children that are always reaped, and waits on events with deadlines.

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

// glibc 2.36 declares these without extern "C" (fixed in 2.37).
extern "C" {
#include <sys/pidfd.h>
}

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/checker.h"
#include "core/clock.h"
#include <hbwatch/error.h>
#include "core/table.h"

namespace hbtest {

// checkproc's diagnosis files (hang_diagnosis.h) go to a directory of the tests' own, not the
// host's /var/lib/hbwatch: one per user, in /tmp. Set once, before any tool is started.
inline const bool kDiagnosesDirectorySet = [] {
    const std::string directory = "/tmp/hbwatch-test-diagnoses-" + std::to_string(::geteuid());
    return ::setenv("HBWATCH_DIAGNOSES", directory.c_str(), 0) == 0;
}();

using namespace std::chrono_literals;

/// A key no other test uses, whose segment is removed when the test ends.
class ScratchKey {
public:
    ScratchKey() {
        static std::uint32_t counter = 0;
        for (;;) {
            key_ = static_cast<key_t>(0x48B00000u | ((static_cast<std::uint32_t>(::getpid()) << 6) & 0xFFFC0u) |
                                      (counter++ & 0x3Fu));
            if (::shmget(key_, 0, 0) < 0) break;  // nothing there yet
        }
    }
    ~ScratchKey() { remove(); }
    ScratchKey(const ScratchKey&) = delete;
    ScratchKey& operator=(const ScratchKey&) = delete;

    key_t key() const { return key_; }
    hbwatch::TableOptions options(std::uint32_t slots = hbwatch::kDefaultSlots) const {
        hbwatch::TableOptions o;
        o.key = key_;
        o.slots = slots;
        return o;
    }
    void remove() const {
        const int id = ::shmget(key_, 0, 0);
        if (id >= 0) ::shmctl(id, IPC_RMID, nullptr);
    }

private:
    key_t key_;
};

/// The message of the hbwatch::Error that `action` throws, or "no error".
inline std::string error_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const hbwatch::Error& e) {
        return e.what();
    }
    return "no error";
}

/// How many times `needle` occurs in `text`.
inline std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
    return n;
}

/// Polls `condition` until it holds or `timeout` passes. For states that have no event to
/// wait on (a slot in shared memory); processes are waited on through pidfds instead.
inline bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

/// Default dispositions and an empty mask, as a freshly exec'd program would have.
inline void reset_signals() {
    for (int sig = 1; sig < NSIG; ++sig)
        if (sig != SIGKILL && sig != SIGSTOP) ::signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

/// A fork()ed child running `body` (its return value is the exit code). Killed and reaped on
/// destruction, so a failing test leaves no process behind.
class Child {
public:
    explicit Child(const std::function<int()>& body) {
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            reset_signals();  // not doctest's crash handlers: a signal sent to the child is its death
            int code = 1;
            try {
                code = body();
            } catch (...) {
                code = 111;
            }
            ::_exit(code);
        }
        pidfd_ = ::pidfd_open(pid_, 0);
    }
    ~Child() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            wait();
        }
        if (pidfd_ >= 0) ::close(pidfd_);
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    pid_t pid() const { return pid_; }
    /// Waits until the child exits (without reaping it); false on timeout.
    bool wait_exit(std::chrono::milliseconds timeout) const {
        pollfd p{pidfd_, POLLIN, 0};
        return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
    }
    /// Reaps the child; returns the raw wait status.
    int wait() {
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {}
        reaped_ = true;
        status_ = status;
        return status;
    }
    int status() const { return status_; }

private:
    pid_t pid_ = -1;
    int pidfd_ = -1;
    bool reaped_ = false;
    int status_ = 0;
};

/// A pipe whose ends are closed on destruction; used as a start barrier and a report channel.
struct Pipe {
    int fds[2] = {-1, -1};
    Pipe() {
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    }
    ~Pipe() {
        close_read();
        close_write();
    }
    void close_read() {
        if (fds[0] >= 0) ::close(fds[0]);
        fds[0] = -1;
    }
    void close_write() {
        if (fds[1] >= 0) ::close(fds[1]);
        fds[1] = -1;
    }
    int read_end() const { return fds[0]; }
    int write_end() const { return fds[1]; }
    /// One byte to the reader (from a forked child, say).
    void signal() const {
        char byte = 1;
        (void)!::write(fds[1], &byte, 1);
    }
    /// Waits for signal(); false on timeout.
    bool wait(std::chrono::milliseconds timeout) const {
        pollfd p{fds[0], POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
        char byte = 0;
        return ::read(fds[0], &byte, 1) == 1;
    }
};

/// A program run by fork+exec, stdout and stderr captured into one pipe. Killed and reaped on
/// destruction.
class Process {
public:
    explicit Process(std::vector<std::string> argv, const std::function<void()>& in_child = {}) {
        Pipe output;
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            reset_signals();
            ::dup2(output.write_end(), 1);
            ::dup2(output.write_end(), 2);
            if (in_child) in_child();
            std::vector<char*> args;
            for (auto& a : argv) args.push_back(a.data());
            args.push_back(nullptr);
            ::execvp(args[0], args.data());
            // Said on the output the test reads: a bare 127 hides why (a path out of reach, say).
            const std::string why = "hbtest::Process: cannot exec " + argv[0] + " as uid " + std::to_string(::geteuid()) +
                                    ": " + std::strerror(errno) + "\n";
            (void)!::write(2, why.data(), why.size());
            ::_exit(127);
        }
        output.close_write();
        output_fd_ = output.fds[0];
        output.fds[0] = -1;
        pidfd_ = ::pidfd_open(pid_, 0);
    }
    ~Process() {
        if (!reaped_) {
            ::kill(pid_, SIGKILL);
            wait();
        }
        if (pidfd_ >= 0) ::close(pidfd_);
        if (output_fd_ >= 0) ::close(output_fd_);
    }
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    pid_t pid() const { return pid_; }
    /// Waits for the exit without reaping; false on timeout.
    bool wait_exit(std::chrono::milliseconds timeout) const {
        pollfd p{pidfd_, POLLIN, 0};
        return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
    }
    bool running() const { return !wait_exit(0ms); }
    /// Reaps; the raw wait status.
    int wait() {
        if (!reaped_) {
            while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {}
            reaped_ = true;
        }
        return status_;
    }
    /// Reads output until a line containing `needle` arrives; false on timeout or EOF.
    bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (output_.find(needle) == std::string::npos) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || !read_some(left)) return false;
        }
        return true;
    }
    /// Reads output until `needle` has appeared `count` times; false on timeout or EOF.
    bool wait_for_output_count(const std::string& needle, std::size_t count, std::chrono::milliseconds timeout = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (count_of(output_, needle) < count) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || !read_some(left)) return false;
        }
        return true;
    }
    /// What has been read so far, without waiting.
    const std::string& output_so_far() const { return output_; }
    /// All output, after the process has closed its end (call after it exits).
    const std::string& output() {
        while (read_some(10s)) {}
        return output_;
    }

private:
    bool read_some(std::chrono::milliseconds timeout) {
        pollfd p{output_fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
        char buffer[4096];
        const ssize_t n = ::read(output_fd_, buffer, sizeof buffer);
        if (n <= 0) return false;
        output_.append(buffer, static_cast<std::size_t>(n));
        return true;
    }
    pid_t pid_ = -1;
    int pidfd_ = -1;
    int output_fd_ = -1;
    bool reaped_ = false;
    int status_ = 0;
    std::string output_;
};

/// Runs `body` in a child that has become uid 65534 (nobody) with group `gid`; its text.
inline std::string as_nobody(gid_t gid, const std::function<std::string()>& body) {
    Pipe out;
    Child child([&] {
        if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(65534, 65534, 65534) != 0)
            return 3;
        const std::string text = body();
        return ::write(out.write_end(), text.data(), text.size()) == static_cast<ssize_t>(text.size()) ? 0 : 4;
    });
    out.close_write();
    std::string text;
    char buffer[512];
    ssize_t n;
    while ((n = ::read(out.read_end(), buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<std::size_t>(n));
    if (!WIFEXITED(child.wait()) || WEXITSTATUS(child.status()) != 0) text += "\n[as_nobody: the child failed]";
    return text;
}

/// The mode a table is created with when none is given: 0660 when no user but this one (and
/// root) has its group, by the group's member list or as a primary group; else 0600. Read here
/// from the user database with getgrgid and getpwent, apart from the library's own reading.
inline mode_t default_table_mode() {
    const uid_t self = ::geteuid();
    const gid_t gid = ::getegid();
    bool shared = false;
    if (const group* g = ::getgrgid(gid))
        for (char** member = g->gr_mem; *member; ++member)
            if (const passwd* p = ::getpwnam(*member); p && p->pw_uid != self && p->pw_uid != 0) shared = true;
    ::setpwent();
    while (const passwd* p = ::getpwent())
        if (p->pw_gid == gid && p->pw_uid != self && p->pw_uid != 0) shared = true;
    ::endpwent();
    return shared ? 0600 : 0660;
}

/// Entries in the table at `options` (0 when there is no table), and those past their timeout now.
inline std::size_t live_entries(const hbwatch::TableOptions& options) {
    auto table = hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_only);
    std::size_t n = 0;
    if (table) table->for_each([&](const hbwatch::SlotSnapshot&) { ++n; });
    return n;
}
inline std::size_t hung_entries(const hbwatch::TableOptions& options) {
    auto table = hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_only);
    std::size_t hung = 0;
    const auto now = hbwatch::monotonic_now_ns();
    if (table) table->for_each([&](const hbwatch::SlotSnapshot& s) { hung += hbwatch::tool::health_of(s, now) == hbwatch::tool::Health::hung; });
    return hung;
}

/// Where the build put the programs (set by CMake).
inline std::string bin(const std::string& program) { return std::string(HBWATCH_BIN_DIR) + "/" + program; }

/// bin(program), where `uid` (with group `gid`) can run it. A clone under a directory that
/// user cannot search (/root is 0700 on Debian) holds the build out of its reach: the program
/// is then copied, once per test process, into a scratch directory anyone can search.
inline std::string bin_for(uid_t uid, gid_t gid, const std::string& program) {
    const std::string path = bin(program);
    Child probe([&] {
        if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0) return 3;
        return ::access(path.c_str(), X_OK) == 0 ? 0 : 1;
    });
    const int status = probe.wait();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return path;
    struct Scratch {
        std::string dir;
        Scratch() {
            char name[] = "/tmp/hbwatch-test-bin.XXXXXX";
            if (::mkdtemp(name) == nullptr || ::chmod(name, 0755) != 0)
                throw std::runtime_error("cannot make a scratch directory for programs other users run");
            dir = name;
        }
        ~Scratch() {
            std::error_code ignored;
            std::filesystem::remove_all(dir, ignored);
        }
    };
    static Scratch scratch;
    const std::string copy = scratch.dir + "/" + program;
    if (::access(copy.c_str(), X_OK) != 0) {
        std::filesystem::copy_file(path, copy, std::filesystem::copy_options::overwrite_existing);
        std::filesystem::permissions(copy, std::filesystem::perms(0755));
    }
    return copy;
}

/// A TCP port on 127.0.0.1 that nobody listens on now (the kernel picks it).
inline int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

}  // namespace hbtest
