#include "engine/stack.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>

#include <nlohmann/json.hpp>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/pidfd.h"
#include "core/process.h"
#include "core/table.h"
#include "engine/inspect.h"
#include "engine/cgroup.h"
#include "engine/control.h"
#include "engine/output.h"
#include "engine/restart_policy.h"
#include "engine/spawn.h"
#include "engine/support.h"
#include "engine/supervisor.h"

extern char** environ;

namespace hbwatch::tool {
namespace {

// The environment a program starts with, by systemd's rule rather than inheritance: from
// procctl's own only PATH (or a default), LANG, LC_*, TZ and HBWATCH_KEY, and the names the
// config passes through (or everything, with inherit_environment: true); HOME, USER, LOGNAME
// and SHELL of the user it runs as; then its `environment:`; then HBWATCH_PROGRAM and
// HBWATCH_INSTANCE. An operator's tokens in procctl's environment reach no program unasked.
std::vector<std::string> program_environment(const ProgramConfig& p, const passwd& user, const std::string& unit_name,
                                             unsigned instance) {
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const std::string name(entry.substr(0, entry.find('=')));
        const bool passed = p.inherit_all_environment || name == "PATH" || name == "LANG" || name.starts_with("LC_") ||
                            name == "TZ" || name == "HBWATCH_KEY" ||
                            std::find(p.inherit_environment.begin(), p.inherit_environment.end(), name) != p.inherit_environment.end();
        if (passed) env[name] = entry;
    }
    if (!env.count("PATH")) env["PATH"] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    env["HOME"] = std::string("HOME=") + (user.pw_dir ? user.pw_dir : "/");
    env["USER"] = std::string("USER=") + user.pw_name;
    env["LOGNAME"] = std::string("LOGNAME=") + user.pw_name;
    env["SHELL"] = std::string("SHELL=") + (user.pw_shell && *user.pw_shell ? user.pw_shell : "/bin/sh");
    for (const auto& [name, value] : p.environment) env[name] = name + "=" + value;
    env["HBWATCH_PROGRAM"] = "HBWATCH_PROGRAM=" + unit_name;
    if (instance > 0) env["HBWATCH_INSTANCE"] = "HBWATCH_INSTANCE=" + std::to_string(instance);
    std::vector<std::string> out;
    for (auto& [name, entry] : env) out.push_back(std::move(entry));
    return out;
}

constexpr std::uint64_t kReadyPollNs = to_ns(std::chrono::milliseconds(100));
constexpr std::uint64_t kExecRetryNs = to_ns(std::chrono::milliseconds(500));
constexpr std::uint64_t kKillWaitNs = to_ns(std::chrono::seconds(5));

// A program's life, one state at a time:
//   waiting --its `after` ready--> starting --ready check--> ready --exit--> backoff --> starting
//   starting|ready --stop--> stopping --exit, cgroup empty--> stopped
//   an exit that its restart mode does not restart: exited; too many restarts: gave_up
enum class State { waiting, starting, ready, backoff, stopping, stopped, exited, gave_up };

const char* to_string(State state) {
    switch (state) {
        case State::waiting: return "waiting";
        case State::starting: return "starting";
        case State::ready: return "ready";
        case State::backoff: return "backoff";
        case State::stopping: return "stopping";
        case State::stopped: return "stopped";
        case State::exited: return "exited";
        case State::gave_up: return "gave-up";
    }
    return "unknown";
}


// One running copy of a program: the program itself, or one of its instances (NAME@i).
struct Unit {
    std::shared_ptr<const ProgramConfig> program;  // shared: a reload keeps an unchanged program's
    std::string name;
    State state = State::waiting;
    RestartPolicy policy{RestartRules{}};
    // Built before any fork: the child between fork and exec only makes system calls.
    std::vector<std::string> env_storage;
    std::vector<char*> argv, envp;
    std::optional<uid_t> uid;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    std::optional<Cgroup> cgroup;
    OutputFile* out = nullptr;
    OutputFile* err = nullptr;
    pid_t pid = 0;
    std::optional<Pidfd> pidfd;
    ProcessIdentity identity;
    std::uint64_t started_ns = 0;
    std::uint64_t next_ns = 0;      // backoff: the next start; starting: the next ready probe
    std::uint64_t deadline_ns = 0;  // starting: the ready timeout; stopping: SIGKILL
    bool wanted = true;              // to be running: autostart, then an operator's start and stop
    bool stop_pending = false;        // to stop once what waits for it and is stopping has stopped
    bool retiring = false;            // removed or replaced by a reload: stopped, then dropped
    bool operator_set = false;        // `wanted` comes from an operator's start, stop or restart
    bool cgroup_taken = false;        // take_cgroup() has run (at start-up, or before its first start)
    std::string said_waiting;         // the last "waits for" said about it, not to repeat it
    bool restart_after_stop = false;  // stopped to be started again (ready timeout, max_rss, restart)
    bool restart_at_once = false;     // ... without a backoff (an operator's restart)
    bool kill_sent = false;
    unsigned starts = 0;
    std::string last_exit;
    std::uint64_t next_rss_check_ns = 0;
    unsigned rss_over = 0;  // max_rss checks in a row above the limit
    sockaddr_storage probe_address{};  // tcp readiness: HOST:PORT, resolved when the config was read
    socklen_t probe_address_length = 0;
    int probe_fd = -1;      // tcp readiness: a connect in progress
    pid_t probe_pid = 0;    // exec readiness: the check command, an unreaped child of ours
    unsigned probe_start = 0;  // the start it checks: a late answer about an earlier start is ignored
    std::vector<char*> probe_argv;
};

class Stack {
public:
    Stack(StackConfig config, spdlog::logger& log, int signal_fd) : config_(std::move(config)), log_(log), signal_fd_(signal_fd) {
        for (auto& p : config_.programs) {
            programs_.push_back(std::make_shared<const ProgramConfig>(std::move(p)));
            for (auto& unit : make_units(programs_.back(), config_.log_dir)) units_.push_back(std::move(unit));
        }
        config_.programs.clear();  // programs_ holds them
        default_signal_dispositions();
    }

    std::optional<gid_t> control_group() const { return socket_group(); }

