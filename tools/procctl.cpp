// procctl: runs a program, waits for it to exit, sleeps INTERVAL, and runs it again.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/duration.h"
#include <hbwatch/error.h>

#include "engine/completion.h"
#include "engine/daemon.h"
#include "engine/output.h"
#include "engine/stack.h"
#include "engine/stack_config.h"
#include "engine/stop_procctl.h"
#include "engine/supervise_options.h"
#include "engine/support.h"
#include "engine/terminal_text.h"

namespace {

namespace tool = hbwatch::tool;

// procctl's options, as typed; checked and converted by options().
struct Cli {
    std::string interval, grace = "10s", max_backoff = "5m", window = "1m", output_max_size = "10M";
    std::string chdir, stdout_file, stderr_file, pidfile, log_file;
    std::vector<std::string> env;
    std::optional<unsigned> max_restarts;
    std::size_t output_files = 5;
    bool foreground = false, verbose = false;
    std::string program;

    void add_to(CLI::App& app) {
        app.description("procctl [OPTIONS] INTERVAL PROGRAM [ARGS...]\n"
                        "procctl --config FILE    (a stack of programs: see procctl --config FILE --help)\n"
                        "procctl --stop RUN_DIR   (stop that stack: see procctl --stop RUN_DIR --help)\n\n"
                        "Runs PROGRAM, waits for it to exit, sleeps INTERVAL, and runs it again, forever. Detaches\n"
                        "into the background unless -f. SIGTERM or SIGINT stops PROGRAM and everything it started\n"
                        "(SIGTERM, then SIGKILL after --grace), then procctl exits.");
        app.add_flag("-f,--foreground", foreground, "stay attached (for systemd units and containers)");
        app.add_option("--pidfile", pidfile, "hold a lock on FILE and write procctl's pid into it");
        app.add_option("--stdout", stdout_file, "append the program's stdout to FILE, rotated");
        app.add_option("--stderr", stderr_file, "append the program's stderr to FILE, rotated (may equal --stdout)");
        app.add_option("--output-max-size", output_max_size, "rotate --stdout/--stderr files at this size (default 10M)");
        app.add_option("--output-files", output_files, "rotated output files kept (default 5)")->check(CLI::Range(1, 100));
        app.add_option("--chdir", chdir, "run the program in DIR")->check(CLI::ExistingDirectory);
        app.add_option("--env", env, "set KEY=VALUE in the program's environment (repeatable)")->allow_extra_args(false);
        app.add_option("--grace", grace, "SIGTERM to SIGKILL when stopping (default 10s)")->check(tool::duration_validator());
        app.add_option("--max-backoff", max_backoff, "cap on the restart backoff (default 5m)")->check(tool::duration_validator());
        app.add_option("--max-restarts", max_restarts, "give up after N starts within --window");
        app.add_option("--window", window, "the window of --max-restarts (default 1m)")->check(tool::duration_validator());
        app.add_option("--log", log_file, "log to FILE (rotated)");
        app.add_flag("-v,--verbose", verbose, "also log reaped descendants");
        app.add_option("INTERVAL", interval, "pause between an exit and the next start")->required()->check(tool::duration_validator());
        app.add_option("PROGRAM", program, "a path, or a name found on PATH, then its arguments")->required();
        app.footer(
            "Examples:\n"
            "  procctl 10 checkproc /var/log/hbwatch/checkproc.log     scan the table every 10 s\n"
            "  procctl 5 /opt/app/order-svc --port 9000                 bring a killed service back after 5 s\n"
            "  procctl -f --pidfile /run/order.pid --stdout /var/log/order.out 5s order-svc\n"
            "                                                           in the foreground, for systemd or a container\n"
            "  procctl --max-restarts 5 --window 1m 0 ./flaky           give up after 5 starts in a minute\n"
            "\n"
            "INTERVAL and durations: 500ms, 10s, 2m, or a number of seconds. A program that cannot start, or\n"
            "exits unsuccessfully within a second, is restarted after a doubling delay (from INTERVAL, at\n"
            "least 1s, up to --max-backoff); a run of a second or more, or any exit 0, resets it.\n"
            "Logs: --log FILE (rotated), else stderr in the foreground and syslog in the background.\n"
            "\n"
            "Exit status: 0 stopped by SIGTERM/SIGINT (or, when detaching, the background loop started);\n"
            "1 procctl itself could not start (pidfile held, log not writable); 2 bad arguments;\n"
            "3 gave up after --max-restarts.");
    }

