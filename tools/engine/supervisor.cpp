#include "engine/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <linux/sched.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "core/clock.h"
#include "core/duration.h"
#include <hbwatch/error.h>
#include "core/pidfd.h"
#include "core/process.h"
#include "core/stopper.h"
#include "core/table.h"

#include "engine/basics.h"
#include "engine/cgroup.h"
#include "engine/output.h"
#include "engine/restart_policy.h"
#include "engine/spawn.h"
#include "engine/slot_release.h"

extern char** environ;

namespace hbwatch::tool {
namespace {

constexpr std::chrono::seconds kKillWait{5};  // after SIGKILL (or cgroup.kill), before giving up


// The program's phase: one at a time, each with its own deadline (s6-supervise's state table).
//   backoff  --start due-->  running  --exit-->  backoff (after INTERVAL or the crash backoff)
//   any      --SIGTERM-->    stopping --tree empty--> stopped
//   backoff  --too many starts--> gave_up
enum class Phase { backoff, running, stopping, stopped, gave_up };

class Supervisor {
public:
    Supervisor(const SuperviseOptions& options, LineLog& log, int signal_fd)
        : options_(options),
          log_(log),
          signal_fd_(signal_fd),
          program_(options.argv.front()),
          policy_(RestartRules{options.interval, options.max_backoff, options.max_restarts, options.window,
                               std::chrono::seconds(1)}) {
        // Opened now, so that a file that cannot be written is reported to the launcher.
        for (const auto& file : {options.stdout_file, options.stderr_file}) {
            if (file.empty() || outputs_.count(file)) continue;
            outputs_[file] = std::make_unique<OutputFile>(file, options.output_max_size, options.output_files,
                                                          [this](const std::string& problem, bool) { log_.error("{}", problem); });
        }
        // argv and envp are built once here: the child between fork and exec only calls
        // async-signal-safe functions.
        for (const auto& a : options.argv) argv_.push_back(const_cast<char*>(a.c_str()));
        argv_.push_back(nullptr);
        std::map<std::string, std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            std::string entry(*e);
            env[entry.substr(0, entry.find('='))] = entry;
        }
        for (const auto& entry : options.env) env[entry.substr(0, entry.find('='))] = entry;
        for (auto& [name, entry] : env) env_storage_.push_back(entry);
        for (auto& entry : env_storage_) envp_.push_back(entry.data());
        envp_.push_back(nullptr);
        default_signal_dispositions();  // a caller's SIG_IGN would cross exec
    }

    int run() {
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);  // daemonizing grandchildren stay ours to stop and reap
        take_cgroup();
        std::uint64_t next_start = monotonic_now_ns();
        std::vector<pollfd> fds;
        for (;;) {
            const std::uint64_t now = monotonic_now_ns();
            if (stop_requested_ && phase_ != Phase::stopping) {
                stop_tree("SIGTERM received");
                phase_ = Phase::stopped;
                drain_outputs_to_end();
                log_.info("stopped; exiting");
                return 0;
            }
            if (phase_ == Phase::backoff && now >= next_start) {
                if (!policy_.start(now)) {
                    log_.error("giving up: {} was started {} times within {} (--max-restarts {} --window {}); exiting with code {}",
                               program_, policy_.recent_starts(), format_duration(options_.window),
                               *options_.max_restarts, format_duration(options_.window), kExitGaveUp);
                    stop_tree("giving up");
                    phase_ = Phase::gave_up;
                    drain_outputs_to_end();
                    return kExitGaveUp;
                }
                next_start = start(now);
                release_slots();  // of the run before, if not done yet (after_exit)
            }
            fds.clear();
            fds.push_back(pollfd{signal_fd_, POLLIN, 0});
            if (child_pidfd_) fds.push_back(pollfd{child_pidfd_->fd(), POLLIN, 0});
            add_reader_fds(fds);
            const int timeout = phase_ == Phase::backoff ? poll_timeout_ms(next_start, monotonic_now_ns()) : -1;
            if (!poll_events(fds, timeout, log_)) continue;
            drain_outputs(fds);
            if (fds[0].revents & POLLIN) read_signals();
            if (auto exited = reap(); exited && !stop_requested_) next_start = after_exit(*exited);
        }
    }

private:
    struct Exit {
        int status;
        std::uint64_t runtime_ns;
    };

