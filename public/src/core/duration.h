#pragma once
// Durations as operators type them: "500ms", "5s", "2m", "1h", "7d", or a bare number of seconds.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace hbwatch {

/// Parses a whole, non-negative number with an optional unit (ms, s, m, h, d); no unit means
/// seconds; at most 365d, for every duration any tool or config takes. Throws hbwatch::Error(EINVAL) naming the text, e.g. parse_duration("2m") == 120s.
[[nodiscard]] std::chrono::milliseconds parse_duration(std::string_view text);

/// The durations an option or key may take, and its check: "WHAT TEXT is out of range: give
/// LOW to HIGH" (hbwatch::Error(EINVAL)) outside them.
struct DurationRange {
    std::chrono::milliseconds low, high;
};
[[nodiscard]] std::chrono::milliseconds parse_duration_in(std::string_view text, const std::string& what, DurationRange range);

/// The shortest exact spelling that parse_duration reads back: 1500ms -> "1500ms", 120s -> "2m".
[[nodiscard]] std::string format_duration(std::chrono::milliseconds duration);

/// Parses a byte size: a whole number with an optional K, M, G or T (powers of 1024; a
/// trailing B or iB is allowed: 10M, 10MB, 10MiB). Throws hbwatch::Error(EINVAL) naming the text.
[[nodiscard]] std::uint64_t parse_size(std::string_view text);

/// For people: "512B", "64.0K", "3.8M", "1.5G".
[[nodiscard]] std::string human_size(std::uint64_t bytes);

/// For people, in logs and tables: "250ms", "12.3s", "4m05s", "2h10m", "3d04h".
[[nodiscard]] std::string human_duration(std::chrono::milliseconds duration);

}  // namespace hbwatch
