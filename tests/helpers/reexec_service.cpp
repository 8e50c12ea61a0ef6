// A service that registers, then re-execs itself and registers again, as a service that
// upgrades in place does. The first image's entry (timeout 200ms) is left behind and goes
// stale; the second image beats every 20 ms and prints "ready slot N" once registered.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <hbwatch/heartbeat.h>

int main(int argc, char** argv) {
    using namespace std::chrono_literals;
    if (argc > 1 && std::strcmp(argv[1], "exec-on-term") == 0) {
        // Registers, hangs, and answers SIGTERM by exec'ing a clean-up program (sleep 30).
        struct sigaction action {};
        action.sa_handler = [](int) {
            char sleep[] = "sleep", seconds[] = "30";
            char* args[] = {sleep, seconds, nullptr};
            ::execvp("sleep", args);  // async-signal-safe
        };
        ::sigaction(SIGTERM, &action, nullptr);
        hbwatch::Heartbeat hb("exec-on-term", 100ms);
        std::printf("ready slot %u\n", hb.slot());
        std::fflush(stdout);
        for (;;) ::pause();
    }
    if (argc > 1 && std::strcmp(argv[1], "again") == 0) {
        hbwatch::Heartbeat hb("reexec", 10s);
        std::printf("ready slot %u\n", hb.slot());
        std::fflush(stdout);
        for (;;) {
            hb.beat();
            const timespec pause{0, 20'000'000};
            ::nanosleep(&pause, nullptr);
        }
    }
    hbwatch::Heartbeat first("reexec", 200ms);  // exec does not run its destructor: the entry stays
    char again[] = "again";
    char* args[] = {argv[0], again, nullptr};
    ::execv("/proc/self/exe", args);
    return 127;
}
