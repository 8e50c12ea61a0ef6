// Prints "start <ns>" on CLOCK_MONOTONIC, runs for RUN_MS, prints "exit <ns>", exits with CODE.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

static long long now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<long long>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int main(int argc, char** argv) {
    std::printf("start %lld\n", now_ns());
    std::fflush(stdout);
    if (argc > 1) std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(argv[1])));
    std::printf("exit %lld\n", now_ns());
    std::fflush(stdout);
    return argc > 2 ? std::atoi(argv[2]) : 0;
}
