// procctl beside its peers, runit (runsv, runsvdir), s6 (s6-supervise, s6-svscan) and
// supervisord, on the same programs in one run (`make bench`): memory with one program and with a
// stack of 20, idle CPU, the stop of a 20-program stack, and restart latency. It installs
// nothing: `scripts/install-deps.sh --bench` installs the peers from Debian; a peer that is not
// installed is said so, and its column is empty.
//
// The restarted program is tests/helpers/stamp, which appends "start <ns>" first thing and
// "exit <ns>" last thing to STAMP_FILE: a restart's latency is from one run's exit to the
// next run's start, on CLOCK_MONOTONIC, whoever supervises it.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const std::string kBin = HBWATCH_BIN_DIR;

// "p1", "p2"...: in steps (g++ 12 warns falsely, -Wrestrict, on program_name(i)).
std::string program_name(int i) {
    std::string name = "p";
    name += std::to_string(i);
    return name;
}

// ---------------------------------------------------------------- processes

// A /proc file's text, "" when it is gone (the process exited meanwhile): read(2), since
// libstdc++'s streams throw on the ESRCH a vanished process's file gives.
std::string proc_text(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return {};
    std::string text;
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<std::size_t>(n));
    ::close(fd);
    return text;
}

// The processes below `root` (by their parent pid, from /proc).
std::vector<pid_t> descendants(pid_t root) {
    std::map<pid_t, pid_t> parent;
    if (DIR* proc = ::opendir("/proc")) {
        while (const dirent* entry = ::readdir(proc)) {
            const pid_t pid = std::atoi(entry->d_name);
            if (pid <= 0) continue;
            const std::string text = proc_text("/proc/" + std::to_string(pid) + "/stat");
            const auto close = text.rfind(')');
            if (close == std::string::npos) continue;
            std::istringstream rest(text.substr(close + 2));
            std::string state;
            pid_t ppid = 0;
            rest >> state >> ppid;
            if (state != "Z") parent[pid] = ppid;
        }
        ::closedir(proc);
    }
    std::vector<pid_t> found{root};
    for (std::size_t i = 0; i < found.size(); ++i)
        for (const auto& [pid, ppid] : parent)
            if (ppid == found[i]) found.push_back(pid);
    found.erase(found.begin());
    return found;
}

std::string comm_of(pid_t pid) {
    std::string name = proc_text("/proc/" + std::to_string(pid) + "/comm");
    if (!name.empty() && name.back() == '\n') name.pop_back();
    return name;
}

std::vector<pid_t> named(const std::vector<pid_t>& pids, const std::string& name) {
    std::vector<pid_t> out;
    for (pid_t pid : pids)
        if (comm_of(pid) == name) out.push_back(pid);
    return out;
}

struct Memory {
    long rss_kib = 0, pss_kib = 0, private_kib = 0;
    Memory& operator+=(const Memory& other) {
        rss_kib += other.rss_kib;
        pss_kib += other.pss_kib;
        private_kib += other.private_kib;
        return *this;
    }
};

Memory memory_of(pid_t pid) {
    Memory m;
    std::istringstream in(proc_text("/proc/" + std::to_string(pid) + "/smaps_rollup"));
    for (std::string line; std::getline(in, line);) {
        const auto value = [&] { return std::atol(line.c_str() + line.find(':') + 1); };
        if (line.rfind("Rss:", 0) == 0) m.rss_kib = value();
        else if (line.rfind("Pss:", 0) == 0) m.pss_kib = value();
        else if (line.rfind("Private_Clean:", 0) == 0 || line.rfind("Private_Dirty:", 0) == 0) m.private_kib += value();
    }
    return m;
}

// CPU time in ns, every thread (schedstat's first field: more precise than clock ticks).
std::uint64_t cpu_ns(pid_t pid) {
    std::uint64_t total = 0;
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    std::error_code error;
    for (const auto& task : fs::directory_iterator(tasks, error)) {
        std::istringstream in(proc_text(task.path() / "schedstat"));
        std::uint64_t ns = 0;
        if (in >> ns) total += ns;
    }
    return total;
}

