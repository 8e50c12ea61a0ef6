// proctab: the operators' view of the heartbeat table and of the host's processes.
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/duration.h"
#include <hbwatch/error.h>
#include <hbwatch/heartbeat.h>

#include "core/table.h"
#include "engine/completion.h"
#include "engine/hang_diagnosis.h"
#include "engine/inspect.h"
#include "engine/ports.h"
#include "core/pidfd.h"
#include "core/stopper.h"

#include "engine/control.h"
#include "engine/stack_config.h"
#include "engine/support.h"
#include "engine/stack_client.h"
#include "engine/table_view.h"
#include "engine/terminal_text.h"

namespace {

namespace tool = hbwatch::tool;
using hbwatch::Error;
using json = nlohmann::json;
using tool::header_line;
using tool::print_processes;
using tool::print_table;
using tool::entries_json;
using tool::processes_json;
using tool::prometheus;

constexpr int kExitNoTable = 2;

// ---------------------------------------------------------------- commands

hbwatch::Table existing_table(const hbwatch::TableOptions& options, hbwatch::Table::Access access) {
    auto table = hbwatch::Table::open_existing(options, access);
    if (!table)
        throw Error(ENOENT, "no table at key " + hbwatch::format_key(*options.key) +
                                ": nothing has registered yet (services create it on first use; or run proctab init)");
    return std::move(*table);
}

int list(const hbwatch::TableOptions& options, bool as_json, bool as_prometheus, std::optional<std::string> watch) {
    auto table = existing_table(options, hbwatch::Table::Access::read_only);
    if (as_json) {
        std::cout << entries_json(table).dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    } else if (as_prometheus) {
        std::cout << prometheus(table);
    } else if (!watch) {
        print_table(table, std::cout);
    } else {
        const auto every = hbwatch::parse_duration(watch->empty() ? "2s" : *watch);
        const int stop = tool::signalfd_for({SIGINT, SIGTERM});
        for (;;) {
            std::ostringstream frame;
            print_table(table, frame);
            std::cout << (::isatty(1) ? "\033[H\033[2J" : "") << frame.str() << std::flush;
            pollfd p{stop, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(every.count())) > 0) break;
        }
    }
    return tool::kExitOk;
}

// `proctab run` hands its command "KEY:PID:SLOT", so that `proctab beat` inside refreshes the
// run's own entry, whose process (proctab run) is what checkproc stops.
constexpr const char* kRunVariable = "HBWATCH_RUN";

int beat_run_entry(const std::string& name, const std::string& run) {
    unsigned key = 0, slot = 0;
    int pid = 0;
    if (std::sscanf(run.c_str(), "%x:%d:%u", &key, &pid, &slot) != 3)
        throw Error(EINVAL, std::string(kRunVariable) + "='" + run + "' is not KEY:PID:SLOT as proctab run sets it");
    hbwatch::TableOptions options;
    options.key = static_cast<key_t>(key);
    auto table = hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_write);
    auto entry = table ? table->read(slot) : std::nullopt;
    if (!entry || entry->phase != hbwatch::SlotPhase::live || entry->process.pid != pid || entry->name() != name ||
        !table->beat(slot, entry->token))
        throw Error(ESTALE, "the entry '" + name + "' of proctab run pid " + std::to_string(pid) + " is no longer in slot " +
                                std::to_string(slot) + " at key " + hbwatch::format_key(static_cast<key_t>(key)) +
                                " (was it removed, or is NAME not the one given to proctab run?)");
    return tool::kExitOk;
}

