/* A daemon as libsystemd's users write one (libsystemd-dev, the real library): READY=1 with a
 * STATUS=, a barrier, then WATCHDOG=1 PINGS times, at a twentieth of the interval
 * sd_watchdog_enabled() gives (clients ping at half; this one leaves a loaded machine's
 * scheduler room, so that only the pings it stops miss); then it stops pinging and waits to be stopped. Each line it prints carries its
 * CLOCK_MONOTONIC time in ns, for the test to compare with procctl's events.
 *
 *   sd_client PINGS      (a SIGTERM is said, "term NS", before it ends the process)
 *   sd_client flood      STATUS= messages as fast as it can send them, for ever
 *   sd_client rate N     N STATUS= messages a second, for ever, on one socket of its own
 *                        (the protocol by hand, as daemons without libsystemd speak it)
 *   sd_client say MESSAGE...   each MESSAGE in a datagram of its own, from this process,
 *                        then a barrier: what it said has been taken when it exits
 *   sd_client bad        datagrams systemd would drop (5000 bytes, a NUL byte, empty), a
 *                        BARRIER=1 with two fds, then STATUS=after bad and a barrier
 *   sd_client linger PORT
 *                        connects to 127.0.0.1:PORT (a listener that never reads), fills the
 *                        connection, sets SO_LINGER to 30 s, hands the socket over with
 *                        FDSTORE=1 (its last close then blocks 30 s), then says STATUS=after
 *   sd_client daemon FILE [pidfd]
 *                        a classic daemon: forks, setsid()s and forks again; the grandchild
 *                        says MAINPID= (or MAINPIDFD=1 with its pidfd) and READY=1, waits on
 *                        the barrier, writes "GRANDCHILD FIRST" (pids) to FILE, then lets its
 *                        parent and the first process exit, and waits to be stopped */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/un.h>

#include <systemd/sd-daemon.h>

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static int daemon_mode(const char* file, int by_pidfd) {
    const pid_t first = getpid();
    int done[2];
    if (pipe(done) != 0) return 2;
    const pid_t middle = fork();
    if (middle < 0) return 2;
    if (middle > 0) { /* the first process: exits once its daemon is ready, as daemons do */
        int status;
        waitpid(middle, &status, 0);
        return 0;
    }
    setsid();
    const pid_t last = fork();
    if (last < 0) _exit(2);
    if (last > 0) {
        char c;
        if (read(done[0], &c, 1) < 0) _exit(2);
        _exit(0);
    }
    char message[128];
    int r;
    if (by_pidfd) {
        int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        snprintf(message, sizeof message, "MAINPIDFD=1\nREADY=1\nSTATUS=forked daemon %d", (int)getpid());
        r = sd_pid_notify_with_fds(0, 0, message, &pidfd, 1);
        close(pidfd);
    } else {
        snprintf(message, sizeof message, "MAINPID=%d\nREADY=1\nSTATUS=forked daemon %d", (int)getpid(), (int)getpid());
        r = sd_notify(0, message);
    }
    printf("notify sent=%d barrier=%d\n", r, sd_notify_barrier(0, 5 * 1000000ull));
    char pids[64];
    const int length = snprintf(pids, sizeof pids, "%d %d\n", (int)getpid(), (int)first);
    char temporary[4096];
    snprintf(temporary, sizeof temporary, "%s.new", file);
    FILE* out = fopen(temporary, "w");
    if (out == NULL || fwrite(pids, 1, (size_t)length, out) != (size_t)length || fclose(out) != 0 || rename(temporary, file) != 0) _exit(2);
    if (write(done[1], "x", 1) != 1) _exit(2);
    for (;;) pause();
}