    void take_cgroup() {
        if (options_.cgroup_name.empty()) return;
        std::string why;
        if (auto taken = Cgroup::take(options_.cgroup_name, &why)) cgroup_.emplace(std::move(*taken));
        if (!cgroup_) {
            log_.info("cgroup v2 not used ({}): stopping through the descendant walk, as a subreaper", why);
            return;
        }
        log_.info("running {} in cgroup {}: SIGKILL through cgroup.kill after the grace", program_, cgroup_->path());
        if (!cgroup_->populated()) return;
        // Leftovers of an earlier procctl that was SIGKILLed: nothing of them may run beside us.
        const auto left = cgroup_->pids();
        log_.warn("{} process(es) left in {} by an earlier procctl (was it SIGKILLed?): killing them before starting {}",
                  left.size(), cgroup_->path(), program_);
        wait_cgroup_empty_after_kill();
    }

    // cgroup.kill, then waits on cgroup.events until nothing is left (at most kKillWait).
    bool wait_cgroup_empty_after_kill() {
        if (!cgroup_ || !cgroup_->kill()) return false;
        const std::uint64_t deadline = monotonic_now_ns() + to_ns(kKillWait);
        while (cgroup_->populated()) {
            const std::uint64_t now = monotonic_now_ns();
            if (now >= deadline) {
                log_.error("processes are still in {} {} after cgroup.kill (uninterruptible sleep?)", cgroup_->path(),
                           human_duration(kKillWait));
                return false;
            }
            std::vector<pollfd> fds{{cgroup_->events_fd(), POLLPRI, 0}};
            add_reader_fds(fds);
            ::poll(fds.data(), fds.size(), poll_timeout_ms(deadline, now));
            drain_outputs(fds);
            reap();
        }
        reap();
        return true;
    }

    // Starts the program; returns when the next start is due (now when it runs).
    std::uint64_t start(std::uint64_t now) {
        auto file = [&](const std::string& path) { return path.empty() ? nullptr : outputs_.at(path).get(); };
        auto ends = pipes_.open_for(file(options_.stdout_file), file(options_.stderr_file));
        SpawnPlan plan;
        plan.argv = argv_.data();
        plan.envp = envp_.data();
        plan.directory = &options_.chdir;
        plan.cgroup = cgroup_ ? &*cgroup_ : nullptr;
        plan.stdout_fd = ends.out;
        plan.stderr_fd = ends.err;
        plan.keep_stdio = options_.inherit_output;
        std::optional<SpawnFailure> failure;
        const pid_t pid = spawn(plan, failure);
        ends.close();
        if (failure) return failed_start(now, failure->what(), failure->error);
        // Our unreaped child: its pid cannot change hands, so the pidfd and identity are its.
        child_ = pid;
        child_started_ns_ = now;
        if (auto pinned = Pidfd::pin(pid)) {
            child_identity_ = pinned->identity;
            child_pidfd_.emplace(std::move(pinned->pidfd));
        }
        phase_ = Phase::running;
        log_.info("started {} as pid {}", program_, pid);
        return now;
    }

    std::uint64_t failed_start(std::uint64_t now, const char* what, int error) {
        const auto delay = policy_.after_start_failure();
        log_.error("cannot start {}: {} failed: {}{}; attempt {} in a row, next in {} (backoff, max {})", program_, what,
                   std::strerror(error),
                   std::string_view(what) == "exec" && error == ENOENT && program_.find('/') == std::string::npos
                       ? " (not found on PATH)"
                       : "",
                   policy_.failures_in_a_row(), human_duration(delay), human_duration(options_.max_backoff));
        phase_ = Phase::backoff;
        return now + to_ns(delay);
    }

    void add_reader_fds(std::vector<pollfd>& fds) const { pipes_.add_pollfds(fds); }
    void drain_outputs(const std::vector<pollfd>& fds) { pipes_.drain(fds); }