    int run(ControlServer& control) {
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
        for (auto& unit : units_) take_cgroup(*unit);
        log_.info("running the stack of {} ({} programs): start order {}; control socket {}/control.sock; SIGHUP reloads it", config_.path,
                  units_.size(), start_order(), config_.run_dir);
        std::vector<pollfd> fds;
        for (;;) {
            const std::uint64_t now = monotonic_now_ns();
            if (stopping_all_ && stop_step(now)) {
                drain_to_end();
                log_.info("every program is stopped; exiting");
                return 0;
            }
            // What one pass changes (a stop finished, a program ready, a retired unit dropped) may
            // let an earlier program move: passes until nothing changes.
            for (int pass = 0; pass < 8; ++pass) {
                const auto before = states();
                drop_retired();
                if (!stopping_all_) step(now);
                if (states() == before) break;
            }
            std::uint64_t wake = now + to_ns(std::chrono::seconds(1));
            fds.clear();
            fds.push_back(pollfd{signal_fd_, POLLIN, 0});
            fds.push_back(pollfd{control.wake_fd(), POLLIN, 0});
            for (auto& unit : units_) {
                if (unit->pidfd) fds.push_back(pollfd{unit->pidfd->fd(), POLLIN, 0});
                if (unit->probe_fd >= 0) fds.push_back(pollfd{unit->probe_fd, POLLOUT, 0});
                if (unit->cgroup && unit->state == State::stopping) fds.push_back(pollfd{unit->cgroup->events_fd(), POLLPRI, 0});
                // Only what is due to be acted on: a unit whose stop waits for others (or any but a
                // stopping one while everything stops) has probes and checks that are not run.
                const bool idle = unit->stop_pending || (stopping_all_ && unit->state != State::stopping);
                for (std::uint64_t at : {unit->next_ns, unit->deadline_ns, unit->next_rss_check_ns})
                    if (at > 0 && !idle) wake = std::min(wake, std::max(at, now));
            }
            pipes_.add_pollfds(fds);
            if (!poll_events(fds, poll_timeout_ms(wake, monotonic_now_ns()), log_)) continue;
            if (fds[0].revents & POLLIN) read_signals();
            if (fds[1].revents & POLLIN)
                control.serve([this](const ControlRequest& request) { return handle(request, monotonic_now_ns()); });
            pipes_.drain(fds);
            reap();
            auto has_event = [&](int fd) {
                return fd >= 0 && std::any_of(fds.begin(), fds.end(), [&](const pollfd& p) { return p.fd == fd && p.revents != 0; });
            };
            for (auto& unit : units_) {
                if (has_event(unit->probe_fd)) finish_tcp_probe(*unit);
                // Reading cgroup.events re-arms it: unread, it stays ready and poll returns at once.
                if (unit->cgroup && has_event(unit->cgroup->events_fd())) (void)unit->cgroup->populated();
            }
        }
    }

private:
    std::string start_order() const {
        std::string order;
        for (const auto& unit : units_) {
            if (!order.empty()) order += ", ";
            order += unit->name;
        }
        return order;
    }

    std::optional<gid_t> socket_group() const {
        if (config_.socket_group.empty()) return std::nullopt;
        const group* gr = ::getgrnam(config_.socket_group.c_str());
        if (gr == nullptr)
            throw Error(EINVAL, config_.path + ": socket_group '" + config_.socket_group + "' is not a group on this host");
        return gr->gr_gid;
    }

    // The heartbeat entries of the units' processes, read once per request: one pass over each
    // table the programs use, and /proc read only for the entries of the stack's pids.
    class Heartbeats {
    public:
        Heartbeats(spdlog::logger& log, const std::vector<std::unique_ptr<Unit>>& units) : log_(log) {
            for (const auto& unit : units)
                if (unit->pid > 0) pids_.push_back(unit->pid);
            std::sort(pids_.begin(), pids_.end());
        }
        nlohmann::json of(const Unit& unit, std::uint64_t now) {
            if (unit.pid == 0) return nullptr;
            key_t key;
            try {
                key = table_key(*unit.program);
            } catch (const Error&) {  // HBWATCH_KEY in procctl's own environment is not a key
                return nullptr;
            }
            auto found = tables_.find(key);
            if (found == tables_.end()) {
                std::vector<Entry> entries;
                try {
                    TableOptions options;
                    options.key = key;
                    auto ours = [this](const SlotSnapshot& slot) {
                        return std::binary_search(pids_.begin(), pids_.end(), slot.process.pid);
                    };
                    if (auto table = Table::open_existing(options, Table::Access::read_only)) entries = inspect(*table, now, ours);
                } catch (const Error& e) {
                    log_.warn("cannot read the heartbeat table at {} for proctab status: {}", format_key(key), e.what());
                }
                found = tables_.emplace(key, std::move(entries)).first;
            }
            nlohmann::json list = nlohmann::json::array();
            for (const auto& entry : found->second) {
                if (!same_process(unit.identity, entry.slot.process)) continue;
                list.push_back({{"name", std::string(entry.slot.name())},
                                {"state", to_string(entry.state)},
                                {"since_beat_seconds", static_cast<double>(entry.since_beat.count()) / 1000.0},
                                {"timeout_seconds", static_cast<double>(entry.slot.timeout.count()) / 1000.0}});
            }
            return list;
        }

    private:
        spdlog::logger& log_;
        std::vector<pid_t> pids_;
        std::map<key_t, std::vector<Entry>> tables_;
    };

    nlohmann::json describe(const Unit& unit, std::uint64_t now, Heartbeats& beats) const {
        nlohmann::json o{{"name", unit.name},
                         {"program", unit.program->name},
                         {"state", unit.stop_pending ? "stopping" : to_string(unit.state)},
                         {"restarts", unit.starts > 0 ? unit.starts - 1 : 0}};
        o["pid"] = unit.pid > 0 ? nlohmann::json(unit.pid) : nlohmann::json(nullptr);
        o["uptime_seconds"] = unit.pid > 0 ? nlohmann::json(static_cast<double>(ms_between(unit.started_ns, now).count()) / 1000.0)
                                            : nlohmann::json(nullptr);
        o["last_exit"] = unit.last_exit.empty() ? nlohmann::json(nullptr) : nlohmann::json(unit.last_exit);
        o["heartbeats"] = beats.of(unit, now);
        nlohmann::json waiting_for = nlohmann::json::array();
        if (unit.state == State::waiting)
            for (const Unit* dependency : unready_dependencies(unit))
                waiting_for.push_back({{"name", dependency->name}, {"state", to_string(dependency->state)}});
        o["waiting_for"] = std::move(waiting_for);
        if (unit.retiring) o["retiring"] = true;  // a reload removed or replaced it: stopping, then gone
        return o;
    }

    static std::string json_text(const nlohmann::json& value) {
        return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }

    static ControlReply error(int status, const std::string& message) {
        return ControlReply{status, json_text({{"error", message}})};
    }

