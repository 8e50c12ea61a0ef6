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

#include "engine/output.h"
#include "engine/stack.h"
#include "engine/stack_config.h"
#include "engine/stop_procctl.h"
#include "engine/supervisor.h"
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
        o.interval = hbwatch::parse_duration_in(interval, "INTERVAL", hbwatch::kRestartDelayRange);
        o.grace = hbwatch::parse_duration_in(grace, "--grace", hbwatch::kStopGraceRange);
        o.max_backoff = hbwatch::parse_duration_in(max_backoff, "--max-backoff", hbwatch::kMaxBackoffRange);
        o.window = hbwatch::parse_duration_in(window, "--window", hbwatch::kRestartWindowRange);
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

// Takes the pidfile, or throws naming the procctl that holds it. The pid is written and
// locked in a private file first, which then takes the pidfile's name (link, or rename over a
// stale one whose lock we hold): whoever sees the pidfile locked reads the right pid in it.
int lock_pidfile(const std::string& path) {
    auto fail = [&](int err, const std::string& what) -> hbwatch::Error {
        return hbwatch::Error(err, "cannot take the pidfile " + path + ": " + what + ": " + std::strerror(err));
    };
    // Every name below is within the directory checked here: nothing swapped later is followed.
    const auto dir = hbwatch::tool::open_safe_directory(path);
    const char* name = dir.name.c_str();
    std::uint64_t random = 0;
    (void)!::getrandom(&random, sizeof random, 0);
    std::string temporary = dir.name;
    temporary.append(".").append(std::to_string(::getpid())).append(".").append(std::to_string(random % 1000000));
    const int fd = ::openat(dir.fd, temporary.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) throw fail(errno, "cannot create a file beside it");
    auto give_up = [&](const hbwatch::Error& error) -> hbwatch::Error {
        ::unlinkat(dir.fd, temporary.c_str(), 0);
        ::close(fd);
        return error;
    };
    const std::string text = std::to_string(::getpid()) + "\n";
    if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::flock(fd, LOCK_EX | LOCK_NB) != 0)
        throw give_up(fail(errno, "cannot write " + temporary));
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (::linkat(dir.fd, temporary.c_str(), dir.fd, name, 0) == 0) {
            ::unlinkat(dir.fd, temporary.c_str(), 0);
            return fd;
        }
        if (errno != EEXIST) throw give_up(fail(errno, "cannot create it"));
        const int existing = ::openat(dir.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (existing < 0) {
            if (errno == ENOENT) continue;  // removed meanwhile
            throw give_up(fail(errno, errno == ELOOP ? "it is a symbolic link, which procctl never follows" : "cannot open it"));
        }
        struct stat held {};
        if (::fstat(existing, &held) != 0 || !S_ISREG(held.st_mode) || held.st_uid != ::geteuid()) {
            ::close(existing);
            throw give_up(hbwatch::Error(EPERM, "cannot take the pidfile " + path + ": it is not a regular file owned by "
                                                    "procctl's user (uid " + std::to_string(::geteuid()) + "); remove it"));
        }
        if (::flock(existing, LOCK_EX | LOCK_NB) != 0) {
            char pid[32] = {};
            (void)!::pread(existing, pid, sizeof pid - 1, 0);
            ::close(existing);
            const long holder = std::strtol(pid, nullptr, 10);
            const std::string who = holder > 0 ? "procctl pid " + std::to_string(holder) : "another procctl";
            throw give_up(hbwatch::Error(EEXIST, path + " is locked by " + who +
                                                     ", which already supervises this program: stop it first (kill " +
                                                     (holder > 0 ? std::to_string(holder) : "its pid") + ")"));
        }
        // A stale pidfile, now locked by us: replace it, if the name still refers to it.
        struct stat named {};
        const bool same = ::fstatat(dir.fd, name, &named, AT_SYMLINK_NOFOLLOW) == 0 && held.st_dev == named.st_dev &&
                          held.st_ino == named.st_ino;
        const bool replaced = same && ::renameat(dir.fd, temporary.c_str(), dir.fd, name) == 0;
        ::close(existing);
        if (replaced) return fd;
    }
    throw give_up(hbwatch::Error(EAGAIN, "cannot take the pidfile " + path + ": it keeps changing under procctl"));
}

