#pragma once
// What the tests of procctl --config share: a scratch directory, running a tool to its end, and
// the stack's programs as the control socket reports them (through curl, a real client).

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support.h"

namespace hbtest::stack {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

/// A directory of its own (with log/ in it), removed after.
struct Scratch {
    fs::path dir;
    Scratch() {
        char buffer[] = "/tmp/hbwatch-stack-XXXXXX";
        dir = ::mkdtemp(buffer);
        fs::create_directory(dir / "log");
    }
    ~Scratch() { fs::remove_all(dir); }
};

inline std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

/// The cgroup v2 directory of `pid`, or empty: the "0::" line of /proc/PID/cgroup, under the
/// cgroup2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
inline fs::path cgroup_dir_of(pid_t pid) {
    std::istringstream lines(read_file("/proc/" + std::to_string(pid) + "/cgroup"));
    for (std::string line; std::getline(lines, line);)
        if (line.rfind("0::", 0) == 0)
            for (const char* mount : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"})
                if (fs::exists(fs::path(mount) / line.substr(4) / "cgroup.freeze")) return fs::path(mount) / line.substr(4);
    return {};
}

// Runs a program to its end; its exit code and output.
/// CLOCK_MONOTONIC now, in ms, as procctl's events' monotonic_ns count it.
inline double monotonic_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// procctl's own part of a restart of `instance` asked at `asked_ms` (monotonic_ms()), from its
/// events since: the request to its `stopping` event, plus the old process's exit to the new
/// one's fork (`started` less its `exec_seconds`). How fast the kernel runs the program's own
/// processes is the host's (README, Limits). nullopt when those events are not all there.
inline std::optional<double> procctl_restart_part(const nlohmann::json& events, const std::string& instance, double asked_ms) {
    std::map<std::string, double> at_ms;  // the first of each kind after the request
    double exec_ms = 0;
    for (const auto& event : events) {
        const std::string kind = event["kind"];
        const double ms = event["monotonic_ns"].get<double>() / 1e6;
        if (event["instance"] != instance || ms < asked_ms || at_ms.count(kind)) continue;
        at_ms[kind] = ms;
        if (kind == "started") exec_ms = event["details"]["exec_seconds"].get<double>() * 1000.0;
    }
    if (!at_ms.count("stopping") || !at_ms.count("exited") || !at_ms.count("started")) return std::nullopt;
    return (at_ms["stopping"] - asked_ms) + (at_ms["started"] - exec_ms - at_ms["exited"]);
}

inline std::pair<int, std::string> run(std::vector<std::string> argv) {
    Process p(std::move(argv));
    REQUIRE(p.wait_exit(30s));
    const int status = p.wait();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), p.output()};
}

// The stack's programs, through curl on the control socket.
inline nlohmann::json programs(const fs::path& socket) {
    const auto result = run({"curl", "-sS", "--max-time", "10", "--unix-socket", socket.string(), "http://stack/v1/programs"});
    REQUIRE_MESSAGE(result.first == 0, result.second);
    return nlohmann::json::parse(result.second);
}

// proctab ARGS, for the stack whose run_dir is DIR/run.
inline std::vector<std::string> proctab(const Scratch& dir, std::vector<std::string> args) {
    args.insert(args.begin(), hbtest::bin("proctab"));
    args.push_back("--run-dir");
    args.push_back((dir.dir / "run").string());
    return args;
}

inline nlohmann::json program(const fs::path& socket, const std::string& name) {
    for (const auto& p : programs(socket))
        if (p["name"] == name) return p;
    return nullptr;
}

}  // namespace hbtest::stack