int beat(const hbwatch::TableOptions& options, const std::string& name, const std::string& timeout_text,
         std::optional<pid_t> pid_option) {
    if (const char* run = std::getenv(kRunVariable); run != nullptr && *run != '\0' && !pid_option)
        return beat_run_entry(name, run);
    if (timeout_text.empty()) throw Error(EINVAL, "beat: --timeout is required outside proctab run");
    const pid_t pid = pid_option.value_or(::getppid());
    const auto timeout = hbwatch::parse_duration(timeout_text);
    hbwatch::validate_name(name);
    hbwatch::validate_timeout(timeout);
    hbwatch::Refusal refusal{};
    auto target = hbwatch::Pidfd::pin(pid, &refusal, /*for_signal=*/false);
    if (!target)
        throw Error(hbwatch::means_exited(refusal) ? ESRCH : EINVAL,
                    "cannot register pid " + std::to_string(pid) + ": it is " + hbwatch::to_string(refusal));
    // An entry makes checkproc signal its process: never one the caller could not signal itself.
    const auto uids = hbwatch::read_uids(pid);
    if (!target->pidfd.may_signal() || !uids)
        throw Error(EPERM, "cannot register pid " + std::to_string(pid) + (uids ? " (uid " + std::to_string(uids->real) + ")" : "") +
                               ": you (uid " + std::to_string(::geteuid()) +
                               ") could not signal it yourself, so proctab will not have checkproc do it");
    if (target->stat.start_stack == 0)
        throw Error(EPERM, "cannot register pid " + std::to_string(pid) + ": its memory layout cannot be read, so an exec "
                                                                          "could not be told from the program you register");
    const hbwatch::Registrant registrant{target->identity, uids->real, 0, target->stat.start_stack};
    auto table = hbwatch::Table::open_or_create(options);
    if (!target->pidfd.still_running()) throw Error(ESRCH, "pid " + std::to_string(pid) + " exited meanwhile");
    std::optional<hbwatch::SlotSnapshot> mine;
    table.for_each([&](const hbwatch::SlotSnapshot& s) {
        if (s.phase == hbwatch::SlotPhase::live && s.name() == name && s.delegated() &&
            hbwatch::same_process(s.process, registrant.process) && s.exec_mark == registrant.exec_mark)
            mine = s;
    });
    if (mine && mine->timeout == timeout && table.beat(mine->index, mine->token)) {
        std::printf("beat '%s' for pid %d in slot %u\n", name.c_str(), pid, mine->index);
        return tool::kExitOk;
    }
    if (mine) table.free_slot(mine->index, mine->token);  // a new timeout: register anew
    const auto claim = table.claim(name, timeout, registrant);
    std::printf("registered '%s' for pid %d in slot %u, timeout %s\n", name.c_str(), pid, claim.index,
                hbwatch::format_duration(timeout).c_str());
    return tool::kExitOk;
}