// Runs argv with `env` added, its output to /dev/null, in a session of its own.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}, const fs::path& dir = {}) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::setsid();
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the benchmark killed: its supervisors go with it
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the benchmark blocks INT and TERM for its own thread
        const int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
        if (!dir.empty() && ::chdir(dir.c_str()) != 0) ::_exit(126);
        for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    return pid;
}

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = 30s) {
    const auto deadline = Clock::now() + timeout;
    while (!done()) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

// Kills everything this benchmark started (it is their subreaper: orphans come back to it),
// supervisors first, then what they supervised, and reaps it all.
void kill_everything() {
    // procctl first by SIGTERM, so that it removes its programs' cgroups as it leaves.
    for (pid_t pid : named(descendants(::getpid()), "procctl")) ::kill(pid, SIGTERM);
    wait_until([] { return named(descendants(::getpid()), "procctl").empty(); }, 5s);
    for (int round = 0; round < 50; ++round) {
        const auto all = descendants(::getpid());
        if (all.empty()) break;
        for (pid_t pid : all) ::kill(pid, SIGSTOP);  // none restarts another meanwhile
        for (pid_t pid : all) ::kill(pid, SIGKILL);
        while (::waitpid(-1, nullptr, WNOHANG) > 0) {
        }
        std::this_thread::sleep_for(10ms);
        while (::waitpid(-1, nullptr, WNOHANG) > 0) {
        }
    }
}

// ---------------------------------------------------------------- the peers

struct Peer {
    std::string name;
    bool installed = true;
    std::string why_not;
};

bool on_path(const std::string& name) {
    for (const char* dir : {"/usr/bin", "/bin", "/usr/sbin", "/sbin"})
        if (::access((std::string(dir) + "/" + name).c_str(), X_OK) == 0) return true;
    return false;
}

void write_file(const fs::path& path, const std::string& text, bool executable = false) {
    std::ofstream(path) << text;
    if (executable) fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
}

// A service directory for runit or s6: ./run is the stamp binary itself (no shell between the
// supervisor and the program; it appends to ./stamps, the service directory being its
// working directory), or a script that execs `sleep 1000`.
void service_dir(const fs::path& dir, const std::string& command) {
    fs::create_directories(dir);
    if (command == "stamp") fs::create_symlink(kBin + "/stamp", dir / "run");
    else write_file(dir / "run", "#!/bin/sh\nexec sleep 1000\n", true);
}

// Where copy `i` of stamp appends: in its service directory under runit and s6, else beside.
fs::path stamp_file(const fs::path& dir, int i) {
    const std::string name = program_name(i);
    return fs::exists(dir / "scan") ? dir / "scan" / name / "stamps" : dir / (name + ".stamps");
}

std::string supervisord_conf(const fs::path& dir, int programs, const std::string& command, const std::string& run_ms) {
    std::string text = "[supervisord]\nnodaemon=true\nlogfile=" + (dir / "supervisord.log").string() + "\npidfile=" +
                       (dir / "supervisord.pid").string() + "\nchildlogdir=" + dir.string() + "\n";
    if (::geteuid() == 0) text += "user=root\n";
    // One group: supervisord stops a group's programs together, groups one after another.
    text += "[group:all]\nprograms=";
    for (int i = 1; i <= programs; ++i) text.append(i > 1 ? "," : "").append(program_name(i));
    text += "\n";
    for (int i = 1; i <= programs; ++i) {
        const std::string name = program_name(i);
        text += "[program:" + name + "]\ncommand=" + (command == "stamp" ? kBin + "/stamp" : "/bin/sleep 1000") +
                "\nstartsecs=0\nautorestart=true\nstdout_logfile=NONE\nstderr_logfile=NONE\n";
        if (command == "stamp")
            text += "environment=STAMP_RUN_MS=\"" + run_ms + "\",STAMP_FILE=\"" + (dir / (name + ".stamps")).string() + "\"\n";
    }
    return text;
}

std::string stack_yaml(const fs::path& dir, int programs, const std::string& command, const std::string& run_ms) {
    std::string text = "run_dir: " + (dir / "run").string() + "\nlog_dir: " + dir.string() + "\nprograms:\n";
    for (int i = 1; i <= programs; ++i) {
        const std::string name = program_name(i);
        if (command == "stamp")
            text += "  " + name + ":\n    command: ['" + kBin + "/stamp']\n    restart_delay: 0s\n    environment: {STAMP_RUN_MS: '" + run_ms +
                    "', STAMP_FILE: '" + (dir / (name + ".stamps")).string() + "'}\n";
        else
            text += "  " + name + ":\n    command: [sleep, '1000']\n";
    }
    return text;
}

// A running peer: its topmost process (our child), and the processes that count as the
// supervisor (summed for memory and CPU).
struct Running {
    pid_t root = 0;
    std::function<std::vector<pid_t>()> supervisors;
};

// Starts `peer` supervising `programs` copies of `command` ("sleep": sleep 1000, or "stamp" with
// STAMP_RUN_MS `run_ms`) in `dir`, and waits until every copy runs.
std::optional<Running> start_peer(const std::string& peer, const fs::path& dir, int programs, const std::string& command,
                                  const std::string& run_ms = "0") {
    fs::create_directories(dir);
    std::vector<std::string> env{"STAMP_RUN_MS=" + run_ms};
    Running r;
    const bool stamp = command == "stamp";
    if (peer == "runit" || peer == "s6") {
        const fs::path scan = dir / "scan";
        for (int i = 1; i <= programs; ++i) service_dir(scan / (program_name(i)), command);
        const bool runit = peer == "runit";
        if (programs == 1) {
            r.root = spawn({runit ? "runsv" : "s6-supervise", (scan / "p1").string()}, {env[0], "STAMP_FILE=stamps"}, scan / "p1");
            r.supervisors = [root = r.root] { return std::vector<pid_t>{root}; };
        } else {
            r.root = spawn(runit ? std::vector<std::string>{"runsvdir", "-P", scan.string()} : std::vector<std::string>{"s6-svscan", scan.string()},
                           {env[0], "STAMP_FILE=stamps"});
            const std::string child = runit ? "runsv" : "s6-supervise";
            r.supervisors = [root = r.root, child] {
                auto pids = named(descendants(root), child);
                pids.push_back(root);
                return pids;
            };
        }
    } else if (peer == "supervisord") {
        write_file(dir / "supervisord.conf", supervisord_conf(dir, programs, command, run_ms));
        r.root = spawn({"supervisord", "-n", "-c", (dir / "supervisord.conf").string()});
        r.supervisors = [root = r.root] { return std::vector<pid_t>{root}; };
    } else if (peer == "procctl" && stamp && programs > 1) {  // as runsv: one procctl per program
        r.root = ::fork();
        if (r.root == 0) {
            ::setsid();
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (int i = 1; i <= programs; ++i)
                spawn({kBin + "/procctl", "-f", "0", kBin + "/stamp"}, {env[0], "STAMP_FILE=" + stamp_file(dir, i).string()});
            for (;;) ::pause();
        }
        r.supervisors = [root = r.root] { return named(descendants(root), "procctl"); };
    } else if (peer == "procctl") {  // one program: the one-program loop; more: --config
        if (programs == 1) {
            std::vector<std::string> argv{kBin + "/procctl", "-f", "0"};
            if (stamp) argv.push_back(kBin + "/stamp");
            else argv.insert(argv.end(), {"sleep", "1000"});
            r.root = spawn(argv, {env[0], "STAMP_FILE=" + (dir / "p1.stamps").string()});
        } else {
            write_file(dir / "stack.yaml", stack_yaml(dir, programs, command, run_ms));
            r.root = spawn({kBin + "/procctl", "-f", "-c", (dir / "stack.yaml").string()});
        }
        r.supervisors = [root = r.root] { return std::vector<pid_t>{root}; };
    } else if (peer == "procctl-stack") {
        write_file(dir / "stack.yaml", stack_yaml(dir, programs, command, run_ms));
        r.root = spawn({kBin + "/procctl", "-f", "-c", (dir / "stack.yaml").string()});
        r.supervisors = [root = r.root] { return std::vector<pid_t>{root}; };
    }
    // Every copy started: sleeping, or (stamp) its first line written.
    const auto programs_running = [&] {
        if (!stamp) return named(descendants(r.root), "sleep").size();
        std::size_t started = 0;
        for (int i = 1; i <= programs; ++i) started += fs::exists(stamp_file(dir, i)) ? 1 : 0;
        return started;
    };
    if (!wait_until([&] { return programs_running() >= static_cast<std::size_t>(programs); }, 60s)) {
        std::fprintf(stderr, "bench_peers: %s did not start %d programs within 60 s\n", peer.c_str(), programs);
        return std::nullopt;
    }
    std::this_thread::sleep_for(500ms);  // settled: the supervisors' start-up done
    return r;
}

Memory memory_of(const Running& r) {
    Memory total;
    for (pid_t pid : r.supervisors()) total += memory_of(pid);
    return total;
}

std::uint64_t cpu_of(const Running& r) {
    std::uint64_t total = 0;
    for (pid_t pid : r.supervisors()) total += cpu_ns(pid);
    return total;
}

// ---------------------------------------------------------------- stopping a stack

// From the peer's stop request to every process of its tree gone, in ms.
double stop_time(const std::string& peer, const Running& r, const fs::path& dir) {
    const auto tree = descendants(r.root);
    std::vector<int> pidfds;
    for (pid_t pid : tree) pidfds.push_back(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    const auto start = Clock::now();
    if (peer == "runit") ::kill(r.root, SIGHUP);  // runsvdir: TERM to every runsv, which stops its service and exits
    else if (peer == "s6") {
        const pid_t ctl = spawn({"s6-svscanctl", "-t", (dir / "scan").string()});
        ::waitpid(ctl, nullptr, 0);
    } else ::kill(r.root, SIGTERM);  // procctl, supervisord
    int status;
    ::waitpid(r.root, &status, 0);
    for (int fd : pidfds) {
        if (fd < 0) continue;
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, 30000);
        ::close(fd);
    }
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// ---------------------------------------------------------------- restarts

std::vector<double> latencies_in(const fs::path& file) {
    std::ifstream in(file);
    std::vector<double> out;
    std::string word;
    long long ns = 0, last_exit = 0;
    while (in >> word >> ns) {
        if (word == "exit") last_exit = ns;
        else if (word == "start" && last_exit != 0) {
            out.push_back(static_cast<double>(ns - last_exit) / 1e6);
            last_exit = 0;
        }
    }
    return out;
}

std::vector<double> all_latencies(const fs::path& dir, int programs) {
    std::vector<double> all;
    for (int i = 1; i <= programs; ++i) {
        const auto some = latencies_in(stamp_file(dir, i));
        all.insert(all.end(), some.begin(), some.end());
    }
    return all;
}

// The smallest supervisor: fork, exec, wait, at once again; `programs` of them.
pid_t bare_loops(const fs::path& dir, int programs, const std::string& run_ms) {
    const pid_t all = ::fork();
    if (all != 0) return all;
    ::setsid();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (int i = 1; i <= programs; ++i) {
        if (::fork() != 0) continue;
        const std::string file = "STAMP_FILE=" + (dir / (program_name(i) + ".stamps")).string(), ms = "STAMP_RUN_MS=" + run_ms;
        ::putenv(const_cast<char*>(file.c_str()));
        ::putenv(const_cast<char*>(ms.c_str()));
        const std::string stamp = kBin + "/stamp";
        for (;;) {
            const pid_t child = ::fork();
            if (child == 0) {
                ::execl(stamp.c_str(), stamp.c_str(), nullptr);
                ::_exit(127);
            }
            ::waitpid(child, nullptr, 0);
        }
    }
    for (;;) ::pause();
}

struct Percentiles {
    double p50 = 0, p99 = 0;
    std::size_t n = 0;
};

Percentiles percentiles(std::vector<double> v) {
    if (v.empty()) return {};
    std::sort(v.begin(), v.end());
    return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)], v.size()};
}