    // The control API (README, "The control API"). NAME is a program (all its instances), one
    // instance (NAME@I), or `all`.
    ControlReply handle(const ControlRequest& request, std::uint64_t now) {
        // Never echoed raw: a target is whatever bytes a client sent.
        const std::string shown = escaped(request.target, [](unsigned char c) { return c > 0x20 && c < 0x7f && c != '\\'; });
        const auto question = request.target.find('?');
        const std::string target = request.target.substr(0, question);
        std::map<std::string, std::string> query;
        if (question != std::string::npos)
            for (std::size_t at = question + 1; at <= request.target.size();) {
                auto end = request.target.find('&', at);
                if (end == std::string::npos) end = request.target.size();
                const std::string pair = request.target.substr(at, end - at);
                const auto equals = pair.find('=');
                if (!pair.empty()) query[pair.substr(0, equals)] = equals == std::string::npos ? "" : pair.substr(equals + 1);
                at = end + 1;
            }
        std::vector<std::string> parts;
        for (std::size_t at = 0; at <= target.size();) {
            const auto slash = target.find('/', at);
            const auto end = slash == std::string::npos ? target.size() : slash;
            if (end > at) parts.push_back(target.substr(at, end - at));
            at = end + 1;
        }
        if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "reload") {
            if (request.method != "POST") return error(405, request.method + " " + shown + ": use POST");
            if (stopping_all_) return error(409, "the stack is stopping");
            try {
                return ControlReply{200, json_text(reload())};
            } catch (const std::exception& e) {  // whatever failed, the stack goes on as it was
                log_.error("reload refused, the running config is kept: {}", e.what());
                return error(400, std::string(e.what()) + " (the running config is kept)");
            }
        }
        if (parts.size() < 2 || parts[0] != "v1" || parts[1] != "programs" || parts.size() > 4)
            return error(404, "no such path: " + shown +
                                  " (the API is /v1/programs[/NAME[/start|stop|restart|signal|output]] and /v1/reload)");
        const bool every = parts.size() == 2 || parts[2] == "all";
        const bool acting = parts.size() == 4 && parts[3] != "output";
        std::vector<Unit*> chosen;
        for (auto& unit : units_)
            if ((every || unit->name == parts[2] || unit->program->name == parts[2]) && !(acting && unit->retiring))
                chosen.push_back(unit.get());
        if (chosen.empty()) return error(404, "no program named '" + escaped(parts[2], name_char) + "' in " + config_.path);
        Heartbeats beats(log_, units_);
        auto described = [&] {
            nlohmann::json list = nlohmann::json::array();
            for (Unit* unit : chosen) list.push_back(describe(*unit, now, beats));
            return ControlReply{200, json_text(list)};
        };
        if (parts.size() <= 3 || parts[3] == "output") {
            if (request.method != "GET") return error(405, request.method + " " + shown + ": use GET");
            return parts.size() <= 3 ? described() : output(chosen, query);
        }
        if (request.method != "POST") return error(405, request.method + " " + shown + ": use POST");
        const std::string& action = parts[3];
        if (action != "start" && action != "stop" && action != "restart" && action != "signal")
            return error(404, "no action '" + escaped(action, name_char) + "': use start, stop, restart, signal or output");
        if (stopping_all_) return error(409, "the stack is stopping");
        if (action == "signal") {
            const auto sig = signal_by_name(query["signal"]);
            if (!sig)
                return error(400, "signal=" + escaped(query["signal"], name_char) +
                                      " is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL (give ?signal=NAME)");
            if (std::none_of(chosen.begin(), chosen.end(), [](const Unit* u) { return u->pid > 0; }))
                return error(409, escaped(parts[2], name_char) + " is not running: nothing to signal");
            for (Unit* unit : chosen) {
                if (unit->pid == 0) continue;
                log_.info("{}: {} to pid {}, as asked through the control socket", unit->name, signal_name(*sig), unit->pid);
                send(*unit, *sig);
            }
            return described();
        }
        for (Unit* unit : chosen) act(*unit, action);
        return described();
    }

    // GET .../output?tail=N[&stream=stderr][&from=CURSOR]: the last N lines of each chosen
    // unit's output file, or, with `from` (the cursor a reply gave), the lines written since.
    ControlReply output(const std::vector<Unit*>& chosen, std::map<std::string, std::string>& query) {
        // One budget for the whole reply (all the units named): its JSON is at most 6 times that.
        constexpr std::size_t kMaxLines = 10000, kReplyBytes = 256 << 10;
        const std::string stream = query.count("stream") ? query["stream"] : "stdout";
        if (stream != "stdout" && stream != "stderr") return error(400, "stream=" + escaped(stream, name_char) + ": use stdout or stderr");
        std::size_t count = 10;
        if (query.count("tail")) {
            const std::string& text = query["tail"];
            if (text.empty() || text.size() > 5 || !std::all_of(text.begin(), text.end(), ::isdigit) || std::stoul(text) > kMaxLines)
                return error(400, "tail=" + escaped(text, name_char) + ": give a number of lines from 0 to 10000");
            count = std::stoul(text);
        }
        std::optional<OutputFile::Cursor> from;
        if (query.count("from")) {
            unsigned long long inode = 0, generation = 0, offset = 0;
            char end = 0;
            if (std::sscanf(query["from"].c_str(), "%llu:%llu:%llu%c", &inode, &generation, &offset, &end) != 3)
                return error(400, "from=" + escaped(query["from"], name_char) + ": give the cursor a reply returned");
            from = OutputFile::Cursor{inode, generation, offset};
        }
        nlohmann::json list = nlohmann::json::array();
        std::size_t budget = kReplyBytes;
        for (const Unit* unit : chosen) {
            const OutputFile* file = stream == "stdout" ? unit->out : unit->err;
            if (file == nullptr && chosen.size() > 1) continue;  // `all`, or instances: those that have one
            if (file == nullptr)
                return error(404, unit->name + " has no " + stream + " file (no '" + stream +
                                      ":' in the config): its output goes to procctl's own");
            const auto lines = from ? file->follow(*from, budget) : file->tail(count, budget);
            budget -= std::min(budget, lines.bytes_read);
            list.push_back({{"name", unit->name},
                            {"path", file->path()},
                            {"lines", lines.lines},
                            {"cursor", std::to_string(lines.next.inode) + ":" + std::to_string(lines.next.generation) + ":" +
                                           std::to_string(lines.next.offset)},
                            {"skipped", lines.skipped}});
        }
        if (list.empty()) return error(404, "none of these programs has a " + stream + " file (no '" + stream + ":' in the config)");
        return ControlReply{200, json_text(list)};
    }

