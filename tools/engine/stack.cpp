// The stack supervisor's loop: it hands each unit its events (time, exits, readiness, an
// operator's commands), computes the facts a unit cannot know (whether what it waits for is
// ready, whether what waits for it is stopping), and carries out the effects the unit's state
// table answers with. Dependency order lives here; a unit's life lives in unit.cpp.
#include "engine/stack.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include "engine/spawn.h"
#include "engine/stack_internal.h"
#include "engine/support.h"
#include "engine/slot_release.h"

namespace hbwatch::tool {

key_t table_key(const ProgramConfig& program) {
    const auto key = program.environment.find("HBWATCH_KEY");
    return key != program.environment.end() ? parse_key(key->second) : key_from_environment();
}

Stack::Stack(StackConfig config, spdlog::logger& log, int signal_fd)
    : config_(std::move(config)), log_(log), signal_fd_(signal_fd), events_(config_.events.keep) {
    const auto& events = config_.events;
    if (!events.hooks.empty() || !events.webhooks.empty() || events.alertmanager)
        sinks_ = std::make_unique<EventSinks>(events, "procctl");  // throws Error for a hook user it may not take
    for (auto& p : config_.programs) {
        programs_.push_back(std::make_shared<const ProgramConfig>(std::move(p)));
        for (auto& member : make_members(programs_.back(), config_.log_dir, std::nullopt)) members_.push_back(std::move(member));
    }
    config_.programs.clear();  // programs_ holds them
    default_signal_dispositions();
}

Stack::~Stack() {
    // Output files report their last problems as events while they close: before the ring and
    // the sinks go.
    control_ = nullptr;
    outputs_.clear();
}

std::optional<gid_t> Stack::control_group() const {
    if (config_.socket_group.empty()) return std::nullopt;
    const group* gr = ::getgrnam(config_.socket_group.c_str());
    if (gr == nullptr) throw Error(EINVAL, config_.path + ": socket_group '" + config_.socket_group + "' is not a group on this host");
    return gr->gr_gid;
}

int Stack::run(ControlServer& control) {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    control_ = &control;
    struct Forget {  // however run() ends, the control server is not used after it
        ControlServer*& control;
        ~Forget() { control = nullptr; }
    } forget{control_};
    for (auto& member : members_) take_cgroup(*member);
    if (notify_) {
        log_.info("telling the supervisor at NOTIFY_SOCKET={} when the stack is ready{}", notify_->address(),
                  notify_->watchdog_every() ? ", and pinging its watchdog every " +
                                                  human_duration(std::chrono::duration_cast<std::chrono::milliseconds>(*notify_->watchdog_every()))
                                            : std::string());
        if (notify_->watchdog_every()) next_watchdog_ns_ = monotonic_now_ns();
    }
    log_.info("running the stack of {} ({} programs): start order {}; control socket {}/control.sock; SIGHUP reloads it", config_.path,
              members_.size(), start_order(), config_.run_dir);
    std::vector<pollfd> fds;
    for (;;) {
        const std::uint64_t now = monotonic_now_ns();
        // What one pass changes (a stop finished, a program ready, a retired unit dropped) may
        // let an earlier program move: passes until nothing changes.
        for (int pass = 0; pass < 8; ++pass) {
            const auto before = phases();
            const bool dropped = drop_retired();
            step(now);
            if (!dropped && phases() == before) break;
        }
        check_heartbeats(now);
        check_watchdogs(now);
        tell_supervisor(now);
        if (stopping_all_ && everything_stopped()) {
            drain_to_end();
            log_.info("every program is stopped; exiting");
            finish_sinks();
            control_ = nullptr;
            return 0;
        }
        std::uint64_t wake = std::min(now + to_ns(std::chrono::seconds(1)), std::max(next_beat_check_ns_, now));
        if (next_watchdog_ns_ != 0) wake = std::min(wake, std::max(next_watchdog_ns_, now));
        fds.clear();
        fds.push_back(pollfd{signal_fd_, POLLIN, 0});
        fds.push_back(pollfd{control.wake_fd(), POLLIN, 0});
        fds.push_back(pollfd{sinks_ ? sinks_->log_fd() : -1, POLLIN, 0});
        for (auto& member : members_) {
            if (member->pidfd) fds.push_back(pollfd{member->pidfd->fd(), POLLIN, 0});
            if (member->launching) fds.push_back(pollfd{member->launching->child.report_fd(), POLLIN, 0});
            if (member->probe_fd >= 0) fds.push_back(pollfd{member->probe_fd, POLLOUT, 0});
            if (member->cgroup && (member->unit.phase() == Phase::stopping || member->unit.phase() == Phase::killing))
                fds.push_back(pollfd{member->cgroup->events_fd(), POLLPRI, 0});
            if (const std::uint64_t at = member->unit.next_wake(); at > 0) wake = std::min(wake, std::max(at, now));
            if (member->notify && !notify_paused(*member)) fds.push_back(pollfd{member->notify->fd(), POLLIN, 0});  // else the 1 s wake-up looks again
            if (member->watchdog_due_ns != 0) wake = std::min(wake, std::max(member->watchdog_due_ns, now));
            if (const auto& launching = member->launching) {
                const std::uint64_t at = launching->killed ? launching->killed_ns + to_ns(kLaunchKillWait)
                                                           : launching->forked_ns + to_ns(member->program().ready_timeout);
                wake = std::min(wake, std::max(at, now));
            }
        }
        pipes_.add_pollfds(fds);
        if (!poll_events(fds, poll_timeout_ms(wake, monotonic_now_ns()), log_)) continue;
        if (fds[0].revents & POLLIN) read_signals();
        if (fds[1].revents & POLLIN) control.serve([this](const ControlRequest& request) { return handle(request, monotonic_now_ns()); });
        control.forget_old_answers();
        if (fds[2].revents & POLLIN) sinks_->write_log(log_);
        pipes_.drain(fds);
        auto has_event = [&](int fd) {
            return fd >= 0 && std::any_of(fds.begin(), fds.end(), [&](const pollfd& p) { return p.fd == fd && p.revents != 0; });
        };
        // Before reap(): a program that exec'd and exited at once is the unit's before its exit is.
        for (auto& member : members_)
            if (member->launching && has_event(member->launching->child.report_fd())) settle_launch(*member, monotonic_now_ns());
        // And before reap(): what a program said before it exited is about that run.
        for (auto& member : members_)
            if (member->notify && has_event(member->notify->fd())) read_notifications(*member);
        reap();
        for (auto& member : members_) {
            if (member->pidfd && has_event(member->pidfd->fd())) handed_over_main_exited(*member, monotonic_now_ns());
            if (has_event(member->probe_fd)) finish_tcp_probe(*member, monotonic_now_ns());
            // Reading cgroup.events re-arms it: unread, it stays ready and poll returns at once.
            if (member->cgroup && has_event(member->cgroup->events_fd())) (void)member->cgroup->populated();
        }
    }
}

// ---------------------------------------------------------------- events and effects

void Stack::apply(Member& member, const UnitEvent& event, std::uint64_t now) {
    if (event.kind == UnitEvent::Kind::spawn_failed) member.exit_errno = 0;  // its last exit is this failure now, not the run's ERRNO=
    for (const Effect& effect : member.unit.on(event, now, facts_for(member, now))) carry_out(member, effect, now);
}

Facts Stack::facts_for(Member& member, std::uint64_t now) {
    Facts facts;
    facts.may_start = !member.launching && member.unit.start_check_due(now) && may_start(member);
    facts.dependents_stopping = member.unit.phase() == Phase::stop_queued && dependents_stopping(member);
    facts.cgroup_populated = member.cgroup && member.unit.is_stopping() && member.cgroup->populated();
    return facts;
}

void Stack::carry_out(Member& member, const Effect& effect, std::uint64_t now) {
    switch (effect.kind) {
        case Effect::Kind::spawn:
            if (auto failed = start_process(member)) apply(member, *failed, now);
            break;
        case Effect::Kind::signal: send(member, effect.signal); break;
        case Effect::Kind::kill:
            if (!(member.cgroup && member.cgroup->kill())) send(member, SIGKILL);  // the former main too
            break;
        case Effect::Kind::kill_leftovers:
            if (member.cgroup && member.cgroup->populated()) member.cgroup->kill();
            if (member.former_main) (void)member.former_main->send(SIGKILL);
            break;
        case Effect::Kind::probe: probe(member, now); break;
        case Effect::Kind::close_probe: close_probe(member); break;
        case Effect::Kind::sample_rss:
            if (const auto stat = read_proc_stat(member.unit.pid())) {
                UnitEvent sample{UnitEvent::Kind::rss};
                sample.bytes = stat->rss_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
                apply(member, sample, now);
            }
            break;
        case Effect::Kind::abandon: member.pidfd.reset(); break;
        case Effect::Kind::log:
            switch (effect.level) {
                case Effect::Level::debug: log_.debug("{}", effect.text); break;
                case Effect::Level::info: log_.info("{}", effect.text); break;
                case Effect::Level::warn: log_.warn("{}", effect.text); break;
                case Effect::Level::error: log_.error("{}", effect.text); break;
            }
            break;
    }
}

// Every change of a unit's phase comes through here, and only here: the one place that sees
// the stack's whole story.
// How a unit's program (or its readiness check: `argv`) starts: as the program, with its
// environment, directory, user and cgroup; output to /dev/null unless the caller says otherwise.
SpawnPlan Stack::plan_for(const Member& member, const std::vector<char*>& argv) {
    SpawnPlan plan;
    plan.argv = argv.data();
    plan.envp = member.envp.data();
    plan.directory = &member.program().directory;
    plan.uid = member.uid;
    plan.gid = member.gid;
    plan.groups = &member.groups;
    plan.cgroup = member.cgroup ? &*member.cgroup : nullptr;
    return plan;
}

// Time passed: each unit looks at its deadlines, and at starting or stopping when due. A start
// in flight that its unit no longer wants (stopped meanwhile) is killed now, not at its exec:
// a child the kernel holds (a frozen cgroup, a starved host) may not get there soon.
void Stack::step(std::uint64_t now) {
    for (auto& member : members_) {
        apply(*member, UnitEvent{UnitEvent::Kind::tick}, now);
        if (member->launching) watch_launch(*member, now);
    }
}

bool Stack::everything_stopped() const {
    return std::none_of(members_.begin(), members_.end(), [](const auto& m) {
        const Phase phase = m->unit.phase();
        return m->launching || m->unit.running() || m->unit.is_stopping() || phase == Phase::starting || phase == Phase::ready ||
               phase == Phase::waiting || phase == Phase::backoff;
    });
}

std::vector<std::tuple<const Member*, Phase>> Stack::phases() const {
    std::vector<std::tuple<const Member*, Phase>> all;
    for (const auto& member : members_) all.emplace_back(member.get(), member->unit.phase());
    return all;
}

std::string Stack::start_order() const {
    std::string order;
    for (const auto& member : members_) order.append(order.empty() ? "" : ", ").append(member->name());
    return order;
}

// ---------------------------------------------------------------- dependency order

// The units of the programs in its `after` that are not ready (a retiring unit is not waited
// for: its successor is).
std::vector<const Member*> Stack::unready_dependencies(const Member& member) const {
    std::vector<const Member*> unready;
    for (const auto& dependency : member.program().after)
        for (const auto& other : members_)
            if (other->unit.goal() != Goal::retire && other->program().name == dependency && !other->unit.is_ready())
                unready.push_back(other.get());
    return unready;
}

// Whether a program that waits for this one is being stopped too: then this one waits for it.
bool Stack::dependents_stopping(const Member& member) const {
    for (const auto& other : members_) {
        const auto& after = other->program().after;
        const bool waits_for_it = std::find(after.begin(), after.end(), member.program().name) != after.end();
        if (waits_for_it && other->unit.is_stopping()) return true;
    }
    return false;
}

// Whether a unit may start now: what it waits for is ready, and the unit a reload replaced
// (same program) is gone. Says once why not, when nothing will change by itself.
bool Stack::may_start(Member& member) {
    const auto unready = unready_dependencies(member);
    if (unready.empty()) {
        member.said_waiting.clear();
        return std::none_of(members_.begin(), members_.end(), [&](const auto& m) {
            return m->unit.goal() == Goal::retire && m->program().name == member.program().name;
        });
    }
    for (const Member* dependency : unready) {
        const Phase s = dependency->unit.phase();
        if (s != Phase::stopped && s != Phase::exited && s != Phase::gave_up) continue;
        const std::string said = member.name() + " waits for " + dependency->name() + ", which is " + to_string(s);
        if (said == member.said_waiting) return false;
        member.said_waiting = said;
        log_.warn("{}: it starts once {} is ready (proctab start {})", said, dependency->name(), dependency->program().name);
        return false;
    }
    return false;
}

void Stack::take_cgroup(Member& member) {
    member.cgroup_taken = true;
    std::string name = "stack-" + member.name();
    std::replace(name.begin(), name.end(), '@', '-');
    std::string why;
    if (auto taken = Cgroup::take(name, &why)) member.cgroup.emplace(std::move(*taken));
    if (!member.cgroup) {
        if (!said_no_cgroup_) log_.info("cgroup v2 not used ({}): each program's main process is stopped alone", why);
        said_no_cgroup_ = true;
        return;
    }
    if (member.cgroup->populated()) {
        log_.warn("{} process(es) left in {} by an earlier procctl (was it SIGKILLed?): killing them before starting {}",
                  member.cgroup->pids().size(), member.cgroup->path(), member.name());
        member.cgroup->kill();
    }
}

// ---------------------------------------------------------------- readiness

// One look at the program's readiness: what it finds comes back as a `ready` event (now, or
// when a connect or a check command ends).
void Stack::probe(Member& member, std::uint64_t now) {
    const ReadyCheck& ready = member.program().ready;
    UnitEvent is_ready{UnitEvent::Kind::ready};
    switch (ready.kind) {
        case ReadyCheck::Kind::started: is_ready.what = "started"; break;
        case ReadyCheck::Kind::notify:  // READY=1 that came before its exec was seen, else when it comes
            if (!member.said_ready) return;
            is_ready.what = "READY=1";
            break;
        case ReadyCheck::Kind::beat:
            if (!beat_seen(member)) return;
            is_ready.what = "its first heartbeat";
            break;
        case ReadyCheck::Kind::tcp: {
            if (member.probe_fd >= 0) return;  // a connect in progress
            const auto* address = reinterpret_cast<const sockaddr*>(&member.probe_address);
            const int fd = ::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            const int rc = fd >= 0 ? ::connect(fd, address, member.probe_address_length) : -1;
            const int error = errno;
            if (rc != 0 && fd >= 0 && error == EINPROGRESS) {
                member.probe_fd = fd;
                return;
            }
            if (fd >= 0) ::close(fd);
            if (rc != 0) return;
            is_ready.what = "its port accepts";
            break;
        }
        case ReadyCheck::Kind::exec: {
            if (member.probe_pid != 0) return;  // the check is running
            // The check runs as the program does: its user, directory and cgroup; its output goes
            // nowhere. One that cannot start is a check that did not pass.
            // Not waited for: its exit status says it all. One that cannot start exits 127 (or
            // by SIGPIPE, its report pipe closed here): a check that did not pass.
            std::optional<SpawnFailure> failure;
            if (const auto started = start_child(plan_for(member, member.probe_argv), failure)) {
                member.probe_pid = started->pid();
                member.probe_start = member.unit.starts();
            }
            return;
        }
    }
    apply(member, is_ready, now);
}

void Stack::finish_tcp_probe(Member& member, std::uint64_t now) {
    int error = 0;
    socklen_t length = sizeof error;
    const bool connected = ::getsockopt(member.probe_fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
    close_probe(member);
    if (!connected) return;
    UnitEvent ready{UnitEvent::Kind::ready};
    ready.what = "its port accepts";
    apply(member, ready, now);
}

// Ends the readiness check in flight: its socket, or its command (our unreaped child, so its
// pid cannot have changed hands; reaped by reap()).
void Stack::close_probe(Member& member) {
    if (member.probe_fd >= 0) ::close(member.probe_fd);
    member.probe_fd = -1;
    if (member.probe_pid > 0) ::kill(member.probe_pid, SIGKILL);
}

// Whether the program's own process has registered in the heartbeat table.
bool Stack::beat_seen(const Member& member) const {
    try {
        TableOptions options;
        options.key = table_key(member.program());
        auto table = Table::open_existing(options, Table::Access::read_only);
        if (!table) return false;
        bool seen = false;
        table->for_each([&](const SlotSnapshot& s) { seen = seen || (s.phase == SlotPhase::live && same_process(member.identity, s.process)); });
        return seen;
    } catch (const Error& e) {
        log_.warn("{}: cannot read the heartbeat table for its readiness: {}", member.name(), e.what());
        return false;
    }
}

// ---------------------------------------------------------------- signals, exits

// Through its pidfd; without one (pidfd_open failed), by pid, which is safe for our own
// unreaped child: its pid cannot change hands before we reap it.
void Stack::send(const Member& member, int sig) {
    const pid_t pid = member.unit.pid();
    std::string error;
    // A main process that handed over (MAINPID=) and has not exited: stopped with the program,
    // as a cgroup would be. Our unreaped child, so its pidfd cannot name another.
    if (member.former_main && !member.former_main->send(sig, &error))
        log_.warn("{}: cannot send {} to its former main process {}: {}", member.name(), signal_name(sig), member.former_main->pid(), error);
    if (member.pidfd) {
        if (!member.pidfd->send(sig, &error)) log_.warn("{}: cannot send {} to pid {}: {}", member.name(), signal_name(sig), pid, error);
    } else if (pid > 1 && ::kill(pid, sig) != 0 && errno != ESRCH) {
        log_.warn("{}: cannot send {} to pid {}: {}", member.name(), signal_name(sig), pid, std::strerror(errno));
    }
}

void Stack::read_signals() {
    signalfd_siginfo info;
    while (::read(signal_fd_, &info, sizeof info) == sizeof info) {
        const int sig = static_cast<int>(info.ssi_signo);
        if ((sig == SIGTERM || sig == SIGINT) && !stopping_all_) {
            log_.info("SIG{} received from pid {}: stopping every program, in reverse order", sigabbrev_np(sig),
                      static_cast<int>(info.ssi_pid));
            stopping_all_ = true;
            tell_supervisor_now("STOPPING=1\nSTATUS=stopping every program\n");
            told_status_ = supervisor_status();
            const std::uint64_t now = monotonic_now_ns();
            for (auto& member : members_) apply(*member, UnitEvent{UnitEvent::Kind::stop_all}, now);
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

// Reaps every exited child (orphans included: procctl is their subreaper): a readiness check's
// answer, or a unit's exit. Each zombie is looked at before it is reaped: one with the pid of a
// handed-over main process is that process only if its pidfd reaps it.
void Stack::reap() {
    for (;;) {
        siginfo_t info{};
        if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) return;
        const pid_t pid = info.si_pid;
        const std::uint64_t now = monotonic_now_ns();
        auto handed_over = std::find_if(members_.begin(), members_.end(), [&](const auto& member) {
            return member->main_handed_over && member->pidfd && member->unit.pid() == pid;
        });
        if (handed_over != members_.end()) {
            if (const auto status = (*handed_over)->pidfd->reap_if_exited()) {
                main_exited(**handed_over, *status, now);
                continue;
            }
        }
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) != pid) return;
        for (auto& member_ptr : members_) {
            Member& member = *member_ptr;
            if (pid == member.probe_pid) {
                member.probe_pid = 0;
                if (member.probe_start != member.unit.starts()) continue;  // about an earlier start
                UnitEvent answer{WIFEXITED(status) && WEXITSTATUS(status) == 0 ? UnitEvent::Kind::ready : UnitEvent::Kind::probe_failed};
                answer.what = "its check command succeeded";
                apply(member, answer, now);
            } else if (pid == member.unit.pid() && !member.main_handed_over) {
                main_exited(member, status, now);
            } else if (member.launching && pid == member.launching->child.pid()) {
                member.launching->exit_status = status;  // told once its report is read
            } else if (member.former_main && pid == member.former_main->pid()) {
                member.former_main.reset();
            }
        }
    }
}

// A handed-over main process that ended as another's child (its parent lives on): its pidfd
// says it ended; its status is its parent's to read.
void Stack::handed_over_main_exited(Member& member, std::uint64_t now) {
    if (!member.main_handed_over || !member.pidfd || !member.pidfd->has_exited()) return;
    const auto status = member.pidfd->reap_if_exited();
    main_exited(member, status.value_or(0), now, status.has_value());
}

void Stack::main_exited(Member& member, int status, std::uint64_t now, bool status_known) {
    member.pidfd.reset();
    member.main_handed_over = false;
    member.watchdog_due_ns = 0;
    member.exit_errno = member.said_errno;
    read_hang_stop(member);  // before its slots are freed below
    ended_.push_back(member.identity);
    release_slots_of(ended_, member.env_storage, sink_for(log_));
    UnitEvent exited{UnitEvent::Kind::exited};
    exited.status = status;
    exited.status_known = status_known;
    apply(member, exited, now);
}

void Stack::drain_to_end() {
    pipes_.drain_to_end(std::chrono::seconds(2));
    for (auto& [path, file] : outputs_) file->finish();
}

namespace {
std::string join_words(const std::vector<std::string>& words) {
    std::string text;
    for (const auto& word : words) text.append(text.empty() ? "" : ", ").append(word);
    return text;
}
}  // namespace

int run_stack(StackConfig config, spdlog::logger& log, int signal_fd, const std::function<void()>& ready) {
    const std::string socket = config.run_dir + "/control.sock";
    const HttpConfig http = config.http;
    // Taken out of the environment before the programs' environments are made from it: no
    // program can speak for procctl to systemd.
    auto notify = NotifyClient::from_environment();
    Stack stack(std::move(config), log, signal_fd);         // throws Error when an output file cannot be opened
    if (notify) stack.tell_supervisor_through(std::move(*notify));
    ControlServer control(socket, stack.control_group());  // and when it cannot listen
    if (http.enabled()) {
        control.listen_http(http);  // or refuses its tokens file, certificate or addresses
        log.info("the control API also listens on {} ({}), with the tokens of {}", join_words(http.listen), http.cert.empty() ? "plain HTTP" : "TLS",
                 http.tokens_file);
        for (const auto& warning : http_warnings(http)) log.warn("{}", warning);
    }
    if (ready) ready();
    return stack.run(control);
}

}  // namespace hbwatch::tool