// Registers itself under NAME, runs COMMAND, and is what checkproc stops when the entry goes
// stale: on SIGTERM it stops COMMAND (SIGTERM, SIGKILL after the grace) and exits.
int run(const hbwatch::TableOptions& options, const std::string& name, const std::string& timeout_text,
        const std::string& grace_text, const std::vector<std::string>& command) {
    if (command.empty()) throw Error(EINVAL, "run: give the command after --, e.g. proctab run backup --timeout 10m -- ./backup.sh");
    if (timeout_text.empty()) throw Error(EINVAL, "run: --timeout is required");
    const auto timeout = hbwatch::parse_duration(timeout_text);
    const auto grace = hbwatch::parse_duration(grace_text);
    const int signals = tool::signalfd_for({SIGTERM, SIGINT, SIGHUP, SIGCHLD});
    hbwatch::Heartbeat heartbeat(name, timeout, options);
    char run_value[64];
    std::snprintf(run_value, sizeof run_value, "%s:%d:%u", hbwatch::format_key(heartbeat.key()).c_str(), ::getpid(),
                  heartbeat.slot());
    std::vector<char*> argv;
    for (const auto& word : command) argv.push_back(const_cast<char*>(word.c_str()));
    argv.push_back(nullptr);
    const std::string key_value = hbwatch::format_key(heartbeat.key());
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) throw Error(errno, std::string("run: fork failed: ") + std::strerror(errno));
    if (child == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives its watcher
        if (::getppid() != parent) ::_exit(127);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::setenv(kRunVariable, run_value, 1);
        ::setenv("HBWATCH_KEY", key_value.c_str(), 1);
        ::execvp(argv[0], argv.data());
        std::fprintf(stderr, "proctab run: cannot run %s: %s\n", argv[0], std::strerror(errno));
        ::_exit(127);
    }
    auto pidfd = hbwatch::Pidfd::open_pid(child);  // our unreaped child: it cannot change hands
    if (!pidfd) throw Error(errno, "run: pidfd_open failed");
    int status = 0;
    bool stopping = false;
    hbwatch::Stopper stopper(grace, [](const hbwatch::StopEvent&) {});
    for (;;) {
        std::vector<pollfd> fds{{signals, POLLIN, 0}, {pidfd->fd(), POLLIN, 0}};
        const auto next = stopper.next_deadline_ns();
        ::poll(fds.data(), fds.size(), next ? hbwatch::poll_timeout_ms(*next, hbwatch::monotonic_now_ns()) : -1);
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo info;
            while (::read(signals, &info, sizeof info) == sizeof info) {
                const int sig = static_cast<int>(info.ssi_signo);
                if (sig == SIGCHLD || stopping) continue;
                std::fprintf(stderr, "proctab run: SIG%s from pid %u: stopping %s (pid %d), SIGKILL after %s\n",
                             sigabbrev_np(sig), info.ssi_pid, command.front().c_str(), child,
                             hbwatch::human_duration(grace).c_str());
                if (auto target = pidfd->duplicate()) stopper.start(static_cast<std::uint64_t>(child), std::move(*target));
                stopping = true;
            }
        }
        stopper.advance(hbwatch::monotonic_now_ns());
        if (pidfd->has_exited() && ::waitpid(child, &status, WNOHANG) == child) break;
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

int remove(const hbwatch::TableOptions& options, const std::string& name, std::optional<pid_t> pid,
           std::optional<std::uint32_t> slot) {
    if (name.empty() && !pid && !slot) throw Error(EINVAL, "remove: give NAME, --pid PID or --slot N");
    auto table = existing_table(options, hbwatch::Table::Access::read_write);
    std::size_t removed = 0;
    table.for_each([&](const hbwatch::SlotSnapshot& s) {
        if ((!name.empty() && s.name() != name) || (pid && s.process.pid != *pid) || (slot && s.index != *slot)) return;
        switch (table.revoke(s.index, s.token)) {
            case hbwatch::Table::Revoked::freed:
                ++removed;
                std::printf("removed slot %u: pid %d '%s'\n", s.index, s.process.pid, tool::shown_name(s.name()).c_str());
                break;
            case hbwatch::Table::Revoked::revoked:
                // Freeing it now could hand the slot to a new registration while the running
                // process is between the check and the store of a beat.
                ++removed;
                std::printf("removed slot %u: pid %d '%s' is still running, so its slot stays held (state revoked) "
                            "until it unregisters or exits; its next beat reports the registration lost\n",
                            s.index, s.process.pid, tool::shown_name(s.name()).c_str());
                break;
            case hbwatch::Table::Revoked::changed: break;
        }
    });
    if (removed == 0) {
        std::fprintf(stderr, "proctab: no entry matched\n");
        return tool::kExitFailure;
    }
    return tool::kExitOk;
}

int init(const hbwatch::TableOptions& base, std::uint32_t slots, const std::string& mode, const std::string& group) {
    hbwatch::TableOptions options = base;
    options.slots = slots;
    if (!mode.empty()) {
        char* end = nullptr;
        const unsigned long bits = std::strtoul(mode.c_str(), &end, 8);
        if (*end != '\0' || bits > 0777) throw Error(EINVAL, "--mode " + mode + ": give octal permission bits such as 0660");
        options.mode = static_cast<mode_t>(bits);
    }
    if (!group.empty()) {
        const struct group* gr = ::getgrnam(group.c_str());
        char* gend = nullptr;
        const unsigned long gid = std::strtoul(group.c_str(), &gend, 10);
        if (gr) options.group = gr->gr_gid;
        else if (*gend == '\0') options.group = static_cast<gid_t>(gid);
        else throw Error(EINVAL, "--group " + group + ": no such group");
    }
    auto table = hbwatch::Table::create(options);
    std::printf("created the %s\n", header_line(table.info(), 0).c_str());
    return tool::kExitOk;
}

