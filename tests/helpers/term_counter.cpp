// A test service that registers, hangs at once and counts the SIGTERMs it receives without
// dying of them: one "TERM <n> at <monotonic ns>" line per signal, then "ready" once registered.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/duration.h"
#include <hbwatch/heartbeat.h>

namespace {
int terms = 0;  // touched only by the handler, which SIGTERM cannot re-enter

void on_term(int) {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char line[96];
    const int n = std::snprintf(line, sizeof line, "TERM %d at %lld\n", ++terms,
                                static_cast<long long>(now.tv_sec) * 1'000'000'000 + now.tv_nsec);
    (void)!::write(1, line, static_cast<std::size_t>(n));  // async-signal-safe
}
}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: term_counter NAME TIMEOUT [exit-on-term]\n");
        return 2;
    }
    const bool exit_on_term = argc > 3 && std::strcmp(argv[3], "exit-on-term") == 0;
    struct sigaction action {};
    action.sa_handler = exit_on_term ? [](int) { ::_exit(0); } : on_term;
    sigaction(SIGTERM, &action, nullptr);
    hbwatch::Heartbeat hb(argv[1], hbwatch::parse_duration(argv[2]));
    std::printf("ready slot %u\n", hb.slot());
    std::fflush(stdout);
    for (;;) ::pause();  // hung: never beats again
}
