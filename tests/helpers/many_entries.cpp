// A process holding many registrations, all beating every INTERVAL: fills a table without
// one process per entry. Prints "ready N" once registered; exits on SIGTERM.
//     many_entries KEY COUNT PREFIX TIMEOUT INTERVAL
#include <signal.h>
#include <time.h>

#include <cstdio>
#include <string>
#include <vector>

#include <hbwatch/heartbeat.h>

#include "core/duration.h"
#include "core/table.h"

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: many_entries KEY COUNT PREFIX TIMEOUT INTERVAL\n");
        return 2;
    }
    try {
        hbwatch::TableOptions options;
        options.key = hbwatch::parse_key(argv[1]);
        const long count = std::stol(argv[2]);
        const auto timeout = hbwatch::parse_duration(argv[4]);
        const auto interval = hbwatch::parse_duration(argv[5]);
        std::vector<hbwatch::Heartbeat> beats;
        beats.reserve(static_cast<std::size_t>(count));
        for (long i = 0; i < count; ++i) beats.emplace_back(std::string(argv[3]) + std::to_string(i), timeout, options);
        std::printf("ready %ld\n", count);
        std::fflush(stdout);
        timespec next;
        clock_gettime(CLOCK_MONOTONIC, &next);
        for (;;) {
            for (auto& hb : beats) hb.beat();
            next.tv_nsec += static_cast<long>(interval.count()) * 1'000'000;
            next.tv_sec += next.tv_nsec / 1'000'000'000;
            next.tv_nsec %= 1'000'000'000;
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, nullptr);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "many_entries: %s\n", e.what());
        return 1;
    }
}
