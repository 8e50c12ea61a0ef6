// procctl, the binary, on real processes. Waits are on output lines, pidfds and files, each
// with a deadline; time bounds are generous, except where the issue sets the slack.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/process.h"

#include "support.h"

using namespace std::chrono_literals;
using hbtest::Process;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> procctl(std::vector<std::string> args) {
    args.insert(args.begin(), hbtest::bin("procctl"));
    return args;
}

// A scratch directory, removed at the end.
struct Scratch {
    fs::path dir;
    Scratch() {
        char buffer[] = "/tmp/hbwatch-procctl-XXXXXX";
        dir = ::mkdtemp(buffer);
    }
    ~Scratch() { fs::remove_all(dir); }
    std::string file(const std::string& name) const { return (dir / name).string(); }
};

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

std::vector<long long> values_after(const std::string& text, const std::string& word) {
    std::vector<long long> values;
    std::regex pattern(word + " ([0-9]+)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), pattern); it != std::sregex_iterator(); ++it)
        values.push_back(std::stoll((*it)[1]));
    return values;
}

std::vector<pid_t> pids_in(const std::string& text) {
    std::vector<pid_t> pids;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) pids.push_back(std::stoi(line));
    return pids;
}

// Open pidfds on processes that are not our children, to see them exit.
struct Watched {
    std::vector<int> fds;
    explicit Watched(const std::vector<pid_t>& pids) {
        for (pid_t pid : pids) fds.push_back(::pidfd_open(pid, 0));
    }
    ~Watched() {
        for (int fd : fds)
            if (fd >= 0) ::close(fd);
    }
    bool all_exited(std::chrono::milliseconds timeout) const {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (int fd : fds) {
            if (fd < 0) continue;  // was already gone when watched
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0))) != 1) return false;
        }
        return true;
    }
};

