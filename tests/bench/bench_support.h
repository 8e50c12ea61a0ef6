#pragma once
// What the stack benchmarks share: procctl -f -c CONFIG with its log on a pipe, and how a
// figure is printed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace hbbench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline const std::string kBin = HBWATCH_BIN_DIR;
inline const std::string kKey = "0x48424e43";  // "HBNC": a table of the benchmark's own

inline double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The CPU `pid` has used, user and system, in ms (utime + stime from /proc/PID/stat).
inline long long cpu_ms(pid_t pid) {  // utime + stime, from /proc/PID/stat
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream rest(text.substr(text.rfind(')') + 2));
    std::string field;
    long long ticks = 0;
    for (int i = 3; i <= 15; ++i) {
        rest >> field;
        if (i >= 14) ticks += std::stoll(field);
    }
    return ticks * 1000 / ::sysconf(_SC_CLK_TCK);
}

inline long status_kib(pid_t pid, const std::string& field) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
    return 0;
}

// procctl -f -c CONFIG, its log on a pipe.
struct Stack {
    pid_t pid = 0;
    int log = -1;
    std::string text;

    explicit Stack(const fs::path& config) {
        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0) std::exit(1);
        pid = ::fork();
        if (pid == 0) {
            ::dup2(out[1], 2);
            const int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, 1);
            ::setenv("HBWATCH_KEY", kKey.c_str(), 1);
            const std::string procctl = kBin + "/procctl";
            ::execl(procctl.c_str(), procctl.c_str(), "-f", "-c", config.c_str(), nullptr);
            ::_exit(127);
        }
        ::close(out[1]);
        log = out[0];
    }
    // Reads the log until `needle` shows; false after 60 s.
    bool await(const std::string& needle) {
        const auto deadline = Clock::now() + std::chrono::seconds(60);
        char buffer[65536];
        while (text.find(needle) == std::string::npos) {
            pollfd p{log, POLLIN, 0};
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) != 1) return false;
            const ssize_t n = ::read(log, buffer, sizeof buffer);
            if (n <= 0) return false;
            text.append(buffer, static_cast<std::size_t>(n));
        }
        return true;
    }
    // Reads and drops what procctl has logged so far: a log pipe nobody reads fills, and then
    // procctl waits on it.
    void drain() {
        char buffer[65536];
        pollfd p{log, POLLIN, 0};
        while (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) && ::read(log, buffer, sizeof buffer) > 0) {
        }
        text.clear();
    }
    // SIGTERM, then the time until procctl has stopped everything and exited, in ms.
    double stop() {
        const auto start = Clock::now();
        ::kill(pid, SIGTERM);
        // Waits on its pidfd, reading its log meanwhile (a full log pipe would hold procctl).
        const int exited = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        pollfd fds[2] = {{exited, POLLIN, 0}, {log, POLLIN, 0}};
        char buffer[65536];
        while (::poll(fds, 2, -1) >= 0 && !(fds[0].revents & POLLIN))
            if ((fds[1].revents & (POLLIN | POLLHUP)) && ::read(log, buffer, sizeof buffer) <= 0) fds[1].fd = -1;
        ::close(exited);
        int status;
        ::waitpid(pid, &status, 0);
        const double took = ms_since(start);
        ::close(log);
        return took;
    }
};

inline void report(const char* what, std::vector<double> samples) {
    if (samples.empty()) return;
    std::sort(samples.begin(), samples.end());
    std::printf("%-58s median %7.1f ms   min %7.1f   worst %7.1f   (n=%zu)\n", what, samples[samples.size() / 2],
                samples.front(), samples.back(), samples.size());
}

}  // namespace hbbench
