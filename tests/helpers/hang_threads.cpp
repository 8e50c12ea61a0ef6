// A service of three threads that hangs in a function of a known name, for checkproc's
// diagnosis: two workers (or WORKERS) wait for ever on a condition variable, and the main
// thread beats a few times, then blocks in hbwatch_test_stuck_here(). Built with -g,
// unoptimised: its stacks are what an engineer would read. HBWATCH_KEY picks the table.
//
//   hang_threads NAME [WORKERS]
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <cstdlib>
#include <thread>
#include <vector>

#include <hbwatch/heartbeat.h>

namespace {
std::mutex never_mutex;
std::condition_variable never;
}  // namespace

extern "C" __attribute__((noinline)) void hbwatch_test_worker_waits() {
    std::unique_lock lock(never_mutex);
    never.wait(lock, [] { return false; });
}

extern "C" __attribute__((noinline)) void hbwatch_test_stuck_here() {
    for (;;) ::pause();
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: hang_threads NAME [WORKERS]\n");
        return 2;
    }
    const long workers = argc > 2 ? std::strtol(argv[2], nullptr, 10) : 2;
    hbwatch::Heartbeat heartbeat(argv[1], std::chrono::milliseconds(500));
    std::vector<std::thread> waiting;
    for (long i = 0; i < workers; ++i) waiting.emplace_back(hbwatch_test_worker_waits);
    for (int i = 0; i < 3; ++i) {
        heartbeat.beat();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::printf("stuck, slot %u\n", heartbeat.slot());
    std::fflush(stdout);
    hbwatch_test_stuck_here();
    for (auto& worker : waiting) worker.join();
}
