// procctl's engine in-process: the restart rules with chosen instants (no sleeping), the text
// shown on terminals, and spawn() on real children.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <hbwatch/error.h>

#include "support.h"
#include "engine/output.h"
#include "engine/restart_policy.h"
#include "engine/spawn.h"
#include "engine/supervise_options.h"
#include "engine/terminal_text.h"

using namespace std::chrono_literals;
using namespace std::string_literals;
using hbwatch::tool::RestartPolicy;
using hbwatch::tool::RestartRules;
namespace fs = std::filesystem;

constexpr std::uint64_t kSecond = 1'000'000'000;


TEST_CASE("a crash loop backs off from INTERVAL, doubling to the cap, and a long run resets it") {
    RestartPolicy policy(RestartRules{2s, 10s, std::nullopt, 1min, 1s});
    CHECK(policy.after_exit(false, 100ms) == 2s);
    CHECK(policy.after_exit(false, 100ms) == 4s);
    CHECK(policy.after_exit(false, 100ms) == 8s);
    CHECK(policy.after_exit(false, 100ms) == 10s);
    CHECK(policy.after_exit(false, 100ms) == 10s);
    CHECK(policy.failures_in_a_row() == 5);
    CHECK(policy.after_exit(false, 1s) == 2s);  // ran a second: not a crash, back to INTERVAL
    CHECK(policy.failures_in_a_row() == 0);
}

TEST_CASE("INTERVAL 0 backs off from one second, and a quick exit 0 is never backed off") {
    RestartPolicy policy(RestartRules{0ms, 5min, std::nullopt, 1min, 1s});
    CHECK(policy.after_exit(true, 10ms) == 0ms);
    CHECK(policy.after_exit(true, 10ms) == 0ms);
    CHECK(policy.after_start_failure() == 1s);
    CHECK(policy.after_start_failure() == 2s);
    CHECK(policy.after_exit(true, 10ms) == 0ms);
    CHECK(policy.after_start_failure() == 1s);
}

TEST_CASE("--max-restarts counts the starts within the sliding window") {
    RestartPolicy policy(RestartRules{0ms, 5min, 3u, 10s, 1s});
    CHECK(policy.start(0 * kSecond));
    CHECK(policy.start(4 * kSecond));
    CHECK(policy.start(8 * kSecond));
    CHECK_FALSE(policy.start(9 * kSecond));  // three within the last 10 s
    CHECK(policy.start(10 * kSecond));        // the one at 0 s has left the window
    CHECK(policy.recent_starts() == 3);
}

TEST_CASE("the restart memory stays flat over 100,000 starts, with or without --max-restarts") {
    RestartPolicy unlimited(RestartRules{0ms, 5min, std::nullopt, 1min, 1s});
    RestartPolicy limited(RestartRules{0ms, 5min, 1000u, 1min, 1s});
    bool all_allowed = true;
    for (std::uint64_t i = 0; i < 100'000; ++i) {
        all_allowed &= unlimited.start(i * kSecond);
        (void)limited.start(i * 1'000'000);  // 1000 a second: the window keeps at most 1000
    }
    CHECK(all_allowed);
    CHECK(unlimited.recent_starts() == 0);
    CHECK(limited.recent_starts() <= 1000);
    for (int i = 0; i < 1000; ++i) (void)unlimited.after_exit(false, 1ms);
    CHECK(unlimited.after_exit(false, 1ms) == 5min);  // the doubling stops at the cap, no overflow
}

