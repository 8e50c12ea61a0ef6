#pragma once
// Every decision in hbwatch is timed on CLOCK_MONOTONIC: a step of the wall clock moves nothing.

#include <cstdint>

namespace hbwatch {

/// Nanoseconds on CLOCK_MONOTONIC.
[[nodiscard]] std::uint64_t monotonic_now_ns() noexcept;

/// Nanoseconds on CLOCK_MONOTONIC_COARSE: the last tick, a few ns through the vDSO, never a
/// syscall. Never ahead of monotonic_now_ns(), behind it by at most one tick (1-10 ms).
[[nodiscard]] std::uint64_t coarse_monotonic_now_ns() noexcept;

/// Nanoseconds on CLOCK_REALTIME, for display only (never for a decision).
[[nodiscard]] std::uint64_t realtime_now_ns() noexcept;

}  // namespace hbwatch