int destroy(const hbwatch::TableOptions& options, bool force) {
    auto table = existing_table(options, hbwatch::Table::Access::read_only);
    std::vector<std::string> alive;
    for (const auto& e : hbwatch::tool::inspect(table, hbwatch::monotonic_now_ns()))
        if (e.state != hbwatch::tool::EntryState::dead)
            alive.push_back("pid " + std::to_string(e.slot.process.pid) + " '" + tool::shown_name(e.slot.name()) + "'");
    if (!alive.empty() && !force) {
        std::string list;
        for (const auto& a : alive) list += "\n  " + a;
        std::fprintf(stderr, "proctab: refusing to destroy the table at key %s: %zu live entries would lose their slots:%s\n"
                             "Stop them first, or use --force.\n",
                     hbwatch::format_key(*options.key).c_str(), alive.size(), list.c_str());
        return tool::kExitFailure;
    }
    hbwatch::Table::destroy(*options.key);
    std::printf("destroyed the table at key %s\n", hbwatch::format_key(*options.key).c_str());
    return tool::kExitOk;
}

int health(const std::string& name, const std::string& path, const std::string& max_rss, bool as_json) {
    const auto report = hbwatch::tool::check_health(name, path, max_rss.empty() ? std::nullopt : std::optional(hbwatch::parse_size(max_rss)));
    if (as_json) {
        json issues = json::array();
        for (const auto& i : report.issues) issues.push_back({{"problem", i.problem}, {"recommendation", i.recommendation}});
        std::cout << json{{"name", name}, {"healthy", report.healthy()}, {"issues", issues},
                          {"processes", processes_json(report.processes)}}.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    } else if (report.healthy()) {
        std::printf("healthy: %zu instance of '%s' running, no zombie%s\n", report.processes.size(), name.c_str(),
                    max_rss.empty() ? "" : (", memory under " + max_rss).c_str());
    } else {
        std::printf("unhealthy: %zu issue(s) with '%s'\n", report.issues.size(), name.c_str());
        for (const auto& i : report.issues) std::printf("  - %s\n    what to do: %s\n", i.problem.c_str(), i.recommendation.c_str());
    }
    return report.healthy() ? tool::kExitOk : tool::kExitFailure;
}

int ports(bool as_json) {
    const auto sockets = tool::listening_sockets();
    if (as_json) {
        std::cout << tool::ports_json(sockets).dump(2, ' ', false, json::error_handler_t::replace) << "\n";
        return tool::kExitOk;
    }
    std::printf("%5s  %-39s  %s\n", "PORT", "ADDRESS", "HELD BY");
    for (const auto& socket : sockets) {
        std::string holders;
        for (const auto& h : socket.holders)
            holders += (holders.empty() ? "" : ", ") + std::to_string(h.pid) + " " + tool::terminal_safe(h.exe.empty() ? h.comm : h.exe);
        std::printf("%5u  %-39s  %s\n", socket.port, socket.address.c_str(),
                    holders.empty() ? "(no process of yours: run as root to see it)" : holders.c_str());
    }
    return tool::kExitOk;
}

