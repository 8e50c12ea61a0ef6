// The stack's sd_notify server, with real clients: systemd-notify (from the systemd package)
// and a program linked to libsystemd (tests/helpers/sd_client.c). Readiness that gates the
// dependents, STATUS= in proctab status, BARRIER=1, the watchdog's stop at (never before) its
// deadline and the restart, and senders that may not speak for a program refused.

#include <doctest/doctest.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/pidfd.h"
#include "core/process.h"
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
                                              << "\ndiagnoses: " << (dir.dir / "diagnoses").string() << "\nprograms:\n" << programs;
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
    // And its events carry it.
    bool ready_event = false;
    for (const auto& event : stack.events())
        if (event["kind"] == "ready" && event["instance"] == "svc") ready_event = event["details"]["program_status"] == "serving 3 clients";
    CHECK(ready_event);
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
            // What it was doing, kept before the stop as checkproc keeps it (the kernel level).
            REQUIRE(event["details"].contains("diagnosis"));
            const std::string diagnosis = event["details"]["diagnosis"];
            CHECK(diagnosis.rfind((stack.dir.dir / "diagnoses" / "diagnosis-").string(), 0) == 0);
            const std::string text = read_file(diagnosis);
            CHECK_MESSAGE(text.find("why: missed its watchdog: no WATCHDOG=1 for") != std::string::npos, text);
            CHECK(text.find("threads: 1") != std::string::npos);
            CHECK(text.find("wchan: ") != std::string::npos);
            CHECK(stack.procctl->output_so_far().find("what it was doing before its stop is kept in " + diagnosis) != std::string::npos);
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

