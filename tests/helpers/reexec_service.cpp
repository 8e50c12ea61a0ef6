// A service that registers, then re-execs itself and registers again, as a service that
// upgrades in place does. The first image's entry (timeout 200ms) is left behind and goes
// stale; the second image beats every 20 ms and prints "ready slot N" once registered.
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <hbwatch/heartbeat.h>

int main(int argc, char** argv) {
    using namespace std::chrono_literals;
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
