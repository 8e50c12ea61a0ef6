// A service that beats, and on request hangs, ignores SIGTERM or crashes: the demo's actor and
// the tests' real process. One line on stdout per event.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include <hbwatch/heartbeat.h>

namespace {

volatile sig_atomic_t term_received = 0;
void on_term(int) { term_received = 1; }

void say(const std::string& name, const std::string& event) {
    std::printf("demo_service[%d] %s: %s\n", static_cast<int>(::getpid()), name.c_str(), event.c_str());
    std::fflush(stdout);
}

// Sleeps until `deadline_ns` on CLOCK_MONOTONIC, or until a signal arrives.
void sleep_until(std::uint64_t deadline_ns) {
    timespec ts{static_cast<time_t>(deadline_ns / 1'000'000'000u), static_cast<long>(deadline_ns % 1'000'000'000u)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"demo_service: registers NAME in the hbwatch table and beats; can hang, ignore TERM or crash."};
    app.footer(
        "Examples:\n"
        "  demo_service order-svc                      beat every 200ms with a 3s timeout\n"
        "  demo_service stuck --hang-after 5s          stop beating after 5s, stay alive\n"
        "  demo_service stubborn --hang-after 2s --ignore-term\n"
        "  demo_service flaky --crash-after 10s        abort() after 10s\n"
        "Exit: 0 after a graceful stop, 2 for bad arguments, 1 when registration fails.");
    std::string name, timeout = "3s", every = "200ms", key;
    std::optional<std::string> hang_after, crash_after;
    bool ignore_term = false, graceful = false;
    app.add_option("name", name, "the name to register")->required();
    app.add_option("--timeout", timeout, "heartbeat timeout (default 3s)");
    app.add_option("--every", every, "beat interval (default 200ms)");
    app.add_option("--hang-after", hang_after, "stop beating after this long, but stay alive");
    app.add_option("--crash-after", crash_after, "abort() after this long");
    app.add_option("--key", key, "table key (default: HBWATCH_KEY, else 0x48425754)");
    auto* ignore = app.add_flag("--ignore-term", ignore_term, "ignore SIGTERM (checkproc must use SIGKILL)");
    app.add_flag("--graceful", graceful, "on SIGTERM, release the slot and exit 0")->excludes(ignore);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }

    hbwatch::TableOptions options;
    std::chrono::milliseconds beat_every, timeout_ms;
    try {  // bad values are argument errors: exit 2
        if (!key.empty()) options.key = hbwatch::parse_key(key);
        beat_every = hbwatch::parse_duration(every);
        timeout_ms = hbwatch::parse_duration(timeout);
        for (const auto& after : {hang_after, crash_after})
            if (after) (void)hbwatch::parse_duration(*after);
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "demo_service: %s\n", e.what());
        return 2;
    }
    if (beat_every.count() == 0) {
        std::fprintf(stderr, "demo_service: --every must be more than 0\n");
        return 2;
    }
    try {
        hbwatch::Heartbeat heartbeat(name, timeout_ms, options);
        if (ignore_term) ::signal(SIGTERM, SIG_IGN);
        if (graceful) {
            struct sigaction action {};
            action.sa_handler = on_term;
            ::sigaction(SIGTERM, &action, nullptr);
        }
        say(name, "registered in slot " + std::to_string(heartbeat.slot()) + " at key " +
                      hbwatch::format_key(heartbeat.key()) + ", timeout " + timeout + ", beating every " + every +
                      (ignore_term ? ", ignoring SIGTERM" : ""));

        const auto start = hbwatch::monotonic_now_ns();
        auto at = [&](const std::optional<std::string>& after) -> std::optional<std::uint64_t> {
            if (!after) return std::nullopt;
            return start + static_cast<std::uint64_t>(hbwatch::parse_duration(*after).count()) * 1'000'000u;
        };
        const auto hang_at = at(hang_after), crash_at = at(crash_after);
        bool hanging = false;
        std::uint64_t next = start;
        while (!term_received) {
            const auto now = hbwatch::monotonic_now_ns();
            if (crash_at && now >= *crash_at) {
                say(name, "crashing (abort) as asked by --crash-after " + *crash_after);
                std::abort();
            }
            if (!hanging && hang_at && now >= *hang_at) {
                hanging = true;
                say(name, "hanging: no more beats, as asked by --hang-after " + *hang_after);
            }
            if (!hanging && heartbeat.beat() == hbwatch::BeatStatus::lost) {
                say(name, "my slot was freed by someone else; exiting");
                return 1;
            }
            if (hanging && !crash_at) {  // a deadlock: asleep until SIGTERM, never runnable meanwhile
                sigset_t term, before;
                ::sigemptyset(&term);
                ::sigaddset(&term, SIGTERM);
                ::sigprocmask(SIG_BLOCK, &term, &before);  // no SIGTERM lost between the check and the sleep
                while (!term_received) ::sigsuspend(&before);
                ::sigprocmask(SIG_SETMASK, &before, nullptr);
                continue;
            }
            next += static_cast<std::uint64_t>(beat_every.count()) * 1'000'000u;
            std::uint64_t wake = next;
            if (crash_at && *crash_at < wake) wake = *crash_at;
            if (!hanging && hang_at && *hang_at < wake) wake = *hang_at;
            sleep_until(wake);
        }
        say(name, "SIGTERM received: releasing slot " + std::to_string(heartbeat.slot()) + " and exiting 0");
        return 0;
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "demo_service: %s\n", e.what());
        return 1;
    }
}
