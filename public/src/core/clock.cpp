#include "core/clock.h"

#include <time.h>

namespace hbwatch {
namespace {
std::uint64_t read_clock(clockid_t clock) noexcept {
    timespec ts{};
    clock_gettime(clock, &ts);  // cannot fail for these clocks on Linux
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}
}  // namespace

std::uint64_t monotonic_now_ns() noexcept { return read_clock(CLOCK_MONOTONIC); }
std::uint64_t coarse_monotonic_now_ns() noexcept { return read_clock(CLOCK_MONOTONIC_COARSE); }
std::uint64_t beat_lag_bound_ns() noexcept {
    static const std::uint64_t bound = [] {
        timespec ts{};
        if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0) return std::uint64_t{20'000'000};  // HZ=100's two ticks
        return 2 * (static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec));
    }();
    return bound;
}
std::uint64_t realtime_now_ns() noexcept { return read_clock(CLOCK_REALTIME); }

}  // namespace hbwatch