TEST_CASE("a notify message from another program's process is refused (by its cgroup, or without cgroups by descent), and another user cannot even send one") {
    // Another program's process, told the victim's socket: not in the victim's cgroup, nor (where
    // procctl has no cgroups: as a user without a delegated one) a descendant of its main process.
    NotifyStack stack("  victim:\n    command: [sleep, '1000']\n    ready: notify\n    ready_timeout: 1d\n"
                      "  other:\n    command: [sh, -c, \"NOTIFY_SOCKET={RUN}/notify/victim.sock '" + hbtest::bin("sd_client") +
                      "' say READY=1 STATUS=forged; exec sleep 1000\"]\n");
    const bool by_descent = stack.procctl->output_so_far().find("cgroup v2 not used") != std::string::npos;
    MESSAGE(std::string(by_descent ? "judged by descent (no cgroups)" : "judged by cgroup"));
    const std::string victim_socket = (stack.dir.dir / "run" / "notify" / "victim.sock").string();
    if (::geteuid() == 0) {
        fs::permissions(stack.dir.dir, fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);  // nobody reaches the socket
        // As another user, from a process in no program's cgroup.
        const auto as_nobody = run({"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "NOTIFY_SOCKET=" + victim_socket,
                                    "systemd-notify", "--ready", "--status=forged"});
        // The socket is the program's user's alone (0600): nothing, fds included, reaches procctl.
        CHECK(as_nobody.first != 0);
        CHECK_MESSAGE(as_nobody.second.find("Permission denied") != std::string::npos, as_nobody.second);
    } else {
        MESSAGE("SKIPPED (a sender as nobody): needs root");
    }
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("which is not in victim's cgroup nor its main process, refused", 30s),
                    stack.procctl->output_so_far());
    CHECK((fs::status(victim_socket).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
    CHECK(stack.program("victim")["state"] == "starting");
    CHECK(stack.program("victim")["status"].is_null());
    // Its three datagrams (two messages and the barrier) refused and counted; said once, with
    // the sender's pid and uid.
    CHECK(hbtest::eventually([&] { return stack.program("victim")["notify"]["refused"] == 3; }));
    ::kill(stack.procctl->pid(), SIGTERM);  // its whole log, to count in
    REQUIRE(stack.procctl->wait_exit(30s));
    const std::string out = stack.procctl->output();
    CHECK(std::regex_search(out, std::regex("victim: a notify message from pid [0-9]+ \\(uid " + std::to_string(::getuid()) +
                                            "\\), which is not in victim's cgroup")));
    const std::string said = "which is not in victim's cgroup nor its main process, refused";
    CHECK(out.find(said) == out.rfind(said));
}

TEST_CASE("a flood of notify datagrams leaves supervision as fast: another program's restart, and the API") {
    NotifyStack stack("  flooder:\n    command: ['" + hbtest::bin("sd_client") + "', flood]\n    notify: true\n"
                      "  other:\n    command: [sleep, '1000']\n    restart_delay: 0s\n");
    REQUIRE(stack.procctl->wait_for_output_count("is ready", 2, 30s));
    REQUIRE(hbtest::eventually([&] { return stack.program("flooder")["status"].is_string(); }));
    // procctl's part of a restart, from its events: the request to its stopping event, and the
    // old process's exit (as procctl saw it) to the new one's fork (test_http's flood test says why).
    auto restart = [&] {
        const double asked_ms = monotonic_ms();
        const int before = stack.program("other")["pid"].get<int>();
        REQUIRE(hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/programs/other/restart").status == 200);
        REQUIRE(hbtest::eventually([&] {
            const auto p = stack.program("other");
            return p["state"] == "ready" && p["pid"].get<int>() != before;
        }));
        const auto part = procctl_restart_part(stack.events(), "other", asked_ms);
        REQUIRE_MESSAGE(part.has_value(), "events of the restart not found");
        return *part;
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

namespace {

// What `sd_client daemon FILE` wrote: its grandchild (the daemon) and its first process.
std::pair<pid_t, pid_t> daemon_pids(const fs::path& file) {
    std::pair<pid_t, pid_t> pids{0, 0};
    hbtest::eventually([&] {
        std::ifstream in(file);
        return static_cast<bool>(in >> pids.first >> pids.second);
    }, 30s);
    return pids;
}

// Waits for `pid` to end (as far as a pidfd opened now can tell: gone already counts).
bool ends(pid_t pid) {
    auto pidfd = hbwatch::Pidfd::open_pid(pid);
    return !pidfd || pidfd->wait_exit(30s);
}

}  // namespace

TEST_CASE("MAINPID= from a daemon that double-forks: its grandchild is followed, restarted when it dies, and stopped") {
    NotifyStack stack("  daemon:\n    command: ['" + hbtest::bin("sd_client") + "', daemon, '{RUN}/daemon.pids']\n    ready: notify\n"
                      "    restart_delay: 0s\n    stop_grace: 5s\n    stdout: daemon.log\n"
                      "  dep:\n    command: [sleep, '1000']\n    after: [daemon]\n");
    const fs::path pids_file = stack.dir.dir / "run" / "daemon.pids";
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("dep is ready", 30s), stack.procctl->output_so_far());
    const auto [grandchild, first] = daemon_pids(pids_file);
    REQUIRE(grandchild > 0);
    // Its barrier returned after procctl took MAINPID=: the grandchild is the program already.
    CHECK(stack.program("daemon")["pid"] == grandchild);
    CHECK_MESSAGE(stack.procctl->output_so_far().find("daemon's main process is pid " + std::to_string(grandchild) + " now, not " +
                                                      std::to_string(first) + " (it said MAINPID=" + std::to_string(grandchild) + ")") !=
                      std::string::npos,
                  stack.procctl->output_so_far());
    // Its first process exits 0, as a daemon's does: that is no exit of the program. (Two
    // requests: the second is served after the turn that reaped the first process.)
    REQUIRE(ends(first));
    (void)stack.program("daemon");
    auto shown = stack.program("daemon");
    CHECK(shown["state"] == "ready");
    CHECK(shown["restarts"] == 0);
    CHECK(shown["pid"] == grandchild);
    CHECK(shown["status"] == "forked daemon " + std::to_string(grandchild));

    // It dies: procctl, its subreaper by now, reaps it, knows how it ended, and starts it again.
    std::filesystem::remove(pids_file);
    REQUIRE(::kill(grandchild, SIGKILL) == 0);
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("daemon was killed by SIGKILL", 30s), stack.procctl->output_so_far());
    REQUIRE(stack.procctl->wait_for_output_count("daemon is ready (READY=1)", 2, 30s));
    const auto [second, second_first] = daemon_pids(pids_file);
    REQUIRE(second > 0);
    CHECK(second != grandchild);
    REQUIRE(ends(second_first));
    CHECK(stack.program("daemon")["pid"] == second);

    // Stopped: the grandchild gets procctl's SIGTERM, and its end is the stop's.
    REQUIRE(run(proctab(stack.dir, {"stop", "daemon"})).first == 0);
    CHECK(ends(second));
    REQUIRE(hbtest::eventually([&] { return stack.program("daemon")["state"] == "stopped"; }, 30s));
    CHECK_MESSAGE(stack.program("daemon")["last_exit"].get<std::string>().find("was killed by SIGTERM") != std::string::npos,
                  stack.program("daemon").dump());
}

TEST_CASE("MAINPIDFD=1 with the grandchild's pidfd is followed the same way: a restart stops the grandchild") {
    NotifyStack stack("  daemon:\n    command: ['" + hbtest::bin("sd_client") + "', daemon, '{RUN}/daemon.pids', pidfd]\n    ready: notify\n"
                      "    restart_delay: 0s\n    stop_grace: 5s\n");
    const fs::path pids_file = stack.dir.dir / "run" / "daemon.pids";
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("daemon is ready (READY=1)", 30s), stack.procctl->output_so_far());
    const auto [grandchild, first] = daemon_pids(pids_file);
    REQUIRE(grandchild > 0);
    CHECK(stack.program("daemon")["pid"] == grandchild);
    CHECK(stack.procctl->output_so_far().find("(it said MAINPIDFD=1)") != std::string::npos);
    REQUIRE(ends(first));
    std::filesystem::remove(pids_file);
    REQUIRE(run(proctab(stack.dir, {"restart", "daemon"})).first == 0);
    CHECK(ends(grandchild));
    REQUIRE(stack.procctl->wait_for_output_count("daemon is ready (READY=1)", 2, 30s));
    const auto second_pids = daemon_pids(pids_file);
    const pid_t second = second_pids.first;
    CHECK(second > 0);
    CHECK(second != grandchild);
    CHECK(hbtest::eventually([&] { return stack.program("daemon")["pid"] == second; }));
}

TEST_CASE("a main process handed over that is not procctl's child: its end is seen through its pidfd, its status unknown") {
    // systemd-notify --pid=$!: the shell's background child is the program's main process; the
    // shell, its parent, lives on and reaps it.
    NotifyStack stack("  svc:\n    command: [sh, -c, \"sleep 1000 & systemd-notify --ready --pid=$!; wait; exec sleep 1000\"]\n"
                      "    ready: notify\n    restart: on-failure\n    restart_delay: 0s\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("svc is ready (READY=1)", 30s), stack.procctl->output_so_far());
    REQUIRE(stack.procctl->wait_for_output("svc's main process is pid", 30s));
    const pid_t sleeper = stack.program("svc")["pid"].get<int>();
    auto stat = hbwatch::read_proc_stat(sleeper);
    REQUIRE(stat);
    CHECK(stat->comm == "sleep");
    const pid_t shell = stat->ppid;  // the first main process, which lives on
    CHECK(shell != stack.procctl->pid());
    REQUIRE(::kill(sleeper, SIGKILL) == 0);
    // Not its child: counted as a failure, so on-failure starts it again.
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("svc exited (its status unknown: it was not procctl's child)", 30s),
                    stack.procctl->output_so_far());
    CHECK(stack.procctl->wait_for_output_count("svc is ready (READY=1)", 2, 30s));
    // The first main process (the shell, now a sleep of its own) went with the program, with
    // a cgroup or without one.
    CHECK(ends(shell));
}

TEST_CASE("MAINPID= naming init, or a process that is not the program's, is refused: procctl keeps its main process") {
    Process outsider({"sleep", "1000"});
    // From the program's own process (systemd-notify --pid=N would send as pid N: root may).
    NotifyStack stack("  svc:\n    command: [sh, -c, \"'" + hbtest::bin("sd_client") + "' say MAINPID=1 MAINPID=" + std::to_string(outsider.pid()) +
                      " MAINPID=$$ READY=1; exec sleep 1000\"]\n    ready: notify\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("svc is ready (READY=1)", 30s), stack.procctl->output_so_far());
    const std::string out = stack.procctl->output_so_far();
    CHECK_MESSAGE(out.find("svc: MAINPID=1 refused: that process is init (pid 1)") != std::string::npos, out);
    CHECK_MESSAGE(out.find("svc: MAINPID=" + std::to_string(outsider.pid()) + " refused: that process ") != std::string::npos, out);
    CHECK(out.find("main process is pid") == std::string::npos);
    const auto shown = stack.program("svc");
    REQUIRE(shown["pid"].is_number());
    const auto stat = hbwatch::read_proc_stat(shown["pid"].get<int>());
    REQUIRE(stat);
    CHECK(stat->ppid == stack.procctl->pid());  // its own first process still
    CHECK(outsider.running());
}

TEST_CASE("MAINPID= naming a process that the program's user could not signal is refused, even one put in its cgroup") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (a program as nobody, and a root process moved into its cgroup)");
        return;
    }
    Scratch dir;
    const fs::path fifo = dir.dir / "pid.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    REQUIRE(::chown(fifo.c_str(), 65534, 65534) == 0);
    fs::permissions(dir.dir, fs::perms::others_exec, fs::perm_options::add);
    Process root_sleeper({"sleep", "1000"});
    NotifyStack stack("  svc:\n    user: nobody\n    command: [sh, -c, \"read pid < " + fifo.string() + "; '" + hbtest::bin("sd_client") +
                      "' say MAINPID=$pid READY=1; exec sleep 1000\"]\n    ready: notify\n");
    if (stack.procctl->output_so_far().find("cgroup v2 not used") != std::string::npos) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    REQUIRE_MESSAGE(hbtest::eventually([&] { return stack.program("svc")["pid"].is_number(); }, 30s), stack.procctl->output_so_far());
    const fs::path cgroup = cgroup_dir_of(stack.program("svc")["pid"].get<int>());
    REQUIRE(!cgroup.empty());
    std::ofstream(cgroup / "cgroup.procs") << root_sleeper.pid() << std::endl;
    REQUIRE(cgroup_dir_of(root_sleeper.pid()) == cgroup);
    fs::permissions(stack.dir.dir, fs::perms::others_exec, fs::perm_options::add);  // nobody reaches its socket
    std::ofstream(fifo) << root_sleeper.pid() << std::endl;
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("svc is ready (READY=1)", 30s), stack.procctl->output_so_far());
    CHECK_MESSAGE(stack.procctl->output_so_far().find("svc: MAINPID=" + std::to_string(root_sleeper.pid()) +
                                                      " refused: the program's user (uid 65534) could not signal that process") != std::string::npos,
                  stack.procctl->output_so_far());
    CHECK(stack.program("svc")["pid"] != root_sleeper.pid());
}

