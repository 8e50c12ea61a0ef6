// checkproc's figures, on real processes and a private table key (run by `make bench`):
//   1. a one-shot run over a full 4096-slot table of healthy entries (wall time, 20 runs);
//   2. --watch: from a service's deadline to its SIGTERM (20 services, median and worst);
//   3. clearing ten hung services in one run: ten that exit on SIGTERM, ten that ignore it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include <hbwatch/heartbeat.h>

#include "core/table.h"

using namespace std::chrono_literals;

namespace {

const std::string kBin = HBWATCH_BIN_DIR;
const key_t kKey = static_cast<key_t>(0x48F00000u | (static_cast<unsigned>(::getpid()) & 0xFFFFFu));

pid_t spawn(std::vector<std::string> argv, bool quiet = true) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        if (quiet) {
            const int devnull = ::open("/dev/null", O_WRONLY);
            ::dup2(devnull, 1);
            ::dup2(devnull, 2);
        }
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

void one_shot_over_full_table() {
    hbwatch::Table::destroy(kKey);
    hbwatch::TableOptions options;
    options.key = kKey;
    hbwatch::Table table = hbwatch::Table::create(options);
    const auto self = hbwatch::self_identity();
    for (std::uint32_t i = 0; i < table.slot_count(); ++i) table.claim("bench-healthy", 5min, self, ::getuid());
    std::vector<double> samples;
    for (int run = 0; run < 20; ++run) {
        const auto start = std::chrono::steady_clock::now();
        wait_for(spawn(checkproc({})));
        samples.push_back(ms_since(start));
    }
    report("one-shot checkproc, 4096 healthy entries (fork to exit)", samples);
    hbwatch::Table::destroy(kKey);
}

// A child that registers, never beats, and reports when SIGTERM arrives.
int report_fd = -1;
void on_term(int) {
    const std::uint64_t now = hbwatch::monotonic_now_ns();
    (void)!::write(report_fd, &now, sizeof now);
    ::_exit(0);
}

void watch_latency() {
    hbwatch::Table::destroy(kKey);
    hbwatch::TableOptions options;
    options.key = kKey;
    { hbwatch::Table table = hbwatch::Table::create(options); }
    const pid_t watcher = spawn(checkproc({"--watch", "--grace", "1s"}));
    std::this_thread::sleep_for(300ms);  // let it open the table
    std::vector<double> samples;
    for (int run = 0; run < 20; ++run) {
        int fds[2];
        if (::pipe(fds) != 0) return;
        int slot_pipe[2];
        if (::pipe(slot_pipe) != 0) return;
        const pid_t child = ::fork();
        if (child == 0) {
            report_fd = fds[1];
            ::signal(SIGTERM, on_term);
            hbwatch::Heartbeat hb("bench-hang", 200ms, options);
            const std::uint32_t slot = hb.slot();
            (void)!::write(slot_pipe[1], &slot, sizeof slot);
            for (;;) ::pause();
        }
        std::uint32_t slot = 0;
        (void)!::read(slot_pipe[0], &slot, sizeof slot);
        auto table = hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_only);
        const auto snapshot = table->read(slot);
        std::uint64_t term_ns = 0;
        (void)!::read(fds[0], &term_ns, sizeof term_ns);
        wait_for(child);
        if (snapshot) {
            const std::uint64_t deadline = snapshot->last_beat_ns + 200'000'000u;
            samples.push_back(static_cast<double>(static_cast<std::int64_t>(term_ns - deadline)) / 1e6);
        }
        for (int fd : {fds[0], fds[1], slot_pipe[0], slot_pipe[1]}) ::close(fd);
    }
    ::kill(watcher, SIGTERM);
    wait_for(watcher);
    report("--watch: deadline to SIGTERM received", samples);
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
    one_shot_over_full_table();
    watch_latency();
    clear_ten(false);
    clear_ten(true);
    return 0;
}