    // start, stop, restart by name. A stop (and the stop of a restart) waits for the programs
    // that wait for this one and are being stopped too: `stop all` goes in reverse order.
    void act(Unit& unit, const std::string& action) {
        const bool running = unit.state == State::starting || unit.state == State::ready;
        log_.info("{}: {} requested through the control socket", unit.name, action);
        unit.operator_set = true;
        if (action == "stop") {
            unit.wanted = false;
            unit.restart_after_stop = unit.restart_at_once = false;
            if (running) unit.stop_pending = true;
            else if (unit.state != State::stopping) rest(unit, State::stopped);
            return;
        }
        unit.wanted = true;
        if (unit.state == State::stopping || (running && action == "restart")) {  // started again once stopped
            unit.restart_after_stop = unit.restart_at_once = true;
            unit.stop_pending = running;
        } else if (running) {  // start: a stop not yet begun is called off
            unit.stop_pending = unit.restart_after_stop = unit.restart_at_once = false;
        } else {
            if (unit.state == State::gave_up) unit.policy = RestartPolicy(unit.policy.rules());
            rest(unit, State::waiting);  // starts as soon as what it waits for is ready
        }
    }

    // A state with nothing scheduled.
    static void rest(Unit& unit, State state) {
        unit.state = state;
        unit.next_ns = unit.deadline_ns = 0;
    }

    // Reads the config file again and applies what changed: programs added are started,
    // removed ones stopped, changed ones (any key) stopped and started anew; the others keep
    // running untouched. A config that does not load, or changes what a running procctl cannot
    // (run_dir, socket_group), throws hbwatch::Error, and nothing changes.
    nlohmann::json reload() {
        StackConfig next;
        try {
            next = load_stack_config(config_.path);
        } catch (const Error&) {
            throw;
        } catch (const std::bad_alloc&) {  // a config too large for the memory procctl may use
            throw Error(ENOMEM, config_.path + ": not enough memory to read it (std::bad_alloc)");
        } catch (const std::exception& e) {
            throw Error(EINVAL, config_.path + ": cannot be read: " + e.what());
        }
        auto refuse = [&](const char* key, const std::string& was, const std::string& is) {
            throw Error(EINVAL, config_.path + ": " + key + " changed from '" + was + "' to '" + is +
                                    "': a reload cannot apply that; restart procctl");
        };
        if (next.run_dir != config_.run_dir) refuse("run_dir", config_.run_dir, next.run_dir);
        if (next.socket_group != config_.socket_group) refuse("socket_group", config_.socket_group, next.socket_group);
        nlohmann::json report{{"added", nlohmann::json::array()},
                              {"removed", nlohmann::json::array()},
                              {"changed", nlohmann::json::array()},
                              {"unchanged", nlohmann::json::array()}};
        std::vector<std::shared_ptr<const ProgramConfig>> programs;
        std::vector<std::unique_ptr<Unit>> fresh;
        try {
            build_reload(next, report, programs, fresh);
        } catch (const std::exception& e) {
            fresh.clear();
            drop_unused_outputs();  // what the refused config opened
            if (dynamic_cast<const Error*>(&e) != nullptr) throw;
            throw Error(ENOMEM, config_.path + ": the reload failed while building its programs (" + e.what() + ")");
        }
        finish_reload(next, report, std::move(programs), std::move(fresh));
        return report;
    }

    // The first half of a reload: the programs of `next`, unchanged ones shared, the units of
    // new and changed ones built. Everything that may throw is here, and changes nothing.
    void build_reload(StackConfig& next, nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>>& programs,
                      std::vector<std::unique_ptr<Unit>>& fresh) {
        auto has_output_file = [](const ProgramConfig& p) { return !p.stdout_path.empty() || !p.stderr_path.empty(); };
        for (auto& p : next.programs) {
            const auto old = std::find_if(programs_.begin(), programs_.end(), [&](const auto& o) { return o->name == p.name; });
            if (old != programs_.end() && **old == p && (next.log_dir == config_.log_dir || !has_output_file(p))) {
                programs.push_back(*old);
                report["unchanged"].push_back(p.name);
                continue;
            }
            report[old == programs_.end() ? "added" : "changed"].push_back(p.name);
            // A changed program that an operator started or stopped stays as they left it;
            // otherwise its (new) autostart decides.
            std::optional<bool> wanted;
            if (old != programs_.end())
                for (const auto& unit : units_)
                    if (!unit->retiring && unit->program == *old && unit->operator_set) wanted = wanted.value_or(false) || unit->wanted;
            programs.push_back(std::make_shared<const ProgramConfig>(std::move(p)));
            for (auto& unit : make_units(programs.back(), next.log_dir)) {
                if (wanted) {
                    unit->wanted = *wanted;
                    unit->operator_set = true;
                }
                unit->state = unit->wanted ? State::waiting : State::stopped;
                fresh.push_back(std::move(unit));
            }
        }
        for (const auto& old : programs_)
            if (std::none_of(programs.begin(), programs.end(), [&](const auto& p) { return p->name == old->name; }))
                report["removed"].push_back(old->name);
    }

    // The second half: the units of programs no longer there (as they were) retire, the new
    // ones join in the new start order.
    void finish_reload(const StackConfig& next, const nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>> programs,
                       std::vector<std::unique_ptr<Unit>> fresh) {
        for (auto& unit : units_)
            if (!unit->retiring && std::find(programs.begin(), programs.end(), unit->program) == programs.end()) retire(*unit);
        std::vector<std::unique_ptr<Unit>> ordered;  // the new start order, then what retires
        for (const auto& program : programs)
            for (auto* source : {&units_, &fresh})
                for (auto& unit : *source)
                    if (unit && !unit->retiring && unit->program == program) ordered.push_back(std::move(unit));
        for (auto& unit : units_)
            if (unit) ordered.push_back(std::move(unit));
        units_ = std::move(ordered);
        programs_ = std::move(programs);
        config_.log_dir = next.log_dir;
        for (const auto& unit : units_)  // a file shared with what retires takes the new limits
            for (OutputFile* file : {unit->out, unit->err})
                if (file != nullptr && !unit->retiring) file->set_limits(unit->program->log_max_size, unit->program->log_files);
        drop_unused_outputs();
        auto names = [](const nlohmann::json& list) {
            std::string text;
            for (const auto& name : list) text.append(text.empty() ? "" : ", ").append(name.get<std::string>());
            return text.empty() ? std::string("none") : text;
        };
        log_.info("reloaded {}: added {}; removed {}; changed (restarted) {}; unchanged {}", config_.path,
                  names(report["added"]), names(report["removed"]), names(report["changed"]), names(report["unchanged"]));
    }

