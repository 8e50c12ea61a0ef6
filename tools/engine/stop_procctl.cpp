#include "engine/stop_procctl.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>

#include <hbwatch/error.h>

#include "core/pidfd.h"
#include "core/process.h"
#include "engine/safe_path.h"

namespace hbwatch::tool {
namespace {

// Whether /proc/locks shows an flock write lock on (dev, inode) held by `pid`.
bool holds_flock(pid_t pid, dev_t dev, ino_t inode) {
    auto text = read_proc_file("/proc/locks");
    if (!text) return false;
    char wanted[64];
    std::snprintf(wanted, sizeof wanted, "%02x:%02x:%" PRIu64, major(dev), minor(dev), static_cast<std::uint64_t>(inode));
    std::istringstream lines(*text);
    std::string line;
    while (std::getline(lines, line)) {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; a blocked waiter's line has "->".
        std::istringstream fields(line);
        std::string number, kind, advisory, mode, holder, file;
        if (!(fields >> number >> kind)) continue;
        if (kind == "->") continue;
        if (!(fields >> advisory >> mode >> holder >> file)) continue;
        if (kind == "FLOCK" && mode == "WRITE" && holder == std::to_string(pid) && file == wanted) return true;
    }
    return false;
}

// Whether `pid` runs this very binary: the same file, or the same path replaced since (an
// upgrade), which the kernel shows as "PATH (deleted)".
bool runs_this_binary(pid_t pid, std::string* theirs) {
    const std::string exe = "/proc/" + std::to_string(pid) + "/exe";
    struct stat mine {}, other {};
    char path[4096], own[4096];
    const ssize_t n = ::readlink(exe.c_str(), path, sizeof path - 1);
    const ssize_t m = ::readlink("/proc/self/exe", own, sizeof own - 1);
    if (n <= 0 || m <= 0) return false;
    *theirs = std::string(path, static_cast<std::size_t>(n));
    const std::string self(own, static_cast<std::size_t>(m));
    if (::stat("/proc/self/exe", &mine) == 0 && ::stat(exe.c_str(), &other) == 0 && mine.st_dev == other.st_dev &&
        mine.st_ino == other.st_ino)
        return true;
    return *theirs == self + " (deleted)";
}

long elapsed_ms(std::chrono::steady_clock::time_point since) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count());
}

}  // namespace

int stop_procctl(const std::string& pidfile, std::chrono::milliseconds wait, std::FILE* out) {
    auto refuse = [&](const std::string& why) {
        std::fprintf(out, "procctl --stop: not signalled: %s\n", why.c_str());
        return kStopFailed;
    };
    int fd = -1;
    try {
        const SafeDirectory dir = open_safe_directory(pidfile);  // throws if another user could swap it
        fd = ::openat(dir.fd, dir.name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            std::fprintf(out, "procctl --stop: no procctl runs with %s (no pidfile)\n", pidfile.c_str());
            return kStopDone;
        }
        if (fd < 0) return refuse("cannot open " + pidfile + ": " + (errno == ELOOP ? "it is a symbolic link" : std::strerror(errno)));
    } catch (const Error& e) {
        return refuse(e.what());
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat file {};
    if (::fstat(fd, &file) != 0 || !S_ISREG(file.st_mode)) return refuse(pidfile + " is not a regular file");
    if (file.st_uid != 0 && file.st_uid != ::geteuid())
        return refuse(pidfile + " belongs to uid " + std::to_string(file.st_uid) + ", not to root or you");
    // procctl holds an exclusive lock while it runs: one we can share means it is stale.
    if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
        ::flock(fd, LOCK_UN);
        std::fprintf(out, "procctl --stop: no procctl runs with %s (its pidfile is not locked: stale)\n", pidfile.c_str());
        return kStopDone;
    }
    char text[32] = {};
    (void)!::pread(fd, text, sizeof text - 1, 0);
    char* end = nullptr;
    const long pid = std::strtol(text, &end, 10);
    if (pid <= 0 || pid > (1L << 22) || end == text || (*end != '\n' && *end != '\0'))
        return refuse(pidfile + " does not hold a pid");

    // Everything below is read after the pidfd was opened and confirmed by still_running():
    // it describes the process that is signalled, whatever happens to the pid meanwhile.
    Refusal why{};
    auto pinned = Pidfd::pin(static_cast<pid_t>(pid), &why);
    if (!pinned) {
        if (means_exited(why)) {
            std::fprintf(out, "procctl --stop: procctl pid %ld has already exited\n", pid);
            return kStopDone;
        }
        return refuse("pid " + std::to_string(pid) + " is " + to_string(why));
    }
    std::string theirs;
    if (!runs_this_binary(pinned->identity.pid, &theirs))
        return refuse("pid " + std::to_string(pid) + " (named by " + pidfile + ") runs " + (theirs.empty() ? "something unreadable" : theirs) +
                      ", not procctl");
    if (!holds_flock(pinned->identity.pid, file.st_dev, file.st_ino))
        return refuse("pid " + std::to_string(pid) + " does not hold the lock on " + pidfile + "; another process does");
    if (!pinned->pidfd.still_running()) {
        std::fprintf(out, "procctl --stop: procctl pid %ld has already exited\n", pid);
        return kStopDone;
    }
    const auto started = std::chrono::steady_clock::now();
    std::string error;
    if (!pinned->pidfd.send(SIGTERM, &error)) return refuse("SIGTERM to procctl pid " + std::to_string(pid) + ": " + error);
    std::fprintf(out, "procctl --stop: SIGTERM to procctl pid %ld (%s): it stops every program, in reverse order\n", pid,
                 pidfile.c_str());
    std::fflush(out);
    if (!pinned->pidfd.wait_exit(wait)) {
        std::fprintf(out, "procctl --stop: procctl pid %ld still runs after %ld ms: see its log, or proctab status\n", pid,
                     elapsed_ms(started));
        return kStopFailed;
    }
    const long exited = elapsed_ms(started);
    // Exited; its parent (init, once procctl has detached) reaps it. Wait a little for that too,
    // so that whoever looks at the process table next sees nothing.
    const auto reap_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
        auto stat = read_proc_stat(static_cast<pid_t>(pid));
        if (!stat || stat->start_time != pinned->identity.start_time) break;
        if (std::chrono::steady_clock::now() > reap_deadline) {
            std::fprintf(out, "procctl --stop: procctl pid %ld has exited, but pid %d has not reaped it yet\n", pid, stat->ppid);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::fprintf(out, "procctl --stop: stopped: procctl pid %ld exited %ld ms after SIGTERM\n", pid, exited);
    return kStopDone;
}

}  // namespace hbwatch::tool
