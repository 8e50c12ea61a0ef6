// A service that beats BEATS times, EVERY apart, then stops beating and waits for SIGTERM. It
// reports, on one line: its precise CLOCK_MONOTONIC time right before and right after its
// last beat(), the coarse stamp that beat left in the table, the time SIGTERM arrived, and
// the longest it went without beating before its last beat (from before its registration,
// by its precise clock): a service the scheduler held that long was really late then.
//     last_beat KEY NAME TIMEOUT BEATS EVERY
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include <hbwatch/heartbeat.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: last_beat KEY NAME TIMEOUT BEATS EVERY\n");
        return 2;
    }
    try {
        sigset_t term;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        sigprocmask(SIG_BLOCK, &term, nullptr);  // taken by sigwaitinfo() below
        hbwatch::TableOptions options;
        options.key = hbwatch::parse_key(argv[1]);
        std::uint64_t previous = hbwatch::monotonic_now_ns(), longest_gap = 0;
        hbwatch::Heartbeat hb(argv[2], hbwatch::parse_duration(argv[3]), options);
        const long beats = std::stol(argv[4]);
        const auto every = hbwatch::parse_duration(argv[5]);
        std::uint64_t before = 0, after = 0;
        for (long i = 0; i < beats; ++i) {
            if (i > 0) ::usleep(static_cast<useconds_t>(every.count() * 1000));
            before = hbwatch::monotonic_now_ns();
            longest_gap = std::max(longest_gap, before - previous);
            hb.beat();
            after = previous = hbwatch::monotonic_now_ns();
        }
        const auto table = hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_only);
        const auto entry = table->read(hb.slot());
        const std::uint64_t stamp = entry ? entry->last_beat_ns : 0;
        siginfo_t info;
        while (sigwaitinfo(&term, &info) != SIGTERM) {}
        const std::uint64_t term_at = hbwatch::monotonic_now_ns();
        std::printf("%llu %llu %llu %llu %llu\n", static_cast<unsigned long long>(before),
                    static_cast<unsigned long long>(after), static_cast<unsigned long long>(stamp),
                    static_cast<unsigned long long>(term_at), static_cast<unsigned long long>(longest_gap));
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "last_beat: %s\n", e.what());
        return 1;
    }
}
