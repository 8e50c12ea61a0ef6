// The time from a hang's verdict to its SIGTERM, at each level of diagnosis (make bench): a
// three-thread service (hang_threads) hung at a private key, judged by the checker in-process.
// What is timed is one scan of the hung entry: the verdict's look at /proc, the pin and checks
// of its identity, the diagnosis, and the SIGTERM. Also the verdict's look alone.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/duration.h"
#include "core/process.h"
#include "core/table.h"
#include "engine/checker.h"

namespace {

const std::string kBin = HBWATCH_BIN_DIR;
const key_t kKey = static_cast<key_t>(0x48F10000u | (static_cast<unsigned>(::getpid()) & 0xFFFFu));

// hang_threads at the bench's key; returns once all its threads sleep (it has hung).
pid_t start_hanging() {
    int out[2];
    if (::pipe(out) != 0) return -1;
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(out[1], 1);
        ::setenv("HBWATCH_KEY", hbwatch::format_key(kKey).c_str(), 1);
        ::execl((kBin + "/hang_threads").c_str(), "hang_threads", "bench-hang", nullptr);
        ::_exit(127);
    }
    ::close(out[1]);
    char line[128];
    (void)!::read(out[0], line, sizeof line);  // "stuck, slot N"
    ::close(out[0]);
    for (int i = 0; i < 1000; ++i) {  // its threads asleep: a verdict at once, no second look
        bool asleep = true;
        for (const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
            const auto stat = hbwatch::read_task_stat(pid, std::stoi(entry.path().filename().string()));
            asleep = asleep && stat && stat->state == 'S';
        }
        if (asleep) break;
        ::usleep(1000);
    }
    return pid;
}

double percentile(std::vector<double> values, double p) {
    std::sort(values.begin(), values.end());
    return values[std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())))];
}

}  // namespace

int main() {
    using namespace std::chrono_literals;
    const std::string directory = "/tmp/hbwatch-bench-diagnoses-" + std::to_string(::getpid());
    hbwatch::TableOptions options;
    options.key = kKey;
    auto table = hbwatch::Table::open_or_create(options);
    std::printf("hang verdict to SIGTERM (hang_threads: 3 threads; one scan of the hung entry, in-process)\n");
    constexpr int kSamples = 20;
    double none_p50 = 0;
    for (const auto level : {hbwatch::tool::DiagnoseLevel::none, hbwatch::tool::DiagnoseLevel::kernel, hbwatch::tool::DiagnoseLevel::user}) {
        const char* name = level == hbwatch::tool::DiagnoseLevel::none ? "none" : level == hbwatch::tool::DiagnoseLevel::kernel ? "kernel" : "user";
        if (level == hbwatch::tool::DiagnoseLevel::user && ::access("/usr/bin/eu-stack", X_OK) != 0) {
            std::printf("  --diagnose user: skipped, eu-stack is not installed (elfutils)\n");
            continue;
        }
        std::vector<double> took, looks;
        for (int i = 0; i < kSamples; ++i) {
            const pid_t pid = start_hanging();
            hbwatch::tool::CheckOptions check;
            check.grace = 5s;
            check.diagnosis.level = level;
            check.diagnosis.directory = directory;
            hbwatch::tool::Checker checker(table, check, [](hbwatch::tool::LogLevel, const std::string&) {});
            // Past its 500 ms deadline (and the beat lag bound).
            ::usleep(700'000);
            const auto look_began = std::chrono::steady_clock::now();
            const auto verdict = hbwatch::tool::judge_hang(hbwatch::tool::look_at(pid, hbwatch::monotonic_now_ns()), nullptr);
            looks.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - look_began).count());
            if (verdict.kind != hbwatch::tool::HangVerdict::Kind::hung) std::printf("  (sample %d: verdict %s)\n", i, verdict.words.c_str());
            const auto began = std::chrono::steady_clock::now();
            const auto summary = checker.scan(hbwatch::monotonic_now_ns());
            took.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began).count());
            if (summary.stopping != 1) std::printf("  (sample %d: not stopped)\n", i);
            checker.finish();
            int status = 0;
            ::waitpid(pid, &status, 0);
        }
        const double p50 = percentile(took, 0.5);
        if (level == hbwatch::tool::DiagnoseLevel::none) none_p50 = p50;
        std::printf("  --diagnose %-6s  verdict to SIGTERM  p50 %6.2f ms   p99 %6.2f ms   (diagnosis adds %+.2f ms at p50; the look alone p50 %.3f ms; n=%d)\n",
                    name, p50, percentile(took, 0.99), p50 - none_p50, percentile(looks, 0.5), kSamples);
    }
    std::filesystem::remove_all(directory);
    hbwatch::Table::destroy(kKey);
}
