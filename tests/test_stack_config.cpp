// The stack supervisor's config: every key read, and every error placed at its line and column
// with what is allowed there.
#include <doctest/doctest.h>

#include <signal.h>

#include <string>

#include <hbwatch/error.h>

#include "engine/hang_diagnosis.h"
#include "engine/stack_config.h"

#include "support.h"

using namespace std::chrono_literals;
using hbwatch::tool::parse_stack_config;
using hbtest::error_of;

namespace {
std::vector<std::string> names(const hbwatch::tool::StackConfig& config) {
    std::vector<std::string> out;
    for (const auto& p : config.programs) out.push_back(p.name);
    return out;
}
}  // namespace

TEST_CASE("a stack config is read whole, and its programs are put in start order") {
    const auto config = parse_stack_config(R"(
run_dir: /run/stack
log_dir: /var/log/stack
socket_group: nogroup
programs:
  main-app:
    command: [/opt/app/main, --port, "9421"]
    after: [ipc-server]
    directory: /opt/app
    environment: {APP_ENV: prod, THREADS: 4}
    user: app
    restart: on-failure
    restart_delay: 5s
    max_restarts: {count: 3, window: 1m}
    stop_signal: INT
    stop_grace: 20s
    stdout: main_app.log
    stderr: main_app.err.log
    log_max_size: 1M
    log_files: 3
    instances: 3
    max_rss: 1G
  ipc-server:
    command: [/opt/app/ipc-server, --port, "12345"]
    ready: tcp:127.0.0.1:12345
    ready_timeout: 30s
  checkproc:
    command: [checkproc, --watch]
  updater:
    command: [/opt/app/updater]
    ready: exec:/opt/app/updater --check
    autostart: false
  worker:
    command: [/opt/app/worker]
    ready: beat
    after: [main-app, ipc-server]
)",
                                           "stack.yaml");
    CHECK(config.run_dir == "/run/stack");
    CHECK(config.log_dir == "/var/log/stack");
    CHECK(config.socket_group == "nogroup");
    CHECK(names(config) == std::vector<std::string>{"ipc-server", "main-app", "checkproc", "updater", "worker"});
    const auto& main = config.programs[1];
    CHECK(main.command == std::vector<std::string>{"/opt/app/main", "--port", "9421"});
    CHECK(main.after == std::vector<std::string>{"ipc-server"});
    CHECK(main.directory == "/opt/app");
    CHECK(main.environment.at("APP_ENV") == "prod");
    CHECK(main.environment.at("THREADS") == "4");
    CHECK(main.user == "app");
    CHECK(main.restart == hbwatch::tool::RestartMode::on_failure);
    CHECK(main.restart_delay == 5s);
    CHECK(main.max_restarts == 3);
    CHECK(main.max_restarts_window == 1min);
    CHECK(main.stop_signal == SIGINT);
    CHECK(main.stop_grace == 20s);
    CHECK(main.stdout_path == "main_app.log");
    CHECK(main.stderr_path == "main_app.err.log");
    CHECK(main.log_max_size == 1u << 20);
    CHECK(main.log_files == 3);
    CHECK(main.instances == 3);
    CHECK(main.max_rss == 1ull << 30);
    CHECK(main.autostart);
    const auto& ipc = config.programs[0];
    CHECK(ipc.ready.kind == hbwatch::tool::ReadyCheck::Kind::tcp);
    CHECK(ipc.ready.host == "127.0.0.1");
    CHECK(ipc.ready.port == 12345);
    CHECK(ipc.restart == hbwatch::tool::RestartMode::always);  // the defaults
    CHECK(ipc.stop_signal == SIGTERM);
    CHECK(ipc.stop_grace == 10s);
    CHECK(ipc.instances == 1);
    const auto& updater = config.programs[3];
    CHECK(updater.ready.kind == hbwatch::tool::ReadyCheck::Kind::exec);
    CHECK(updater.ready.command == std::vector<std::string>{"/opt/app/updater", "--check"});
    CHECK_FALSE(updater.autostart);
    CHECK(config.programs[4].ready.kind == hbwatch::tool::ReadyCheck::Kind::beat);
}

TEST_CASE("a stack config may be written in JSON") {
    const auto config = parse_stack_config(
        R"({"run_dir": "/tmp/run", "programs": {"a": {"command": ["/bin/true"]}, "b": {"command": ["/bin/true"], "after": ["a"]}}})",
        "stack.json");
    CHECK(config.run_dir == "/tmp/run");
    CHECK(names(config) == std::vector<std::string>{"a", "b"});
}