// Whatever holds TCP port `port`: SIGTERM, then SIGKILL after the grace, through pidfds pinned
// before the fds that matched them were read. Never pid 1, a kernel thread, proctab or its
// ancestors; the kernel refuses what the caller may not signal.
int kill_port(unsigned port, const std::string& grace, bool as_json) {
    tool::PortKillRules rules;
    rules.any = true;  // the operator's own command, with the operator's own rights
    rules.grace = hbwatch::parse_duration(grace);
    const auto report = tool::kill_port_holders(static_cast<std::uint16_t>(port), rules);
    if (as_json) {
        std::cout << report.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
        if (report["holders"].empty()) std::fprintf(stderr, "proctab: nothing listens on TCP port %u\n", port);
        for (const auto& h : report["holders"]) {
            std::string line = "pid " + std::to_string(h["pid"].get<int>()) + " (" + tool::terminal_safe(h.value("comm", "")) + "): ";
            line += h.value("outcome", "?");
            if (h.contains("seconds")) line += " after " + std::to_string(h["seconds"].get<double>()).substr(0, 5) + "s";
            if (h.contains("detail")) line += ": " + tool::terminal_safe(h["detail"].get<std::string>());
            std::printf("  %s\n", line.c_str());
        }
        if (!report["holders"].empty())
            std::printf("port %u: %d stopped, %d refused\n", port, report["stopped"].get<int>(), report["refused"].get<int>());
    }
    const bool all = !report["holders"].empty() && report["refused"].get<int>() == 0 &&
                     report["stopped"].get<std::size_t>() == report["holders"].size();
    return all ? tool::kExitOk : tool::kExitFailure;
}

// The newest of checkproc's diagnosis files for `name`, with its path first.
int show_diagnosis(const std::string& directory, const std::string& name) {
    const auto path = hbwatch::tool::last_diagnosis(directory, name);
    if (!path) {
        std::fprintf(stderr, "proctab: no diagnosis of '%s' in %s (checkproc keeps one before each hang stop; see its --diagnoses)\n",
                     tool::terminal_safe(name).c_str(), directory.c_str());
        return tool::kExitFailure;
    }
    std::ifstream in(*path);
    std::printf("%s\n", path->c_str());
    for (std::string line; std::getline(in, line);) std::printf("%s\n", tool::terminal_safe(line).c_str());
    return tool::kExitOk;
}

int kill_matching(const std::string& name, const std::string& path, const std::string& grace) {
    // Signalled through the pidfds pinned at the read that matched them: a pid that changed
    // hands since is never reached.
    std::vector<hbwatch::Pidfd> targets;
    std::size_t zombies = 0;
    for (const auto& p : hbwatch::tool::find_processes(name, path)) {
        auto target = p.pidfd ? p.pidfd->duplicate() : std::nullopt;
        if (!target) {
            ++zombies;
            continue;
        }
        std::printf("  matched pid %d (%s)\n", p.pid, p.exe.empty() ? p.comm.c_str() : p.exe.c_str());
        targets.push_back(std::move(*target));
    }
    if (targets.empty() && zombies == 0) {
        std::fprintf(stderr, "proctab: no process named '%s'%s\n", name.c_str(), path.empty() ? "" : (" at " + path).c_str());
        return tool::kExitFailure;
    }
    auto tally = hbwatch::stop_all(std::move(targets), hbwatch::parse_duration(grace));
    tally.stopped += zombies;  // already exited: nothing to signal
    for (const auto& note : tally.notes) std::printf("  %s\n", note.c_str());
    std::printf("%zu stopped (%zu needed SIGKILL), %zu failed\n", tally.stopped, tally.killed, tally.failed);
    return tally.failed == 0 ? tool::kExitOk : tool::kExitFailure;
}

}  // namespace

// proctab's command line: the options as typed, the sub-commands, and which was chosen.
struct Cli {
    std::string key;
    bool as_json = false, as_prometheus = false;
    std::optional<std::string> watch;
    std::string name, timeout, path, max_rss, grace = "10s", mode, group;
    std::optional<pid_t> pid;
    std::optional<std::uint32_t> slot;
    std::optional<unsigned> port;
    std::uint32_t slots = hbwatch::kDefaultSlots;
    std::vector<std::string> command;
    std::string run_grace = "10s";
    bool force = false;
    std::string run_dir = "/run/hbwatch";
    std::vector<std::string> programs;
    std::string signal;
    unsigned tail_lines = 10;
    bool follow = false, stderr_stream = false;
    std::string diagnoses = tool::default_diagnosis_directory();
    CLI::App *diagnosis_cmd = nullptr, *beat_cmd = nullptr, *run_cmd = nullptr, *remove_cmd = nullptr, *init_cmd = nullptr, *destroy_cmd = nullptr, *ps_cmd = nullptr, *health_cmd = nullptr, *kill_cmd = nullptr, *zombies_cmd = nullptr, *status_cmd = nullptr, *start_cmd = nullptr, *stop_cmd = nullptr, *restart_cmd = nullptr, *signal_cmd = nullptr, *reload_cmd = nullptr, *tail_cmd = nullptr, *events_cmd = nullptr, *ports_cmd = nullptr;