TEST_CASE("an fd sent on the notify socket whose close lingers (SO_LINGER, 30 s) holds nothing up: later messages, the API and restarts") {
    // A loopback listener that never accepts nor reads: the program's data stays queued, and
    // the last close of its socket blocks for the 30 s of its SO_LINGER.
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(listener, 4) == 0);
    REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) == 0);
    NotifyStack stack("  lingerer:\n    command: ['" + hbtest::bin("sd_client") + "', linger, '" + std::to_string(ntohs(address.sin_port)) +
                      "']\n    notify: true\n    stdout: lingerer.log\n"
                      "  other:\n    command: [sleep, '1000']\n    restart_delay: 0s\n");
    REQUIRE_MESSAGE(hbtest::eventually([&] { return stack.log("lingerer.log").find("status sent=1") != std::string::npos; }, 30s),
                    stack.procctl->output_so_far());
    CHECK_MESSAGE(stack.log("lingerer.log").find(", sent=1 at") != std::string::npos, stack.log("lingerer.log"));
    // The message after the fd is taken in well under the 30 s the close takes.
    const auto asked = std::chrono::steady_clock::now();
    CHECK(hbtest::eventually([&] { return stack.program("lingerer")["status"] == "after"; }, 10s));
    REQUIRE(stack.procctl->wait_for_output("FDSTORE=1 is not supported", 10s));
    const int before = stack.program("other")["pid"].get<int>();
    REQUIRE(run(proctab(stack.dir, {"restart", "other"})).first == 0);
    CHECK(hbtest::eventually([&] {
        const auto p = stack.program("other");
        return p["state"] == "ready" && p["pid"] != before;
    }, 10s));
    const auto took = std::chrono::steady_clock::now() - asked;
    MESSAGE("the status after the fd, and a restart of another program, within "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms of the lingering close");
    CHECK(took < 20s);
    ::close(listener);
}