    // Where procctl's own arguments end: just after PROGRAM. What follows is PROGRAM's, even
    // when it looks like one of procctl's options (`procctl 10 checkproc --grace 2s`).
    static int program_end(const CLI::App& app, int argc, char** argv) {
        int positionals = 0;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg.size() > 1 && arg[0] == '-' && arg.find('=') == std::string::npos) {
                const CLI::Option* option = app.get_option_no_throw(arg);
                if (option != nullptr && option->get_items_expected_max() > 0) ++i;  // its value
                continue;
            }
            if (arg.size() > 1 && arg[0] == '-') continue;  // --option=value
            if (++positionals == 2) return i + 1;
        }
        return argc;
    }

    tool::SuperviseOptions options(const std::vector<std::string>& args) const {
        using namespace std::chrono_literals;
        tool::SuperviseOptions o;
        o.argv.push_back(program);
        o.argv.insert(o.argv.end(), args.begin(), args.end());
        // Within their ranges: converted to nanoseconds later, they can never overflow.
        o.interval = hbwatch::parse_duration_in(interval, "INTERVAL", hbwatch::tool::kRestartDelayRange);
        o.grace = hbwatch::parse_duration_in(grace, "--grace", hbwatch::tool::kStopGraceRange);
        o.max_backoff = hbwatch::parse_duration_in(max_backoff, "--max-backoff", hbwatch::tool::kMaxBackoffRange);
        o.window = hbwatch::parse_duration_in(window, "--window", hbwatch::tool::kRestartWindowRange);
        o.output_max_size = hbwatch::parse_size(output_max_size);
        tool::check_output_file_size(o.output_max_size, "--output-max-size " + output_max_size);
        o.output_files = output_files;
        o.chdir = chdir;
        o.stdout_file = stdout_file;
        o.stderr_file = stderr_file;
        o.inherit_output = foreground;
        for (const auto& entry : env) {
            if (entry.find('=') == std::string::npos || entry.front() == '=')
                throw hbwatch::Error(EINVAL, "--env " + entry + ": write it as KEY=VALUE");
        }
        o.env = env;
        if (max_restarts && *max_restarts == 0) throw hbwatch::Error(EINVAL, "--max-restarts must be at least 1");
        o.max_restarts = max_restarts;
        o.cgroup_name = cgroup_name(o.argv);
        return o;
    }

    // Stable across restarts of procctl, so that a new one finds what a SIGKILLed one left:
    // named after the pidfile when there is one, else after the command line.
    std::string cgroup_name(const std::vector<std::string>& argv) const {
        std::string key = pidfile, label;
        if (!pidfile.empty()) {
            const auto slash = pidfile.rfind('/');
            const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : pidfile.substr(0, slash);
            char* absolute = ::realpath(dir.c_str(), nullptr);
            if (absolute) {
                key = std::string(absolute) + "/" + pidfile.substr(pidfile.rfind('/') + 1);
                std::free(absolute);
            }
            label = key.substr(key.rfind('/') + 1);
            if (label.ends_with(".pid")) label.resize(label.size() - 4);
        } else {
            for (const auto& word : argv) key += word + '\0';
            label = argv.front().substr(argv.front().rfind('/') + 1);
        }
        std::uint64_t hash = 1469598103934665603ull;  // FNV-1a
        for (unsigned char c : key) hash = (hash ^ c) * 1099511628211ull;
        for (char& c : label)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
        char suffix[24];
        std::snprintf(suffix, sizeof suffix, "-%08llx", static_cast<unsigned long long>(hash & 0xffffffffu));
        return "procctl-" + label.substr(0, 40) + suffix;
    }
};