// `programs` services each restarting `command` until `samples` restarts are seen in all.
std::optional<Percentiles> restart_latency(const std::string& peer, const fs::path& dir, int programs, const std::string& run_ms, std::size_t samples,
                                           std::chrono::seconds limit) {
    if (peer == "bare") {
        fs::create_directories(dir);
        bare_loops(dir, programs, run_ms);
    } else if (!start_peer(peer, dir, programs, "stamp", run_ms)) {
        kill_everything();
        return std::nullopt;
    }
    wait_until([&] { return all_latencies(dir, programs).size() >= samples; }, limit);
    kill_everything();
    return percentiles(all_latencies(dir, programs));
}

// ---------------------------------------------------------------- the table

std::string mib(long kib) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f MiB", static_cast<double>(kib) / 1024.0);
    return text;
}

std::string ratio(double ours, double theirs) {
    if (theirs <= 0) return ours <= 0 ? "1.00" : "more (the best peer: 0)";
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", ours / theirs);
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t samples = 1000;
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--restarts") samples = static_cast<std::size_t>(std::atol(argv[i + 1]));
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    ::signal(SIGPIPE, SIG_IGN);
    char buffer[] = "/tmp/hbwatch-bench-peers-XXXXXX";
    if (::mkdtemp(buffer) == nullptr) {
        std::perror("bench_peers: mkdtemp");
        return 1;
    }
    const fs::path scratch = buffer;
    // Interrupted (^C, a timeout's SIGTERM): nothing it started outlives it, nor its files.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    ::pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before any thread: only the watcher takes them (spawn() unblocks them in children)
    std::thread([stop, scratch] {
        int sig = 0;
        ::sigwait(&stop, &sig);
        std::fprintf(stderr, "bench_peers: interrupted: stopping everything it started\n");
        kill_everything();
        std::error_code ignored;
        fs::remove_all(scratch, ignored);
        ::_exit(128 + sig);
    }).detach();

    std::vector<Peer> peers{{"procctl", true, ""}, {"runit", true, ""}, {"s6", true, ""}, {"supervisord", true, ""}};
    const std::map<std::string, std::vector<std::string>> needs{
        {"runit", {"runsv", "runsvdir"}}, {"s6", {"s6-supervise", "s6-svscan", "s6-svscanctl"}}, {"supervisord", {"supervisord"}}};
    for (auto& peer : peers)
        if (auto it = needs.find(peer.name); it != needs.end())
            for (const auto& program : it->second)
                if (!on_path(program)) {
                    peer.installed = false;
                    peer.why_not = program + " is not installed (scripts/install-deps.sh --bench installs runit, s6 and supervisor)";
                }
    for (const auto& peer : peers)
        if (!peer.installed) std::printf("%s: skipped: %s\n", peer.name.c_str(), peer.why_not.c_str());


    // 1. One sleeping program.
    std::map<std::string, Memory> one;
    for (const auto& peer : peers) {
        if (!peer.installed) continue;
        if (auto r = start_peer(peer.name, scratch / ("one-" + peer.name), 1, "sleep")) one[peer.name] = memory_of(*r);
        kill_everything();
    }
    if (auto r = start_peer("procctl-stack", scratch / "one-stack", 1, "sleep")) one["procctl --config"] = memory_of(*r);
    kill_everything();
    // The floor under every supervisor linked against the shared libc: a C program that waits.
    std::optional<Memory> floor;
    if (const pid_t idle = spawn({kBin + "/idle_floor"});
        wait_until([&] { return comm_of(idle) == "idle_floor" && proc_text("/proc/" + std::to_string(idle) + "/wchan") != "0"; }, 10s))
        floor = memory_of(idle);
    kill_everything();

    // 2. A stack of 20 sleeping programs, all four at once: memory, then 30 s of idle CPU, then
    // each one's stop.
    std::map<std::string, Memory> twenty;
    std::map<std::string, double> idle_ms, stop_ms;
    {
        std::map<std::string, Running> running;
        for (const auto& peer : peers) {
            if (!peer.installed) continue;
            if (auto r = start_peer(peer.name, scratch / ("twenty-" + peer.name), 20, "sleep")) running[peer.name] = *r;
        }
        std::this_thread::sleep_for(2s);
        std::map<std::string, std::uint64_t> before;
        for (auto& [name, r] : running) {
            twenty[name] = memory_of(r);
            before[name] = cpu_of(r);
        }
        std::this_thread::sleep_for(30s);
        for (auto& [name, r] : running) idle_ms[name] = static_cast<double>(cpu_of(r) - before[name]) / 1e6;
        for (auto& [name, r] : running) stop_ms[name] = stop_time(name, r, scratch / ("twenty-" + name));
        kill_everything();
    }

    // 3. Restart latency: 50 services whose program runs 1.1 s (past runit's and s6's 1 s
    // floor between two starts), until `samples` restarts; then a program that exits at once,
    // where each supervisor's own floor shows.
    std::map<std::string, Percentiles> restart, at_once;
    std::vector<std::string> latency_peers{"bare"};
    for (const auto& peer : peers)
        if (peer.installed) latency_peers.push_back(peer.name);
    latency_peers.push_back("procctl-stack");
    const int services = 50;
    for (const auto& name : latency_peers) {
        if (auto p = restart_latency(name, scratch / ("restart-" + name), services, "1100", samples, std::chrono::seconds(120))) restart[name] = *p;
        const std::size_t quick = (name == "bare" || name.rfind("procctl", 0) == 0) ? samples : 20;  // the floors take a second each
        if (auto p = restart_latency(name, scratch / ("at-once-" + name), name == "procctl-stack" ? 1 : (quick == samples ? 1 : 10), "0", quick,
                                     std::chrono::seconds(60)))
            at_once[name] = *p;
    }
    std::error_code ignored;
    fs::remove_all(scratch, ignored);

    // The table.
    const auto cell = [](const std::map<std::string, Memory>& m, const std::string& name, long Memory::*field) {
        auto it = m.find(name);
        return it == m.end() ? std::string("-") : mib(it->second.*field);
    };
    std::printf("\n| figure | procctl | runsv (runit) | s6-supervise (s6) | supervisord | procctl / best peer |\n|---|---|---|---|---|---|\n");
    const auto best = [&](const std::map<std::string, double>& values) {
        std::optional<double> b;
        for (const auto& name : {"runit", "s6", "supervisord"})
            if (auto it = values.find(name); it != values.end() && (!b || it->second < *b)) b = it->second;
        return b.value_or(0.0);
    };
    const auto memory_row = [&](const char* what, const std::map<std::string, Memory>& m, long Memory::*field, const std::string& ours) {
        std::map<std::string, double> values;
        for (const auto& [name, mem] : m) values[name] = static_cast<double>(mem.*field);
        std::string versus = values.count(ours) ? ratio(values[ours], best(values)) : "-";
        if (field == &Memory::private_kib && values.count(ours) && values.count("s6") && values["s6"] > 0)  // the goal: 2x s6-supervise's
            versus.append(" (").append(ratio(values[ours], values["s6"])).append(" of s6-supervise's)");
        std::printf("| %s | %s | %s | %s | %s | %s |\n", what, cell(m, ours, field).c_str(), cell(m, "runit", field).c_str(), cell(m, "s6", field).c_str(),
                    cell(m, "supervisord", field).c_str(), versus.c_str());
    };
    memory_row("one program: RSS", one, &Memory::rss_kib, "procctl");
    memory_row("one program: PSS", one, &Memory::pss_kib, "procctl");
    memory_row("one program: private (Private_Clean + Private_Dirty)", one, &Memory::private_kib, "procctl");
    memory_row("one program under `procctl --config`: RSS", one, &Memory::rss_kib, "procctl --config");
    memory_row("20 programs: RSS, summed over the supervisor's processes", twenty, &Memory::rss_kib, "procctl");
    memory_row("20 programs: PSS, summed", twenty, &Memory::pss_kib, "procctl");
    const auto ms_row = [&](const char* what, const std::map<std::string, double>& values, const char* format) {
        const auto value = [&](const std::string& name) {
            auto it = values.find(name);
            if (it == values.end()) return std::string("-");
            char text[32];
            std::snprintf(text, sizeof text, format, it->second);
            return std::string(text);
        };
        std::printf("| %s | %s | %s | %s | %s | %s |\n", what, value("procctl").c_str(), value("runit").c_str(), value("s6").c_str(), value("supervisord").c_str(),
                    values.count("procctl") ? ratio(values.at("procctl"), best(values)).c_str() : "-");
    };
    ms_row("20 programs: CPU over 30 s idle (ms)", idle_ms, "%.1f ms");
    ms_row("20 programs: stop, request to every process gone", stop_ms, "%.1f ms");
    const auto latency_row = [&](const char* what, const std::map<std::string, Percentiles>& m, double Percentiles::*field) {
        std::map<std::string, double> values;
        for (const auto& [name, p] : m) values[name] = p.*field;
        const auto value = [&](const std::string& name) {
            auto it = m.find(name);
            if (it == m.end()) return std::string("-");
            char text[48];
            std::snprintf(text, sizeof text, "%.2f ms (n=%zu)", it->second.*field, it->second.n);
            return std::string(text);
        };
        std::printf("| %s | %s | %s | %s | %s | %s |\n", what, value("procctl").c_str(), value("runit").c_str(), value("s6").c_str(), value("supervisord").c_str(),
                    values.count("procctl") ? ratio(values.at("procctl"), best(values)).c_str() : "-");
    };
    latency_row("restart, a 1.1 s program, 50 at once (50 procctl, 50 runsv, ...): p50", restart, &Percentiles::p50);
    latency_row("restart, a 1.1 s program, 50 at once (50 procctl, 50 runsv, ...): p99", restart, &Percentiles::p99);
    latency_row("restart, a program that exits at once: p50", at_once, &Percentiles::p50);
    latency_row("restart, a program that exits at once: p99", at_once, &Percentiles::p99);

    if (floor)
        std::printf("\nThe floor, for scale: a C program that only calls pause(), linked against the shared libc as\n"
                    "runsv and s6-supervise are: RSS %s, PSS %s, private %s.\n",
                    mib(floor->rss_kib).c_str(), mib(floor->pss_kib).c_str(), mib(floor->private_kib).c_str());
    std::printf("\nprocctl --config beside them (the same runs):\n");
    for (const auto* table : {&restart, &at_once})
        if (auto it = table->find("procctl-stack"); it != table->end())
            std::printf("  %s: p50 %.2f ms, p99 %.2f ms (n=%zu)\n", table == &restart ? "restart, a 1.1 s program, 50 programs" : "restart, a program that exits at once",
                        it->second.p50, it->second.p99, it->second.n);
    std::printf("\nThe bare loop (fork, exec, wait; no supervisor), for scale:\n");
    for (const auto* table : {&restart, &at_once})
        if (auto it = table->find("bare"); it != table->end())
            std::printf("  %s: p50 %.2f ms, p99 %.2f ms (n=%zu); procctl / bare at p50: %s\n",
                        table == &restart ? "restart, a 1.1 s program, 50 at once" : "restart, a program that exits at once", it->second.p50, it->second.p99,
                        it->second.n, table->count("procctl") ? ratio(table->at("procctl").p50, it->second.p50).c_str() : "-");
    std::printf("\nEach peer with its fastest settings, none of which removes these floors: runsv starts a service at\n"
                "most once a second; s6-supervise waits a second after every exit (even of a run of 2 s); supervisord\n"
                "with startsecs=0 and autorestart=true (no backoff); procctl with INTERVAL 0 and restart_delay: 0s.\n"
                "Memory is summed over each supervisor's own processes (runsvdir and 20 runsv; s6-svscan and 20\n"
                "s6-supervise; supervisord; procctl), not the programs.\n");
    return 0;
}