TEST_CASE("config errors name the file, line, column and key, and say what is allowed") {
    CHECK(error_of([] {
              (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    after: [b]\n  b:\n    command: [y]\n    after: [c]\n"
                                       "  c:\n    command: [z]\n    after: [a]\n",
                                       "stack.yaml");
          }) == "stack.yaml:4:12: after: the programs a -> b -> c -> a wait for each other in a cycle; remove one of these "
                "'after' entries");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    restrat: always\n", "stack.yaml"); }) ==
          "stack.yaml:4:5: program 'a': unknown key 'restrat': the keys allowed here are command, ready, ready_timeout, "
          "after, directory, environment, user, restart, restart_delay, max_restarts, stop_signal, stop_grace, stdout, "
          "stderr, log_max_size, log_files, instances, max_rss, autostart, inherit_environment, notify, watchdog");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    stop_grace: soon\n", "stack.yaml"); }) ==
          "stack.yaml:4:17: program 'a': stop_grace: bad duration 'soon': it does not start with a whole, non-negative "
          "number; write it like 500ms, 5s, 2m, 1h, 7d or a number of seconds");
    CHECK(error_of([] { (void)parse_stack_config("diagnoses: var/diag\nprograms:\n  a:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:1:12: diagnoses: 'var/diag' is not an absolute path: give a directory, or none");
    CHECK(parse_stack_config("diagnoses: none\nprograms:\n  a:\n    command: [x]\n", "s.yaml").diagnoses.empty());
    CHECK(parse_stack_config("diagnoses: /srv/d\nprograms:\n  a:\n    command: [x]\n", "s.yaml").diagnoses == "/srv/d");
    CHECK(parse_stack_config("programs:\n  a:\n    command: [x]\n", "s.yaml").diagnoses == hbwatch::tool::default_diagnosis_directory());
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x\n", "stack.yaml"); })
              .starts_with("stack.yaml:4:1: not valid YAML (or JSON): "));
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    after: [nobody]\n", "s.yaml"); }) ==
          "s.yaml:4:12: program 'a': after: there is no program 'nobody' (the programs are a)");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    ready: beat\n", "s.yaml"); }) ==
          "s.yaml:3:5: program 'a': command is missing: give command: [program, args...]");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    ready: tcp:localhost\n", "s.yaml"); }) ==
          "s.yaml:4:12: ready: 'tcp:localhost' is not tcp:HOST:PORT (for example tcp:127.0.0.1:8080)");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    watchdog: 2s\n    notify: false\n", "s.yaml"); }) ==
          "s.yaml:5:13: program 'a': notify: false, but watchdog needs its NOTIFY_SOCKET: remove notify: false");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    watchdog: 10ms\n", "s.yaml"); })
              .starts_with("s.yaml:4:15: program 'a': watchdog: "));
    CHECK(error_of([] { (void)parse_stack_config("run_dir: /run/" + std::string(80, 'd') + "\nprograms:\n  abcdefghijklmnopqrstu:\n    command: [x]\n    ready: notify\n", "s.yaml"); })
              .find("its NOTIFY_SOCKET /run/ddd") != std::string::npos);
    {
        const auto config = parse_stack_config("programs:\n  a: {command: [x], ready: notify}\n  b: {command: [x], watchdog: 30s}\n  c: {command: [x], notify: true}\n  d: {command: [x]}\n", "s.yaml");
        CHECK(config.programs[0].notify);
        CHECK(config.programs[0].ready.kind == hbwatch::tool::ReadyCheck::Kind::notify);
        CHECK(config.programs[1].notify);
        CHECK(config.programs[1].watchdog == 30s);
        CHECK(config.programs[2].notify);
        CHECK_FALSE(config.programs[3].notify);
    }
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    stop_signal: STOP\n", "s.yaml"); }) ==
          "s.yaml:4:18: program 'a': stop_signal: 'STOP' is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    instances: 0\n", "s.yaml"); }) ==
          "s.yaml:4:16: program 'a': instances: '0' is not a whole number from 1 to 64");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a@1:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:2:3: program name 'a@1': '@' is kept for instances (NAME@1, NAME@2, ...)");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    environment: {HBWATCH_KEY: 12zz}\n", "s.yaml"); })
              == "s.yaml:4:32: program 'a': environment.HBWATCH_KEY: bad table key '12zz': give a non-zero 32-bit number in hex "
                 "(0x48425754) or decimal (1212307284)");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  all:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:2:3: program name 'all' is kept for every program (proctab stop all): choose another");
    CHECK(error_of([] { (void)parse_stack_config("run_dir: /x\n", "s.yaml"); }) ==
          "s.yaml:1:1: programs is missing: give at least one program with its command");
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\nlogdir: /x\n", "s.yaml"); }) ==
          "s.yaml:4:1: unknown key 'logdir': the keys allowed here are run_dir, log_dir, socket_group, diagnoses, events, http, programs");
    const std::string long_dir = "/" + std::string(100, 'r');
    CHECK(error_of([&] { (void)parse_stack_config("run_dir: " + long_dir + "\nprograms:\n  a:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:1:10: run_dir: '" + long_dir + "' is empty or too long: run_dir/control.sock must be under 108 bytes");
    CHECK(error_of([] { (void)parse_stack_config("socket_group: no-such-group-here\nprograms:\n  a:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:1:15: socket_group: 'no-such-group-here' is not a group on this host");
    CHECK(error_of([] { (void)hbwatch::tool::load_stack_config("/nonexistent/stack.yaml"); }) ==
          "cannot open /nonexistent/stack.yaml: its directory /nonexistent does not exist (procctl never creates directories)");
}

TEST_CASE("what a hostile config could slip through is refused at its line: sizes, durations, names, paths, keys given twice") {
    auto parsed = [](const std::string& programs) { return error_of([&] { (void)parse_stack_config("programs:\n" + programs, "s.yaml"); }); };
    // The command line's ranges, for every size and duration key.
    CHECK(parsed("  a:\n    command: [x]\n    log_max_size: 0\n") ==
          "s.yaml:4:19: program 'a': log_max_size: '0' is out of range: give 1K to 1T");
    CHECK(parsed("  a:\n    command: [x]\n    log_max_size: 2T\n") ==
          "s.yaml:4:19: program 'a': log_max_size: '2T' is out of range: give 1K to 1T");
    CHECK(parsed("  a:\n    command: [x]\n    stop_grace: 2d\n") ==
          "s.yaml:4:17: program 'a': stop_grace: 2d is out of range: give 0ms to 1d");
    CHECK(parsed("  a:\n    command: [x]\n    stop_grace: 106751991167d\n") ==
          "s.yaml:4:17: program 'a': stop_grace: bad duration '106751991167d': it is longer than 365d; write it like 500ms, 5s, "
          "2m, 1h, 7d or a number of seconds");
    CHECK(parsed("  a:\n    command: [x]\n    restart_delay: 25h\n") ==
          "s.yaml:4:20: program 'a': restart_delay: 25h is out of range: give 0ms to 1d");
    CHECK(parsed("  a:\n    command: [x]\n    ready_timeout: 50ms\n") ==
          "s.yaml:4:20: program 'a': ready_timeout: 50ms is out of range: give 100ms to 1d");
    CHECK(parsed("  a:\n    command: [x]\n    max_restarts: {count: 3, window: 31d}\n") ==
          "s.yaml:4:38: program 'a': max_restarts.window: 31d is out of range: give 1s to 30d");
    // Names: a NUL byte, and a '/' the API could not address.
    CHECK(parsed("  \"a\\0b\":\n    command: [x]\n") ==
          "s.yaml:2:3: program name: heartbeat name 'a\\x00b' has a bad character at byte 1: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(parsed("  a/b:\n    command: [x]\n") ==
          "s.yaml:2:3: program name 'a/b': '/' cannot stand in a name the control API addresses (/v1/programs/NAME)");
    // Output files under log_dir only.
    CHECK(parsed("  a:\n    command: [x]\n    stdout: /etc/shadow\n") ==
          "s.yaml:4:13: program 'a': stdout: give a file name under log_dir (set log_dir to choose the directory), not an absolute "
          "path, and without '..'");
    CHECK(parsed("  a:\n    command: [x]\n    stderr: ../../etc/passwd\n") ==
          "s.yaml:4:13: program 'a': stderr: give a file name under log_dir (set log_dir to choose the directory), not an absolute "
          "path, and without '..'");
    // A key given twice is refused with both lines (yaml-cpp keeps both, and lookups took the first).
    CHECK(parsed("  a:\n    command: [x]\n    user: nobody\n    user: root\n") ==
          "s.yaml:5:5: the key 'user' is given twice in one map, first at line 4: give each key once");
    CHECK(parsed("  a:\n    command: [x]\n  b:\n    command: [y]\n  a:\n    command: [z]\n") ==
          "s.yaml:6:3: the key 'a' is given twice in one map, first at line 2: give each key once");
    // An alias as a key: readers disagree on which of two keys then wins.
    CHECK(parsed("  a:\n    command: [x]\n    stdout: &k command\n    *k : [y]\n") ==
          "s.yaml:5:5: an alias cannot stand as a key: write the key itself");
    // Output file names are relative to log_dir, so log_dir itself must be a directory from /.
    CHECK(error_of([] { (void)parse_stack_config("log_dir: \"\"\nprograms:\n  a:\n    command: [x]\n    stdout: etc/cron.d/x\n", "s.yaml"); }) ==
          "s.yaml:1:10: log_dir: '' is not an absolute path: give the directory, such as /var/log/hbwatch");
    CHECK(error_of([] { (void)parse_stack_config("run_dir: run\nprograms:\n  a:\n    command: [x]\n", "s.yaml"); }) ==
          "s.yaml:1:10: run_dir: 'run' is not an absolute path: give the directory, such as /run/hbwatch");
    CHECK(error_of([] { (void)parse_stack_config("{\"programs\": {\"a\": {\"command\": [\"x\"], \"command\": [\"y\"]}}}", "s.json"); }) ==
          "s.json:1:39: the key 'command' is given twice in one map, first at line 1: give each key once");
}

TEST_CASE("a config whose aliases multiply it is refused at the alias that passes the bound, before anything is built") {
    // 2000 words, named once, and 3000 programs that each name them: 6 million words from 82 KiB.
    std::string text = "programs:\n  p0:\n    command: &words [";
    for (int i = 0; i < 2000; ++i) text += i ? ",x" : "x";
    text += "]\n";
    for (int i = 1; i <= 3000; ++i) text += "  p" + std::to_string(i) + ": {command: *words}\n";
    REQUIRE(text.size() < 100'000);
    const std::string error = error_of([&] { (void)parse_stack_config(text, "s.yaml"); });
    CAPTURE(error);
    // Past 4 MiB of nodes and text: about program 1040 of 3000, at its alias.
    const auto line = std::stoi(error.substr(error.find(':') + 1));
    CHECK(line > 1000);
    CHECK(line < 1100);
    // At the alias itself: "  pN: {command: *words}" has it at column 16 + the digits of N.
    std::string at(":");  // built in steps: g++ 12 warns falsely (-Wrestrict) on ":" + ...
    at.append(std::to_string(line)).append(":").append(std::to_string(std::to_string(line - 2).size() + 16));
    CHECK(error.find(at + ": this alias makes the config expand past 4 MiB of nodes and text; an alias may repeat a part of the "
                          "file, not multiply it") != std::string::npos);
    // A few aliases that repeat a part are fine.
    const auto config = parse_stack_config("programs:\n  a:\n    command: &c [sleep, \"60\"]\n  b:\n    command: *c\n", "s.yaml");
    CHECK(config.programs[1].command == std::vector<std::string>{"sleep", "60"});
}

TEST_CASE("inherit_environment passes procctl's whole environment, or the names listed") {
    const auto config = parse_stack_config("programs:\n  a:\n    command: [x]\n    inherit_environment: true\n"
                                           "  b:\n    command: [x]\n    inherit_environment: [TOKEN, HOME]\n  c:\n    command: [x]\n",
                                           "s.yaml");
    CHECK(config.programs[0].inherit_all_environment);
    CHECK(config.programs[1].inherit_environment == std::vector<std::string>{"TOKEN", "HOME"});
    CHECK_FALSE(config.programs[2].inherit_all_environment);
    CHECK(config.programs[2].inherit_environment.empty());
    CHECK(error_of([] { (void)parse_stack_config("programs:\n  a:\n    command: [x]\n    inherit_environment: sometimes\n", "s.yaml"); }) ==
          "s.yaml:4:26: program 'a': inherit_environment: 'sometimes' is not true or false");
}