TEST_CASE("MAINPID= naming the readiness check that procctl started is refused: that child is procctl's to reap") {
    NotifyStack stack("  svc:\n    command: [sh, -c, \"while [ ! -s {RUN}/check.pid ]; do sleep 0.05; done; '" + hbtest::bin("sd_client") +
                      "' say MAINPID=$(cat {RUN}/check.pid); exec sleep 1000\"]\n    notify: true\n    ready: exec:/bin/sh {RUN}/check.sh\n");
    std::ofstream(stack.dir.dir / "run" / "check.sh") << "echo $$ > " << (stack.dir.dir / "run" / "check.pid").string() << ".new; mv "
                                                      << (stack.dir.dir / "run" / "check.pid").string() << ".new "
                                                      << (stack.dir.dir / "run" / "check.pid").string() << "; exec sleep 3\n";
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("refused: that process is one procctl started for another purpose", 30s),
                    stack.procctl->output_so_far());
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("svc is ready (its check command succeeded)", 30s), stack.procctl->output_so_far());
    const auto stat = hbwatch::read_proc_stat(stack.program("svc")["pid"].get<int>());
    REQUIRE(stat);
    CHECK(stat->ppid == stack.procctl->pid());
    CHECK(stack.procctl->output_so_far().find("main process is pid") == std::string::npos);
}