pid_t started_pid(Process& p) {
    REQUIRE(p.wait_for_output(" as pid "));
    std::smatch m;
    const std::string text = p.output_so_far();
    REQUIRE(std::regex_search(text, m, std::regex(" as pid ([0-9]+)")));
    return std::stoi(m[1]);
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("the program is restarted after it exits, at the interval") {
    Process p(procctl({"-f", "500ms", hbtest::bin("stamp")}));
    REQUIRE(p.wait_for_output("start", 10s));
    for (int runs = 2; runs <= 4; ++runs) REQUIRE(p.wait_for_output_count("exit ", runs, 10s));
    REQUIRE(p.wait_for_output_count("start ", 4, 10s));
    const auto starts = values_after(p.output_so_far(), "start"), exits = values_after(p.output_so_far(), "exit");
    for (std::size_t i = 0; i + 1 < starts.size() && i < exits.size(); ++i) {
        const auto gap_ms = (starts[i + 1] - exits[i]) / 1'000'000;
        CAPTURE(i);
        CHECK(gap_ms >= 500 - 150);
        CHECK(gap_ms <= 500 + 150);
    }
}

TEST_CASE("SIGTERM to procctl stops the child and every grandchild, the daemonized one included") {
    Scratch scratch;
    const auto pids_file = scratch.file("pids");
    Process p(procctl({"-f", "--grace", "2s", "10", HBWATCH_HELPER_DIR "/tree.sh", pids_file}));
    REQUIRE(hbtest::eventually([&] { return contains(read_file(pids_file), "ready"); }));
    const auto tree = pids_in(read_file(pids_file));
    REQUIRE(tree.size() == 4);
    Watched watched(tree);
    REQUIRE(p.wait_for_output(" as pid "));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    CHECK(WEXITSTATUS(p.wait()) == 0);
    CHECK(watched.all_exited(1s));
    for (pid_t pid : tree) CHECK_FALSE(hbwatch::identity_of(pid).has_value());  // not even zombies
    CHECK(contains(p.output(), "process(es) stopped"));
}

TEST_CASE("a child that ignores SIGTERM is killed when the grace runs out") {
    Process p(procctl({"-f", "--grace", "500ms", "10", "sh", "-c", "trap '' TERM; echo armed; while :; do sleep 1; done"}));
    REQUIRE(p.wait_for_output("armed"));
    const pid_t child = started_pid(p);
    Watched watched({child});
    const auto start = std::chrono::steady_clock::now();
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(WEXITSTATUS(p.wait()) == 0);
    CHECK(watched.all_exited(1s));
    CHECK(took >= 450ms);
    CHECK(took < 5s);
    CHECK(contains(p.output(), "by SIGKILL"));
}

// The milliseconds of the day in each log line that contains `needle` (procctl's timestamps).
std::vector<long long> times_of(const std::string& log, const std::string& needle) {
    std::vector<long long> times;
    std::istringstream in(log);
    std::string line;
    std::regex stamp(" ([0-9]{2}):([0-9]{2}):([0-9]{2})\\.([0-9]{3}) ");
    std::smatch m;
    while (std::getline(in, line))
        if (contains(line, needle) && std::regex_search(line, m, stamp))
            times.push_back(((std::stoll(m[1]) * 60 + std::stoll(m[2])) * 60 + std::stoll(m[3])) * 1000 + std::stoll(m[4]));
    return times;
}

TEST_CASE("a missing program is logged with its reason and retried with a doubling delay") {
    Process p(procctl({"-f", "0", "/nonexistent/order-svc"}));
    REQUIRE(p.wait_for_output_count("cannot start", 3, 20s));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    const auto& log = p.output();
    INFO(log);
    CHECK(contains(log, "cannot start /nonexistent/order-svc: exec failed: No such file or directory; attempt 1 in a row, next in 1.0s"));
    CHECK(contains(log, "attempt 2 in a row, next in 2.0s"));
    const auto attempts = times_of(log, "cannot start");
    REQUIRE(attempts.size() >= 3);
    CHECK(attempts[1] - attempts[0] >= 950);  // no spinning: the backoff, less the log's millisecond truncation
    CHECK(attempts[2] - attempts[1] >= 1950);
}

TEST_CASE("a crash loop backs off, and a quick exit 0 does not") {
    SUBCASE("exit 1 at once: 1 s, then 2 s") {
        Process p(procctl({"-f", "0", "sh", "-c", "echo crash; exit 1"}));
        REQUIRE(p.wait_for_output_count("started sh", 3, 20s));
        ::kill(p.pid(), SIGTERM);
        REQUIRE(p.wait_exit(10s));
        const auto& log = p.output();
        INFO(log);
        CHECK(contains(log, "(crash 1 in a row: backoff, max 5m00s)"));
        CHECK(contains(log, "(crash 2 in a row: backoff, max 5m00s)"));
        const auto starts = times_of(log, "started sh");
        REQUIRE(starts.size() >= 3);
        CHECK(starts[1] - starts[0] >= 950);  // the backoff, less the log's millisecond truncation; later is load
        CHECK(starts[2] - starts[1] >= 1950);
    }
    SUBCASE("exit 0 at once, like a one-shot checkproc") {
        Process p(procctl({"-f", "100ms", "true"}));
        const bool five = p.wait_for_output_count("started true", 5, 20s);
        INFO(p.output_so_far());
        REQUIRE(five);
        ::kill(p.pid(), SIGTERM);
        REQUIRE(p.wait_exit(10s));
        CHECK_FALSE(contains(p.output(), "backoff"));
    }
}

TEST_CASE("the pidfile lock refuses a second procctl, naming the first") {
    Scratch scratch;
    const auto pidfile = scratch.file("svc.pid");
    Process first(procctl({"-f", "--pidfile", pidfile, "10", "sleep", "1000"}));
    REQUIRE(first.wait_for_output(" as pid "));
    Process second(procctl({"-f", "--pidfile", pidfile, "10", "sleep", "1000"}));
    REQUIRE(second.wait_exit(10s));
    CHECK(WEXITSTATUS(second.wait()) == 1);
    CHECK(contains(second.output(), "procctl: " + pidfile + " is locked by procctl pid " + std::to_string(first.pid()) +
                                         ", which already supervises this program: stop it first (kill " +
                                         std::to_string(first.pid()) + ")"));
    CHECK(first.running());
}

TEST_CASE("the child starts with default signal dispositions, an empty mask and no inherited descriptors") {
    // procctl's own caller ignores TERM, blocks USR1 and leaves descriptor 7 open without CLOEXEC.
    Process p(procctl({"-f", "10", hbtest::bin("report_env")}), [] {
        ::signal(SIGTERM, SIG_IGN);
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        ::sigprocmask(SIG_BLOCK, &usr1, nullptr);
        ::dup2(::open("/dev/null", O_RDONLY), 7);
    });
    REQUIRE(p.wait_for_output("sigterm="));
    REQUIRE(p.wait_for_output("\n", 5s));
    CHECK(contains(p.output_so_far(), "sigterm=default blocked=0 fds=0,1,2\n"));
}

TEST_CASE("a SIGKILL to procctl also stops its child") {
    Process p(procctl({"-f", "10", "sleep", "1000"}));
    const pid_t child = started_pid(p);
    Watched watched({child});
    ::kill(p.pid(), SIGKILL);
    CHECK(watched.all_exited(5s));
}

TEST_CASE("--stdout captures the child's output and rotates it at the cap") {
    Scratch scratch;
    const auto out = scratch.file("svc.out");
    Process p(procctl({"-f", "--stdout", out, "--stderr", out, "--output-max-size", "4K", "--output-files", "3", "10",
                       "sh", "-c", "i=0; while [ $i -lt 1000 ]; do echo line-$i-of-the-output; i=$((i+1)); done; echo done >&2"}));
    REQUIRE(hbtest::eventually([&] { return contains(read_file(out), "done"); }));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    CHECK(fs::exists(scratch.file("svc.1.out")));
    CHECK(fs::exists(scratch.file("svc.2.out")));
    CHECK(fs::exists(scratch.file("svc.3.out")));
    CHECK_FALSE(fs::exists(scratch.file("svc.4.out")));  // only three rotated files are kept
    for (const char* name : {"svc.out", "svc.1.out", "svc.2.out", "svc.3.out"}) {
        CAPTURE(name);
        CHECK(fs::file_size(scratch.file(name)) <= 4096);
    }
    CHECK(contains(read_file(out), "line-999-of-the-output\ndone\n"));
}

TEST_CASE("by default procctl detaches: its own session, no terminal, nothing inherited") {
    Scratch scratch;
    const auto pidfile = scratch.file("bg.pid"), log = scratch.file("bg.log"), leaked = scratch.file("leaked");
    Process launcher(procctl({"--pidfile", pidfile, "--log", log, "10", "sleep", "1000"}), [&] {
        ::dup2(::open(leaked.c_str(), O_CREAT | O_WRONLY, 0600), 9);  // a descriptor the caller leaks
    });
    REQUIRE(launcher.wait_exit(10s));
    CHECK(WEXITSTATUS(launcher.wait()) == 0);
    const pid_t daemon = std::stoi(read_file(pidfile));
    CHECK(contains(launcher.output(), "procctl: supervising sleep in the background as pid " + std::to_string(daemon)));
    auto stat = hbwatch::read_proc_stat(daemon);
    REQUIRE(stat);
    CHECK(stat->session != hbwatch::read_proc_stat(::getpid())->session);
    std::ifstream stat_file("/proc/" + std::to_string(daemon) + "/stat");
    std::string line;
    std::getline(stat_file, line);
    std::istringstream fields(line.substr(line.rfind(')') + 2));
    std::string state, ppid, pgrp, session, tty;
    fields >> state >> ppid >> pgrp >> session >> tty;
    CHECK(tty == "0");  // no controlling terminal
    for (const auto& entry : fs::directory_iterator("/proc/" + std::to_string(daemon) + "/fd")) {
        std::error_code ec;
        CHECK(fs::read_symlink(entry.path(), ec).string() != leaked);
    }
    Watched watched({daemon});
    ::kill(daemon, SIGTERM);
    CHECK(watched.all_exited(10s));
    CHECK(contains(read_file(log), "stopped; exiting"));
}

TEST_CASE("--max-restarts gives up with a log line and exit code 3") {
    Process p(procctl({"-f", "--max-restarts", "3", "--window", "1m", "100ms", "true"}));
    REQUIRE(p.wait_exit(20s));
    CHECK(WEXITSTATUS(p.wait()) == 3);
    CHECK(contains(p.output(), "giving up: true was started 3 times within 1m (--max-restarts 3 --window 1m); exiting with code 3"));
}

TEST_CASE("arguments after PROGRAM are PROGRAM's, even those that look like procctl's") {
    Process p(procctl({"-f", "10", "sh", "-c", "echo \"args: $*\"", "sh", "--grace", "2s", "-f", "--env=X"}));
    REQUIRE(p.wait_for_output("args: "));
    REQUIRE(p.wait_for_output("\n"));
    CHECK(contains(p.output_so_far(), "args: --grace 2s -f --env=X\n"));
}

TEST_CASE("bad arguments are named, with exit code 2") {
    Process p(procctl({"-f", "soon", "true"}));
    REQUIRE(p.wait_exit(10s));
    CHECK(WEXITSTATUS(p.wait()) == 2);
    CHECK(contains(p.output(), "INTERVAL: bad duration 'soon'"));
    Process env(procctl({"-f", "--env", "NOEQUALS", "1", "true"}));
    REQUIRE(env.wait_exit(10s));
    CHECK(WEXITSTATUS(env.wait()) == 2);
    CHECK(contains(env.output(), "procctl: --env NOEQUALS: write it as KEY=VALUE"));
}

TEST_CASE("an output file on a full device is reported once, and supervision goes on") {
    Process p(procctl({"-f", "--stdout", "/dev/full", "100ms", "sh", "-c", "echo lost"}));
    REQUIRE(p.wait_for_output_count("started sh as pid", 3));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    CHECK(p.wait() == 0);
    const std::string log = p.output();
    CHECK(hbtest::count_of(log, "cannot write /dev/full: No space left on device; dropping output (supervision goes on) "
                                "until it can be written") == 1);
    CHECK(contains(log, "/dev/full: "));
    CHECK(contains(log, " bytes of output were dropped in all"));
}

TEST_CASE("durations and sizes out of range are refused at parse time, naming the range") {
    for (const auto& test : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"-f", "--grace", "2d", "1", "true"}, "procctl: --grace 2d is out of range: give 0ms to 1d"},
             {{"-f", "25h", "true"}, "procctl: INTERVAL 25h is out of range: give 0ms to 1d"},
             {{"-f", "--output-max-size", "0", "1", "true"}, "procctl: --output-max-size 0 is out of range: give 1K to 1T"},
             {{"-f", "--max-backoff", "0", "1", "true"}, "procctl: --max-backoff 0 is out of range: give 1s to 1d"},
             // Past any range: refused by the parser every tool shares (it once wrapped in nanoseconds).
             {{"-f", "--grace", "534955578137577ms", "1", "true"},
              "--grace: bad duration '534955578137577ms': it is longer than 365d; write it like 500ms, 5s, 2m, 1h, 7d or a number "
              "of seconds"}}) {
        const auto& message = test.second;
        CAPTURE(message);
        Process p(procctl(test.first));
        REQUIRE(p.wait_exit(10s));
        CHECK(WEXITSTATUS(p.wait()) == 2);
        CHECK(contains(p.output(), message));
    }
}

