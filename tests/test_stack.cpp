// procctl --config: a stack of four programs on real processes, a real TCP port and a real
// heartbeat table. Every wait is on an event (an output line, a pidfd) or a poll with a deadline.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "core/table.h"

#include "support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;

namespace {

struct Scratch {
    fs::path dir;
    Scratch() {
        char buffer[] = "/tmp/hbwatch-stack-XXXXXX";
        dir = ::mkdtemp(buffer);
        fs::create_directory(dir / "log");
    }
    ~Scratch() { fs::remove_all(dir); }
};

std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// A TCP port nobody listens on now (the kernel picks it).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

long long number_after(const std::string& text, const std::string& word) {
    std::smatch match;
    if (!std::regex_search(text, match, std::regex(word + " ([0-9]+)"))) return -1;
    return std::stoll(match[1]);
}

// Runs a program to its end; its exit code and output.
std::pair<int, std::string> run(std::vector<std::string> argv) {
    Process p(std::move(argv));
    REQUIRE(p.wait_exit(30s));
    const int status = p.wait();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), p.output()};
}

// The stack's programs, through curl on the control socket.
nlohmann::json programs(const fs::path& socket) {
    const auto result = run({"curl", "-sS", "--max-time", "10", "--unix-socket", socket.string(), "http://stack/v1/programs"});
    REQUIRE_MESSAGE(result.first == 0, result.second);
    return nlohmann::json::parse(result.second);
}

nlohmann::json program(const fs::path& socket, const std::string& name) {
    for (const auto& p : programs(socket))
        if (p["name"] == name) return p;
    return nullptr;
}

// A raw client of the control socket, to misbehave with.
int connect_to(const fs::path& socket) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket.c_str());
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    return fd;
}

std::size_t position(const std::string& text, const std::string& needle) {
    const auto at = text.find(needle);
    REQUIRE_MESSAGE(at != std::string::npos, "missing from procctl's log: " << needle);
    return at;
}

}  // namespace