/* A datagram socket connected to $NOTIFY_SOCKET, for the protocol by hand; -1 when it cannot be. */
static int connect_notify_socket(void) {
    const char* path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    if (path == NULL || strlen(path) >= sizeof to.sun_path) return -1;
    strcpy(to.sun_path, path);
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr*)&to, sizeof to) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int bad_mode(void) {
    const int fd = connect_notify_socket();
    if (fd < 0) return 2;
    static char big[5000];
    memset(big, 'x', sizeof big);
    memcpy(big, "STATUS=", 7);
    static const char with_nul[] = "STATUS=a\0b";
    if (send(fd, big, sizeof big, 0) != (ssize_t)sizeof big || send(fd, with_nul, sizeof with_nul - 1, 0) != (ssize_t)(sizeof with_nul - 1) ||
        send(fd, "", 0, 0) != 0)
        return 2;
    int pair[2];
    if (pipe(pair) != 0) return 2;
    printf("two-fd barrier sent=%d\n", sd_pid_notify_with_fds(0, 0, "BARRIER=1", pair, 2));
    close(pair[0]);
    close(pair[1]);
    printf("after sent=%d\n", sd_notify(0, "STATUS=after bad"));
    return sd_notify_barrier(0, 5 * 1000000ull) > 0 ? 0 : 1;
}

static int linger_mode(const char* port) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&to, sizeof to) != 0) return 2;
    const struct linger linger = {.l_onoff = 1, .l_linger = 30};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger) != 0 || fcntl(fd, F_SETFL, O_NONBLOCK) != 0) return 2;
    static char chunk[65536];
    long queued = 0;
    for (ssize_t n; (n = send(fd, chunk, sizeof chunk, 0)) > 0;) queued += n;
    if (errno != EAGAIN) return 2;
    int r = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=lingering", &fd, 1);
    close(fd); /* procctl's copy is the last now */
    printf("queued %ld, sent=%d at %llu\n", queued, r, now_ns());
    r = sd_notify(0, "STATUS=after");
    printf("status sent=%d\n", r);
    for (;;) pause();
}

/* SIGTERM: "term NS" on stdout, then the default death, as if it had no handler. */
static void on_term(int sig) {
    char line[40] = "term ";
    char digits[24];
    int n = 0;
    for (unsigned long long at = now_ns(); at > 0 || n == 0; at /= 10) digits[n++] = (char)('0' + at % 10);
    int length = 5;
    while (n > 0) line[length++] = digits[--n];
    line[length++] = '\n';
    (void)!write(STDOUT_FILENO, line, (size_t)length);
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "say") == 0) {
        for (int i = 2; i < argc; ++i) printf("%s sent=%d\n", argv[i], sd_notify(0, argv[i]));
        return sd_notify_barrier(0, 5 * 1000000ull) > 0 ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "bad") == 0) return bad_mode();
    if (argc > 2 && strcmp(argv[1], "linger") == 0) return linger_mode(argv[2]);
    if (argc > 2 && strcmp(argv[1], "daemon") == 0) return daemon_mode(argv[2], argc > 3 && strcmp(argv[3], "pidfd") == 0);
    if (argc > 1 && strcmp(argv[1], "flood") == 0) {
        char message[64];
        for (unsigned long n = 0;; ++n) {
            snprintf(message, sizeof message, "STATUS=flood %lu", n);
            sd_notify(0, message);
        }
    }
    if (argc > 2 && strcmp(argv[1], "rate") == 0) {
        const long rate = strtol(argv[2], NULL, 10);
        const int fd = connect_notify_socket();
        if (fd < 0) return 2;
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
    signal(SIGTERM, on_term);
    uint64_t usec = 0;
    const int enabled = sd_watchdog_enabled(0, &usec); /* 0 when WATCHDOG_PID is not this pid */
    printf("watchdog enabled=%d usec=%llu\n", enabled, (unsigned long long)usec);
    int r = sd_notify(0, "READY=1\nSTATUS=serving from libsystemd");
    printf("ready sent=%d\n", r);
    r = sd_notify_barrier(0, 5 * 1000000ull);
    printf("barrier=%d\n", r);
    unsigned long long sent_ns = now_ns();
    for (long i = 0; i < pings; ++i) {
        usleep((useconds_t)(usec / 20));
        sent_ns = now_ns(); /* before the send: procctl's deadline counts from no earlier */
        sd_notify(0, "WATCHDOG=1");
        printf("ping %llu\n", sent_ns);
    }
    printf("last ping %llu\n", sent_ns);
    for (;;) pause();
}