TEST_CASE("the launcher reports the daemon's own error when an output file cannot be opened") {
    Scratch scratch;
    const auto missing = scratch.file("no/such/dir/out");
    Process launcher(procctl({"--stdout", missing, "--log", scratch.file("bg.log"), "1", "sleep", "100"}));
    REQUIRE(launcher.wait_exit(10s));
    CHECK(WEXITSTATUS(launcher.wait()) == 1);
    CHECK(launcher.output() == "procctl: cannot open " + missing + ": its directory " + scratch.file("no") +
                                   " does not exist (procctl never creates directories)\n");
    CHECK_FALSE(fs::exists(scratch.file("no")));
}

TEST_CASE("a program that prints 300 KiB when asked to stop exits on its own terms, and all of it is kept") {
    Scratch scratch;
    const auto out = scratch.file("svc.out");
    Process p(procctl({"-f", "--stdout", out, "--grace", "20s", "10", "sh", "-c",
                       "trap 'i=0; while [ $i -lt 3100 ]; do printf \"%0100d\\n\" $i; i=$((i+1)); done; exit 0' TERM; "
                       "echo ready; while :; do read -t 1 x < /dev/zero 2>/dev/null; done"}));
    REQUIRE(hbtest::eventually([&] { return contains(read_file(out), "ready\n"); }));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(30s));
    CHECK(p.wait() == 0);
    const std::string log = p.output();
    INFO(log);
    CHECK(contains(log, "sh exited with code 0"));
    CHECK(contains(log, "0 by SIGKILL"));
    const std::string text = read_file(out);
    CHECK(text.size() == 6 + 3100 * 101);
    CHECK(text.ends_with(std::string(96, '0') + "3099\n"));
}