// Removes the pidfile if it is still ours, then lets go of the lock.
void release_pidfile(const std::string& path, int fd) {
    struct stat held {}, named {};
    if (::fstat(fd, &held) == 0 && ::lstat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
        ::unlink(path.c_str());
    else
        (void)!::ftruncate(fd, 0);
    ::close(fd);
}

// Forks into the background: a new session, no terminal, stdio on /dev/null. Returns in the
// daemon; the caller's process exits with what the daemon reports through `ready`.
int detach() {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0) throw hbwatch::Error(errno, "pipe failed");
    const pid_t first = ::fork();
    if (first < 0) throw hbwatch::Error(errno, std::string("fork failed: ") + std::strerror(errno));
    if (first > 0) {
        ::close(ready[1]);
        std::string report;
        char buffer[512];
        ssize_t n;
        while ((n = ::read(ready[0], buffer, sizeof buffer)) > 0) report.append(buffer, static_cast<std::size_t>(n));
        const bool ok = report.starts_with("ok ");
        report = tool::terminal_safe(ok ? report.substr(3) : report.empty() ? "the background process died while starting" : report);
        std::fprintf(ok ? stdout : stderr, "procctl: %s\n", report.c_str());
        std::fflush(nullptr);  // _exit does not
        ::_exit(ok ? hbwatch::tool::kExitOk : hbwatch::tool::kExitFailure);
    }
    ::close(ready[0]);
    ::setsid();
    if (::fork() != 0) ::_exit(0);  // not a session leader: it can never acquire a terminal
    const int null = ::open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
    if (null > 2) ::close(null);
    return ready[1];
}

// How procctl starts, in either mode.
struct Launch {
    bool foreground = false;
    std::string pidfile;  // empty: none
    std::string log_file;
    bool verbose = false;
    std::string started;            // "supervising X": said to the launcher once the body is ready
    std::function<void()> prepare;  // in the process that will run, before the pidfile is taken
};

// Detaches (unless in the foreground), takes the pidfile, opens the signalfd and the log, then
// runs `body`, which calls `ready` once everything it needs is open: only then does the
// launcher print "ok ..." and exit 0. An Error before that reaches the launcher (or stderr in
// the foreground), and procctl exits 1; otherwise its exit code is `body`'s.
int launch(const Launch& how, const std::function<int(spdlog::logger&, int, const std::function<void()>&)>& body) {
    int ready = -1;
    try {
        // In the background nothing of the caller's survives: close what it left open first.
        if (!how.foreground) ::close_range(3, ~0U, 0);
        if (!how.foreground) ready = detach();
        if (how.prepare) how.prepare();
        // Taken by the process that will hold it, with its own pid.
        const int pidfile = how.pidfile.empty() ? -1 : lock_pidfile(how.pidfile);
        const int signals = tool::signalfd_for({SIGTERM, SIGINT, SIGHUP, SIGCHLD});
        auto log = tool::make_logger("procctl", how.log_file, how.verbose, /*syslog=*/!how.foreground && how.log_file.empty());
        const int code = body(*log, signals, [&] {
            if (ready < 0) return;
            const std::string report = "ok " + how.started + " in the background as pid " + std::to_string(::getpid());
            (void)!::write(ready, report.data(), report.size());
            ::close(ready);
            ready = -1;
        });
        // The very last act: every program, thread, socket and cgroup is gone by now (body
        // has returned), so whoever sees the pidfile gone, or unlocked, sees procctl done.
        if (pidfile >= 0) release_pidfile(how.pidfile, pidfile);
        return code;
    } catch (const hbwatch::Error& e) {
        if (ready >= 0) (void)!::write(ready, e.what(), std::strlen(e.what()));
        else std::fprintf(stderr, "procctl: %s\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitFailure;
    }
}

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

// procctl --stop RUN_DIR: SIGTERM to the procctl --config of that run_dir, once it is proven
// to be one, and a wait until it is gone.
int run_stop_mode(int argc, char** argv) {
    std::string run_dir, wait = "30s";
    CLI::App app{"procctl --stop RUN_DIR [--wait DURATION]\n\n"
                 "Stops the procctl --config whose run_dir is RUN_DIR: SIGTERM, which stops every program in\n"
                 "reverse order, each with its stop_grace; then waits until procctl has exited. Only a procctl\n"
                 "that holds RUN_DIR/procctl.pid locked is signalled, through a pidfd, after checking that\n"
                 "RUN_DIR and the pidfile belong to root or you and that no other user can write them.",
                 "procctl"};
    app.add_option("--stop", run_dir, "the stack's run_dir (as in its config)")->required();
    app.add_option("--wait", wait, "how long to wait for procctl to exit (default 30s)")->check(tool::duration_validator());
    app.footer("Examples:\n"
               "  procctl --stop /run/hbwatch                 stop the stack of /etc/hbwatch/stack.yaml\n"
               "  procctl --stop /srv/app/run --wait 2m       programs with long stop_grace\n"
               "\n"
               "Exit status: 0 stopped (or nothing was running: no pidfile, or a stale one); 1 refused (the\n"
               "run_dir or pidfile is not trusted, or its pid is not a procctl holding the lock), or procctl\n"
               "still runs after --wait; 2 bad arguments.");
    if (auto done = tool::parse(app, argc, argv)) return *done;
    while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
    return tool::stop_procctl(run_dir + "/procctl.pid", hbwatch::parse_duration(wait), stdout);
}

// procctl --config FILE: every program of the stack in one process.
int run_stack_mode(int argc, char** argv) {
    std::string config_path, log_file;
    bool foreground = false, verbose = false, check = false;
    CLI::App app{"procctl --config FILE [-f] [--log FILE] [-v] [--check]\n\n"
                 "Supervises every program of a stack, described in FILE (YAML, or JSON), in one process:\n"
                 "starts them in the order their `after` lists give, each once those it waits for are ready,\n"
                 "restarts each by its own policy, and on SIGTERM or SIGINT stops them in reverse order.",
                 "procctl"};
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
        "The config's keys are described in the README (\"The stack supervisor\"). Operators manage the\n"
        "running stack with proctab: status, start, stop, restart, signal, reload and tail.\n"
        "\n"
        "Exit status: 0 stopped by SIGTERM/SIGINT (or, when detaching, the stack started; or --check\n"
        "found the file good); 1 procctl could not start (config error, run_dir held by another\n"
        "procctl, a log not writable); 2 bad arguments.");
    if (auto done = tool::parse(app, argc, argv)) return *done;
    hbwatch::StackConfig config;
    try {
        // Absolute: a reload reads it again, from wherever procctl then is.
        config = hbwatch::load_stack_config(std::filesystem::absolute(config_path).lexically_normal().string());
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "procctl: %s\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitFailure;
    }
    if (check) {
        std::string order;
        for (const auto& p : config.programs) {
            if (!order.empty()) order += ", ";
            order += p.name;
            if (p.instances > 1) order.append(" x").append(std::to_string(p.instances));
        }
        std::printf("%s: good; %zu programs, start order: %s\n", config_path.c_str(), config.programs.size(), order.c_str());
        return tool::kExitOk;
    }
    Launch how;
    how.foreground = foreground;
    how.pidfile = config.run_dir + "/procctl.pid";
    how.log_file = log_file;
    how.verbose = verbose;
    how.started = "running the stack of " + config.path;
    how.prepare = [&] {
        if (::mkdir(config.run_dir.c_str(), 0755) != 0 && errno != EEXIST)
            throw hbwatch::Error(errno, "cannot create run_dir " + config.run_dir + ": " + std::strerror(errno));
    };
    return launch(how, [&](spdlog::logger& log, int signals, const std::function<void()>& ready) {
        return tool::run_stack(std::move(config), log, signals, ready);
    });
}

}  // namespace

