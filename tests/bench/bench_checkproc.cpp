// checkproc's figures, on real processes and a private table key (run by `make bench`). For
// tables of 1000, 4096 and 65,536 healthy entries (many_entries helpers, 1024 registrations
// each, beating every 100 ms with a 3 s timeout):
//   1. the one-shot scan's cost per healthy entry, beside a bare kill(pid, 0) loop over the
//      same pids in the same run;
//   2. checkproc --watch at rest: CPU (from /proc/PID/schedstat) and RSS;
//   3. --watch: from a service's deadline to its SIGTERM (last_beat services, 100 samples).
// Then clearing ten hung services in one run: ten that exit on SIGTERM, ten that ignore it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <hbwatch/heartbeat.h>

#include "core/clock.h"
#include "core/table.h"
#include "engine/checker.h"

using namespace std::chrono_literals;

namespace {

const std::string kBin = HBWATCH_BIN_DIR;
const key_t kKey = static_cast<key_t>(0x48F00000u | (static_cast<unsigned>(::getpid()) & 0xFFFFFu));

pid_t spawn(std::vector<std::string> argv, int stdout_fd = -1) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(stdout_fd >= 0 ? stdout_fd : devnull, 1);
        ::dup2(stdout_fd >= 0 ? stdout_fd : devnull, 2);  // checkproc logs to stderr
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    return pid;
}

int wait_for(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

double ms_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

void report(const char* what, std::vector<double> samples) {
    std::sort(samples.begin(), samples.end());
    std::printf("%-58s median %8.2f ms   min %8.2f   worst %8.2f   (n=%zu)\n", what, samples[samples.size() / 2],
                samples.front(), samples.back(), samples.size());
}

std::vector<std::string> checkproc(std::vector<std::string> extra) {
    std::vector<std::string> argv{kBin + "/checkproc", "--key", hbwatch::format_key(kKey)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

// A program whose stdout we read line by line.
struct Reader {
    pid_t pid = -1;
    int fd = -1;
    std::string text;
    explicit Reader(std::vector<std::string> argv) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
        pid = spawn(std::move(argv), fds[1]);
        ::close(fds[1]);
        fd = fds[0];
    }
    ~Reader() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            wait_for(pid);
        }
        ::close(fd);
    }
    bool wait_for_text(const std::string& needle, std::chrono::milliseconds timeout = 60s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (text.find(needle) == std::string::npos) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            pollfd p{fd, POLLIN, 0};
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1) return false;
            char buffer[4096];
            const ssize_t n = ::read(fd, buffer, sizeof buffer);
            if (n <= 0) return false;
            text.append(buffer, static_cast<std::size_t>(n));
        }
        return true;
    }
    std::string rest() {
        char buffer[4096];
        ssize_t n;
        while ((n = ::read(fd, buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<std::size_t>(n));
        return text;
    }
};

std::uint64_t cpu_ns(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
    std::uint64_t ns = 0;
    in >> ns;
    return ns;
}

long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return 0;
}

double percentile(std::vector<double> samples, double p) {
    std::sort(samples.begin(), samples.end());
    const auto at = static_cast<std::size_t>(p * static_cast<double>(samples.size() - 1) + 0.5);
    return samples[std::min(at, samples.size() - 1)];
}