TEST_CASE("a 1 MiB line reaches the output file byte for byte") {
    Scratch scratch;
    const auto out = scratch.file("svc.out");
    Process p(procctl({"-f", "--stdout", out, "10", "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo end"}));
    REQUIRE(hbtest::eventually([&] { return contains(read_file(out), "end\n"); }));
    ::kill(p.pid(), SIGTERM);
    REQUIRE(p.wait_exit(10s));
    CHECK(read_file(out) == std::string(1 << 20, 'x') + "\nend\n");
}

TEST_CASE("after procctl is SIGKILLed mid-tree, the next procctl kills what was left before starting") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroup v2 and setpriv --reuid)");
        return;
    }
    Scratch scratch;
    const auto out = scratch.file("tree.out");
    // Three deep, with a grandchild that drops to nobody (losing PDEATHSIG) and one that daemonizes.
    const std::vector<std::string> args{"-f", "--pidfile", scratch.file("tree.pid"), "--stdout", out, "10", "sh", "-c",
                                        "sh -c 'setpriv --reuid 65534 --regid 65534 --clear-groups sh -c \"echo \\$\\$; "
                                        "exec sleep 1000\" & setsid sh -c \"echo \\$\\$; exec sleep 1000\" & echo $$; wait' "
                                        "& echo $$; wait"};
    std::vector<pid_t> tree;
    {
        Process first(procctl(args));
        REQUIRE(first.wait_for_output("started sh"));  // after "running sh in cgroup ...", if it does
        if (!contains(first.output_so_far(), "in cgroup ")) {
            // The subreaper walk holds a tree only while procctl lives: orphans of a SIGKILLed
            // one go to init, where no later procctl can find them.
            MESSAGE("SKIPPED: needs cgroup v2 (procctl fell back to the subreaper walk, which a SIGKILL ends)");
            return;
        }
        REQUIRE(hbtest::eventually([&] { return pids_in(read_file(out)).size() == 4; }));
        tree = pids_in(read_file(out));
        ::kill(first.pid(), SIGKILL);
        first.wait();
    }
    Watched watched(tree);
    Process second(procctl(args));
    REQUIRE(second.wait_for_output("started sh as pid"));
    CHECK(contains(second.output_so_far(), "left in "));
    CHECK(contains(second.output_so_far(), "by an earlier procctl (was it SIGKILLed?): killing them before starting sh"));
    CHECK(watched.all_exited(10s));  // every survivor of the first procctl is gone
    ::kill(second.pid(), SIGTERM);
    REQUIRE(second.wait_exit(20s));
}