int main(int argc, char** argv) {
    if (wants_mode(argc, argv, "--stop")) return run_stop_mode(argc, argv);
    if (wants_mode(argc, argv, "--config", "-c")) return run_stack_mode(argc, argv);
    Cli cli;
    CLI::App app{"procctl [OPTIONS] INTERVAL PROGRAM [ARGS...]\n"
                 "procctl --config FILE    (a stack of programs: see procctl --config FILE --help)\n"
                 "procctl --stop RUN_DIR   (stop that stack: see procctl --stop RUN_DIR --help)\n\n"
                 "Runs PROGRAM, waits for it to exit, sleeps INTERVAL, and runs it again, forever. Detaches\n"
                 "into the background unless -f. SIGTERM or SIGINT stops PROGRAM and everything it started\n"
                 "(SIGTERM, then SIGKILL after --grace), then procctl exits.",
                 "procctl"};
    cli.add_to(app);
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
    const int own = Cli::program_end(app, argc, argv);
    if (auto done = tool::parse(app, own, argv)) return *done;

    tool::SuperviseOptions options;
    try {
        options = cli.options(std::vector<std::string>(argv + own, argv + argc));
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "procctl: %s\nRun with --help for more information.\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitUsage;
    }

    Launch how;
    how.foreground = cli.foreground;
    how.pidfile = cli.pidfile;
    how.log_file = cli.log_file;
    how.verbose = cli.verbose;
    how.started = "supervising " + options.argv.front();
    return launch(how, [&](spdlog::logger& log, int signals, const std::function<void()>& ready) {
        return tool::supervise(options, log, signals, ready);
    });
}