    // Every option and sub-command, bound to the fields above.
    void add_to(CLI::App& app) {
        app.require_subcommand(0, 1);
        app.add_option("--key", key, "table key (default: HBWATCH_KEY, else 0x48425754)")->check(tool::key_validator());
        auto* json_flag = app.add_flag("--json", as_json, "one JSON array (or object) for scripts");
        app.add_flag("--prometheus", as_prometheus, "the Prometheus text format")->excludes(json_flag);
        app.add_option("--watch", watch, "refresh every INTERVAL (default 2s)")->expected(0, 1)->check(tool::duration_validator());

        app.add_subcommand("list", "the table (the default)");
        beat_cmd = app.add_subcommand("beat", "register or refresh an entry for a process (default: the calling shell)");
        beat_cmd->add_option("NAME", name)->required();
        beat_cmd->add_option("--timeout", timeout, "the entry's timeout (not needed inside proctab run)")
            ->check(tool::duration_validator());
        beat_cmd->add_option("--pid", pid, "the process to beat for (one you could signal yourself)");
        run_cmd = app.add_subcommand("run", "run COMMAND under an entry NAME that `proctab beat NAME` inside it refreshes; "
                                                  "checkproc stops this wrapper, which stops COMMAND");
        run_cmd->add_option("NAME", name)->required();
        run_cmd->add_option("--timeout", timeout, "the entry's timeout")->required()->check(tool::duration_validator());
        run_cmd->add_option("--grace", run_grace, "SIGTERM to SIGKILL for COMMAND when stopped (default 10s)")
            ->check(tool::duration_validator());
        run_cmd->add_option("COMMAND", command, "the command and its arguments, after --")->required();
        remove_cmd = app.add_subcommand("remove", "free entries by NAME, --pid or --slot");
        remove_cmd->add_option("NAME", name);
        remove_cmd->add_option("--pid", pid);
        remove_cmd->add_option("--slot", slot);
        init_cmd = app.add_subcommand("init", "create the table");
        init_cmd->add_option("--slots", slots, "slots (default 4096)")->check(CLI::Range(1u, hbwatch::kMaxSlots));
        init_cmd->add_option("--mode", mode, "permission bits (default 0660, or 0600 when your group has other members)");
        init_cmd->add_option("--group", group, "owning group, by name or number");
        destroy_cmd = app.add_subcommand("destroy", "remove the table (refused while live entries exist)");
        destroy_cmd->add_flag("--force", force, "remove it even so");
        ps_cmd = app.add_subcommand("ps", "every process with that name (any process, registered or not)");
        health_cmd = app.add_subcommand("health", "running? several? zombies? memory above --max-rss?");
        kill_cmd = app.add_subcommand("kill", "stop every matching process: SIGTERM, then SIGKILL after --grace");
        for (auto* cmd : {ps_cmd, health_cmd, kill_cmd}) {
            auto* option = cmd->add_option("NAME", name, "the program's whole name: base name of its executable or of argv[0]");
            if (cmd != kill_cmd) option->required();
            option->check(CLI::Validator([](std::string& v) { return v.empty() ? std::string("an empty NAME matches nothing") : std::string(); },
                                       "NAME"));
            cmd->add_option("--path", path, "only processes running this executable");
        }
        health_cmd->add_option("--max-rss", max_rss, "memory limit, such as 512M or 1G");
        kill_cmd->add_option("--grace", grace, "SIGTERM to SIGKILL (default 10s)")->check(tool::duration_validator());
        kill_cmd->add_option("--port", port, "instead of NAME: whatever holds this listening TCP port")->check(CLI::Range(1u, 65535u));
        kill_cmd->add_flag("--json", as_json, "with --port: what happened to each holder, as JSON");
        ports_cmd = app.add_subcommand("ports", "every listening TCP socket on the host, with the processes that hold it");
        ports_cmd->add_flag("--json", as_json, "one JSON array");
        zombies_cmd = app.add_subcommand("zombies", "every zombie on the host, with its parent");
        status_cmd = app.add_subcommand("status", "the stack's programs: state, pid, uptime, restarts, last exit");
        status_cmd->add_option("NAME", programs, "programs (or instances, NAME@I); default: all");
        status_cmd->add_flag("--json", as_json, "one JSON array");
        start_cmd = app.add_subcommand("start", "start programs of the stack by name");
        stop_cmd = app.add_subcommand("stop", "stop programs of the stack by name (they stay stopped)");
        restart_cmd = app.add_subcommand("restart", "restart programs of the stack by name");
        for (auto* cmd : {start_cmd, stop_cmd, restart_cmd})
            cmd->add_option("NAME", programs, "programs, instances (NAME@I), or all (stopped in reverse order)")->required();
        signal_cmd = app.add_subcommand("signal", "send a signal to a program's running process(es)");
        signal_cmd->add_option("NAME", name, "a program, an instance (NAME@I), or all")->required();
        signal_cmd->add_option("SIGNAL", signal, "TERM, INT, HUP, QUIT, USR1, USR2 or KILL")->required();
        reload_cmd = app.add_subcommand("reload", "procctl reads its config again: added programs start, removed "
                                                        "ones stop, changed ones restart, the others are untouched");
        tail_cmd = app.add_subcommand("tail", "the last lines of a program's output file (its stdout: key)");
        tail_cmd->add_option("NAME", name, "a program or an instance (NAME@I)")->required();
        tail_cmd->add_option("-n,--lines", tail_lines, "how many (default 10)")->check(CLI::Range(0u, 10000u));
        tail_cmd->add_flag("-f,--follow", follow, "then print what it writes, until interrupted");
        tail_cmd->add_flag("--stderr", stderr_stream, "its stderr: file instead");
        events_cmd = app.add_subcommand("events", "what happened to the stack's programs (starts, exits and why, hangs, "
                                                  "restarts, reloads), oldest first");
        events_cmd->add_flag("-f,--follow", follow, "then each new event as it happens, until interrupted");
        events_cmd->add_flag("--json", as_json, "one JSON object per line (NDJSON)");
        diagnosis_cmd = app.add_subcommand("diagnosis", "the last diagnosis checkproc kept of a hung NAME before it stopped it "
                                                        "(every thread's state, wchan, system call and stacks)");
        diagnosis_cmd->add_option("NAME", name, "the heartbeat's name")->required();
        diagnosis_cmd->add_option("--diagnoses", diagnoses, "checkproc's --diagnoses directory (default " + diagnoses + ")");
        for (auto* cmd : {status_cmd, start_cmd, stop_cmd, restart_cmd, signal_cmd, reload_cmd, tail_cmd, events_cmd})
            cmd->add_option("--run-dir", run_dir, "the stack's run_dir, where its control.sock is (default /run/hbwatch)");
    }