// Whether the command line asks for another mode than the one-program loop: `option` (or
// `short_option`) among procctl's own options, before INTERVAL (after it, "-c" may be
// PROGRAM's, as in `sh -c`).
bool wants_mode(int argc, char** argv, std::string_view option, std::string_view short_option = {}) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == option || (!short_option.empty() && arg == short_option) ||
            (arg.starts_with(option) && arg.size() > option.size() && arg[option.size()] == '='))
            return true;
        if (arg.empty() || arg[0] != '-') return false;
    }
    return false;
}

// procctl --stop RUN_DIR's options.
struct StopCli {
    std::string run_dir, wait = "30s";

    void add_to(CLI::App& app) {
        app.description("procctl --stop RUN_DIR [--wait DURATION]\n\n"
                        "Stops the procctl --config whose run_dir is RUN_DIR: SIGTERM, which stops every program in\n"
                        "reverse order, each with its stop_grace; then waits until procctl has exited. Only a procctl\n"
                        "that holds RUN_DIR/procctl.pid locked is signalled, through a pidfd, after checking that\n"
                        "RUN_DIR and the pidfile belong to root or you and that no other user can write them.");
        app.add_option("--stop", run_dir, "the stack's run_dir (as in its config)")->required();
        app.add_option("--wait", wait, "how long to wait for procctl to exit (default 30s)")->check(tool::duration_validator());
        app.footer("Examples:\n"
                   "  procctl --stop /run/hbwatch                 stop the stack of /etc/hbwatch/stack.yaml\n"
                   "  procctl --stop /srv/app/run --wait 2m       programs with long stop_grace\n"
                   "\n"
                   "Exit status: 0 stopped (or nothing was running: no pidfile, or a stale one); 1 refused (the\n"
                   "run_dir or pidfile is not trusted, or its pid is not a procctl holding the lock), or procctl\n"
                   "still runs after --wait; 2 bad arguments.");
    }
};

// procctl --stop RUN_DIR: SIGTERM to the procctl --config of that run_dir, once it is proven
// to be one, and a wait until it is gone.
int run_stop_mode(int argc, char** argv) {
    StopCli cli;
    CLI::App app{"", "procctl"};
    cli.add_to(app);
    if (auto done = tool::parse(app, argc, argv)) return *done;
    std::string run_dir = cli.run_dir;
    while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
    return tool::stop_procctl(run_dir + "/procctl.pid", hbwatch::parse_duration(cli.wait), stdout);
}

// procctl --config FILE's options.
struct StackCli {
    std::string config_path, log_file;
    bool foreground = false, verbose = false, check = false;

    void add_to(CLI::App& app) {
        app.description("procctl --config FILE [-f] [--log FILE] [-v] [--check]\n\n"
                        "Supervises every program of a stack, described in FILE (YAML, or JSON), in one process:\n"
                        "starts them in the order their `after` lists give, each once those it waits for are ready,\n"
                        "restarts each by its own policy, and on SIGTERM or SIGINT stops them in reverse order.");
        app.add_option("-c,--config", config_path, "the stack's config file")->required();
        app.add_flag("-f,--foreground", foreground, "stay attached (for systemd units and containers)");
        app.add_option("--log", log_file, "log to FILE (rotated)");
        app.add_flag("-v,--verbose", verbose, "log more");
        app.add_flag("--check", check, "check FILE, print the start order, and exit");
        app.footer(
            "Examples:\n"
            "  procctl --config /etc/hbwatch/stack.yaml              run the stack in the background\n"
            "  procctl -f -c stack.yaml                              in the foreground, for systemd or a container\n"
            "  procctl --check -c stack.yaml                         check the file: errors name line and column\n"
            "\n"
            "  kill -HUP $(cat /run/hbwatch/procctl.pid)              reload FILE (as proctab reload does)\n"
            "\n"
            "The config's keys are described in the README (\"The stack supervisor\"; its events: section,\n"
            "hooks, webhooks and Alertmanager, in \"Events and alerts\"). Operators manage the running stack\n"
            "with proctab: status, start, stop, restart, signal, reload, tail and events.\n"
            "\n"
            "Exit status: 0 stopped by SIGTERM/SIGINT (or, when detaching, the stack started; or --check\n"
            "found the file good); 1 procctl could not start (config error, run_dir held by another\n"
            "procctl, a log not writable); 2 bad arguments.");
    }
};

