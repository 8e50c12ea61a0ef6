/* A daemon as libsystemd's users write one (libsystemd-dev, the real library): READY=1 with a
 * STATUS=, a barrier, then WATCHDOG=1 PINGS times, at a twentieth of the interval
 * sd_watchdog_enabled() gives (clients ping at half; this one leaves a loaded machine's
 * scheduler room, so that only the pings it stops miss); then it stops pinging and waits to be stopped. Each line it prints carries its
 * CLOCK_MONOTONIC time in ns, for the test to compare with procctl's events.
 *
 *   sd_client PINGS
 *   sd_client flood      STATUS= messages as fast as it can send them, for ever
 *   sd_client rate N     N STATUS= messages a second, for ever, on one socket of its own
 *                        (the protocol by hand, as daemons without libsystemd speak it) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <sys/un.h>

#include <systemd/sd-daemon.h>

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "flood") == 0) {
        char message[64];
        for (unsigned long n = 0;; ++n) {
            snprintf(message, sizeof message, "STATUS=flood %lu", n);
            sd_notify(0, message);
        }
    }
    if (argc > 2 && strcmp(argv[1], "rate") == 0) {
        const long rate = strtol(argv[2], NULL, 10);
        const char* path = getenv("NOTIFY_SOCKET");
        struct sockaddr_un to = {.sun_family = AF_UNIX};
        if (path == NULL || strlen(path) >= sizeof to.sun_path) return 2;
        strcpy(to.sun_path, path);
        const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr*)&to, sizeof to) != 0) return 2;
        struct timespec tick;
        clock_gettime(CLOCK_MONOTONIC, &tick);
        char message[64];
        for (unsigned long n = 0;;) {
            for (long i = 0; i < rate / 100; ++i, ++n) { /* 100 batches a second */
                const int length = snprintf(message, sizeof message, "STATUS=message %lu", n);
                (void)send(fd, message, (size_t)length, 0);
            }
            tick.tv_nsec += 10000000;
            if (tick.tv_nsec >= 1000000000) {
                tick.tv_nsec -= 1000000000;
                ++tick.tv_sec;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &tick, NULL);
        }
    }
    const long pings = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    uint64_t usec = 0;
    const int enabled = sd_watchdog_enabled(0, &usec); /* 0 when WATCHDOG_PID is not this pid */
    printf("watchdog enabled=%d usec=%llu\n", enabled, (unsigned long long)usec);
    int r = sd_notify(0, "READY=1\nSTATUS=serving from libsystemd");
    printf("ready sent=%d\n", r);
    r = sd_notify_barrier(0, 5 * 1000000ull);
    printf("barrier=%d\n", r);
    for (long i = 0; i < pings; ++i) {
        usleep((useconds_t)(usec / 20));
        sd_notify(0, "WATCHDOG=1");
        printf("ping %llu\n", now_ns());
    }
    printf("last ping %llu\n", now_ns());
    for (;;) pause();
}
