// procctl --config: a stack of four programs on real processes, a real TCP port and a real
// heartbeat table. Every wait is on an event (an output line, a pidfd) or a poll with a deadline.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "core/table.h"

#include "stack_support.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;
using namespace hbtest::stack;

namespace {

long long number_after(const std::string& text, const std::string& word) {
    std::smatch match;
    if (!std::regex_search(text, match, std::regex(word + " ([0-9]+)"))) return -1;
    return std::stoll(match[1]);
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
    const int port = hbtest::free_port();
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
    // The instances start together, each once its own exec is seen: in any order.
    for (const char* instance : {"pool@1 is ready", "pool@2 is ready", "pool@3 is ready"})
        REQUIRE_MESSAGE(stack.wait_for_output(instance, 30s), stack.output_so_far());
    const std::string log = stack.output_so_far();

    // api started only once db's port accepted connections. Their lines reach their files
    // through procctl's pipes, maybe after "ready" (a loaded machine may run api's first
    // instruction late): waited for.
    long long listening = -1, api_start = -1;
    REQUIRE(hbtest::eventually([&] {
        listening = number_after(read_file(dir.dir / "log" / "db.log"), "listening");
        api_start = number_after(read_file(dir.dir / "log" / "api.log"), "start");
        return listening > 0 && api_start > 0;
    }));
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
    REQUIRE(stack.wait_for_output("above its max_rss of 16 MiB for 3 checks in a row: stopping it, to start it again", 30s));
    REQUIRE(stack.wait_for_output_count("started hog as pid", 2, 30s));
    // The same as an event, with the figures as data, before the stop it caused.
    const auto events = run({"curl", "-sS", "--max-time", "10", "--unix-socket", (dir.dir / "run" / "control.sock").string(),
                             "http://stack/v1/events?since=0"});
    REQUIRE(events.first == 0);
    std::vector<std::string> kinds;
    const auto page = nlohmann::json::parse(events.second);  // named: a temporary would end before the loop
    for (const auto& event : page["events"]) {
        kinds.push_back(event["kind"]);
        if (event["kind"] == "max_rss_exceeded") {
            CHECK(event["details"]["max_rss_bytes"] == 16u << 20);
            CHECK(event["details"]["rss_bytes"].get<std::uint64_t>() > 16u << 20);
        }
    }
    const auto at = std::find(kinds.begin(), kinds.end(), "max_rss_exceeded");
    REQUIRE(at != kinds.end());
    REQUIRE(at + 1 != kinds.end());
    CHECK(*(at + 1) == "stopping");
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

TEST_CASE("a program whose cgroup cgroup.kill struck starts again and keeps running (the kernel kills children cloned into it)") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroups)");
        return;
    }
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    // On SIGTERM the exec'd sleep goes and the background one stays: procctl kills it with cgroup.kill.
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nprograms:\n"
                          << "  leaver:\n    command: [sh, -c, \"sleep 600 & exec sleep 601\"]\n    stop_grace: 5s\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("leaver is ready", 30s));
    if (stack.output_so_far().find("cgroup v2 not used") != std::string::npos) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    const fs::path socket = dir.dir / "run" / "control.sock";
    const auto stop = run({hbtest::bin("proctab"), "stop", "leaver", "--run-dir", (dir.dir / "run").string()});
    REQUIRE_MESSAGE(stop.first == 0, stop.second);
    REQUIRE(stack.wait_for_output("leaver stopped", 30s));
    const auto start = run({hbtest::bin("proctab"), "start", "leaver", "--run-dir", (dir.dir / "run").string()});
    REQUIRE_MESSAGE(start.first == 0, start.second);
    REQUIRE(stack.wait_for_output_count("leaver is ready", 2, 30s));
    const int pid = program(socket, "leaver")["pid"].get<int>();
    // Still the same process a while later: not killed at birth and restarted in a loop.
    std::this_thread::sleep_for(1500ms);  // a span to watch for a death, not a wait for an event
    CHECK(program(socket, "leaver")["pid"] == pid);
    CHECK(program(socket, "leaver")["restarts"] == 1);
    CHECK(stack.output_so_far().find("was killed by SIGKILL") == std::string::npos);
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("a start whose child the kernel holds before its exec holds nothing else up, and a stop meanwhile kills it") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroups)");
        return;
    }
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nprograms:\n"
                          << "  held: {command: [sleep, '1000'], ready_timeout: 2s}\n"
                          << "  other: {command: [sleep, '1000'], restart_delay: 0s}\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output_count("is ready", 2, 30s));
    if (stack.output_so_far().find("cgroup v2 not used") != std::string::npos) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    const fs::path socket = dir.dir / "run" / "control.sock";
    const fs::path cgroup = cgroup_dir_of(program(socket, "held")["pid"].get<int>());
    REQUIRE_MESSAGE(!cgroup.empty(), "no cgroup.freeze for held's cgroup");
    auto ask = [&](std::vector<std::string> args) {
        const auto result = run(proctab(dir, std::move(args)));
        CHECK_MESSAGE(result.first == 0, result.second);
    };
    auto freeze = [&](bool frozen) { std::ofstream(cgroup / "cgroup.freeze") << (frozen ? "1" : "0"); };
    auto other_restarts = [&] {
        // The loop is free: it restarts another program and answers, the held start in flight.
        const int before = program(socket, "other")["pid"].get<int>();
        ask({"restart", "other"});
        CHECK(hbtest::eventually([&] {
            const auto p = program(socket, "other");
            return p["state"] == "ready" && p["pid"].get<int>() != before;
        }));
    };

    // Frozen: the child is forked into the cgroup and held there before its first instruction.
    ask({"stop", "held"});
    REQUIRE(stack.wait_for_output("held stopped", 30s));
    freeze(true);
    ask({"start", "held"});
    REQUIRE(hbtest::eventually([&] { return !read_file(cgroup / "cgroup.procs").empty(); }));
    other_restarts();
    CHECK(program(socket, "held")["state"] == "starting");
    CHECK(program(socket, "held")["pid"].is_null());  // not its until its exec is seen
    std::this_thread::sleep_for(300ms);  // a span for its exec to take, not a wait for an event
    freeze(false);
    REQUIRE(hbtest::eventually([&] { return program(socket, "held")["state"] == "ready"; }));
    const int held = program(socket, "held")["pid"].get<int>();
    CHECK(read_file(cgroup / "cgroup.procs") == std::to_string(held) + "\n");
    // Its start counts from the fork: the held time is in its exec.
    const auto page = nlohmann::json::parse(run({"curl", "-sS", "--unix-socket", socket.string(), "http://stack/v1/events?since=0"}).second);
    double exec_seconds = 0;
    for (const auto& event : page["events"])
        if (event["kind"] == "started" && event["instance"] == "held") exec_seconds = event["details"]["exec_seconds"].get<double>();
    CHECK(exec_seconds >= 0.3);

    // Stopped while held: killed there, never started, nothing left in its cgroup.
    ask({"stop", "held"});
    REQUIRE(stack.wait_for_output_count("held stopped", 2, 30s));
    freeze(true);
    ask({"start", "held"});
    REQUIRE(hbtest::eventually([&] { return !read_file(cgroup / "cgroup.procs").empty(); }));
    ask({"stop", "held"});
    REQUIRE(stack.wait_for_output("held: not started after all", 30s));  // SIGKILL ends a frozen process
    CHECK(hbtest::eventually([&] { return read_file(cgroup / "cgroup.procs").empty(); }));
    freeze(false);
    other_restarts();
    CHECK(program(socket, "held")["state"] == "stopped");
    CHECK(program(socket, "held")["pid"].is_null());

    // Held past its ready_timeout: a failed start, killed, then tried again after its backoff.
    freeze(true);
    ask({"start", "held"});
    REQUIRE(stack.wait_for_output("cannot start held: its exec within its ready_timeout (2.0s) failed", 30s));
    CHECK(hbtest::eventually([&] { return read_file(cgroup / "cgroup.procs").empty(); }));
    freeze(false);
    CHECK(hbtest::eventually([&] { return program(socket, "held")["state"] == "ready"; }, 30s));
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

