// A server that takes DELAY to come up, then listens on 127.0.0.1:PORT until SIGTERM. Prints
// "listening <CLOCK_MONOTONIC ns>" once the port accepts.
//     tcp_listen PORT DELAY_MS
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: tcp_listen PORT DELAY_MS\n");
        return 2;
    }
    ::usleep(static_cast<useconds_t>(std::atoi(argv[2])) * 1000);  // the slow start being simulated
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[1])));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(fd, 16) != 0) {
        std::perror("tcp_listen");
        return 1;
    }
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    std::printf("listening %lld\n", static_cast<long long>(now.tv_sec) * 1'000'000'000 + now.tv_nsec);
    std::fflush(stdout);
    for (;;) {
        const int client = ::accept(fd, nullptr, nullptr);
        if (client >= 0) ::close(client);
    }
}
