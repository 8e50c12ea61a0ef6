#pragma once
// Every decision in hbwatch is timed on CLOCK_MONOTONIC: a step of the wall clock moves nothing.

#include <chrono>
#include <cstdint>

namespace hbwatch {

/// Nanoseconds on CLOCK_MONOTONIC.
[[nodiscard]] std::uint64_t monotonic_now_ns() noexcept;

/// Nanoseconds on CLOCK_MONOTONIC_COARSE: the last tick, a few ns through the vDSO, never a
/// syscall. Never ahead of monotonic_now_ns(), behind it by at most one tick (1-10 ms).
[[nodiscard]] std::uint64_t coarse_monotonic_now_ns() noexcept;

/// How long after its stamp a beat may really have happened. Beats are stamped with
/// CLOCK_MONOTONIC_COARSE, which moves once a tick (clock_getres: 4 ms at HZ=250), and a tick
/// is sometimes delivered late (measured: the coarse clock trailing by 4.8 ms on this project's
/// 2-core VM). Two ticks: a deadline computed from a stamp is extended by this, so that no
/// service is judged before its real deadline.
[[nodiscard]] std::uint64_t beat_lag_bound_ns() noexcept;

/// Nanoseconds on CLOCK_REALTIME, for display only (never for a decision).
[[nodiscard]] std::uint64_t realtime_now_ns() noexcept;

/// `duration` in nanoseconds, for arithmetic with the readings above.
[[nodiscard]] constexpr std::uint64_t to_ns(std::chrono::milliseconds duration) noexcept {
    return static_cast<std::uint64_t>(duration.count()) * 1'000'000u;
}

/// Whole milliseconds from `from_ns` to `to_ns`; 0 when `to_ns` is not later.
[[nodiscard]] constexpr std::chrono::milliseconds ms_between(std::uint64_t from_ns, std::uint64_t to_ns) noexcept {
    return std::chrono::milliseconds(to_ns > from_ns ? (to_ns - from_ns) / 1'000'000u : 0);
}

/// A poll() timeout that never wakes before `deadline_ns`: rounded up, 0 once it has passed.
[[nodiscard]] constexpr int poll_timeout_ms(std::uint64_t deadline_ns, std::uint64_t now_ns) noexcept {
    return deadline_ns > now_ns ? static_cast<int>((deadline_ns - now_ns + 999'999u) / 1'000'000u) : 0;
}

}  // namespace hbwatch
