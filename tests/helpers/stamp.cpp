// Prints "start <ns>" on CLOCK_MONOTONIC, runs for RUN_MS, prints "exit <ns>", exits with CODE.
// Without arguments (as ./run of a runit or s6 service), STAMP_RUN_MS gives RUN_MS, and
// STAMP_FILE names a file the lines are appended to instead of stdout.
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

static long long now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<long long>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// One write per line, appended: lines of several runs never mix.
static void say(int fd, const char* what) {
    char line[64];
    const int length = std::snprintf(line, sizeof line, "%s %lld\n", what, now_ns());
    (void)!::write(fd, line, static_cast<std::size_t>(length));
}

int main(int argc, char** argv) {
    const char* file = std::getenv("STAMP_FILE");
    const int fd = file != nullptr ? ::open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : 1;
    say(fd, "start");
    const char* run_ms = argc > 1 ? argv[1] : std::getenv("STAMP_RUN_MS");
    if (run_ms != nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(run_ms)));
    say(fd, "exit");
    return argc > 2 ? std::atoi(argv[2]) : 0;
}