TEST_CASE("a watchdogged program that is SIGSTOPped is spared, not stopped, and watched again once it runs") {
    NotifyStack stack("  daemon:\n    command: ['" + hbtest::bin("sd_client") + "', '100000']\n    ready: notify\n    watchdog: 1s\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("daemon is ready (READY=1)", 30s), stack.procctl->output_so_far());
    const int pid = stack.program("daemon")["pid"].get<int>();
    REQUIRE(::kill(pid, SIGSTOP) == 0);
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("daemon (pid " + std::to_string(pid) + ") missed its watchdog, but is stopped by a signal", 30s),
                    stack.procctl->output_so_far());
    // Two more intervals: still spared, never stopped.
    CHECK_FALSE(stack.procctl->wait_for_output("missed its watchdog: no WATCHDOG=1", 2500ms));
    REQUIRE(::kill(pid, SIGCONT) == 0);
    CHECK(hbtest::eventually([&] { return stack.program("daemon")["heartbeats"][0]["state"] == "ok"; }));
    CHECK(stack.program("daemon")["pid"] == pid);
    CHECK(stack.program("daemon")["restarts"] == 0);
}

TEST_CASE("the rest of sd_notify(3), each said by a program's own process: RELOADING=1, unknown keys, ERRNO= in the last exit, "
          "WATCHDOG_USEC= at runtime (a new deadline, 0 for off), EXTEND_TIMEOUT_USEC=, and datagrams systemd drops") {
    const std::string sd = hbtest::bin("sd_client");
    NotifyStack stack(
        // Says it reloads, with a key no one knows: the key ignored, the rest taken.
        "  reloading:\n    command: [sh, -c, \"'" + sd + "' say 'RELOADING=1\\nX_NOBODY_KNOWS=1\\nSTATUS=reading its config'; exec sleep 1000\"]\n"
        "    notify: true\n"
        // Says why it fails, then fails: shown in its last exit, and its exit event.
        "  failing:\n    command: [sh, -c, \"'" + sd + "' say 'ERRNO=2'; exit 1\"]\n    notify: true\n    restart: never\n"
        // Its config says 1d; it asks for 5 s at its start, and never pings: stopped as hung.
        "  shortened:\n    command: [sh, -c, \"'" + sd + "' say 'WATCHDOG_USEC=5000000'; exec sleep 1000\"]\n    watchdog: 1d\n"
        "    restart: never\n"
        // Its config says 2 s; it turns its watchdog off at its start: never stopped for it.
        "  unwatched:\n    command: [sh, -c, \"'" + sd + "' say 'WATCHDOG_USEC=0'; exec sleep 1000\"]\n    watchdog: 2s\n"
        // Asks for more time to get ready: ready after its ready_timeout, not stopped.
        "  slow:\n    command: [sh, -c, \"'" + sd + "' say 'EXTEND_TIMEOUT_USEC=10000000'; sleep 4; '" + sd + "' say READY=1; exec sleep 1000\"]\n"
        "    ready: notify\n    ready_timeout: 3s\n"
        // What systemd drops: too long, a NUL byte, empty; a barrier with two fds.
        "  bad:\n    command: [sh, -c, \"'" + sd + "' bad; exec sleep 1000\"]\n    notify: true\n    stdout: bad.log\n");
    CHECK(hbtest::eventually([&] { return stack.program("reloading")["notify"]["state"] == "reloading"; }, 30s));
    CHECK(stack.program("reloading")["status"] == "reading its config");
    const auto status = run(proctab(stack.dir, {"status", "reloading"}));
    CHECK_MESSAGE(status.second.find("(reloading, it says) \"reading its config\"") != std::string::npos, status.second);

    CHECK(hbtest::eventually([&] { return stack.program("failing")["state"] == "exited"; }, 30s));
    CHECK(stack.program("failing")["last_exit"].get<std::string>().find("(it said ERRNO=2: No such file or directory)") != std::string::npos);

    // WATCHDOG_USEC=5000000: hung 5 s after it said so, not a day; its deadline said in the log.
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("shortened (pid", 30s), stack.procctl->output_so_far());
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("(watchdog 5.0s): stopping it; not restarted (restart: never)", 30s),
                    stack.procctl->output_so_far());
    CHECK(hbtest::eventually([&] { return stack.program("shortened")["state"] == "exited"; }, 30s));
    // By then `unwatched` is 3 s past the deadline its config gave: still running, first pid.
    CHECK(stack.program("unwatched")["state"] == "ready");
    CHECK(stack.program("unwatched")["restarts"] == 0);

    REQUIRE_MESSAGE(stack.procctl->wait_for_output("slow is ready (READY=1)", 30s), stack.procctl->output_so_far());
    CHECK(stack.procctl->output_so_far().find("slow was not ready within") == std::string::npos);
    CHECK(stack.program("slow")["restarts"] == 0);

    CHECK(hbtest::eventually([&] { return stack.program("bad")["status"] == "after bad"; }, 30s));
    CHECK(stack.program("bad")["notify"]["dropped"] == 3);
    CHECK(stack.procctl->wait_for_output("came with 2 fds and 0 other fields (BARRIER=1): as under systemd, a barrier carries one fd", 10s));
    CHECK(hbtest::eventually([&] { return stack.log("bad.log").find("after sent=1") != std::string::npos; }));

    bool errno_event = false, trigger_seen = false;
    for (const auto& event : stack.events()) {
        if (event["kind"] == "exited" && event["instance"] == "failing") errno_event = event["details"].value("errno", 0) == 2;
        trigger_seen = trigger_seen || (event["kind"] == "heartbeat_hung" && event["instance"] == "unwatched");
    }
    CHECK(errno_event);
    CHECK_FALSE(trigger_seen);

    // What the kernel gave the socket: 8 MiB with CAP_NET_ADMIN (SO_RCVBUFFORCE; root's, unless
    // a container took it away), else up to net.core.rmem_max; and the senders' pidfds where
    // the kernel passes them (6.5 on).
    const auto notify = stack.program("bad")["notify"];
    std::uint64_t effective = 0;
    std::istringstream self_status(read_file("/proc/self/status"));
    for (std::string line; std::getline(self_status, line);)
        if (line.rfind("CapEff:", 0) == 0) effective = std::stoull(line.substr(7), nullptr, 16);
    if (effective & (1ull << 12)) CHECK(notify["receive_buffer_bytes"] == 8 << 20);  // CAP_NET_ADMIN
    else CHECK(notify["receive_buffer_bytes"].get<int>() > 0);
    utsname host{};
    REQUIRE(::uname(&host) == 0);
    int major = 0, minor = 0;
    std::sscanf(host.release, "%d.%d", &major, &minor);
    if (major > 6 || (major == 6 && minor >= 5)) CHECK(notify["sender_pidfds"] == true);
}