    // Every unit and where it stands: what the loop's passes compare.
    std::vector<std::tuple<const Unit*, State, bool>> states() const {
        std::vector<std::tuple<const Unit*, State, bool>> all;
        for (const auto& unit : units_) all.emplace_back(unit.get(), unit->state, unit->stop_pending);
        return all;
    }

    // Drops the retired units that have stopped, and the output files nothing uses any more.
    // True when a unit was dropped.
    bool drop_retired() {
        if (std::erase_if(units_, [](const auto& u) { return u->retiring && u->pid == 0 && u->state != State::stopping; }) == 0)
            return false;
        drop_unused_outputs();
        return true;
    }

    // Closes the output files that no unit names and no pipe feeds (a reload moved or removed
    // them): no descriptor is kept, nor a removed log's disk space.
    void drop_unused_outputs() {
        std::erase_if(outputs_, [&](const auto& entry) {
            const OutputFile* file = entry.second.get();
            const bool named = std::any_of(units_.begin(), units_.end(), [&](const auto& u) { return u->out == file || u->err == file; });
            return !named && !pipes_.feeds(file);
        });
    }

    // A unit a reload removed or replaced: stopped (after what waits for it, when that is
    // stopping too), then dropped from the stack.
    void retire(Unit& unit) {
        unit.retiring = true;
        unit.wanted = unit.restart_after_stop = unit.restart_at_once = false;
        if (unit.state == State::starting || unit.state == State::ready) unit.stop_pending = true;
        else if (unit.state != State::stopping) rest(unit, State::stopped);
    }

    // The units of one program: the program itself, or its instances NAME@1..N.
    std::vector<std::unique_ptr<Unit>> make_units(const std::shared_ptr<const ProgramConfig>& program, const std::string& log_dir) {
        std::vector<std::unique_ptr<Unit>> units;
        const unsigned copies = program->instances;
        for (unsigned i = 1; i <= copies; ++i) {
            auto unit = std::make_unique<Unit>();
            unit->program = program;
            unit->name = copies > 1 ? program->name + "@" + std::to_string(i) : program->name;
            unit->policy = RestartPolicy(RestartRules{program->restart_delay, std::chrono::minutes(5),
                                                      program->max_restarts ? std::optional(program->max_restarts) : std::nullopt,
                                                      program->max_restarts_window, std::chrono::seconds(1)});
            unit->wanted = program->autostart;
            unit->state = unit->wanted ? State::waiting : State::stopped;  // autostart: false waits for a start
            prepare(*unit, copies > 1 ? i : 0, log_dir);
            units.push_back(std::move(unit));
        }
        return units;
    }

    void prepare(Unit& unit, unsigned instance, const std::string& log_dir) {
        const ProgramConfig& p = *unit.program;
        const passwd* pw = p.user.empty() ? ::getpwuid(::geteuid()) : ::getpwnam(p.user.c_str());
        if (pw == nullptr && !p.user.empty())
            throw Error(EINVAL, config_.path + ": program '" + p.name + "': user '" + p.user + "' does not exist");
        if (!p.user.empty()) {
            if (::geteuid() != 0 && pw->pw_uid != ::geteuid())
                throw Error(EPERM, config_.path + ": program '" + p.name + "': user '" + p.user +
                                       "': only root may run a program as another user");
            unit.uid = pw->pw_uid;
            unit.gid = pw->pw_gid;
            int count = 64;
            unit.groups.resize(64);
            if (::getgrouplist(p.user.c_str(), pw->pw_gid, unit.groups.data(), &count) < 0) count = 0;
            unit.groups.resize(static_cast<std::size_t>(std::max(count, 0)));
        }
        passwd nameless{};  // procctl's uid has no name in the user database
        std::string uid_text = std::to_string(::geteuid());
        nameless.pw_name = uid_text.data();
        unit.env_storage = program_environment(p, pw != nullptr ? *pw : nameless, unit.name, instance);
        for (auto& entry : unit.env_storage) unit.envp.push_back(entry.data());
        unit.envp.push_back(nullptr);
        for (const auto& word : p.command) unit.argv.push_back(const_cast<char*>(word.c_str()));
        unit.argv.push_back(nullptr);
        for (const auto& word : p.ready.command) unit.probe_argv.push_back(const_cast<char*>(word.c_str()));
        unit.probe_argv.push_back(nullptr);
        if (p.ready.kind == ReadyCheck::Kind::tcp) {  // resolved once, here: a DNS wait never stalls the loop
            addrinfo hints{};
            hints.ai_socktype = SOCK_STREAM;
            hints.ai_flags = AI_NUMERICSERV;
            addrinfo* found = nullptr;
            const int rc = ::getaddrinfo(p.ready.host.c_str(), std::to_string(p.ready.port).c_str(), &hints, &found);
            if (rc != 0 || found == nullptr)
                throw Error(EINVAL, config_.path + ": program '" + p.name + "': ready: cannot resolve '" + p.ready.host +
                                        "': " + ::gai_strerror(rc) + "; give an address, or a name this host can resolve");
            std::memcpy(&unit.probe_address, found->ai_addr, found->ai_addrlen);
            unit.probe_address_length = found->ai_addrlen;
            ::freeaddrinfo(found);
        }
        auto open_output = [&](const std::string& relative) -> OutputFile* {
            if (relative.empty()) return nullptr;
            std::string path = log_dir + "/" + relative;  // relative: the config refuses absolute paths and ..
            if (instance > 0) {  // each instance its own file: main.log -> main@2.log
                const auto dot = path.rfind('.');
                const auto slash = path.rfind('/');
                const auto at = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? path.size() : dot;
                std::string suffix(1, '@');  // built in steps: g++ 12 warns falsely (-Wrestrict) on "@" + ...
                suffix += std::to_string(instance);
                path.insert(at, suffix);
            }
            auto& file = outputs_[path];
            if (!file)
                file = std::make_unique<OutputFile>(path, p.log_max_size, p.log_files,
                                                    [this](const std::string& problem) { log_.error("{}", problem); });
            return file.get();
        };
        unit.out = open_output(p.stdout_path);
        unit.err = open_output(p.stderr_path);
    }

    void take_cgroup(Unit& unit) {
        unit.cgroup_taken = true;
        std::string name = "stack-" + unit.name;
        std::replace(name.begin(), name.end(), '@', '-');
        std::replace(name.begin(), name.end(), '/', '-');
        std::string why;
        if (auto taken = Cgroup::take(name, &why)) unit.cgroup.emplace(std::move(*taken));
        if (!unit.cgroup) {
            if (!said_no_cgroup_) log_.info("cgroup v2 not used ({}): each program's main process is stopped alone", why);
            said_no_cgroup_ = true;
            return;
        }
        if (unit.cgroup->populated()) {
            log_.warn("{} process(es) left in {} by an earlier procctl (was it SIGKILLed?): killing them before starting {}",
                      unit.cgroup->pids().size(), unit.cgroup->path(), unit.name);
            unit.cgroup->kill();
        }
    }