TEST_CASE("terminal_safe shows every byte that could drive, reorder or hide what a terminal draws, and passes the rest") {
    using hbwatch::tool::terminal_safe;
    CHECK(terminal_safe("plain text\twith a tab, caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac") == "plain text\twith a tab, caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac");
    CHECK(terminal_safe("\x1b[2J\r\n\x7f") == "\\x1b[2J\\x0d\\x0a\\x7f");
    CHECK(terminal_safe("\xc2\x9b" "31m") == "\\u009b31m");                       // C1 CSI
    CHECK(terminal_safe("a\xe2\x80\xae" "b\xe2\x81\xa6" "c") == "a\\u202eb\\u2066c");  // override, isolate
    CHECK(terminal_safe("\xe2\x80\x8f\xd8\x9c\xe2\x80\x8b\xef\xbb\xbf\xe2\x80\xa8") == "\\u200f\\u061c\\u200b\\ufeff\\u2028");
    CHECK(terminal_safe("\xf3\xa0\x80\x81\xf3\xa0\x81\xbf") == "\\U000e0001\\U000e007f");  // tag characters
    CHECK(terminal_safe("\xcd\x8f\xef\xb8\x8f\xe3\x85\xa4") == "\\u034f\\ufe0f\\u3164");  // joiner, selector, filler
    CHECK(terminal_safe("\xff\xc0\xaf\xed\xa0\x80\xe2\x80") == "\\xff\\xc0\\xaf\\xed\\xa0\\x80\\xe2\\x80");  // not UTF-8
    CHECK(hbwatch::tool::fit_columns("abcdef", 6) == "abcdef");
    CHECK(hbwatch::tool::fit_columns("abcdefg", 6) == "abcde~");
    CHECK(hbwatch::tool::fit_columns("\xe6\x97\xa5\xe6\x9c\xac\xe6\x97\xa5", 5) == "\xe6\x97\xa5\xe6\x9c\xac~");  // two columns each
}