    // The chosen sub-command, carried out.
    int carry_out() {
        try {
            const auto options = tool::table_options(key);
            if (beat_cmd->parsed()) return beat(options, name, timeout, pid);
            if (run_cmd->parsed()) return run(options, name, timeout, run_grace, command);
            if (remove_cmd->parsed()) return remove(options, name, pid, slot);
            if (init_cmd->parsed()) return init(options, slots, mode, group);
            if (destroy_cmd->parsed()) return destroy(options, force);
            if (health_cmd->parsed()) return health(name, path, max_rss, as_json);
            if (ports_cmd->parsed()) return ports(as_json);
            if (diagnosis_cmd->parsed()) return show_diagnosis(diagnoses, name);
            if (kill_cmd->parsed()) {
                if (port && !name.empty()) throw Error(EINVAL, "kill: give NAME or --port N, not both");
                if (port) return kill_port(*port, grace, as_json);
                if (name.empty()) throw Error(EINVAL, "kill: give NAME (a program's name) or --port N");
                return kill_matching(name, path, grace);
            }
            if (status_cmd->parsed()) return tool::stack_status(run_dir, programs, as_json);
            for (auto* cmd : {start_cmd, stop_cmd, restart_cmd})
                if (cmd->parsed()) return tool::stack_action(run_dir, cmd->get_name(), programs);
            if (signal_cmd->parsed()) return tool::stack_signal(run_dir, name, signal);
            if (reload_cmd->parsed()) return tool::stack_reload(run_dir);
            if (tail_cmd->parsed()) return tool::stack_tail(run_dir, name, tail_lines, follow, stderr_stream);
            if (events_cmd->parsed()) return tool::stack_events(run_dir, follow, as_json);
            if (ps_cmd->parsed() || zombies_cmd->parsed()) {
                const auto found = ps_cmd->parsed() ? hbwatch::tool::find_processes(name, path) : hbwatch::tool::find_zombies();
                if (as_json) std::cout << processes_json(found).dump(2, ' ', false, json::error_handler_t::replace) << "\n";
                else print_processes(found, zombies_cmd->parsed());
                return found.empty() && ps_cmd->parsed() ? tool::kExitFailure : tool::kExitOk;
            }
            return list(options, as_json, as_prometheus, watch);
        } catch (const Error& e) {  // may carry procctl's words, with config values and paths in them
            std::fprintf(stderr, "proctab: %s\n", tool::terminal_safe(e.what()).c_str());
            return e.code() == ENOENT || e.code() == EINVAL ? kExitNoTable : tool::kExitFailure;
        }
    }
};

