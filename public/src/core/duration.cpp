#include "core/duration.h"

#include <cerrno>
#include <charconv>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <limits>
#include <cstdint>

#include <hbwatch/error.h>

namespace hbwatch {
namespace {
struct Unit {
    std::string_view suffix;
    std::int64_t ms;
};
// Longest suffix first, so "ms" is not read as "m" followed by junk.
constexpr Unit kUnits[] = {{"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};

[[noreturn]] void bad_duration(std::string_view text, std::string_view why) {
    throw Error(EINVAL, "bad duration '" + std::string(text) + "': " + std::string(why) +
                            "; write it like 500ms, 5s, 2m, 1h, 7d or a number of seconds");
}
}  // namespace

std::chrono::milliseconds parse_duration(std::string_view text) {
    std::int64_t number = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (ec == std::errc::result_out_of_range) bad_duration(text, "the number is too large");
    if (ec != std::errc{} || number < 0 || text.empty() || text.front() == '-' || text.front() == '+')
        bad_duration(text, "it does not start with a whole, non-negative number");
    std::string_view suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
    std::int64_t unit_ms = 1000;
    if (!suffix.empty()) {
        unit_ms = 0;
        for (const Unit& unit : kUnits) {
            if (suffix == unit.suffix) unit_ms = unit.ms;
        }
        if (unit_ms == 0) bad_duration(text, "unknown unit '" + std::string(suffix) + "'");
    }
    // A year is past any timeout, grace or interval, and in nanoseconds, added to any
    // monotonic instant, it stays far from the int64 limit.
    constexpr std::int64_t kLimitMs = std::int64_t{365} * 86'400'000;
    if (number > kLimitMs / unit_ms) bad_duration(text, "it is longer than 365d");
    return std::chrono::milliseconds(number * unit_ms);
}

std::chrono::milliseconds parse_duration_in(std::string_view text, const std::string& what, DurationRange range) {
    const auto value = parse_duration(text);
    if (value < range.low || value > range.high)
        throw Error(EINVAL, what + " " + std::string(text) + " is out of range: give " + format_duration(range.low) + " to " +
                                format_duration(range.high));
    return value;
}

std::string format_duration(std::chrono::milliseconds duration) {
    const std::int64_t ms = duration.count();
    if (ms != 0) {
        for (auto it = std::rbegin(kUnits); it != std::rend(kUnits); ++it) {
            if (ms % it->ms == 0) return std::to_string(ms / it->ms) + std::string(it->suffix);
        }
    }
    return std::to_string(ms) + "ms";
}

std::uint64_t parse_size(std::string_view text) {
    auto bad = [&](std::string_view why) -> Error {
        return Error(EINVAL, "bad size '" + std::string(text) + "': " + std::string(why) +
                                 "; write it like 4096, 64K, 10M or 1G");
    };
    std::uint64_t number = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (ec != std::errc{} || text.empty() || !std::isdigit(static_cast<unsigned char>(text.front())))
        throw bad("it does not start with a whole number");
    std::string suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
    for (const char* tail : {"iB", "B"}) {
        if (suffix.size() > 1 && suffix.ends_with(tail)) suffix.resize(suffix.size() - std::strlen(tail));
    }
    int shift = 0;
    if (suffix == "K" || suffix == "k") shift = 10;
    else if (suffix == "M") shift = 20;
    else if (suffix == "G") shift = 30;
    else if (suffix == "T") shift = 40;
    else if (!suffix.empty() && suffix != "B") throw bad("unknown unit '" + suffix + "'");
    if (number > (std::numeric_limits<std::uint64_t>::max() >> shift)) throw bad("the size is too large");
    return number << shift;
}

std::string human_size(std::uint64_t bytes) {
    if (bytes < 1024) return std::to_string(bytes) + "B";
    const char* units = "KMGT";
    double value = static_cast<double>(bytes) / 1024.0;
    int unit = 0;
    while (value >= 1024.0 && unit < 3) {
        value /= 1024.0;
        ++unit;
    }
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.1f%c", value, units[unit]);
    return buffer;
}

std::string human_duration(std::chrono::milliseconds duration) {
    const std::int64_t ms = duration.count();
    char buffer[32];
    if (ms < 0) return std::string(1, '-').append(human_duration(-duration));
    if (ms < 1000) {
        std::snprintf(buffer, sizeof buffer, "%lldms", static_cast<long long>(ms));
    } else if (ms < 60'000) {
        std::snprintf(buffer, sizeof buffer, "%lld.%llds", static_cast<long long>(ms / 1000),
                      static_cast<long long>(ms % 1000 / 100));
    } else if (ms < 3'600'000) {
        std::snprintf(buffer, sizeof buffer, "%lldm%02llds", static_cast<long long>(ms / 60'000),
                      static_cast<long long>(ms % 60'000 / 1000));
    } else if (ms < 86'400'000) {
        std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", static_cast<long long>(ms / 3'600'000),
                      static_cast<long long>(ms % 3'600'000 / 60'000));
    } else {
        std::snprintf(buffer, sizeof buffer, "%lldd%02lldh", static_cast<long long>(ms / 86'400'000),
                      static_cast<long long>(ms % 86'400'000 / 3'600'000));
    }
    return buffer;
}

}  // namespace hbwatch