namespace {

int pid_of(const fs::path& socket, const std::string& name) {
    const auto p = program(socket, name);
    return p.is_null() || p["pid"].is_null() ? 0 : p["pid"].get<int>();
}

bool gone(int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

}  // namespace

TEST_CASE("a reload starts what was added, stops what was removed, restarts what changed, and touches nothing else") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    const std::string head = "run_dir: " + (dir.dir / "run").string() + "\nlog_dir: " + dir.dir.string() + "\nprograms:\n";
    auto write = [&](const std::string& programs) { std::ofstream(config) << head << programs; };
    write("  a:\n    command: [sleep, \"600\"]\n"
          "  b:\n    command: [sleep, \"601\"]\n    after: [a]\n"
          "  c:\n    command: [sleep, \"602\"]\n");
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("c is ready", 30s));
    const fs::path socket = dir.dir / "run" / "control.sock";
    REQUIRE(hbtest::eventually([&] { return programs(socket).size() == 3; }));
    const int a = pid_of(socket, "a"), b = pid_of(socket, "b"), c = pid_of(socket, "c");

    // b's command changes, c goes, d comes.
    const std::string v2 = "  a:\n    command: [sleep, \"600\"]\n"
                           "  b:\n    command: [sleep, \"603\"]\n    after: [a]\n"
                           "  d:\n    command: [sleep, \"604\"]\n";
    write(v2);
    int code = 0;
    std::string text;  // not a structured binding: clang 14 cannot capture one in doctest's macros
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(code == 0);
    CHECK(text == "added:     d\nremoved:   c\nchanged:   b\nunchanged: a\n");
    REQUIRE(hbtest::eventually([&] {
        const auto list = programs(socket);
        std::vector<std::string> names;
        for (const auto& p : list) names.push_back(p["name"].get<std::string>());
        return names == std::vector<std::string>{"a", "b", "d"} && pid_of(socket, "b") != b && pid_of(socket, "b") != 0 &&
               program(socket, "d")["state"] == "ready";
    }));
    CHECK(pid_of(socket, "a") == a);  // untouched
    CHECK(hbtest::eventually([&] { return gone(b) && gone(c); }));
    const int b2 = pid_of(socket, "b"), d = pid_of(socket, "d");

    // A config that does not load is refused, naming the spot; the running config is kept.
    write(v2 + "    bogus: 1\n");
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(code == 1);
    CHECK_MESSAGE(text.starts_with("proctab: " + config.string() + ":11:5: program 'd': unknown key 'bogus'"), text);
    CHECK_MESSAGE(text.ends_with("(the running config is kept)\n"), text);
    CHECK(stack.wait_for_output("reload refused, the running config is kept", 10s));
    // So is a change a running procctl cannot make.
    std::ofstream(config) << "run_dir: " << (dir.dir / "elsewhere").string() << "\nprograms:\n" << v2;
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(code == 1);
    CHECK_MESSAGE(text.find("run_dir changed from '" + (dir.dir / "run").string() + "' to '" +
                            (dir.dir / "elsewhere").string() + "': a reload cannot apply that; restart procctl") !=
                      std::string::npos,
                  text);
    CHECK(pid_of(socket, "a") == a);
    CHECK(pid_of(socket, "b") == b2);
    CHECK(pid_of(socket, "d") == d);

    // SIGHUP reloads too: a's command changes; b, which waits for a, keeps running.
    write("  a:\n    command: [sleep, \"605\"]\n"
          "  b:\n    command: [sleep, \"603\"]\n    after: [a]\n"
          "  d:\n    command: [sleep, \"604\"]\n");
    ::kill(stack.pid(), SIGHUP);
    REQUIRE(stack.wait_for_output("added none; removed none; changed (restarted) a; unchanged b, d", 10s));
    REQUIRE(hbtest::eventually([&] { return pid_of(socket, "a") != a && program(socket, "a")["state"] == "ready"; }));
    const int a2 = pid_of(socket, "a");
    CHECK(pid_of(socket, "b") == b2);
    CHECK(pid_of(socket, "d") == d);

    // A name that does not exist: nothing is done, not even for the names that do.
    std::tie(code, text) = run(proctab(dir, {"stop", "d", "nosuch"}));
    CHECK(code == 2);
    CHECK(program(socket, "d")["state"] == "ready");
    // A program an operator stopped stays stopped when a reload changes it.
    std::tie(code, text) = run(proctab(dir, {"stop", "d"}));
    REQUIRE(hbtest::eventually([&] { return program(socket, "d")["state"] == "stopped"; }));
    write("  a:\n    command: [sleep, \"605\"]\n"
          "  b:\n    command: [sleep, \"603\"]\n    after: [a]\n"
          "  d:\n    command: [sleep, \"606\"]\n");
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(text == "added:     -\nremoved:   -\nchanged:   d\nunchanged: a, b\n");
    REQUIRE(stack.wait_for_output("changed (restarted) d", 10s));
    CHECK(program(socket, "d")["state"] == "stopped");
    // Reloads that move a program's output file keep no descriptor of the files left behind.
    auto descriptors = [&] { return std::distance(fs::directory_iterator("/proc/" + std::to_string(stack.pid()) + "/fd"), {}); };
    const auto before = descriptors();
    for (int i = 0; i < 10; ++i) {
        std::string programs_text = "  a:\n    command: [sleep, \"605\"]\n"
                                    "  b:\n    command: [sleep, \"603\"]\n    after: [a]\n"
                                    "  d:\n    command: [sleep, \"606\"]\n    stdout: ";
        programs_text.append("d").append(std::to_string(i)).append(".log\n");  // under log_dir; not +: g++ 12's false -Wrestrict
        write(programs_text);
        std::tie(code, text) = run(proctab(dir, {"reload"}));
        REQUIRE(code == 0);
    }
    // Once the last replaced d has stopped (under load it may still be stopping, its file and
    // pipe rightly open): one output file (and its directory) at most.
    CHECK(hbtest::eventually([&] { return descriptors() <= before + 2; }, 30s));
    std::tie(code, text) = run(proctab(dir, {"start", "d"}));
    REQUIRE(hbtest::eventually([&] { return program(socket, "d")["state"] == "ready"; }));
    // A program no operator touched follows its autostart across a reload.
    const std::string abd = "  a:\n    command: [sleep, \"605\"]\n"
                            "  b:\n    command: [sleep, \"603\"]\n    after: [a]\n"
                            "  d:\n    command: [sleep, \"606\"]\n";
    write(abd + "  lazy:\n    command: [sleep, \"607\"]\n    autostart: false\n");
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    REQUIRE(code == 0);
    CHECK(program(socket, "lazy")["state"] == "stopped");
    write(abd + "  lazy:\n    command: [sleep, \"607\"]\n    autostart: true\n");
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    REQUIRE(code == 0);
    CHECK(hbtest::eventually([&] { return program(socket, "lazy")["state"] == "ready"; }));

    // stop all: in reverse order, b (which waits for a) before a.
    std::tie(code, text) = run(proctab(dir, {"stop", "all"}));
    CHECK(code == 0);
    REQUIRE(hbtest::eventually([&] {
        const auto list = programs(socket);
        return std::all_of(list.begin(), list.end(), [](const auto& p) { return p["state"] == "stopped"; });
    }));
    REQUIRE(stack.wait_for_output("stopping a (pid " + std::to_string(a2) + ")", 10s));
    const std::string log = stack.output_so_far();
    const std::string stopping = log.substr(position(log, "a: stop requested"));
    CHECK(position(stopping, "stopping b") < position(stopping, "stopping a"));
    std::tie(code, text) = run(proctab(dir, {"status"}));
    CHECK(code == 3);  // stopped programs: not all ready
    std::tie(code, text) = run(proctab(dir, {"start", "all"}));
    CHECK(code == 0);
    REQUIRE(hbtest::eventually([&] {
        const auto list = programs(socket);
        return std::all_of(list.begin(), list.end(), [](const auto& p) { return p["state"] == "ready"; });
    }));
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("proctab tail shows a program's last lines and follows what it writes across rotations, and a signal reaches it") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "log_dir: " << (dir.dir / "log").string() << "\n"
                          << "programs:\n"
                          << "  talker:\n"
                          << "    command: [sh, -c, \"trap 'echo got USR1' USR1; i=0; while :; do i=$((i+1)); echo line $i; "
                             "sleep 0.01; done\"]\n"
                          << "    stdout: talker.log\n"
                          << "    log_max_size: 4K\n"
                          << "    log_files: 2\n"
                          << "  quiet:\n"
                          << "    command: [sleep, \"600\"]\n"
                          << "  painter:\n"
                          << "    command: [sh, -c, \"printf '\\\\033]0;owned\\\\007\\\\033[2J\\\\tend\\\\342\\\\200\\\\256\\\\n'; exec sleep 600\"]\n"
                          << "    stdout: painter.log\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("quiet is ready", 30s));
    const fs::path socket = dir.dir / "run" / "control.sock";

    // The last three lines: consecutive, the newest last.
    REQUIRE(hbtest::eventually([&] { return fs::exists(dir.dir / "log" / "talker.log") && fs::file_size(dir.dir / "log" / "talker.log") > 100; }));
    int code = 0;
    std::string text;  // not a structured binding: clang 14 cannot capture one in doctest's macros
    std::tie(code, text) = run(proctab(dir, {"tail", "talker", "-n", "3"}));
    CHECK(code == 0);
    std::smatch match;
    REQUIRE_MESSAGE(std::regex_match(text, match, std::regex("line ([0-9]+)\nline ([0-9]+)\nline ([0-9]+)\n")), text);
    CHECK(std::stoi(match[2]) == std::stoi(match[1]) + 1);
    CHECK(std::stoi(match[3]) == std::stoi(match[2]) + 1);
    // The same through curl.
    const auto curl = run({"curl", "-sS", "--max-time", "10", "--unix-socket", socket.string(),
                           "http://stack/v1/programs/talker/output?tail=2"});
    REQUIRE(curl.first == 0);
    const auto reply = nlohmann::json::parse(curl.second);
    CHECK(reply[0]["name"] == "talker");
    CHECK(reply[0]["lines"].size() == 2);
    CHECK(reply[0]["path"] == (dir.dir / "log" / "talker.log").string());

    // Followed: every line once, in order, across at least one rotation (4 KiB is about 450 lines).
    Process follower(proctab(dir, {"tail", "talker", "-f", "-n", "1"}));
    REQUIRE(follower.wait_for_output_count("\n", 1000, 120s));
    // A signal by name reaches the program, and its answer shows in the followed output.
    std::tie(code, text) = run(proctab(dir, {"signal", "talker", "USR1"}));
    CHECK(code == 0);
    CHECK(text == "talker: SIGUSR1 sent to pid " + std::to_string(pid_of(socket, "talker")) + "\n");
    REQUIRE(follower.wait_for_output("got USR1", 30s));
    ::kill(follower.pid(), SIGTERM);
    REQUIRE(follower.wait_exit(10s));
    follower.wait();
    CHECK(fs::exists(dir.dir / "log" / "talker.1.log"));
    std::istringstream lines(follower.output());
    int previous = -1, count = 0;
    for (std::string line; std::getline(lines, line);) {
        if (line == "got USR1") continue;
        REQUIRE_MESSAGE(line.starts_with("line "), line);
        const int n = std::stoi(line.substr(5));
        if (previous >= 0) REQUIRE_MESSAGE(n == previous + 1, "line " << n << " after line " << previous);
        previous = n;
        ++count;
    }
    CHECK(count >= 1000);

    // A program's escape sequences never reach the operator's terminal.
    REQUIRE(hbtest::eventually([&] { return fs::exists(dir.dir / "log" / "painter.log") && fs::file_size(dir.dir / "log" / "painter.log") > 0; }));
    std::tie(code, text) = run(proctab(dir, {"tail", "painter"}));
    CHECK(code == 0);
    CHECK(text == "\\x1b]0;owned\\x07\\x1b[2J\tend\\u202e\n");

    // A program without an output file, and a signal name that is not one.
    std::tie(code, text) = run(proctab(dir, {"tail", "quiet"}));
    CHECK(code == 2);
    CHECK(text == "proctab: quiet has no stdout file (no 'stdout:' in the config): its output goes to procctl's own\n");
    std::tie(code, text) = run(proctab(dir, {"signal", "quiet", "BOGUS"}));
    CHECK(code == 2);
    CHECK(text == "proctab: 'BOGUS' is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL\n");
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("a hung program is stopped by checkproc and brought back by the stack, and one that cannot start says why") {
    hbtest::ScratchKey scratch;
    Scratch dir;
    const std::string key = hbwatch::format_key(scratch.key());
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  checkproc:\n"
                          << "    command: [" << hbtest::bin("checkproc") << ", --diagnoses, " << std::getenv("HBWATCH_DIAGNOSES") << ", --watch, --grace, 1s]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "  hangs:\n"
                          // Only its first run hangs: the count of restarts below is then exact, however
                          // long the machine keeps the test from reading it.
                          << "    command: [sh, -c, \"if mkdir " << (dir.dir / "hung-once").string() << " 2>/dev/null; then exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 1s --hang-after 1s; else exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 10s; fi\"]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "    ready: beat\n"
                          << "    restart_delay: 100ms\n"
                          << "    after: [checkproc]\n"
                          << "  broken:\n"
                          << "    command: [" << (dir.dir / "no-such-program").string() << "]\n"
                          << "    restart_delay: 1m\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("hangs is ready (its first heartbeat)", 30s));
    const fs::path socket = dir.dir / "run" / "control.sock";
    // While it beats, its status carries its heartbeat entry.
    const auto first = program(socket, "hangs");
    const int first_pid = first["pid"].get<int>();
    REQUIRE(first["heartbeats"].size() == 1);
    CHECK(first["heartbeats"][0]["name"] == "hangs");
    CHECK(first["heartbeats"][0]["timeout_seconds"] == 1.0);

    REQUIRE(stack.wait_for_output("'hangs': hung:", 30s));
    REQUIRE(stack.wait_for_output_count("hangs is ready (its first heartbeat)", 2, 30s));
    CHECK(gone(first_pid));
    CHECK(pid_of(socket, "hangs") != first_pid);
    CHECK(program(socket, "hangs")["restarts"] == 1);

    const auto broken = program(socket, "broken");
    CHECK(broken["state"] == "backoff");
    CHECK(broken["last_exit"] == "could not start: exec failed: No such file or directory");
    int code = 0;
    std::string text;  // not a structured binding: clang 14 cannot capture one in doctest's macros
    std::tie(code, text) = run(proctab(dir, {"status", "broken"}));
    CHECK(code == 3);
    CHECK(text.find("could not start: exec failed: No such file or directory") != std::string::npos);

    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
    CHECK(hbtest::live_entries(scratch.options()) == 0);
}

