// How procctl becomes a daemon that others can find and stop: detached into a session of its
// own, its pidfile written and locked before anyone can see it, released as its last act.
#include "engine/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <hbwatch/error.h>

#include "engine/safe_path.h"
#include "engine/basics.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {
namespace {

// Takes the pidfile, or throws naming the procctl that holds it. The pid is written and
// locked in a private file first, which then takes the pidfile's name (link, or rename over a
// stale one whose lock we hold): whoever sees the pidfile locked reads the right pid in it.
int lock_pidfile(const std::string& path) {
    auto fail = [&](int err, const std::string& what) -> Error {
        return Error(err, "cannot take the pidfile " + path + ": " + what + ": " + std::strerror(err));
    };
    // Every name below is within the directory checked here: nothing swapped later is followed.
    const auto dir = open_safe_directory(path);
    const char* name = dir.name.c_str();
    std::uint64_t random = 0;
    (void)!::getrandom(&random, sizeof random, 0);
    std::string temporary = dir.name;
    temporary.append(".").append(std::to_string(::getpid())).append(".").append(std::to_string(random % 1000000));
    const int fd = ::openat(dir.fd, temporary.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) throw fail(errno, "cannot create a file beside it");
    auto give_up = [&](const Error& error) -> Error {
        ::unlinkat(dir.fd, temporary.c_str(), 0);
        ::close(fd);
        return error;
    };
    const std::string text = std::to_string(::getpid()) + "\n";
    if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::flock(fd, LOCK_EX | LOCK_NB) != 0)
        throw give_up(fail(errno, "cannot write " + temporary));
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (::linkat(dir.fd, temporary.c_str(), dir.fd, name, 0) == 0) {
            ::unlinkat(dir.fd, temporary.c_str(), 0);
            return fd;
        }
        if (errno != EEXIST) throw give_up(fail(errno, "cannot create it"));
        const int existing = ::openat(dir.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (existing < 0) {
            if (errno == ENOENT) continue;  // removed meanwhile
            throw give_up(fail(errno, errno == ELOOP ? "it is a symbolic link, which procctl never follows" : "cannot open it"));
        }
        struct stat held {};
        if (::fstat(existing, &held) != 0 || !S_ISREG(held.st_mode) || held.st_uid != ::geteuid()) {
            ::close(existing);
            throw give_up(Error(EPERM, "cannot take the pidfile " + path + ": it is not a regular file owned by "
                                                    "procctl's user (uid " + std::to_string(::geteuid()) + "); remove it"));
        }
        if (::flock(existing, LOCK_EX | LOCK_NB) != 0) {
            char pid[32] = {};
            (void)!::pread(existing, pid, sizeof pid - 1, 0);
            ::close(existing);
            const long holder = std::strtol(pid, nullptr, 10);
            const std::string who = holder > 0 ? "procctl pid " + std::to_string(holder) : "another procctl";
            throw give_up(Error(EEXIST, path + " is locked by " + who +
                                                     ", which already supervises this program: stop it first (kill " +
                                                     (holder > 0 ? std::to_string(holder) : "its pid") + ")"));
        }
        // A stale pidfile, now locked by us: replace it, if the name still refers to it.
        struct stat named {};
        const bool same = ::fstatat(dir.fd, name, &named, AT_SYMLINK_NOFOLLOW) == 0 && held.st_dev == named.st_dev &&
                          held.st_ino == named.st_ino;
        const bool replaced = same && ::renameat(dir.fd, temporary.c_str(), dir.fd, name) == 0;
        ::close(existing);
        if (replaced) return fd;
    }
    throw give_up(Error(EAGAIN, "cannot take the pidfile " + path + ": it keeps changing under procctl"));
}

// Removes the pidfile if it is still ours, then lets go of the lock.
void release_pidfile(const std::string& path, int fd) {
    struct stat held {}, named {};
    if (::fstat(fd, &held) == 0 && ::lstat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
        ::unlink(path.c_str());
    else
        (void)!::ftruncate(fd, 0);
    ::close(fd);
}

// Forks into the background: a new session, no terminal, stdio on /dev/null. Returns in the
// daemon; the caller's process exits with what the daemon reports through `ready`.
int detach() {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0) throw Error(errno, "pipe failed");
    const pid_t first = ::fork();
    if (first < 0) throw Error(errno, std::string("fork failed: ") + std::strerror(errno));
    if (first > 0) {
        ::close(ready[1]);
        std::string report;
        char buffer[512];
        ssize_t n;
        while ((n = ::read(ready[0], buffer, sizeof buffer)) > 0) report.append(buffer, static_cast<std::size_t>(n));
        const bool ok = report.starts_with("ok ");
        report = terminal_safe(ok ? report.substr(3) : report.empty() ? "the background process died while starting" : report);
        std::fprintf(ok ? stdout : stderr, "procctl: %s\n", report.c_str());
        std::fflush(nullptr);  // _exit does not
        ::_exit(ok ? kExitOk : kExitFailure);
    }
    ::close(ready[0]);
    ::setsid();
    if (::fork() != 0) ::_exit(0);  // not a session leader: it can never acquire a terminal
    const int null = ::open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
    if (null > 2) ::close(null);
    return ready[1];
}

}  // namespace

int launch(const Launch& how, const std::function<int(int, const std::function<void()>&)>& body) {
    int ready = -1;
    try {
        // In the background nothing of the caller's survives: close what it left open first.
        if (!how.foreground) ::close_range(3, ~0U, 0);
        if (!how.foreground) ready = detach();
        if (how.prepare) how.prepare();
        // Taken by the process that will hold it, with its own pid.
        const int pidfile = how.pidfile.empty() ? -1 : lock_pidfile(how.pidfile);
        const int signals = signalfd_for({SIGTERM, SIGINT, SIGHUP, SIGCHLD});
        const int code = body(signals, [&] {
            if (ready < 0) return;
            const std::string report = "ok " + how.started + " in the background as pid " + std::to_string(::getpid());
            (void)!::write(ready, report.data(), report.size());
            ::close(ready);
            ready = -1;
        });
        // The very last act: every program, thread, socket and cgroup is gone by now (body
        // has returned), so whoever sees the pidfile gone, or unlocked, sees procctl done.
        if (pidfile >= 0) release_pidfile(how.pidfile, pidfile);
        return code;
    } catch (const Error& e) {
        if (ready >= 0) (void)!::write(ready, e.what(), std::strlen(e.what()));
        else std::fprintf(stderr, "procctl: %s\n", terminal_safe(e.what()).c_str());
        return kExitFailure;
    }
}

}  // namespace hbwatch::tool