TEST_CASE("spawn names the stage a child could not pass, and a child that starts has only stdio, default signals and an empty mask") {
    using hbwatch::tool::SpawnFailure;
    using hbwatch::tool::SpawnPlan;
    std::string missing = "/nonexistent-hbwatch/program", here = "/", nowhere = "/nonexistent-hbwatch";
    std::vector<char*> argv{missing.data(), nullptr}, envp{nullptr};
    SpawnPlan plan;
    plan.argv = argv.data();
    plan.envp = envp.data();
    std::optional<SpawnFailure> failure;
    CHECK(hbwatch::tool::spawn(plan, failure) == -1);
    REQUIRE(failure);
    CHECK(failure->stage == SpawnFailure::Stage::exec);
    CHECK(failure->error == ENOENT);
    CHECK(std::string(failure->what()) == "exec");
    plan.directory = &nowhere;
    CHECK(hbwatch::tool::spawn(plan, failure) == -1);
    REQUIRE(failure);
    CHECK(failure->stage == SpawnFailure::Stage::chdir);
    CHECK(std::string(failure->what()) == "chdir to its directory");

    // A real start: the helper reports what it inherited, through a pipe given as its stdout.
    std::string reporter = std::string(HBWATCH_BIN_DIR) + "/report_env";
    argv[0] = reporter.data();
    plan.directory = &here;
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    plan.stdout_fd = out[1];
    ::signal(SIGTERM, SIG_IGN);  // a caller's SIG_IGN must not reach the program
    hbwatch::tool::default_signal_dispositions();
    const pid_t pid = hbwatch::tool::spawn(plan, failure);
    ::close(out[1]);
    REQUIRE_FALSE(failure);
    REQUIRE(pid > 0);
    std::string said;
    char buffer[256];
    for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) > 0;) said.append(buffer, static_cast<std::size_t>(n));
    ::close(out[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(hbwatch::tool::describe_exit(status) == "exited with code 0");
    CHECK(said == "sigterm=default blocked=0 fds=0,1,2\n");
}

TEST_CASE("what procctl hands procctl-loop reads back as it was written, every setting and odd word included") {
    using hbwatch::tool::LoopRequest;
    LoopRequest request;
    auto& o = request.options;
    o.argv = {"/opt/my app/svc", "--grace", "-f", "--", "", "a b\tc"};  // PROGRAM's, never the loop's
    o.interval = 1500ms;
    o.grace = 0ms;
    o.max_backoff = 90s;
    o.window = 2h;
    o.max_restarts = 7;
    o.output_max_size = 123456;
    o.output_files = 9;
    char dir[] = "/tmp/hbwatch loop XXXXXX";  // a directory with a blank in its name
    REQUIRE(::mkdtemp(dir) != nullptr);
    o.chdir = dir;
    o.stdout_file = "/var/log/out put.log";
    o.stderr_file = "--stderr";
    o.inherit_output = true;
    o.env = {"A=1", "B=x=y", "EMPTY="};
    o.cgroup_name = "procctl-svc-0123abcd";
    request.launch = {true, "/run/svc.pid", "/var/log/procctl.log", true};
    std::vector<std::string> words = hbwatch::tool::loop_arguments(request);
    words.insert(words.begin(), "procctl");
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    CHECK(hbwatch::tool::parse_loop_arguments(static_cast<int>(words.size()), argv.data()) == request);
    ::rmdir(dir);

    LoopRequest plain;  // the defaults, and nothing optional written
    plain.options.argv = {"sleep", "1"};
    auto few = hbwatch::tool::loop_arguments(plain);
    CHECK(std::find(few.begin(), few.end(), "--max-restarts") == few.end());
    few.insert(few.begin(), "procctl");
    std::vector<char*> few_argv;
    for (auto& w : few) few_argv.push_back(w.data());
    few_argv.push_back(nullptr);
    CHECK(hbwatch::tool::parse_loop_arguments(static_cast<int>(few.size()), few_argv.data()) == plain);
}

TEST_CASE("procctl-loop refuses arguments procctl would never write, naming them") {
    auto refusal = [](std::vector<std::string> words) -> std::string {
        words.insert(words.begin(), "procctl-loop");
        std::vector<char*> argv;
        for (auto& w : words) argv.push_back(w.data());
        argv.push_back(nullptr);
        try {
            (void)hbwatch::tool::parse_loop_arguments(static_cast<int>(words.size()), argv.data());
        } catch (const hbwatch::Error& e) {
            return e.what();
        }
        return "accepted";
    };
    CHECK(refusal({"--interval", "25h", "--", "x"}).find("--interval 25h is out of range") != std::string::npos);
    CHECK(refusal({"--grace", "soon", "--", "x"}).find("soon") != std::string::npos);
    CHECK(refusal({"--env", "NOEQUALS", "--", "x"}) == "--env NOEQUALS: write it as KEY=VALUE");
    CHECK(refusal({"--output-files", "0", "--", "x"}) == "--output-files 0: give a whole number from 1 to 100");
    CHECK(refusal({"--output-max-size", "12", "--", "x"}).find("--output-max-size 12: give a whole number from 1024") == 0);
    CHECK(refusal({"--max-restarts", "-1", "--", "x"}).find("--max-restarts -1: give a whole number") == 0);
    CHECK(refusal({"--bogus", "--", "x"}).find("unknown or incomplete option --bogus: procctl-loop takes what procctl hands it") == 0);
    CHECK(refusal({"--interval"}).find("unknown or incomplete option --interval") == 0);
    CHECK(refusal({"--interval", "1s"}) == "no PROGRAM after the options: run procctl instead");
    CHECK(refusal({"--cgroup", "../victim", "--", "x"}).find("--cgroup ../victim: not a cgroup name procctl gives") == 0);
    CHECK(refusal({"--cgroup", "procctl-a/../../b", "--", "x"}).find("not a cgroup name") != std::string::npos);
    CHECK(refusal({"--chdir", "/nonexistent/dir", "--", "x"}) == "--chdir /nonexistent/dir: No such file or directory");
    CHECK(refusal({"--chdir", "/etc/hostname", "--", "x"}) == "--chdir /etc/hostname: not a directory");
    CHECK(refusal({"--interval", "1s", "--"}) == "no PROGRAM after the options: run procctl instead");
}