TEST_CASE("WATCHDOG=trigger stops the program as hung at once, with its event: under restart: never it stays exited, under on-failure it starts again") {
    const std::string say_trigger = "[sh, -c, \"sleep 0.2; '" + hbtest::bin("sd_client") + "' say WATCHDOG=trigger; exec sleep 1000\"]";
    // Before it triggers, `once` fills the shared diagnosis directory with 60 files of
    // checkproc's: procctl removes only its own, so all 60 stay.
    const std::string fill_then_trigger = "[sh, -c, \"mkdir -m 700 -p {RUN}/../diagnoses && for i in $(seq 60); do : > "
                                          "{RUN}/../diagnoses/diagnosis-20200101T000000.000Z-other-$i.txt; done; sleep 0.2; '" +
                                          hbtest::bin("sd_client") + "' say WATCHDOG=trigger; exec sleep 1000\"]";
    NotifyStack stack("  once:\n    command: " + fill_then_trigger + "\n    notify: true\n    restart: never\n"
                      "  again:\n    command: " + say_trigger + "\n    notify: true\n    restart: on-failure\n    restart_delay: 0s\n"
                      "    max_restarts: {count: 2, window: 1h}\n");
    REQUIRE_MESSAGE(stack.procctl->wait_for_output("once stopped; not restarted (restart: never)", 30s), stack.procctl->output_so_far());
    CHECK(stack.program("once")["state"] == "exited");
    CHECK(stack.procctl->output_so_far().find("asked for its watchdog to fire (WATCHDOG=trigger): stopping it; not restarted") !=
          std::string::npos);
    // on-failure: a hang is a failure, so it is started again (and given up after its two starts).
    CHECK(hbtest::eventually([&] { return stack.program("again")["state"] == "gave-up"; }, 30s));
    int triggers = 0;
    for (const auto& event : stack.events())
        if (event["kind"] == "heartbeat_hung" && event["details"].value("trigger", false)) ++triggers;
    CHECK(triggers == 3);  // once, and again's two runs
    std::size_t theirs = 0, ours = 0;
    for (const auto& entry : fs::directory_iterator(stack.dir.dir / "diagnoses"))
        (entry.path().filename().string().find("-other-") != std::string::npos ? theirs : ours) += 1;
    CHECK(theirs == 60);
    CHECK(ours == 3);
}