    // After the last stop: every writer is gone, so the pipes reach EOF; read them to it.
    void drain_outputs_to_end() {
        pipes_.drain_to_end(std::chrono::seconds(2));
        for (auto& [path, file] : outputs_) {
            file->finish();
            if (file->dropped_bytes() > 0)
                log_.warn("{}: {} bytes of output were dropped in all", path, file->dropped_bytes());
        }
    }

    void read_signals() {
        signalfd_siginfo info;
        while (::read(signal_fd_, &info, sizeof info) == sizeof info) {
            const int sig = static_cast<int>(info.ssi_signo);
            if (sig == SIGTERM || sig == SIGINT) {
                if (!stop_requested_)
                    log_.info("SIG{} received from pid {}: stopping", sigabbrev_np(sig), static_cast<int>(info.ssi_pid));
                stop_requested_ = true;
            } else if (sig == SIGHUP) {
                log_.info("SIGHUP ignored: procctl stops on SIGTERM or SIGINT");
            }
        }
    }

    // Reaps every exited child (orphans included: procctl is their subreaper); the main
    // child's exit, if it was among them.
    std::optional<Exit> reap() {
        std::optional<Exit> main_exit;
        int status;
        pid_t pid;
        while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid == child_) {
                main_exit = Exit{status, monotonic_now_ns() - child_started_ns_};
                child_ = 0;
                child_pidfd_.reset();
                stopped_.push_back(child_identity_);
            } else {
                log_.debug("reaped pid {}, a descendant of {}: it {}", pid, program_, describe_exit(status));
            }
        }
        return main_exit;
    }

    std::uint64_t after_exit(const Exit& exit) {
        const bool success = WIFEXITED(exit.status) && WEXITSTATUS(exit.status) == 0;
        const auto runtime = ms_between(0, exit.runtime_ns);
        const bool crashed = policy_.crashed(success, runtime);
        const auto delay = policy_.after_exit(success, runtime);
        log_.log(success ? LogLevel::info : LogLevel::warn, "{} {} after {}; next start in {}{}", program_,
                 describe_exit(exit.status), human_duration(runtime), human_duration(delay),
                 crashed ? " (crash " + std::to_string(policy_.failures_in_a_row()) + " in a row: backoff, max " +
                               human_duration(options_.max_backoff) + ")"
                         : "");
        if (!children_of(::getpid()).empty() || (cgroup_ && cgroup_->populated()))
            stop_tree("its main process exited; stopping what it left running");
        else if (delay.count() > 0)
            release_slots();  // else just after the next start, off the restart's path
        phase_ = Phase::backoff;
        return monotonic_now_ns() + to_ns(delay);
    }

    // SIGTERM to every descendant through verified pidfds; at the grace deadline SIGKILL
    // (cgroup.kill, which also reaches anything the walk missed); everything reaped. Output
    // keeps flowing into the files throughout.
    void stop_tree(const std::string& why) {
        phase_ = Phase::stopping;
        std::size_t exited = 0, killed = 0;
        std::set<pid_t> given_up;
        Stopper stopper(options_.grace, [&](const StopEvent& event) {
            if (event.kind == StopEvent::Kind::exited) {
                ++exited;
                killed += event.killed;
            } else if (event.kind == StopEvent::Kind::kill_sent) {
                if (cgroup_ && !cgroup_killed_) cgroup_killed_ = cgroup_->kill();
            } else if (event.kind == StopEvent::Kind::kill_failed) {
                given_up.insert(static_cast<pid_t>(event.id));
                log_.error("pid {} could not be stopped: {}", event.id, event.detail);
            }
        }, kKillWait);
        cgroup_killed_ = false;
        const std::uint64_t deadline = monotonic_now_ns() + to_ns(options_.grace);
        bool announced = false;
        std::map<pid_t, Pidfd> known;  // every descendant pinned so far, for verifying its children
        std::vector<pollfd> fds;
        for (;;) {
            // Walk down from procctl. A child pid is pinned, then its stat (read after the pin)
            // must name the verified parent it was listed under, and that parent must still
            // run: so the pid signalled is the descendant that was found, never a reuser.
            std::vector<pid_t> parents{::getpid()};
            for (std::size_t i = 0; i < parents.size(); ++i) {
                const pid_t parent = parents[i];
                for (pid_t pid : children_of(parent)) {
                    if (known.count(pid)) {
                        parents.push_back(pid);
                        continue;
                    }
                    auto pinned = Pidfd::pin(pid);
                    if (!pinned || pinned->stat.ppid != parent) continue;  // exited, or not ours any more
                    if (parent != ::getpid() && known.at(parent).has_exited()) continue;  // found again under procctl
                    auto held = pinned->pidfd.duplicate();
                    if (!held) continue;
                    if (!announced) {
                        log_.info("{}: SIGTERM to {} and its descendants, SIGKILL after {}", why, program_,
                                  human_duration(options_.grace));
                        announced = true;
                    }
                    stopped_.push_back(pinned->identity);
                    known.emplace(pid, std::move(*held));
                    stopper.start(static_cast<std::uint64_t>(pid), std::move(pinned->pidfd), deadline);
                    parents.push_back(pid);
                }
            }
            if (auto exit = reap()) log_.info("{} {}", program_, describe_exit(exit->status));
            const bool cgroup_empty = !cgroup_ || !cgroup_->populated();
            if (stopper.idle() && children_of(::getpid()).empty() && cgroup_empty) break;
            const std::uint64_t now = monotonic_now_ns();
            if (now >= deadline + to_ns(kKillWait)) {
                // What SIGKILL and cgroup.kill could not end is left to an operator.
                log_.error("processes of {} are still there {} after SIGKILL; leaving them", program_,
                           human_duration(kKillWait));
                break;
            }
            if (now >= deadline && cgroup_ && !cgroup_killed_) cgroup_killed_ = cgroup_->kill();
            fds.clear();
            fds.push_back(pollfd{signal_fd_, POLLIN, 0});
            if (cgroup_) fds.push_back(pollfd{cgroup_->events_fd(), POLLPRI, 0});
            add_reader_fds(fds);
            stopper.add_pollfds(fds);
            // Rescan now and then: a process may fork while it is being stopped.
            int timeout = 100;
            if (auto next = stopper.next_deadline_ns()) timeout = std::min(timeout, poll_timeout_ms(*next, now));
            if (!cgroup_killed_) timeout = std::min(timeout, poll_timeout_ms(deadline, now));
            ::poll(fds.data(), fds.size(), timeout);
            if (fds[0].revents & POLLIN) read_signals();
            drain_outputs(fds);
            stopper.advance(monotonic_now_ns());
        }
        while (auto exit = reap()) log_.info("{} {}", program_, describe_exit(exit->status));
        if (announced)
            log_.info("{} process(es) stopped: {} on SIGTERM, {} by SIGKILL{}", exited, exited - killed, killed,
                      given_up.empty() ? "" : "; " + std::to_string(given_up.size()) + " could not be stopped");
        release_slots();
    }

    void release_slots() { release_slots_of(stopped_, options_.env, log_.sink()); }

    const SuperviseOptions& options_;
    LineLog& log_;
    int signal_fd_;
    std::string program_;
    RestartPolicy policy_;
    std::optional<Cgroup> cgroup_;
    bool cgroup_killed_ = false;
    std::map<std::string, std::unique_ptr<OutputFile>> outputs_;  // by path: stdout and stderr may share one
    OutputPipes pipes_;
    std::vector<char*> argv_;
    std::vector<std::string> env_storage_;
    std::vector<char*> envp_;
    Phase phase_ = Phase::backoff;
    pid_t child_ = 0;
    std::optional<Pidfd> child_pidfd_;
    ProcessIdentity child_identity_;
    std::uint64_t child_started_ns_ = 0;
    bool stop_requested_ = false;
    std::vector<ProcessIdentity> stopped_;  // ended under procctl: their entries are freed
};

}  // namespace

int supervise(const SuperviseOptions& options, LineLog& log, int signal_fd, const std::function<void()>& ready) {
    Supervisor supervisor(options, log, signal_fd);  // throws Error when an output file cannot be opened
    if (ready) ready();
    return supervisor.run();
}

}  // namespace hbwatch::tool
