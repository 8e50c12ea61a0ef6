// procctl's figures (run by `make bench`): the restart latency from a child's exit to the next
// start, at INTERVAL 0 and INTERVAL 1, and procctl's RSS after 1000 restarts. The child is
// tests/helpers/stamp, which prints "start <ns>" first thing and "exit <ns>" last thing.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

namespace {

const std::string kBin = HBWATCH_BIN_DIR;

struct Run {
    std::vector<double> latencies_ms;
    long rss_kib = 0;
};

// From stamp's lines: each child's exit to the next child's start, in ms.
std::vector<double> latencies_from(const std::string& text) {
    std::vector<long long> starts, ends;
    std::regex line("(start|exit) ([0-9]+)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), line); it != std::sregex_iterator(); ++it)
        ((*it)[1] == "start" ? starts : ends).push_back(std::stoll((*it)[2]));
    std::vector<double> latencies;
    for (std::size_t i = 0; i + 1 < starts.size() && i < ends.size(); ++i)
        latencies.push_back(static_cast<double>(starts[i + 1] - ends[i]) / 1e6);
    return latencies;
}

// The smallest possible supervisor, for comparison: fork, exec stamp, wait, at once again.
Run bare_loop(std::size_t restarts) {
    int out[2];
    if (::pipe(out) != 0) return {};
    const pid_t loop = ::fork();
    if (loop == 0) {
        ::close(out[0]);
        ::dup2(out[1], 1);
        const std::string stamp = kBin + "/stamp";
        for (std::size_t i = 0; i < restarts; ++i) {
            const pid_t child = ::fork();
            if (child == 0) {
                ::execl(stamp.c_str(), stamp.c_str(), nullptr);
                ::_exit(127);
            }
            int status;
            ::waitpid(child, &status, 0);
        }
        ::_exit(0);
    }
    ::close(out[1]);
    std::string text;
    char buffer[65536];
    ssize_t n;
    while ((n = ::read(out[0], buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<std::size_t>(n));
    ::close(out[0]);
    int status;
    ::waitpid(loop, &status, 0);
    Run result;
    result.latencies_ms = latencies_from(text);
    return result;
}

long rss_kib(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return 0;
}

// procctl supervising one program that sleeps: its RSS once the program runs.
long sleeping_rss_kib() {
    int out[2];
    if (::pipe(out) != 0) return 0;
    const pid_t procctl = ::fork();
    if (procctl == 0) {
        ::dup2(out[1], 2);  // procctl's log, to see "started"
        const std::string program = kBin + "/procctl";
        ::execl(program.c_str(), program.c_str(), "-f", "1", "sleep", "1000", nullptr);
        ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    char buffer[4096];
    ssize_t n;
    while (text.find("started") == std::string::npos && (n = ::read(out[0], buffer, sizeof buffer)) > 0)
        text.append(buffer, static_cast<std::size_t>(n));
    const long rss = rss_kib(procctl);
    ::kill(procctl, SIGTERM);
    int status;
    ::waitpid(procctl, &status, 0);
    ::close(out[0]);
    return rss;
}

double median(std::vector<double> samples) {
    if (samples.empty()) return 0;
    std::sort(samples.begin(), samples.end());
    return samples[samples.size() / 2];
}

// Runs `procctl -f INTERVAL stamp` until `restarts` children have exited; reads its RSS then.
Run run(const std::string& interval, std::size_t restarts) {
    int out[2];
    if (::pipe(out) != 0) return {};
    const pid_t procctl = ::fork();
    if (procctl == 0) {
        ::dup2(out[1], 1);
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 2);  // procctl's own log
        const std::string program = kBin + "/procctl", stamp = kBin + "/stamp";
        ::execl(program.c_str(), program.c_str(), "-f", interval.c_str(), stamp.c_str(), nullptr);
        ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    std::size_t exits = 0;
    char buffer[65536];
    Run result;
    while (exits < restarts) {
        const ssize_t n = ::read(out[0], buffer, sizeof buffer);
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
        exits = static_cast<std::size_t>(std::count(text.begin(), text.end(), 'x'));  // one per "exit"
    }
    std::ifstream status("/proc/" + std::to_string(procctl) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0) result.rss_kib = std::stol(line.substr(6));
    ::kill(procctl, SIGTERM);
    int wstatus;
    ::waitpid(procctl, &wstatus, 0);
    ::close(out[0]);

    result.latencies_ms = latencies_from(text);
    return result;
}

void report(const char* what, std::vector<double> samples, double minus_ms = 0) {
    if (samples.empty()) return;
    for (auto& s : samples) s -= minus_ms;
    std::sort(samples.begin(), samples.end());
    std::printf("%-52s median %7.2f ms   min %7.2f   worst %7.2f   (n=%zu)\n", what, samples[samples.size() / 2],
                samples.front(), samples.back(), samples.size());
}

}  // namespace

int main() {
    const Run bare = bare_loop(1001);
    const Run fast = run("0", 1001);
    report("bare fork/exec/wait loop: child exit to next start", bare.latencies_ms);
    report("procctl INTERVAL 0: child exit to next start", fast.latencies_ms);
    std::printf("%-52s %.2fx\n", "procctl / bare loop, medians", median(fast.latencies_ms) / median(bare.latencies_ms));
    std::printf("%-52s %ld KiB\n", "procctl RSS after 1000 restarts", fast.rss_kib);
    const Run many = run("0", 20001);
    std::printf("%-52s %ld KiB\n", "procctl RSS after 20000 restarts", many.rss_kib);
    std::printf("%-52s %ld KiB\n", "procctl RSS supervising one sleeping program", sleeping_rss_kib());
    const Run slow = run("1", 11);
    report("procctl INTERVAL 1: child exit to next start, less 1s", slow.latencies_ms, 1000.0);
    std::printf("%-52s %ld KiB (for comparison: no growth per restart)\n", "procctl RSS after 10 restarts", slow.rss_kib);
    return 0;
}