int main(int argc, char** argv) {
    CLI::App app{"proctab: see and manage the hbwatch table, the host's processes, and a stack run by procctl --config.",
                 "proctab"};
    app.footer(
        "Examples:\n"
        "  proctab                                    the table: state, last beat, memory, CPU\n"
        "  proctab --json | jq '.[] | select(.state==\"hung\")'\n"
        "  proctab --prometheus > /var/lib/node_exporter/hbwatch.prom\n"
        "  proctab --watch 1s                         refresh in place, like top\n"
        "  proctab run nightly-backup --timeout 10m -- ./backup.sh   (backup.sh calls: proctab beat nightly-backup)\n"
        "  proctab health order-svc --max-rss 1G      exit 0 when healthy, 1 when not\n"
        "  proctab kill order-svc --grace 10s         SIGTERM, then SIGKILL, through pidfds\n"
        "  proctab ports                              every listening TCP port and who holds it\n"
        "  proctab kill --port 8080 --grace 5s        stop whatever holds port 8080\n"
        "  proctab status --run-dir /run/hbwatch      the stack's programs (procctl --config)\n"
        "  proctab restart main-app                   restart one program of the stack by name\n"
        "  proctab reload                             apply the edited config: only what changed restarts\n"
        "  proctab tail main-app -f                   its output file, then what it writes\n"
        "  proctab events -f                          every start, exit (and why), hang and restart, live\n"
        "  proctab diagnosis order-svc                what order-svc was doing when checkproc stopped it last\n"
        "\n"
        "Exit status: 0 done (or healthy, or every program ready); 1 failed, unhealthy or nothing\n"
        "matched (or a reload refused: the running config is kept); 2 bad arguments, no table at the key, or no such program or stack; 3 (status) a\n"
        "program is not ready.");
    Cli cli;
    cli.add_to(app);
    if (tool::wants_bash_completion(argc, argv)) {
        std::fputs(tool::bash_completion("proctab", {{&app, {}}}).c_str(), stdout);
        return tool::kExitOk;
    }
    if (auto done = tool::parse(app, argc, argv)) return *done;
    return cli.carry_out();
}