TEST_CASE("procctl --config sleeps while a program takes its grace to stop, and while its dependency waits for it") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  base:\n    command: [sleep, \"600\"]\n    max_rss: 1G\n"
                          << "  slow:\n    command: [sh, -c, \"trap '' TERM; while :; do sleep 0.1; done\"]\n"
                          << "    after: [base]\n    stop_grace: 8s\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("slow is ready", 30s));
    auto cpu_ticks = [&] {
        std::ifstream stat("/proc/" + std::to_string(stack.pid()) + "/stat");
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        std::istringstream fields(text.substr(text.rfind(')') + 2));
        std::string field;
        long ticks = 0;
        for (int i = 3; i <= 15 && fields >> field; ++i)
            if (i >= 14) ticks += std::stol(field);  // utime + stime
        return ticks;
    };
    auto busy_share = [&] {  // procctl's CPU time over 2 s, as a share of those 2 s
        const long before = cpu_ticks();
        ::poll(nullptr, 0, 2000);  // the measurement window itself: nothing to wait for
        return static_cast<double>(cpu_ticks() - before) / (2.0 * static_cast<double>(::sysconf(_SC_CLK_TCK)));
    };
    // slow ignores SIGTERM: it stops at SIGKILL, 8 s on; base waits for it to stop first.
    REQUIRE(run({hbtest::bin("proctab"), "stop", "all", "--run-dir", (dir.dir / "run").string()}).first == 0);
    REQUIRE(stack.wait_for_output("stopping slow", 10s));
    CHECK(busy_share() < 0.1);
    ::kill(stack.pid(), SIGTERM);  // everything stops: the same wait
    REQUIRE(stack.wait_for_output("stopping every program", 10s));
    CHECK(busy_share() < 0.1);
    REQUIRE(stack.wait_exit(60s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("scripts/stop.sh returns once procctl has exited, not merely unlocked its pidfile, and the pidfile is gone") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nprograms:\n"
                          << "  a:\n    command: [sleep, \"600\"]\n  b:\n    command: [sleep, \"601\"]\n    after: [a]\n";
    // In the background, as an operator starts it: its parent is not this test.
    const auto started_said = run({hbtest::bin("procctl"), "-c", config.string()});
    const int started = started_said.first;
    const std::string& said = started_said.second;
    REQUIRE_MESSAGE(started == 0, said);
    const fs::path pidfile = dir.dir / "run" / "procctl.pid";
    const pid_t pid = static_cast<pid_t>(std::stol(read_file(pidfile)));
    const int pidfd = ::pidfd_open(pid, 0);
    REQUIRE(pidfd >= 0);
    REQUIRE(hbtest::eventually([&] { return program(dir.dir / "run" / "control.sock", "b")["state"] == "ready"; }));
    Process stop({std::string(HBWATCH_SOURCE_DIR) + "/scripts/stop.sh", (dir.dir / "run").string(), "20"},
                 [] { ::setenv("HBWATCH_BIN", HBWATCH_BIN_DIR, 1); });
    REQUIRE(stop.wait_exit(30s));
    CHECK(stop.wait() == 0);
    const std::string out = stop.output();
    CHECK(out.find("procctl --stop: stopped: procctl pid " + std::to_string(pid) + " exited ") != std::string::npos);
    pollfd exited{pidfd, POLLIN, 0};
    CHECK(::poll(&exited, 1, 0) == 1);  // at the moment stop.sh returned
    ::close(pidfd);
    CHECK_FALSE(fs::exists(pidfile));
    CHECK_FALSE(fs::exists(dir.dir / "run" / "control.sock"));
    // Again: nothing runs, and it says so.
    const auto [again, again_out] = run({hbtest::bin("procctl"), "--stop", (dir.dir / "run").string()});
    CHECK(again == 0);
    CHECK(again_out == "procctl --stop: no procctl runs with " + pidfile.string() + " (no pidfile)\n");
}

namespace {

// A notify socket as systemd keeps one: AF_UNIX datagrams, one message each.
class NotifySocket {
public:
    explicit NotifySocket(const fs::path& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    }
    ~NotifySocket() { ::close(fd_); }
    // The next message, or "" when none came within `timeout`.
    std::string next(std::chrono::milliseconds timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return "";
        char buffer[4096];
        const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
        return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : "";
    }
    // Messages until one contains `needle` (returned), or "" after `timeout`.
    std::string until(const std::string& needle, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return "";
            const std::string message = next(left);
            if (message.find(needle) != std::string::npos) return message;
        }
    }

private:
    fs::path path_;
    int fd_ = -1;
};

}  // namespace

TEST_CASE("under systemd (Type=notify): READY=1 once the stack is up, STATUS, WATCHDOG=1 from the loop, RELOADING=1 then READY=1, STOPPING=1") {
    Scratch dir;
    NotifySocket notify(dir.dir / "notify.sock");
    const fs::path seen = dir.dir / "child-saw";
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  db: {command: [sleep, '1000']}\n"
                          // Even a program given procctl's whole environment never gets the socket.
                          << "  api: {command: [sh, -c, 'echo \"${NOTIFY_SOCKET:-none} ${WATCHDOG_USEC:-none}\" > " << seen.string()
                          << "; exec sleep 1000'], after: [db], inherit_environment: true}\n";
    Process stack({"env", "NOTIFY_SOCKET=" + (dir.dir / "notify.sock").string(), "WATCHDOG_USEC=1000000", hbtest::bin("procctl"), "-f", "-c",
                   config.string()});
    const std::string ready = notify.until("READY=1", 30s);
    REQUIRE_MESSAGE(!ready.empty(), stack.output_so_far());
    CHECK_MESSAGE(ready.find("STATUS=2 of 2 programs ready") != std::string::npos, ready);
    REQUIRE(hbtest::eventually([&] { return fs::exists(seen) && read_file(seen) == "none none\n"; }, 10s));

    // WATCHDOG=1 every half of WATCHDOG_USEC: always within the deadline systemd holds it to.
    std::vector<std::chrono::steady_clock::time_point> pings;
    while (pings.size() < 5) {
        const std::string message = notify.until("WATCHDOG=1", 5s);
        REQUIRE_MESSAGE(!message.empty(), "no WATCHDOG=1 within 5 s");
        pings.push_back(std::chrono::steady_clock::now());
    }
    for (std::size_t i = 1; i < pings.size(); ++i) CHECK(pings[i] - pings[i - 1] < 1s);

    ::kill(stack.pid(), SIGHUP);
    const std::string reloading = notify.until("RELOADING=1", 10s);
    CHECK(std::regex_search(reloading, std::regex("MONOTONIC_USEC=[0-9]+")));
    CHECK(!notify.until("READY=1", 10s).empty());
    ::kill(stack.pid(), SIGTERM);
    const std::string stopping = notify.until("STOPPING=1", 10s);
    CHECK(stopping.find("STATUS=stopping every program") != std::string::npos);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("under systemd: READY=1 even while programs wait for one that is stopped or failing, so a stuck dependency never times the stack's start out") {
    Scratch dir;
    NotifySocket notify(dir.dir / "notify.sock");
    const fs::path config = dir.dir / "stack.yaml";
    // db never accepts (port 1, nothing listens); api and web wait behind it; admin waits for a
    // program that is not started with the stack; the rest is up.
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nprograms:\n"
                          << "  db: {command: [sleep, '1000'], ready: 'tcp:127.0.0.1:1', ready_timeout: 300ms, restart_delay: 1d}\n"
                          << "  api: {command: [sleep, '1000'], after: [db]}\n"
                          << "  web: {command: [sleep, '1000'], after: [api]}\n"
                          << "  tools: {command: [sleep, '1000'], autostart: false}\n"
                          << "  admin: {command: [sleep, '1000'], after: [tools]}\n"
                          << "  cache: {command: [sleep, '1000']}\n";
    Process stack({"env", "NOTIFY_SOCKET=" + (dir.dir / "notify.sock").string(), hbtest::bin("procctl"), "-f", "-c", config.string()});
    // Not while db is still within its ready_timeout: it is on its way up.
    const std::string first = notify.until("STATUS=", 30s);
    CHECK_MESSAGE(first.find("READY=1") == std::string::npos, first);
    const std::string ready = notify.until("READY=1", 30s);
    REQUIRE_MESSAGE(!ready.empty(), stack.output_so_far());
    // It came once db had had its try (failing, in the very message), not before.
    CHECK_MESSAGE(ready.find("STATUS=1 of 6 programs ready, 1 failing, 3 waiting") != std::string::npos, ready);
    CHECK_MESSAGE(stack.wait_for_output("db was not ready within", 10s), stack.output_so_far());
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
}

TEST_CASE("a watchdog set for another process (WATCHDOG_PID) is not pinged by procctl") {
    Scratch dir;
    NotifySocket notify(dir.dir / "notify.sock");
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nprograms:\n  db: {command: [sleep, '1000']}\n";
    Process stack({"env", "NOTIFY_SOCKET=" + (dir.dir / "notify.sock").string(), "WATCHDOG_USEC=200000", "WATCHDOG_PID=1",
                   hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(!notify.until("READY=1", 30s).empty());
    // A ping would come every 100 ms: none in 1 s.
    CHECK(notify.until("WATCHDOG=1", 1s).empty());
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
}

TEST_CASE("a command named without a path is looked up on the program's own PATH, not procctl's") {
    Scratch dir;
    fs::create_directory(dir.dir / "bin");
    std::ofstream(dir.dir / "bin" / "hbw-only-here") << "#!/bin/sh\necho found on its own PATH\nexec sleep 1000\n";
    fs::permissions(dir.dir / "bin" / "hbw-only-here", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                                          fs::perms::others_read | fs::perms::others_exec);
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\nlog_dir: " << (dir.dir / "log").string() << "\nprograms:\n"
                          << "  own:\n    command: [hbw-only-here]\n    environment: {PATH: '" << (dir.dir / "bin").string()
                          << ":/usr/bin:/bin'}\n    stdout: own.log\n"
                          << "  none:\n    command: [sleep, '1000']\n    environment: {PATH: /nonexistent}\n    restart_delay: 1d\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE_MESSAGE(stack.wait_for_output("own is ready", 30s), stack.output_so_far());
    CHECK(hbtest::eventually([&] { return read_file(dir.dir / "log" / "own.log").find("found on its own PATH") != std::string::npos; }));
    // sleep is on procctl's PATH, not on this program's.
    REQUIRE_MESSAGE(stack.wait_for_output("cannot start none: exec", 30s), stack.output_so_far());
    CHECK(stack.output_so_far().find("No such file or directory") != std::string::npos);
    ::kill(stack.pid(), SIGTERM);
    CHECK(stack.wait_exit(30s));
}