    // The units of the programs in its `after` that are not ready (a retiring unit is not
    // waited for: its successor is).
    std::vector<const Unit*> unready_dependencies(const Unit& unit) const {
        std::vector<const Unit*> unready;
        for (const auto& dependency : unit.program->after)
            for (const auto& other : units_)
                if (!other->retiring && other->program->name == dependency && (other->state != State::ready || other->stop_pending))
                    unready.push_back(other.get());
        return unready;
    }

    // Starts what may start, moves readiness checks and ready timeouts on.
    void step(std::uint64_t now) {
        for (auto& unit_ptr : units_) {
            Unit& unit = *unit_ptr;
            switch (unit.state) {
                case State::waiting:
                    if (unit.wanted && may_start(unit)) start(unit, now);
                    break;
                case State::backoff:  // what it waits for may have gone meanwhile: then it waits again
                    if (now >= unit.next_ns && may_start(unit)) start(unit, now);
                    else if (now >= unit.next_ns) rest(unit, State::waiting);
                    break;
                case State::starting:
                    if (unit.stop_pending) {
                        stop_when_dependents_stopped(unit, now);
                    } else if (now >= unit.deadline_ns) {
                        log_.error("{} was not ready within {}: stopping it, to start it again", unit.name,
                                   human_duration(unit.program->ready_timeout));
                        unit.restart_after_stop = true;
                        stop(unit, now);
                    } else if (now >= unit.next_ns) {
                        probe(unit, now);
                    }
                    break;
                case State::stopping:
                    stopping_step(unit, now);
                    break;
                case State::ready:
                    if (unit.stop_pending) stop_when_dependents_stopped(unit, now);
                    else if (unit.program->max_rss > 0 && now >= unit.next_rss_check_ns) check_rss(unit, now);
                    break;
                default: break;
            }
        }
    }

    void stop_when_dependents_stopped(Unit& unit, std::uint64_t now) {
        for (const auto& other : units_) {
            const auto& after = other->program->after;
            const bool waits_for_it = std::find(after.begin(), after.end(), unit.program->name) != after.end();
            if (waits_for_it && (other->stop_pending || other->state == State::stopping)) return;
        }
        unit.stop_pending = false;
        stop(unit, now);
    }

    // Whether a waiting unit may start now: what it waits for is ready, and the unit a reload
    // replaced (same program) is gone. Says once why not, when nothing will change by itself.
    bool may_start(Unit& unit) {
        const auto unready = unready_dependencies(unit);
        if (unready.empty()) {
            unit.said_waiting.clear();
            return std::none_of(units_.begin(), units_.end(),
                                [&](const auto& u) { return u->retiring && u->program->name == unit.program->name; });
        }
        for (const Unit* dependency : unready) {
            const State s = dependency->state;
            if (s != State::stopped && s != State::exited && s != State::gave_up) continue;
            std::string said = unit.name + " waits for " + dependency->name + ", which is " + to_string(s);
            if (said == unit.said_waiting) return false;
            unit.said_waiting = said;
            log_.warn("{}: it starts once {} is ready (proctab start {})", said, dependency->name, dependency->program->name);
            return false;
        }
        return false;
    }

    // max_rss: the main process's resident memory, once a second; three checks in a row above
    // the limit restart the program (one spike does not).
    void check_rss(Unit& unit, std::uint64_t now) {
        unit.next_rss_check_ns = now + to_ns(std::chrono::seconds(1));
        const auto stat = read_proc_stat(unit.pid);
        if (!stat) return;
        const std::uint64_t rss = stat->rss_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
        if (rss <= unit.program->max_rss) {
            unit.rss_over = 0;
            return;
        }
        if (++unit.rss_over < 3) return;
        log_.warn("{} (pid {}) uses {} MiB, above its max_rss of {} MiB for 3 checks in a row: restarting it", unit.name,
                  unit.pid, rss >> 20, unit.program->max_rss >> 20);
        unit.rss_over = 0;
        unit.restart_after_stop = true;
        stop(unit, now);
    }

    void start(Unit& unit, std::uint64_t now) {
        if (!unit.cgroup_taken) take_cgroup(unit);  // a unit a reload added
        if (!unit.policy.start(now)) {
            log_.error("giving up on {}: started {} times within {}", unit.name, unit.policy.recent_starts(),
                       human_duration(unit.program->max_restarts_window));
            unit.state = State::gave_up;
            unit.next_ns = unit.deadline_ns = 0;
            return;
        }
        auto ends = pipes_.open_for(unit.out, unit.err);
        SpawnPlan plan = plan_for(unit, unit.argv);
        plan.stdout_fd = ends.out;
        plan.stderr_fd = ends.err;
        plan.keep_stdio = true;  // without a stdout or stderr file: procctl's own
        std::optional<SpawnFailure> failure;
        const pid_t pid = spawn(plan, failure);
        ends.close();
        if (failure) return failed_start(unit, now, failure->what(), failure->error);
        unit.pid = pid;
        unit.started_ns = now;
        ++unit.starts;
        if (auto pinned = Pidfd::pin(pid, nullptr, /*for_signal=*/false)) {
            unit.identity = pinned->identity;
            unit.pidfd.emplace(std::move(pinned->pidfd));
        }
        unit.kill_sent = false;
        log_.info("started {} as pid {}", unit.name, pid);
        if (unit.program->ready.kind == ReadyCheck::Kind::started) {
            become_ready(unit, "started");
        } else {
            unit.state = State::starting;
            unit.next_ns = now;
            unit.deadline_ns = now + to_ns(unit.program->ready_timeout);
        }
    }

    void failed_start(Unit& unit, std::uint64_t now, const char* what, int error) {
        const auto delay = unit.policy.after_start_failure();
        log_.error("cannot start {}: {} failed: {}; next attempt in {}", unit.name, what, std::strerror(error),
                   human_duration(delay));
        unit.last_exit = std::string("could not start: ") + what + " failed: " + std::strerror(error);
        unit.state = State::backoff;
        unit.next_ns = now + to_ns(delay);
        unit.deadline_ns = 0;
    }

