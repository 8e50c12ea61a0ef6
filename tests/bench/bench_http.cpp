// The network view's figures (run by `make bench`): GET /metrics for a stack of 64 programs
// and a table of 65,536 entries (answer time and size), GET /v1/programs over TCP in requests
// a second (one client, and four at once), and procctl's RSS with the listener on and off.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "../support.h"
#include "bench_support.h"

namespace {

using namespace hbbench;

const std::string kToken = "bench-token-0123456789abcdef0123";

// One request on a fresh connection, the answer read whole: its status and size.
std::pair<int, std::size_t> exchange(int port, const std::string& target) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const std::string request = "GET " + target + " HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer " + kToken + "\r\n\r\n";
    std::string answer;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 && ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) > 0) {
        char buffer[1 << 16];
        for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) answer.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    const int status = answer.size() > 12 ? std::atoi(answer.c_str() + 9) : 0;
    const auto body = answer.find("\r\n\r\n");
    return {status, body == std::string::npos ? 0 : answer.size() - body - 4};
}

// `count` requests for `target` one after another: each one's answer time in ms.
std::vector<double> timed(int port, const std::string& target, int count) {
    std::vector<double> took;
    for (int i = 0; i < count; ++i) {
        const auto start = Clock::now();
        (void)exchange(port, target);
        took.push_back(ms_since(start));
    }
    return took;
}

// Until procctl answers `/v1/programs` over TCP (at most 2 s).
void await_answers(int port) {
    for (int tries = 0; tries < 200 && exchange(port, "/v1/programs").first != 200; ++tries) ::usleep(10000);
}

fs::path write_config(const fs::path& dir, int port, bool http) {
    std::ofstream(dir / "tokens") << "bench read " << kToken << "\n";
    fs::permissions(dir / "tokens", fs::perms::owner_read | fs::perms::owner_write);
    std::ofstream config(dir / "stack.yaml");
    config << "run_dir: " << (dir / "run").string() << "\nlog_dir: " << dir.string() << "\n";
    if (http) config << "http: {listen: '127.0.0.1:" << port << "', tokens_file: " << (dir / "tokens").string() << "}\n";
    config << "programs:\n";
    for (int i = 0; i < 64; ++i) config << "  p" << i << ": {command: [sleep, '100000']}\n";
    return dir / "stack.yaml";
}

}  // namespace

int main() {
    char scratch[] = "/tmp/hbwatch-bench-http-XXXXXX";
    const fs::path dir = ::mkdtemp(scratch);
    const int port = hbtest::free_port();
    const std::string proctab = kBin + "/proctab";
    (void)std::system((proctab + " --key " + kKey + " destroy --force >/dev/null 2>&1").c_str());

    // Requests a second, with the table programs usually have (4096 slots, created on first use).
    {
        Stack stack(write_config(dir, port, true));
        if (!stack.await("running the stack")) return 1;
        await_answers(port);
        report("GET /v1/programs over TCP, 64 programs, one client", timed(port, "/v1/programs", 200));
        for (const int clients : {1, 4}) {
            std::atomic<long> done{0};
            std::atomic<bool> stop{false};
            std::vector<std::thread> threads;
            const auto start = Clock::now();
            for (int c = 0; c < clients; ++c)
                threads.emplace_back([&] {
                    while (!stop.load())
                        if (exchange(port, "/v1/programs").first == 200) ++done;
                });
            std::this_thread::sleep_for(std::chrono::seconds(3));
            stop = true;
            for (auto& t : threads) t.join();
            std::printf("GET /v1/programs over TCP, %d client(s) at once: %.0f requests/s\n", clients,
                        static_cast<double>(done.load()) / (ms_since(start) / 1000.0));
            stack.drain();
        }
        std::printf("procctl RSS, 64 programs, after those requests: %.1f MiB (%.2f MiB anonymous)\n",
                    static_cast<double>(status_kib(stack.pid, "VmRSS")) / 1024.0, static_cast<double>(status_kib(stack.pid, "RssAnon")) / 1024.0);
        stack.stop();
    }

    // A table of 65,536 slots, every one held by one process's registrations.
    if (std::system((proctab + " --key " + kKey + " destroy --force >/dev/null 2>&1; " + proctab + " --key " + kKey +
                     " init --slots 65536 >/dev/null").c_str()) != 0) {
        std::fprintf(stderr, "bench_http: cannot create the table\n");
        return 1;
    }
    hbtest::Process filler({kBin + "/many_entries", kKey, "65536", "entry-", "1h", "10s"});
    if (!filler.wait_for_output("ready 65536", std::chrono::seconds(120))) {
        std::fprintf(stderr, "bench_http: the table was not filled: %s\n", filler.output_so_far().c_str());
        return 1;
    }
    Stack stack(write_config(dir, port, true));
    if (!stack.await("running the stack")) return 1;
    await_answers(port);
    ::usleep(300000);
    stack.drain();
    // Each scrape made anew (more than a second apart: none is answered from the last one),
    // then scrapes in a burst, which share one.
    std::vector<double> metrics;
    std::size_t size = 0;
    for (int i = 0; i < 5; ++i) {
        ::usleep(1100000);
        const auto start = Clock::now();
        const auto [status, bytes] = exchange(port, "/metrics");
        metrics.push_back(ms_since(start));
        if (status != 200) std::fprintf(stderr, "bench_http: /metrics answered %d\n", status);
        size = bytes;
        stack.drain();
    }
    const auto burst = timed(port, "/metrics", 10);
    std::printf("GET /metrics, 64 programs and 65,536 table entries: %.1f MiB\n", static_cast<double>(size) / 1048576.0);
    report("GET /metrics answer time, each made anew", metrics);
    report("GET /metrics answer time, within a second of another", burst);
    report("GET /v1/programs, with the 65,536-entry table", timed(port, "/v1/programs", 50));
    ::usleep(2500000);  // the last shared answer let go (after a second, on the loop's next turn)
    const long rss_on = status_kib(stack.pid, "VmRSS"), anon_on = status_kib(stack.pid, "RssAnon");
    stack.stop();

    Stack quiet(write_config(dir, port, false));
    if (!quiet.await("running the stack")) return 1;
    ::usleep(500000);
    const long rss_off = status_kib(quiet.pid, "VmRSS"), anon_off = status_kib(quiet.pid, "RssAnon");
    quiet.stop();
    std::printf("procctl RSS, 64 programs, 2.5 s after 15 scrapes of that table: %.1f MiB with the listener (%.2f MiB anonymous); "
                "%.1f MiB without it (%.2f MiB anonymous)\n",
                static_cast<double>(rss_on) / 1024.0, static_cast<double>(anon_on) / 1024.0, static_cast<double>(rss_off) / 1024.0,
                static_cast<double>(anon_off) / 1024.0);

    ::kill(filler.pid(), SIGTERM);
    (void)filler.wait_exit(std::chrono::seconds(30));
    (void)std::system((proctab + " --key " + kKey + " destroy --force >/dev/null 2>&1").c_str());
    fs::remove_all(dir);
    return 0;
}
