#pragma once
// What the tests of procctl --config share: a scratch directory, running a tool to its end, and
// the stack's programs as the control socket reports them (through curl, a real client).

#include <nlohmann/json.hpp>

#include <filesystem>
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