    // How a unit's program (or its readiness check: `argv`) starts: as the program, in its
    // cgroup, directory and user; output to /dev/null unless the caller says otherwise.
    static SpawnPlan plan_for(const Unit& unit, const std::vector<char*>& argv) {
        SpawnPlan plan;
        plan.argv = argv.data();
        plan.envp = unit.envp.data();
        plan.directory = &unit.program->directory;
        plan.uid = unit.uid;
        plan.gid = unit.gid;
        plan.groups = &unit.groups;
        plan.cgroup = unit.cgroup ? &*unit.cgroup : nullptr;
        return plan;
    }

    void become_ready(Unit& unit, const char* how) {
        unit.state = State::ready;
        unit.next_ns = unit.deadline_ns = 0;
        unit.rss_over = 0;
        unit.next_rss_check_ns = unit.program->max_rss > 0 ? monotonic_now_ns() + to_ns(std::chrono::seconds(1)) : 0;
        close_probe(unit);
        log_.info("{} is ready ({}) {} after its start", unit.name, how,
                  human_duration(ms_between(unit.started_ns, monotonic_now_ns())));
    }

    // Ends the readiness check in flight: its socket, or its command (our unreaped child, so
    // its pid cannot have changed hands; reaped by reap()).
    void close_probe(Unit& unit) {
        if (unit.probe_fd >= 0) ::close(unit.probe_fd);
        unit.probe_fd = -1;
        if (unit.probe_pid > 0) ::kill(unit.probe_pid, SIGKILL);
    }

    // One look at the program's readiness; the next is due kReadyPollNs later.
    void probe(Unit& unit, std::uint64_t now) {
        unit.next_ns = now + kReadyPollNs;
        const ReadyCheck& ready = unit.program->ready;
        switch (ready.kind) {
            case ReadyCheck::Kind::started: become_ready(unit, "started"); return;
            case ReadyCheck::Kind::beat: {
                if (beat_seen(unit)) become_ready(unit, "its first heartbeat");
                return;
            }
            case ReadyCheck::Kind::tcp: {
                if (unit.probe_fd >= 0) return;  // a connect in progress
                const auto* address = reinterpret_cast<const sockaddr*>(&unit.probe_address);
                const int fd = ::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                const int rc = fd >= 0 ? ::connect(fd, address, unit.probe_address_length) : -1;
                const int error = errno;
                if (rc == 0) {
                    ::close(fd);
                    become_ready(unit, "its port accepts");
                } else if (fd >= 0 && error == EINPROGRESS) {
                    unit.probe_fd = fd;
                } else if (fd >= 0) {
                    ::close(fd);
                }
                return;
            }
            case ReadyCheck::Kind::exec: {
                if (unit.probe_pid != 0) return;  // the check is running
                // The check runs as the program does: its user, directory and cgroup; its output
                // goes nowhere. One that cannot start is a check that did not pass.
                std::optional<SpawnFailure> failure;
                const pid_t pid = spawn(plan_for(unit, unit.probe_argv), failure);
                if (pid > 0) {
                    unit.probe_pid = pid;
                    unit.probe_start = unit.starts;
                }
                return;
            }
        }
    }