// A table of `entries` healthy entries, and checkproc --watch's figures over it.
void at_scale(std::uint32_t entries) {
    std::printf("\n== %u healthy entries (beating every 100 ms, timeout 3s)\n", entries);
    hbwatch::Table::destroy(kKey);
    hbwatch::TableOptions options;
    options.key = kKey;
    options.slots = entries + 64;
    hbwatch::Table table = hbwatch::Table::create(options);
    std::vector<std::unique_ptr<Reader>> helpers;
    const auto fill_start = std::chrono::steady_clock::now();
    for (std::uint32_t made = 0; made < entries;) {
        const std::uint32_t count = std::min<std::uint32_t>(1024, entries - made);
        std::string prefix = "e";  // built in steps: g++ 12 warns falsely (-Wrestrict) on "e" + ... + "-"
        prefix += std::to_string(made);
        prefix += '-';
        helpers.push_back(std::make_unique<Reader>(std::vector<std::string>{
            kBin + "/many_entries", hbwatch::format_key(kKey), std::to_string(count), prefix, "3s", "100ms"}));
        made += count;
    }
    for (auto& h : helpers)
        if (!h->wait_for_text("ready")) std::printf("a helper did not register\n");
    std::printf("%-58s %8.0f ms (%zu processes)\n", "filled", ms_since(fill_start), helpers.size());

    // 1. The one-shot scan, in process, beside kill(pid, 0) over the same pids.
    std::vector<pid_t> pids;
    table.for_each([&](const hbwatch::SlotSnapshot& s) { pids.push_back(s.process.pid); });
    std::vector<double> scan_ns, kill_ns;
    for (int run = 0; run < 9; ++run) {
        hbwatch::tool::Checker checker(table, {}, [](hbwatch::tool::LogLevel, const std::string&) {});
        auto start = std::chrono::steady_clock::now();
        const auto summary = checker.scan(hbwatch::monotonic_now_ns());
        scan_ns.push_back(ms_since(start) * 1e6 / static_cast<double>(summary.entries));
        if (summary.healthy != entries) std::printf("(only %zu of %u healthy)\n", summary.healthy, entries);
        start = std::chrono::steady_clock::now();
        int alive = 0;
        for (pid_t pid : pids) alive += ::kill(pid, 0) == 0;
        kill_ns.push_back(ms_since(start) * 1e6 / static_cast<double>(pids.size()));
        if (alive != static_cast<int>(pids.size())) std::printf("(a pid is gone)\n");
    }
    const double scan = percentile(scan_ns, 0.5), bare = percentile(kill_ns, 0.5);
    std::printf("%-58s %8.0f ns per entry\n", "one-shot scan (Checker::scan), median of 9", scan);
    std::printf("%-58s %8.0f ns per pid   (scan / bare: %.2fx)\n", "bare kill(pid, 0) loop, same pids, median of 9", bare,
                scan / bare);

    // 2. --watch at rest.
    Reader watcher(checkproc({"--watch", "--grace", "1s"}));
    auto watching = std::chrono::steady_clock::now();
    if (!watcher.wait_for_text("watching the table")) std::printf("checkproc --watch did not start\n");
    std::this_thread::sleep_for(3s);  // past its first sweep, and one full round of deadlines
    std::printf("%-58s %8.0f ms\n", "--watch start-up, to its first sweep and past it", ms_since(watching));
    const std::uint64_t cpu_before = cpu_ns(watcher.pid);
    const auto window_start = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(10s);  // the measurement window
    const double window_ms = ms_since(window_start);
    const double cpu_percent = static_cast<double>(cpu_ns(watcher.pid) - cpu_before) / 1e6 / window_ms * 100;
    std::printf("%-58s %8.2f %% of a core\n", "--watch CPU at rest, over 10 s", cpu_percent);
    std::printf("%-58s %8.1f MiB\n", "--watch RSS", static_cast<double>(rss_kib(watcher.pid)) / 1024);

    // 3. From a deadline to SIGTERM, 100 samples in rounds of 10 services, their deadlines
    // 20 ms apart (hung services at the same instant are a different figure: see clear_ten).
    std::vector<double> stamped, real;
    const double tick_ms = static_cast<double>(hbwatch::beat_lag_bound_ns()) / 1e6;
    for (int round = 0; round < 10; ++round) {
        std::vector<std::unique_ptr<Reader>> services;
        for (int i = 0; i < 10; ++i)
            services.push_back(std::make_unique<Reader>(std::vector<std::string>{
                kBin + "/last_beat", hbwatch::format_key(kKey), "late-" + std::to_string(i), std::to_string(300 + 20 * i) + "ms",
                std::to_string(2 + (round + i) % 5), std::to_string(1 + (i * 3 + round) % 7) + "ms"}));
        for (int i = 0; i < 10; ++i) {
            auto& service = services[static_cast<std::size_t>(i)];
            wait_for(service->pid);
            service->pid = -1;
            std::uint64_t before = 0, after = 0, stamp = 0, term = 0;
            std::istringstream(service->rest()) >> before >> after >> stamp >> term;
            if (term == 0 || stamp == 0) continue;
            const std::uint64_t timeout_ns = (300u + 20u * static_cast<unsigned>(i)) * 1'000'000u;
            const double late = static_cast<double>(static_cast<std::int64_t>(term - (stamp + timeout_ns))) / 1e6;
            stamped.push_back(late);
            real.push_back(late - tick_ms);
        }
    }
    if (!stamped.empty()) {
        std::printf("%-58s median %6.2f ms   p99 %6.2f   worst %6.2f   (n=%zu)\n",
                    "--watch: stamped deadline to SIGTERM received", percentile(stamped, 0.5), percentile(stamped, 0.99),
                    percentile(stamped, 1.0), stamped.size());
        std::printf("%-58s median %6.2f ms   p99 %6.2f   worst %6.2f\n",
                    "  the same from stamp + timeout + two ticks (never-early)", percentile(real, 0.5),
                    percentile(real, 0.99), percentile(real, 1.0));
    }
    ::kill(watcher.pid, SIGTERM);
    wait_for(watcher.pid);
    watcher.pid = -1;
    helpers.clear();
    hbwatch::Table::destroy(kKey);
}

void clear_ten(bool ignore_term) {
    hbwatch::Table::destroy(kKey);
    std::vector<pid_t> services;
    for (int i = 0; i < 10; ++i) {
        std::vector<std::string> argv{kBin + "/demo_service", "hung-" + std::to_string(i), "--key",
                                      hbwatch::format_key(kKey), "--timeout", "100ms", "--hang-after", "0ms"};
        if (ignore_term) argv.push_back("--ignore-term");
        services.push_back(spawn(argv));
    }
    std::this_thread::sleep_for(500ms);  // registered, and past their 100 ms timeout
    const auto start = std::chrono::steady_clock::now();
    wait_for(spawn(checkproc({"--grace", "1s"})));
    const double took = ms_since(start);
    for (pid_t pid : services) wait_for(pid);
    report(ignore_term ? "ten hung services ignoring SIGTERM, grace 1s (one run)"
                       : "ten hung services exiting on SIGTERM (one run)",
           {took});
    hbwatch::Table::destroy(kKey);
}

}  // namespace

int main() {
    for (std::uint32_t entries : {1000u, 4096u, 65536u}) at_scale(entries);
    std::printf("\n");
    clear_ten(false);
    clear_ten(true);
    return 0;
}
