// The stack supervisor's figures (run by `make bench`): procctl --config's memory with 20
// programs (and after many control requests and reloads), the start and stop times of the
// four-program stack the end-to-end test drives (its server up at once), and the control socket's answer time.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/control.h"

#include "../support.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kBin = HBWATCH_BIN_DIR;
const std::string kKey = "0x48424e43";  // "HBNC": a table of the benchmark's own

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

long status_kib(pid_t pid, const std::string& field) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
    return 0;
}

// procctl -f -c CONFIG, its log on a pipe.
struct Stack {
    pid_t pid = 0;
    int log = -1;
    std::string text;

    explicit Stack(const fs::path& config) {
        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0) std::exit(1);
        pid = ::fork();
        if (pid == 0) {
            ::dup2(out[1], 2);
            const int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, 1);
            ::setenv("HBWATCH_KEY", kKey.c_str(), 1);
            const std::string procctl = kBin + "/procctl";
            ::execl(procctl.c_str(), procctl.c_str(), "-f", "-c", config.c_str(), nullptr);
            ::_exit(127);
        }
        ::close(out[1]);
        log = out[0];
    }
    // Reads the log until `needle` shows; false after 60 s.
    bool await(const std::string& needle) {
        const auto deadline = Clock::now() + std::chrono::seconds(60);
        char buffer[65536];
        while (text.find(needle) == std::string::npos) {
            pollfd p{log, POLLIN, 0};
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) != 1) return false;
            const ssize_t n = ::read(log, buffer, sizeof buffer);
            if (n <= 0) return false;
            text.append(buffer, static_cast<std::size_t>(n));
        }
        return true;
    }
    // SIGTERM, then the time until procctl has stopped everything and exited, in ms.
    double stop() {
        const auto start = Clock::now();
        ::kill(pid, SIGTERM);
        int status;
        ::waitpid(pid, &status, 0);
        const double took = ms_since(start);
        ::close(log);
        return took;
    }
};

void report(const char* what, std::vector<double> samples) {
    if (samples.empty()) return;
    std::sort(samples.begin(), samples.end());
    std::printf("%-58s median %7.1f ms   min %7.1f   worst %7.1f   (n=%zu)\n", what, samples[samples.size() / 2],
                samples.front(), samples.back(), samples.size());
}

void write_programs(const fs::path& config, const fs::path& dir, int count, const std::string& variant) {
    std::ofstream out(config);
    out << "run_dir: " << (dir / "run").string() << "\nlog_dir: " << dir.string() << "\nprograms:\n";
    for (int i = 1; i <= count; ++i)
        out << "  p" << i << ":\n    command: [sleep, \"" << (i == 1 ? variant : "1000") << "\"]\n    stdout: p" << i << ".log\n";
}

}  // namespace

int main() {
    char buffer[] = "/tmp/hbwatch-bench-stack-XXXXXX";
    const fs::path dir = ::mkdtemp(buffer);
    const std::string socket = (dir / "run" / "control.sock").string();

    // 1. 20 programs, each with an output file.
    const fs::path twenty = dir / "twenty.yaml";
    write_programs(twenty, dir, 20, "1000");
    {
        Stack stack(twenty);
        if (!stack.await("p20 is ready")) return 1;
        std::printf("%-58s %ld KiB (anonymous %ld KiB)\n", "procctl --config, 20 programs running: RSS", status_kib(stack.pid, "VmRSS"),
                    status_kib(stack.pid, "RssAnon"));
        std::vector<double> answers;
        for (int i = 0; i < 1000; ++i) {
            const auto start = Clock::now();
            (void)hbwatch::tool::control_request(socket, "GET", "/v1/programs");
            answers.push_back(ms_since(start));
        }
        report("GET /v1/programs (20 programs), curl-free client", answers);
        std::vector<double> reloads;
        for (int i = 0; i < 100; ++i) {  // p1 changes each time: stopped, started anew
            write_programs(twenty, dir, 20, std::to_string(1000 + i % 2 + 1));
            const auto start = Clock::now();
            (void)hbwatch::tool::control_request(socket, "POST", "/v1/reload");
            reloads.push_back(ms_since(start));
        }
        report("POST /v1/reload changing 1 of 20 programs: answer", reloads);
        stack.await("reloaded");
        std::printf("%-58s %ld KiB (anonymous %ld KiB)\n", "  RSS after 1000 requests and 100 reloads", status_kib(stack.pid, "VmRSS"),
                    status_kib(stack.pid, "RssAnon"));
        std::printf("%-58s %.1f ms\n", "stop of 20 programs (SIGTERM to procctl exit)", stack.stop());
    }

    // 2. The four-program stack of the end-to-end test: db (a TCP port), api after db, worker
    // (ready at its first heartbeat) after api, a pool of 3 after worker.
    const int port = hbtest::free_port();
    const fs::path four = dir / "four.yaml";
    std::ofstream(four) << "run_dir: " << (dir / "run").string() << "\nprograms:\n"
                        << "  pool:\n    command: [sleep, \"600\"]\n    instances: 3\n    after: [worker]\n"
                        << "  worker:\n    command: [" << kBin << "/demo_service, worker, --timeout, 10s]\n"
                        << "    ready: beat\n    after: [api]\n"
                        << "  api:\n    command: [sleep, \"600\"]\n    after: [db]\n"
                        << "  db:\n    command: [" << kBin << "/tcp_listen, \"" << port << "\", \"0\"]\n"
                        << "    ready: tcp:127.0.0.1:" << port << "\n";
    std::vector<double> starts, stops;
    for (int i = 0; i < 10; ++i) {
        const auto start = Clock::now();
        Stack stack(four);
        if (!stack.await("pool@3 is ready")) return 1;
        starts.push_back(ms_since(start));
        stops.push_back(stack.stop());
    }
    report("four-program stack: procctl started to every program ready", starts);
    report("four-program stack: SIGTERM to every program stopped", stops);
    std::system((kBin + "/proctab --key " + kKey + " destroy --force >/dev/null 2>&1").c_str());
    fs::remove_all(dir);
    return 0;
}