TEST_CASE("a stack starts in dependency order, each program once those it waits for are ready, and stops in reverse") {
    hbtest::ScratchKey scratch;
    Scratch dir;
    const int port = free_port();
    const std::string key = hbwatch::format_key(scratch.key());
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "log_dir: " << (dir.dir / "log").string() << "\n"
                          << "programs:\n"
                          << "  pool:\n"
                          << "    command: [sleep, \"60\"]\n"
                          << "    instances: 3\n"
                          << "    after: [worker]\n"
                          << "  worker:\n"
                          << "    command: [" << hbtest::bin("demo_service") << ", worker, --timeout, 10s]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "    ready: beat\n"
                          << "    after: [api]\n"
                          << "    stdout: worker.log\n"
                          << "  api:\n"
                          << "    command: [" << hbtest::bin("stamp") << ", \"60000\"]\n"
                          << "    after: [db]\n"
                          << "    stdout: api.log\n"
                          << "  db:\n"
                          << "    command: [" << hbtest::bin("tcp_listen") << ", \"" << port << "\", \"300\"]\n"
                          << "    ready: tcp:127.0.0.1:" << port << "\n"
                          << "    stdout: db.log\n";

    Process check({hbtest::bin("procctl"), "--check", "-c", config.string()});
    REQUIRE(check.wait_exit(10s));
    CHECK(WEXITSTATUS(check.wait()) == 0);
    CHECK(check.output() == config.string() + ": good; 4 programs, start order: db, api, worker, pool x3\n");

    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("pool@3 is ready", 30s));
    const std::string log = stack.output_so_far();

    // api started only once db's port accepted connections.
    const long long listening = number_after(read_file(dir.dir / "log" / "db.log"), "listening");
    const long long api_start = number_after(read_file(dir.dir / "log" / "api.log"), "start");
    REQUIRE(listening > 0);
    REQUIRE(api_start > 0);
    CHECK(api_start >= listening);
    CHECK(position(log, "db is ready (its port accepts)") < position(log, "started api"));
    // The pool waited for the worker's first heartbeat.
    CHECK(position(log, "worker is ready (its first heartbeat)") < position(log, "started pool@1"));
    for (const char* instance : {"started pool@1", "started pool@2", "started pool@3"}) CHECK(position(log, instance) > 0);

    // The control socket, with curl: every program and instance, each ready.
    const fs::path socket = dir.dir / "run" / "control.sock";
    const auto all_programs = programs(socket);
    REQUIRE(all_programs.size() == 6);
    for (const auto& p : all_programs) CHECK_MESSAGE(p["state"] == "ready", p.dump());
    const int worker_pid = program(socket, "worker")["pid"].get<int>();
    const int db_pid = program(socket, "db")["pid"].get<int>();

    // A restart by name: a new pid for api, the others untouched.
    const int api_pid = program(socket, "api")["pid"].get<int>();
    int code = 0;
    std::string text;
    std::tie(code, text) = run({hbtest::bin("proctab"), "restart", "api", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 0);
    CHECK(text == "api: stopping\n");
    REQUIRE(hbtest::eventually([&] {
        const auto api = program(socket, "api");
        return api["state"] == "ready" && api["pid"].get<int>() != api_pid;
    }));
    CHECK(program(socket, "api")["restarts"] == 1);
    CHECK(program(socket, "worker")["pid"] == worker_pid);
    CHECK(program(socket, "db")["pid"] == db_pid);

    // Stop one, and start it again; proctab status says so, with its exit code.
    std::tie(code, text) = run({hbtest::bin("proctab"), "stop", "worker", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 0);
    REQUIRE(hbtest::eventually([&] { return program(socket, "worker")["state"] == "stopped"; }));
    std::tie(code, text) = run({hbtest::bin("proctab"), "status", "worker", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 3);
    CHECK(text.find("worker               stopped") != std::string::npos);
    CHECK(program(socket, "pool@2")["state"] == "ready");  // a stop is for the program named, not those after it
    std::tie(code, text) = run({hbtest::bin("proctab"), "start", "worker", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 0);
    REQUIRE(hbtest::eventually([&] { return program(socket, "worker")["state"] == "ready"; }));
    std::tie(code, text) = run({hbtest::bin("proctab"), "status", "--json", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 0);
    CHECK(nlohmann::json::parse(text).size() == 6);
    std::tie(code, text) = run({hbtest::bin("proctab"), "restart", "nobody", "--run-dir", (dir.dir / "run").string()});
    CHECK(code == 2);
    CHECK(text == "proctab: no program named 'nobody' in " + config.string() + "\n");

    // Hostile clients: garbage gets a 400; a half request and a client that never reads stall
    // nothing, and supervision goes on answering.
    const int garbage = connect_to(socket);
    const std::string junk = "GARBAGE \x01\x02 nonsense\r\n\r\n";
    REQUIRE(::write(garbage, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    char reply[512] = {};
    REQUIRE(::read(garbage, reply, sizeof reply - 1) > 0);
    CHECK(std::string(reply).starts_with("HTTP/1.1 400"));
    ::close(garbage);
    // A target that is not UTF-8 is answered, and not echoed raw (JSON must stay valid).
    const int invalid = connect_to(socket);
    const std::string bad_target = "GET /v1/programs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(::write(invalid, bad_target.data(), bad_target.size()) == static_cast<ssize_t>(bad_target.size()));
    std::string answer;
    for (ssize_t n; (n = ::read(invalid, reply, sizeof reply)) > 0;) answer.append(reply, static_cast<std::size_t>(n));
    ::close(invalid);
    CHECK(answer.starts_with("HTTP/1.1 404"));
    CHECK(answer.find(R"(no program named '\\xff\\xfe')") != std::string::npos);  // JSON text of \xff\xfe
    CHECK(stack.running());
    const int half = connect_to(socket);
    const std::string partial = "GET /v1/prog";
    REQUIRE(::write(half, partial.data(), partial.size()) == static_cast<ssize_t>(partial.size()));
    const int deaf = connect_to(socket);
    const std::string request = "GET /v1/programs HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(::write(deaf, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
    const auto started = std::chrono::steady_clock::now();
    CHECK(programs(socket).size() == 6);
    CHECK(std::chrono::steady_clock::now() - started < 5s);
    ::close(half);
    ::close(deaf);

    // A second procctl on the same run_dir refuses, naming the first.
    std::tie(code, text) = run({hbtest::bin("procctl"), "-f", "-c", config.string()});
    CHECK(code == 1);
    CHECK(text.find("is locked by procctl pid " + std::to_string(stack.pid())) != std::string::npos);

    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WIFEXITED(stack.wait()));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
    const std::string all = stack.output();
    // Reverse order: the pool before the worker, the worker before api, api before db.
    const std::string shutdown = all.substr(position(all, "stopping every program, in reverse order"));
    CHECK(position(shutdown, "stopping pool@1") < position(shutdown, "stopping worker"));
    CHECK(position(shutdown, "stopping worker") < position(shutdown, "stopping api"));
    CHECK(position(shutdown, "stopping api") < position(shutdown, "stopping db"));
    CHECK(all.find("every program is stopped; exiting") != std::string::npos);
    CHECK_FALSE(fs::exists(socket));
    // Nothing left: no process of the stack, no heartbeat entry.
    CHECK(hbtest::live_entries(scratch.options()) == 0);
    std::smatch match;
    std::string rest = all;
    while (std::regex_search(rest, match, std::regex("started [a-z@0-9]+ as pid ([0-9]+)"))) {
        const pid_t pid = std::stoi(match[1]);
        CHECK_MESSAGE((::kill(pid, 0) != 0 && errno == ESRCH), "pid " << pid << " is still there");
        rest = match.suffix();
    }
}

TEST_CASE("a stack config error stops procctl before anything starts, naming the spot") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "programs:\n  a:\n    command: [sleep, \"1\"]\n    after: [b]\n  b:\n    command: [sleep, \"1\"]\n"
                          << "    after: [a]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_exit(10s));
    CHECK(WEXITSTATUS(stack.wait()) == 1);
    CHECK(stack.output() == "procctl: " + config.string() +
                                ":4:12: after: the programs a -> b -> a wait for each other in a cycle; remove one of these "
                                "'after' entries\n");
}

TEST_CASE("a program above its max_rss for three checks in a row is restarted") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  hog:\n"
                          << "    command: [" << hbtest::bin("grow") << ", \"64\"]\n"
                          << "    max_rss: 16M\n"
                          << "    restart_delay: 100ms\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("above its max_rss of 16 MiB for 3 checks in a row: restarting it", 30s));
    REQUIRE(stack.wait_for_output_count("started hog as pid", 2, 30s));
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("a stack procctl SIGKILLed and started again takes over: what the first left running is killed") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroups)");
        return;
    }
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    const fs::path left_pid = dir.dir / "left.pid";
    // The program leaves a process of its own behind: a second sleep, in the background.
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  leaver:\n"
                          << "    command: [sh, -c, \"sleep 600 & echo $! > " << left_pid.string() << "; exec sleep 600\"]\n";
    auto first = std::make_unique<Process>(std::vector<std::string>{hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(first->wait_for_output("leaver is ready", 30s));
    if (first->output_so_far().find("cgroup v2 not used") != std::string::npos) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    REQUIRE(hbtest::eventually([&] { return !read_file(left_pid).empty(); }));
    const pid_t left = std::stoi(read_file(left_pid));
    ::kill(first->pid(), SIGKILL);
    REQUIRE(first->wait_exit(10s));
    first->wait();
    CHECK(::kill(left, 0) == 0);  // still running: nobody stopped it

    Process second({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(second.wait_for_output("leaver is ready", 30s));
    CHECK(second.output_so_far().find("left in") != std::string::npos);
    CHECK(second.output_so_far().find("by an earlier procctl (was it SIGKILLed?): killing them before starting leaver") !=
          std::string::npos);
    CHECK(hbtest::eventually([&] { return ::kill(left, 0) != 0 && errno == ESRCH; }));
    ::kill(second.pid(), SIGTERM);
    REQUIRE(second.wait_exit(30s));
    CHECK(WEXITSTATUS(second.wait()) == 0);
}