TEST_CASE("two procctls of the same command each keep a cgroup of their own") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (cgroup v2)");
        return;
    }
    Process first(procctl({"-f", "1", "true"}));
    REQUIRE(first.wait_for_output("true exited with code 0"));  // its cgroup is empty now, and held
    Process second(procctl({"-f", "1", "true"}));
    REQUIRE(second.wait_for_output("started true"));
    if (!contains(second.output_so_far(), "in cgroup ")) {
        MESSAGE("SKIPPED: needs cgroup v2 (procctl fell back to the subreaper walk)");
        return;
    }
    // Each its own cgroup: the second takes another name (other tests may hold some too).
    auto cgroup_of = [](const std::string& log) {
        std::smatch m;
        return std::regex_search(log, m, std::regex("in cgroup ([^:]+):")) ? m[1].str() : std::string();
    };
    const std::string mine = cgroup_of(first.output_so_far()), theirs = cgroup_of(second.output_so_far());
    CHECK_FALSE(mine.empty());
    CHECK(mine != theirs);
    REQUIRE(first.wait_for_output_count("started true", 2, 20s));  // the first still starts its program
    CHECK_FALSE(contains(first.output_so_far(), "cannot start"));
}

TEST_CASE("the process that supervises one program maps libc alone: no libstdc++, spdlog, fmt, YAML or OpenSSL") {
    Process p(procctl({"-f", "10", "sleep", "1000"}));
    const pid_t child = started_pid(p);
    // procctl checked its arguments and became procctl-loop: same pid, and the same argv and
    // command name for ps, pgrep -x, pgrep -f, pidof and killall.
    const std::string proc = "/proc/" + std::to_string(p.pid());
    CHECK(fs::read_symlink(proc + "/exe").string().ends_with("/procctl-loop"));
    CHECK(read_file(proc + "/comm") == "procctl\n");
    using namespace std::string_literals;
    CHECK(read_file(proc + "/cmdline") == hbtest::bin("procctl") + "\0-f\0" "10\0sleep\0" "1000\0"s);
    // What procctl handed over is gone: its descriptor, and its variable from the program's environment.
    for (const auto& entry : fs::directory_iterator(proc + "/fd")) {
        INFO(entry.path().string());
        CHECK_FALSE(contains(fs::read_symlink(entry.path()).string(), "procctl-loop-request"));
    }
    CHECK_FALSE(contains(read_file("/proc/" + std::to_string(child) + "/environ"), "HBWATCH_LOOP_REQUEST_FD"));
    const std::string maps = read_file(proc + "/maps");
    CHECK(contains(maps, "/libc.so.6"));
    for (const char* library : {"libspdlog", "libfmt", "libyaml-cpp", "libssl", "libcrypto"}) {
        INFO(library);
        CHECK_FALSE(contains(maps, library));
    }
#ifndef HBWATCH_SANITIZED  // a sanitizer's runtime needs the shared libstdc++
    CHECK_FALSE(contains(maps, "libstdc++"));
#endif
    ::kill(p.pid(), SIGTERM);  // so that it removes its cgroup as it leaves
    CHECK(p.wait_exit(10s));
}

TEST_CASE("procctl runs only a procctl-loop that no other user could have placed or changed") {
    Scratch scratch;
    fs::copy_file(hbtest::bin("procctl"), scratch.file("procctl"));
    ::chmod(scratch.dir.c_str(), 0755);
    // Beside this copy: a procctl-loop that every user may write, which would leave a mark.
    const std::string planted = scratch.file("procctl-loop"), mark = scratch.file("ran");
    {
        std::ofstream script(planted);
        script << "#!/bin/sh\ntouch " << mark << "\nexec sleep 1000\n";
    }
    ::chmod(planted.c_str(), 0777);
    Process p({scratch.file("procctl"), "-f", "1", "true"});
    // The planted one is refused; the installed one may run in its place, if there is one.
    const bool exited = p.wait_exit(10s);
    CHECK_FALSE(fs::exists(mark));
    if (exited) {
        CHECK(WEXITSTATUS(p.wait()) == 1);
        CHECK(contains(p.output(), "cannot run procctl-loop"));
        CHECK(contains(p.output(), planted + ": its mode gives write access to every user"));
    } else {
        ::kill(p.pid(), SIGTERM);
        CHECK(p.wait_exit(10s));
    }
}
