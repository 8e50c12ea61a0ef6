#include <doctest/doctest.h>

#include "core/duration.h"
#include <hbwatch/error.h>

using namespace std::chrono_literals;
using hbwatch::parse_duration;

TEST_CASE("a duration is read with its unit, and a bare number is seconds") {
    CHECK(parse_duration("500ms") == 500ms);
    CHECK(parse_duration("5s") == 5s);
    CHECK(parse_duration("2m") == 2min);
    CHECK(parse_duration("1h") == 1h);
    CHECK(parse_duration("7d") == 168h);
    CHECK(parse_duration("10") == 10s);
    CHECK(parse_duration("0") == 0ms);
}

TEST_CASE("a bad duration is refused with the text and the accepted forms") {
    SUBCASE("an unknown unit") {
        CHECK_THROWS_WITH_AS((void)parse_duration("5x"),
                             "bad duration '5x': unknown unit 'x'; write it like 500ms, 5s, 2m, 1h, 7d or a number of seconds",
                             hbwatch::Error);
    }
    SUBCASE("no number") {
        CHECK_THROWS_WITH_AS((void)parse_duration("ms"),
                             "bad duration 'ms': it does not start with a whole, non-negative number; write it like "
                             "500ms, 5s, 2m, 1h, 7d or a number of seconds",
                             hbwatch::Error);
    }
    SUBCASE("negative, fractional, empty, spaced") {
        CHECK_THROWS_AS((void)parse_duration("-5s"), hbwatch::Error);
        CHECK_THROWS_AS((void)parse_duration("1.5s"), hbwatch::Error);
        CHECK_THROWS_AS((void)parse_duration(""), hbwatch::Error);
        CHECK_THROWS_AS((void)parse_duration(" 5s"), hbwatch::Error);
        CHECK_THROWS_AS((void)parse_duration("5 s"), hbwatch::Error);
    }
    SUBCASE("too large to hold") {
        CHECK_THROWS_WITH_AS((void)parse_duration("99999999999999999999d"),
                             doctest::Contains("the number is too large"), hbwatch::Error);
        CHECK_THROWS_WITH_AS((void)parse_duration("9999999999999d"), doctest::Contains("it is longer than 365d"),
                             hbwatch::Error);
    }
    SUBCASE("a year at most, in every unit: nothing a tool adds to a monotonic instant can wrap") {
        CHECK(parse_duration("365d") == std::chrono::hours(24 * 365));
        CHECK(parse_duration("8760h") == std::chrono::hours(24 * 365));
        CHECK(parse_duration("31536000000ms") == std::chrono::hours(24 * 365));
        for (const char* text : {"366d", "8761h", "525601m", "31536001s", "31536000001ms", "9223372036854775807ms"})
            CHECK_THROWS_WITH_AS((void)parse_duration(text), doctest::Contains("it is longer than 365d"), hbwatch::Error);
    }
}

TEST_CASE("a duration is written in the largest exact unit, and reads back") {
    CHECK(hbwatch::format_duration(1500ms) == "1500ms");
    CHECK(hbwatch::format_duration(120s) == "2m");
    CHECK(hbwatch::format_duration(3s) == "3s");
    CHECK(hbwatch::format_duration(0ms) == "0ms");
    CHECK(hbwatch::format_duration(168h) == "7d");
    for (std::chrono::milliseconds d : {1ms, 999ms, 1000ms * 61, 60'000ms * 90, 3'600'000ms * 25}) CHECK(parse_duration(hbwatch::format_duration(d)) == d);
}