// procctl --config FILE: every program of the stack in one process.
int run_stack_mode(int argc, char** argv) {
    StackCli cli;
    CLI::App app{"", "procctl"};
    cli.add_to(app);
    if (auto done = tool::parse(app, argc, argv)) return *done;
    hbwatch::tool::StackConfig config;
    try {
        // Absolute: a reload reads it again, from wherever procctl then is.
        config = hbwatch::tool::load_stack_config(std::filesystem::absolute(cli.config_path).lexically_normal().string());
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "procctl: %s\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitFailure;
    }
    if (cli.check) {
        std::string order;
        for (const auto& p : config.programs) {
            if (!order.empty()) order += ", ";
            order += p.name;
            if (p.instances > 1) order.append(" x").append(std::to_string(p.instances));
        }
        std::printf("%s: good; %zu programs, start order: %s\n", cli.config_path.c_str(), config.programs.size(), order.c_str());
        return tool::kExitOk;
    }
    tool::Launch how;
    how.foreground = cli.foreground;
    how.pidfile = config.run_dir + "/procctl.pid";
    how.started = "running the stack of " + config.path;
    how.prepare = [&] {
        if (::mkdir(config.run_dir.c_str(), 0755) != 0 && errno != EEXIST)
            throw hbwatch::Error(errno, "cannot create run_dir " + config.run_dir + ": " + std::strerror(errno));
    };
    return tool::launch(how, [&](int signals, const std::function<void()>& ready) {
        auto log = tool::make_logger("procctl", cli.log_file, cli.verbose, /*syslog=*/!cli.foreground && cli.log_file.empty());
        return tool::run_stack(std::move(config), *log, signals, ready);
    });
}

}  // namespace

int main(int argc, char** argv) {
    tool::one_malloc_arena();
    if (tool::wants_bash_completion(argc, argv)) {
        // Every mode's options, each under the option that chooses it.
        Cli cli;
        StackCli stack;
        StopCli stop;
        CLI::App single{"", "procctl"}, stack_app{"", "procctl"}, stop_app{"", "procctl"};
        cli.add_to(single);
        stack.add_to(stack_app);
        stop.add_to(stop_app);
        std::fputs(tool::bash_completion("procctl", {{&single, {}, 2}, {&stack_app, {"--config", "-c"}}, {&stop_app, {"--stop"}}}).c_str(), stdout);
        return tool::kExitOk;
    }
    if (wants_mode(argc, argv, "--stop")) return run_stop_mode(argc, argv);
    if (wants_mode(argc, argv, "--config", "-c")) return run_stack_mode(argc, argv);
    Cli cli;
    CLI::App app{"", "procctl"};
    cli.add_to(app);
    const int own = Cli::program_end(app, argc, argv);
    if (auto done = tool::parse(app, own, argv)) return *done;

    tool::LoopRequest request;
    try {
        request.options = cli.options(std::vector<std::string>(argv + own, argv + argc));
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "procctl: %s\nRun with --help for more information.\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitUsage;
    }
    request.launch = {cli.foreground, cli.pidfile, cli.log_file, cli.verbose};
    // The loop runs in procctl-loop, which this process becomes: see supervise_options.h.
    const std::string problem = tool::exec_procctl_loop(request, argv);
    std::fprintf(stderr, "procctl: %s\n", tool::terminal_safe(problem).c_str());
    return tool::kExitFailure;
}
