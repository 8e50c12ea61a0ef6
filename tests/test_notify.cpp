// The stack's sd_notify server, with real clients: systemd-notify (from the systemd package)
// and a program linked to libsystemd (tests/helpers/sd_client.c). Readiness that gates the
// dependents, STATUS= in proctab status, BARRIER=1, the watchdog's stop at (never before) its
// deadline and the restart, and senders that may not speak for a program refused.

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/control.h"
#include "stack_support.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;
using namespace hbtest::stack;

namespace {

// procctl --config on `programs` ({RUN} stands for its run_dir), in a scratch directory;
// stopped by SIGTERM at the end.
struct NotifyStack {
    Scratch dir;
    std::unique_ptr<Process> procctl;
    explicit NotifyStack(std::string programs) {
        for (std::size_t at; (at = programs.find("{RUN}")) != std::string::npos;) programs.replace(at, 5, (dir.dir / "run").string());
        std::ofstream(dir.dir / "stack.yaml") << "run_dir: " << (dir.dir / "run").string() << "\nlog_dir: " << (dir.dir / "log").string()
                                              << "\nprograms:\n" << programs;
        procctl = std::make_unique<Process>(std::vector<std::string>{hbtest::bin("procctl"), "-f", "-c", (dir.dir / "stack.yaml").string()});
        REQUIRE_MESSAGE(procctl->wait_for_output("running the stack", 30s), procctl->output_so_far());
    }
    ~NotifyStack() {
        if (procctl && procctl->running()) {
            ::kill(procctl->pid(), SIGTERM);
            CHECK_MESSAGE(procctl->wait_exit(30s), "procctl did not stop on SIGTERM");
        }
    }
    [[nodiscard]] fs::path socket() const { return dir.dir / "run" / "control.sock"; }
    [[nodiscard]] nlohmann::json program(const std::string& name) const { return hbtest::stack::program(socket(), name); }
    [[nodiscard]] nlohmann::json events() const {
        const auto result = run({"curl", "-sS", "--max-time", "10", "--unix-socket", socket().string(), "http://stack/v1/events?since=0"});
        REQUIRE(result.first == 0);
        return nlohmann::json::parse(result.second)["events"];
    }
    [[nodiscard]] std::string log(const std::string& file) const { return read_file(dir.dir / "log" / file); }
};

}  // namespace