    void finish_tcp_probe(Unit& unit) {
        int error = 0;
        socklen_t length = sizeof error;
        const bool connected = ::getsockopt(unit.probe_fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
        close_probe(unit);
        if (connected && unit.state == State::starting) become_ready(unit, "its port accepts");
    }

    // The heartbeat table a program registers in: its HBWATCH_KEY, else procctl's.
    static key_t table_key(const ProgramConfig& program) {
        const auto key = program.environment.find("HBWATCH_KEY");
        return key != program.environment.end() ? parse_key(key->second) : key_from_environment();
    }

    // Whether the program's own process has registered in the heartbeat table.
    bool beat_seen(const Unit& unit) const {
        try {
            TableOptions options;
            options.key = table_key(*unit.program);
            auto table = Table::open_existing(options, Table::Access::read_only);
            if (!table) return false;
            bool seen = false;
            table->for_each([&](const SlotSnapshot& s) {
                seen = seen || (s.phase == SlotPhase::live && same_process(unit.identity, s.process));
            });
            return seen;
        } catch (const Error& e) {
            log_.warn("{}: cannot read the heartbeat table for its readiness: {}", unit.name, e.what());
            return false;
        }
    }

    // The stop signal now, SIGKILL (to the whole cgroup) after the grace.
    void stop(Unit& unit, std::uint64_t now) {
        unit.stop_pending = false;
        close_probe(unit);
        unit.next_rss_check_ns = 0;
        if (unit.pid == 0) {
            unit.state = unit.restart_after_stop ? State::backoff : State::stopped;
            return;
        }
        unit.state = State::stopping;
        unit.deadline_ns = now + to_ns(unit.program->stop_grace);
        unit.next_ns = 0;
        send(unit, unit.program->stop_signal);
        log_.info("stopping {} (pid {}): {}, SIGKILL after {}", unit.name, unit.pid, signal_name(unit.program->stop_signal),
                  human_duration(unit.program->stop_grace));
    }

    // Through its pidfd; without one (pidfd_open failed), by pid, which is safe for our own
    // unreaped child: its pid cannot change hands before we reap it.
    void send(const Unit& unit, int sig) {
        std::string error;
        if (unit.pidfd) {
            if (!unit.pidfd->send(sig, &error))
                log_.warn("{}: cannot send {} to pid {}: {}", unit.name, signal_name(sig), unit.pid, error);
        } else if (unit.pid > 1 && ::kill(unit.pid, sig) != 0 && errno != ESRCH) {
            log_.warn("{}: cannot send {} to pid {}: {}", unit.name, signal_name(sig), unit.pid, std::strerror(errno));
        }
    }

    void stopping_step(Unit& unit, std::uint64_t now) {
        if (unit.pid == 0 && (!unit.cgroup || !unit.cgroup->populated())) {
            finish_stop(unit, now);
            return;
        }
        if (now >= unit.deadline_ns && !unit.kill_sent) {
            log_.warn("{} did not stop within {}: SIGKILL", unit.name, human_duration(unit.program->stop_grace));
            if (!(unit.cgroup && unit.cgroup->kill())) send(unit, SIGKILL);
            unit.kill_sent = true;
            unit.deadline_ns = now + kKillWaitNs;
        } else if (now >= unit.deadline_ns && unit.kill_sent) {
            log_.error("{}: processes are still there {} after SIGKILL; leaving them", unit.name, human_duration(std::chrono::seconds(5)));
            unit.pid = 0;
            unit.pidfd.reset();
            finish_stop(unit, now);
        } else if (unit.pid == 0 && unit.cgroup && unit.cgroup->populated() && !unit.kill_sent) {
            unit.cgroup->kill();  // the main process is gone: what it left goes with it
            unit.kill_sent = true;
            unit.deadline_ns = now + kKillWaitNs;
        }
    }

    void finish_stop(Unit& unit, std::uint64_t now) {
        unit.deadline_ns = 0;
        if (unit.restart_after_stop && unit.restart_at_once && !stopping_all_) {
            unit.restart_after_stop = unit.restart_at_once = false;
            unit.state = State::waiting;  // started again as soon as what it waits for is ready
            unit.next_ns = 0;
            log_.info("{} stopped; starting it again", unit.name);
            return;
        }
        if (unit.restart_after_stop && !stopping_all_) {
            unit.restart_after_stop = false;
            const auto delay = unit.policy.after_start_failure();
            unit.state = State::backoff;
            unit.next_ns = now + to_ns(delay);
            log_.info("{} stopped; next start in {}", unit.name, human_duration(delay));
            return;
        }
        unit.state = State::stopped;
        unit.next_ns = 0;
        log_.info("{} stopped", unit.name);
    }

    // Stops in reverse order: a program once nothing that waits for it still runs. True when
    // everything is stopped.
    bool stop_step(std::uint64_t now) {
        bool all_done = true;
        for (auto it = units_.rbegin(); it != units_.rend(); ++it) {
            Unit& unit = **it;
            switch (unit.state) {
                case State::waiting:
                case State::backoff:
                    unit.state = State::stopped;
                    unit.next_ns = unit.deadline_ns = 0;
                    break;
                case State::starting:
                case State::ready:
                    all_done = false;
                    if (!dependents_running(unit)) stop(unit, now);
                    break;
                case State::stopping:
                    all_done = false;
                    stopping_step(unit, now);
                    break;
                default: break;
            }
        }
        return all_done && std::none_of(units_.begin(), units_.end(), [](const auto& u) { return u->state == State::stopping; });
    }

    bool dependents_running(const Unit& unit) const {
        for (const auto& other : units_) {
            const auto& after = other->program->after;
            if (std::find(after.begin(), after.end(), unit.program->name) == after.end()) continue;
            if (other->state == State::starting || other->state == State::ready || other->state == State::stopping) return true;
        }
        return false;
    }

    void read_signals() {
        signalfd_siginfo info;
        while (::read(signal_fd_, &info, sizeof info) == sizeof info) {
            const int sig = static_cast<int>(info.ssi_signo);
            if ((sig == SIGTERM || sig == SIGINT) && !stopping_all_) {
                log_.info("SIG{} received from pid {}: stopping every program, in reverse order", sigabbrev_np(sig),
                          static_cast<int>(info.ssi_pid));
                stopping_all_ = true;
            } else if (sig == SIGHUP && !stopping_all_) {
                log_.info("SIGHUP received from pid {}: reloading {}", static_cast<int>(info.ssi_pid), config_.path);
                try {
                    (void)reload();
                } catch (const std::exception& e) {  // whatever failed, the stack goes on as it was
                    log_.error("reload refused, the running config is kept: {}", e.what());
                }
            }
        }
    }

    void reap() {
        int status;
        pid_t pid;
        while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
            const std::uint64_t now = monotonic_now_ns();
            for (auto& unit_ptr : units_) {
                Unit& unit = *unit_ptr;
                if (pid == unit.probe_pid) {
                    unit.probe_pid = 0;
                    if (unit.probe_start != unit.starts) continue;  // about an earlier start
                    if (unit.state == State::starting && WIFEXITED(status) && WEXITSTATUS(status) == 0)
                        become_ready(unit, "its check command succeeded");
                    else if (unit.state == State::starting)
                        unit.next_ns = now + kExecRetryNs;
                } else if (pid == unit.pid) {
                    on_exit(unit, status, now);
                }
            }
        }
    }

    void on_exit(Unit& unit, int status, std::uint64_t now) {
        const auto runtime = ms_between(unit.started_ns, now);
        unit.pid = 0;
        unit.pidfd.reset();
        unit.next_rss_check_ns = 0;
        unit.last_exit = describe_exit(status) + " after " + human_duration(runtime);
        ended_.push_back(unit.identity);
        release_slots_of(ended_, unit.env_storage, log_);
        if (unit.stop_pending) {  // it exited before its stop began: the stop is done
            unit.stop_pending = false;
            unit.state = State::stopping;
        }
        if (unit.state == State::stopping) {
            log_.info("{} {} after {}", unit.name, describe_exit(status), human_duration(runtime));
            stopping_step(unit, now);
            return;
        }
        close_probe(unit);
        if (unit.cgroup && unit.cgroup->populated()) unit.cgroup->kill();  // what it left running goes with it
        const bool success = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        const RestartMode mode = unit.program->restart;
        if (mode == RestartMode::never || (mode == RestartMode::on_failure && success)) {
            log_.log(success ? spdlog::level::info : spdlog::level::warn, "{} {} after {}; not restarted (restart: {})",
                     unit.name, describe_exit(status), human_duration(runtime),
                     mode == RestartMode::never ? "never" : "on-failure");
            unit.state = State::exited;
            unit.next_ns = unit.deadline_ns = 0;
            return;
        }
        const auto delay = unit.policy.after_exit(success, runtime);
        log_.log(success ? spdlog::level::info : spdlog::level::warn, "{} {} after {}; next start in {}", unit.name,
                 describe_exit(status), human_duration(runtime), human_duration(delay));
        unit.state = State::backoff;
        unit.next_ns = now + to_ns(delay);
        unit.deadline_ns = 0;
    }

    void drain_to_end() {
        pipes_.drain_to_end(std::chrono::seconds(2));
        for (auto& [path, file] : outputs_) file->finish();
    }

    StackConfig config_;  // its settings; the programs are in programs_
    std::vector<std::shared_ptr<const ProgramConfig>> programs_;  // in start order
    spdlog::logger& log_;
    int signal_fd_;
    std::map<std::string, std::unique_ptr<OutputFile>> outputs_;
    std::vector<std::unique_ptr<Unit>> units_;  // in start order
    OutputPipes pipes_;
    std::vector<ProcessIdentity> ended_;
    bool stopping_all_ = false;
    bool said_no_cgroup_ = false;
};

}  // namespace

int run_stack(StackConfig config, spdlog::logger& log, int signal_fd, const std::function<void()>& ready) {
    const std::string socket = config.run_dir + "/control.sock";
    Stack stack(std::move(config), log, signal_fd);  // throws Error when an output file cannot be opened
    ControlServer control(socket, stack.control_group());  // and when it cannot listen
    if (ready) ready();
    return stack.run(control);
}

}  // namespace hbwatch::tool
