// The stack supervisor's figures (run by `make bench`): procctl --config's memory with 20
// programs (and after many control requests and reloads), the start and stop times of the
// four-program stack the end-to-end test drives (its server up at once), the control socket's answer time, and
// what a program writing zeros without a newline, nonstop, costs procctl and its neighbours.
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
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/control.h"

#include "../support.h"
#include "bench_support.h"

namespace fs = std::filesystem;

namespace {

using namespace hbbench;

// The pid the control socket reports for `name` when it is ready, else 0.
int ready_pid(const std::string& socket, const std::string& name) {
    const auto reply = hbwatch::tool::control_request(socket, "GET", "/v1/programs/" + name);
    const auto body = nlohmann::json::parse(reply.body, nullptr, false);
    if (!body.is_array() || body.empty() || body[0]["state"] != "ready" || !body[0]["pid"].is_number()) return 0;
    return body[0]["pid"].get<int>();
}

// A neighbour SIGKILLed and started again: from the kill to the socket showing it ready anew.
std::vector<double> restarts(const std::string& socket, int count) {
    std::vector<double> took;
    for (int i = 0; i < count; ++i) {
        int pid = 0;
        while ((pid = ready_pid(socket, "neighbour")) == 0) ::poll(nullptr, 0, 1);
        ::poll(nullptr, 0, 1100);  // a run over a second: a restart, not a crash loop to back off from
        const auto start = Clock::now();
        ::kill(pid, SIGKILL);
        int again = 0;
        while ((again = ready_pid(socket, "neighbour")) == 0 || again == pid) ::poll(nullptr, 0, 1);
        took.push_back(ms_since(start));
    }
    return took;
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

    // 3. A program writes zeros, without a newline, nonstop (cat /dev/zero), into a file
    // rotated at 64M, one kept (so the disk holds at most 128 MiB of it); beside it, a neighbour is SIGKILLed and restarts, and
    // the control socket is asked for the programs. The same stack without the flood first.
    for (const bool flood : {false, true}) {
        const fs::path three = dir / "flood.yaml";
        std::ofstream(three) << "run_dir: " << (dir / "run").string() << "\nlog_dir: " << dir.string() << "\nprograms:\n"
                             << "  neighbour:\n    command: [sleep, \"1000\"]\n    restart_delay: 0ms\n"
                             << "  flood:\n    command: [" << (flood ? "cat, /dev/zero" : "sleep, \"1000\"") << "]\n"
                             << "    stdout: flood.log\n    log_max_size: 64M\n    log_files: 1\n";
        Stack stack(three);
        if (!stack.await("flood is ready")) return 1;
        ::poll(nullptr, 0, 500);  // the flood under way
        const long long cpu_before = cpu_ms(stack.pid);
        const auto wall_before = Clock::now();
        const auto took = restarts(socket, 10);
        std::vector<double> answers;
        for (int i = 0; i < 200; ++i) {
            const auto start = Clock::now();
            (void)hbwatch::tool::control_request(socket, "GET", "/v1/programs");
            answers.push_back(ms_since(start));
        }
        const double cpu_share = double(cpu_ms(stack.pid) - cpu_before) / ms_since(wall_before);  // over about 12 s
        const char* label = flood ? "with a program writing /dev/zero nonstop" : "no flood";
        std::printf("%s:\n", label);
        report("  neighbour SIGKILLed to ready again (restart_delay 0)", took);
        report("  GET /v1/programs", answers);
        std::printf("%-58s %.0f%% of a core; peak RSS %ld KiB\n", "  procctl's CPU over that time", cpu_share * 100,
                    status_kib(stack.pid, "VmHWM"));
        stack.stop();
    }

    std::system((kBin + "/proctab --key " + kKey + " destroy --force >/dev/null 2>&1").c_str());
    fs::remove_all(dir);
    return 0;
}