TEST_CASE("systemd-notify --ready --status: a ready: notify program gates its dependents, its status shows, and the barrier returns") {
    // The shell records systemd-notify's exit code: 1 with "Failed to invoke barrier" when the
    // server never closes the barrier's fd.
    NotifyStack stack("  svc:\n    command: [sh, -c, \"sleep 0.3; systemd-notify --ready --status='serving 3 clients'; echo rc=$?; exec sleep 1000\"]\n"
                      "    ready: notify\n    stdout: svc.log\n    stderr: svc.log\n"
                      "  dep:\n    command: [sleep, '1000']\n    after: [svc]\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("dep is ready", 30s), stack.procctl->output_so_far());
    const std::string out = stack.procctl->output_so_far();
    CHECK(out.find("svc is ready (READY=1)") != std::string::npos);
    CHECK(out.find("svc is ready") < out.find("started dep"));  // not before svc said it was ready
    CHECK(hbtest::eventually([&] { return stack.log("svc.log").find("rc=") != std::string::npos; }));
    CHECK_MESSAGE(stack.log("svc.log").find("rc=0") != std::string::npos, stack.log("svc.log"));
    CHECK(stack.program("svc")["status"] == "serving 3 clients");
    const auto status = run(proctab(stack.dir, {"status"}));
    CHECK(status.first == 0);
    CHECK_MESSAGE(status.second.find("\"serving 3 clients\"") != std::string::npos, status.second);
}

TEST_CASE("libsystemd's sd_notify: READY=1 and its barrier, WATCHDOG=1 pings, then a missed ping stops it at its deadline, never before, and it starts again") {
    NotifyStack stack("  daemon:\n    command: ['" + hbtest::bin("sd_client") + "', '10']\n    ready: notify\n    watchdog: 2s\n"
                      "    stop_grace: 5s\n    restart_delay: 0s\n    stdout: daemon.log\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("daemon is ready (READY=1)", 30s), stack.procctl->output_so_far());
    // WATCHDOG_USEC and WATCHDOG_PID as sd_watchdog_enabled() wants them: the pid its own.
    CHECK(hbtest::eventually([&] { return stack.log("daemon.log").find("barrier=") != std::string::npos; }));
    CHECK_MESSAGE(stack.log("daemon.log").find("watchdog enabled=1 usec=2000000") != std::string::npos, stack.log("daemon.log"));
    CHECK_MESSAGE(stack.log("daemon.log").find("barrier=1") != std::string::npos, stack.log("daemon.log"));
    // Its pings are a heartbeat in the status columns.
    const auto beats = stack.program("daemon")["heartbeats"];
    REQUIRE(beats.size() == 1);
    CHECK(beats[0]["name"] == "sd_notify watchdog");
    CHECK(beats[0]["timeout_seconds"] == 2.0);

    REQUIRE_MESSAGE(stack.procctl->wait_for_output("missed its watchdog", 30s), stack.procctl->output_so_far());
    REQUIRE(stack.procctl->wait_for_output_count("daemon is ready (READY=1)", 2, 30s));
    const std::string log = stack.log("daemon.log");
    const auto at = log.find("last ping ");
    REQUIRE(at != std::string::npos);
    const double last_ping_ms = std::stod(log.substr(at + 10)) / 1e6;
    double hung_ms = 0, stopping_ms = 0;
    int started = 0;
    for (const auto& event : stack.events()) {
        const double ms = event["monotonic_ns"].get<double>() / 1e6;
        if (event["kind"] == "heartbeat_hung" && hung_ms == 0) {
            hung_ms = ms;
            CHECK(event["details"]["source"] == "sd_notify");
        }
        if (event["kind"] == "stopping" && stopping_ms == 0) {
            stopping_ms = ms;
            CHECK(event["details"]["reason"] == "its missed sd_notify watchdog");
        }
        if (event["kind"] == "started") ++started;
    }
    MESSAGE("the stop came " << hung_ms - last_ping_ms - 2000.0 << " ms after the deadline (the last ping + 2 s)");
    CHECK(hung_ms >= last_ping_ms + 2000.0);           // never before its deadline
    CHECK(hung_ms <= last_ping_ms + 2000.0 + 1000.0);  // and soon after it (generous, for a loaded machine)
    CHECK(stopping_ms >= hung_ms);
    CHECK(started == 2);
}

TEST_CASE("a notify message from outside the program's cgroup is refused (another program's process), and another user cannot even send one") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroups, and a sender as nobody)");
        return;
    }
    // Another program's process, told the victim's socket.
    NotifyStack stack("  victim:\n    command: [sleep, '1000']\n    ready: notify\n    ready_timeout: 1d\n"
                      "  other:\n    command: [sh, -c, \"NOTIFY_SOCKET={RUN}/notify/victim.sock systemd-notify --ready --status=forged; "
                      "exec sleep 1000\"]\n");
    if (stack.procctl->output_so_far().find("cgroup v2 not used") != std::string::npos) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    const std::string victim_socket = (stack.dir.dir / "run" / "notify" / "victim.sock").string();
    fs::permissions(stack.dir.dir, fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);  // nobody reaches the socket
    // As another user, from a process in no program's cgroup.
    const auto as_nobody = run({"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "NOTIFY_SOCKET=" + victim_socket,
                                "systemd-notify", "--ready", "--status=forged"});
    // The socket is the program's user's alone (0600): nothing, fds included, reaches procctl.
    CHECK(as_nobody.first != 0);
    CHECK_MESSAGE(as_nobody.second.find("Permission denied") != std::string::npos, as_nobody.second);
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("which is not in victim's cgroup nor its main process, refused", 30s),
                    stack.procctl->output_so_far());
    CHECK((fs::status(victim_socket).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
    CHECK(stack.program("victim")["state"] == "starting");
    CHECK(stack.program("victim")["status"].is_null());
    CHECK(stack.program("victim")["notify"]["refused"].get<int>() >= 1);
}

TEST_CASE("a flood of notify datagrams leaves supervision as fast: another program's restart, and the API") {
    NotifyStack stack("  flooder:\n    command: ['" + hbtest::bin("sd_client") + "', flood]\n    notify: true\n"
                      "  other:\n    command: [sleep, '1000']\n    restart_delay: 0s\n");
    REQUIRE(stack.procctl->wait_for_output_count("is ready", 2, 30s));
    REQUIRE(hbtest::eventually([&] { return stack.program("flooder")["status"].is_string(); }));
    // procctl's part of a restart, from its events: the request to its stopping event, and the
    // old process's exit (as procctl saw it) to the new one's fork (test_http's flood test says why).
    std::uint64_t seen = 0;
    auto restart = [&] {
        for (const auto& event : stack.events()) seen = std::max(seen, event["seq"].get<std::uint64_t>());
        const double asked_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
        const int before = stack.program("other")["pid"].get<int>();
        REQUIRE(hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/programs/other/restart").status == 200);
        REQUIRE(hbtest::eventually([&] {
            const auto p = stack.program("other");
            return p["state"] == "ready" && p["pid"].get<int>() != before;
        }));
        std::map<std::string, double> at;
        double exec_ms = 0;
        for (const auto& event : stack.events()) {
            const std::string kind = event["kind"];
            if (event["seq"].get<std::uint64_t>() <= seen || event["instance"] != "other" || at.count(kind)) continue;
            at[kind] = event["monotonic_ns"].get<double>() / 1e6;
            if (kind == "started") exec_ms = event["details"]["exec_seconds"].get<double>() * 1000.0;
        }
        REQUIRE((at.count("stopping") && at.count("exited") && at.count("started")));
        return (at["stopping"] - asked_ms) + (at["started"] - exec_ms - at["exited"]);
    };
    std::vector<double> flooded, quiet;
    for (int i = 0; i < 7; ++i) flooded.push_back(restart());
    const auto status = stack.program("flooder")["status"].get<std::string>();
    CHECK(status.rfind("flood ", 0) == 0);
    REQUIRE(run(proctab(stack.dir, {"stop", "flooder"})).first == 0);
    for (int i = 0; i < 7; ++i) quiet.push_back(restart());
    std::sort(flooded.begin(), flooded.end());
    std::sort(quiet.begin(), quiet.end());
    MESSAGE("procctl's part of a restart: median " << quiet[3] << " ms quiet, " << flooded[3] << " ms under the flood (last status '"
                                                   << status << "')");
    CHECK(flooded[3] - quiet[3] < 50.0);
}

TEST_CASE("a reload that replaces a notify program keeps its socket: the new one's READY=1 is heard, after the old one is gone too") {
    const std::string program = "  svc:\n    command: [sh, -c, \"systemd-notify --ready; exec sleep 1000\"]\n    ready: notify\n";
    NotifyStack stack(program);
    REQUIRE(stack.procctl->wait_for_output("svc is ready (READY=1)", 30s));
    std::ofstream(stack.dir.dir / "stack.yaml", std::ios::app) << "    environment: {CHANGED: '1'}\n";
    const auto reload = run(proctab(stack.dir, {"reload"}));
    REQUIRE_MESSAGE(reload.first == 0, reload.second);
    REQUIRE(stack.procctl->wait_for_output_count("svc is ready (READY=1)", 2, 30s));
    // The old unit, dropped by now, took nothing with it: a restart is heard again.
    REQUIRE(hbtest::eventually([&] { return stack.program("svc")["state"] == "ready"; }));
    REQUIRE(run(proctab(stack.dir, {"restart", "svc"})).first == 0);
    CHECK_MESSAGE(stack.procctl->wait_for_output_count("svc is ready (READY=1)", 3, 30s), stack.procctl->output_so_far());
    CHECK(fs::exists(stack.dir.dir / "run" / "notify" / "svc.sock"));
}
