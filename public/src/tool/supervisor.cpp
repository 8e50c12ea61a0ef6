#include "tool/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>

#include <spdlog/sinks/rotating_file_sink.h>

#include <hbwatch/clock.h>
#include <hbwatch/duration.h>
#include <hbwatch/error.h>
#include <hbwatch/pidfd.h>
#include <hbwatch/process.h>
#include <hbwatch/stopper.h>
#include <hbwatch/table.h>

extern char** environ;

namespace hbwatch::tool {
namespace {

constexpr std::chrono::seconds kCrashWindow{1};  // an unsuccessful exit sooner than this is a crash


std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return std::string("was killed by SIG") + sigabbrev_np(WTERMSIG(status)) + (WCOREDUMP(status) ? " (core dumped)" : "");
    return "stopped with status " + std::to_string(status);
}

// One of the child's output streams, read through a pipe into a rotating file, line by line.
struct OutputReader {
    int fd;
    std::shared_ptr<spdlog::sinks::rotating_file_sink_st> sink;
    std::string pending;

    void write_line(std::string_view line) {
        spdlog::details::log_msg msg(spdlog::string_view_t{}, spdlog::level::info,
                                     spdlog::string_view_t(line.data(), line.size()));
        sink->log(msg);
    }
    // False at EOF: every process holding the write end has closed it.
    bool drain() {
        char buffer[8192];
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
        if (n <= 0) {
            if (!pending.empty()) write_line(pending);
            pending.clear();
            sink->flush();
            return false;
        }
        pending.append(buffer, static_cast<std::size_t>(n));
        std::size_t start = 0, newline;
        while ((newline = pending.find('\n', start)) != std::string::npos) {
            write_line(std::string_view(pending).substr(start, newline - start));
            start = newline + 1;
        }
        pending.erase(0, start);
        if (pending.size() > 64 * 1024) {  // a line without end: cut it rather than grow forever
            write_line(pending);
            pending.clear();
        }
        sink->flush();  // an operator tails the file
        return true;
    }
};

// What the child reports through its CLOEXEC pipe when it cannot exec.
struct StartFailure {
    int stage;  // 0 exec, 1 chdir, 2 stdio
    int error;
};

class Supervisor {
public:
    Supervisor(const SuperviseOptions& options, spdlog::logger& log, int signal_fd)
        : options_(options), log_(log), signal_fd_(signal_fd), program_(options.argv.front()) {
        for (const auto& [file, is_stdout] : {std::pair{options.stdout_file, true}, std::pair{options.stderr_file, false}}) {
            if (file.empty()) continue;
            auto& sink = sinks_[file];
            if (!sink) {
                sink = std::make_shared<spdlog::sinks::rotating_file_sink_st>(file, options.output_max_size,
                                                                               options.output_files);
                sink->set_pattern("%v");
            }
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
    }

    int run() {
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);  // daemonizing grandchildren stay ours to stop and reap
        std::uint64_t start_at = monotonic_now_ns();
        std::vector<pollfd> fds;
        for (;;) {
            const std::uint64_t now = monotonic_now_ns();
            if (child_ == 0 && !stop_requested_ && now >= start_at) {
                if (gave_up(now)) return kExitGaveUp;
                start_at = start(now);
            }
            fds.clear();
            fds.push_back(pollfd{signal_fd_, POLLIN, 0});
            for (const auto& reader : readers_) fds.push_back(pollfd{reader.fd, POLLIN, 0});
            int timeout = -1;
            if (child_ == 0 && !stop_requested_)
                timeout = poll_timeout_ms(start_at, now);
            if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
                log_.error("poll failed: {}", std::strerror(errno));
                return 1;
            }
            drain_outputs(fds);
            if (fds[0].revents & POLLIN) read_signals();
            if (auto exited = reap()) start_at = after_exit(*exited);
            if (stop_requested_) {
                stop_everything("SIGTERM received");
                log_.info("stopped; exiting");
                return 0;
            }
        }
    }

private:
    struct Exit {
        int status;
        std::uint64_t runtime_ns;
    };

    bool gave_up(std::uint64_t now) {
        if (!options_.max_restarts) return false;
        while (!starts_.empty() && starts_.front() + to_ns(options_.window) <= now) starts_.pop_front();
        if (starts_.size() < *options_.max_restarts) return false;
        log_.error("giving up: {} was started {} times within {} (--max-restarts {} --window {}); exiting with code {}",
                   program_, starts_.size(), format_duration(options_.window), *options_.max_restarts,
                   format_duration(options_.window), kExitGaveUp);
        stop_everything("giving up");
        return true;
    }

    std::chrono::milliseconds backoff() const {
        // Doubling from INTERVAL (at least 1 s, so that INTERVAL 0 backs off too), capped.
        const auto base = std::max<std::chrono::milliseconds>(options_.interval, std::chrono::seconds(1));
        auto delay = base;
        for (int i = 1; i < failures_ && delay < options_.max_backoff; ++i) delay *= 2;
        return std::min(delay, std::max(options_.max_backoff, options_.interval));
    }

    // Starts the program; returns when the next start is due if it could not be started.
    std::uint64_t start(std::uint64_t now) {
        starts_.push_back(now);
        int out[2] = {-1, -1}, err[2] = {-1, -1}, report[2];
        if (::pipe2(report, O_CLOEXEC) != 0) return now + to_ns(std::chrono::seconds(1));
        auto open_output = [&](const std::string& file, int (&fds)[2]) {
            if (!file.empty() && ::pipe2(fds, O_CLOEXEC) == 0) {
                ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
                readers_.push_back(OutputReader{fds[0], sinks_[file], {}});
            }
        };
        open_output(options_.stdout_file, out);
        if (options_.stderr_file == options_.stdout_file && out[1] >= 0) {
            err[1] = ::fcntl(out[1], F_DUPFD_CLOEXEC, 0);
        } else {
            open_output(options_.stderr_file, err);
        }
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid == 0) exec_child(parent, out[1], err[1], report[1]);
        for (int fd : {out[1], err[1], report[1]})
            if (fd >= 0) ::close(fd);
        StartFailure failure{};
        ssize_t n;
        do {
            n = ::read(report[0], &failure, sizeof failure);  // EOF: exec succeeded
        } while (n < 0 && errno == EINTR);
        ::close(report[0]);
        if (pid < 0 || n == sizeof failure) {
            if (pid > 0) {
                int status;
                ::waitpid(pid, &status, 0);
            }
            ++failures_;
            const int error = pid < 0 ? errno : failure.error;
            const char* what = pid < 0 ? "fork" : failure.stage == 1 ? "chdir to its directory" : failure.stage == 2 ? "set up its stdio" : "exec";
            const auto delay = backoff();
            log_.error("cannot start {}: {} failed: {}{}; attempt {} in a row, next in {} (backoff, max {})", program_, what,
                       std::strerror(error),
                       error == ENOENT && program_.find('/') == std::string::npos ? " (not found on PATH)" : "",
                       failures_, human_duration(delay), human_duration(options_.max_backoff));
            return now + to_ns(delay);
        }
        child_ = pid;
        child_started_ns_ = now;
        // Our unreaped child: its pid cannot change hands, so this identity is its.
        if (auto pinned = Pidfd::pin(pid)) child_identity_ = pinned->identity;
        log_.info("started {} as pid {}", program_, pid);
        return now;
    }

    [[noreturn]] void exec_child(pid_t parent, int out, int err, int report) {
        // If procctl dies, even by SIGKILL, its child goes with it.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        ::setsid();  // its own session and process group, no controlling terminal
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; ++sig)
            if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        auto fail = [&](int stage) {
            const StartFailure failure{stage, errno};
            (void)!::write(report, &failure, sizeof failure);
            ::_exit(127);
        };
        const int null_in = ::open("/dev/null", O_RDONLY);
        const int null_out = ::open("/dev/null", O_WRONLY);
        if (null_in < 0 || null_out < 0 || ::dup2(null_in, 0) < 0) fail(2);
        const bool quiet = !options_.inherit_output;
        if (out >= 0 ? ::dup2(out, 1) < 0 : (quiet && ::dup2(null_out, 1) < 0)) fail(2);
        if (err >= 0 ? ::dup2(err, 2) < 0 : (quiet && ::dup2(null_out, 2) < 0)) fail(2);
        // Nothing else crosses exec: not procctl's descriptors, nor any its caller leaked.
        ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
        if (!options_.chdir.empty() && ::chdir(options_.chdir.c_str()) != 0) fail(1);
        ::execvpe(argv_[0], argv_.data(), envp_.data());
        fail(0);
        ::_exit(127);
    }

    void drain_outputs(const std::vector<pollfd>& fds) {
        for (std::size_t i = 1; i < fds.size(); ++i) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            auto it = std::find_if(readers_.begin(), readers_.end(), [&](const OutputReader& r) { return r.fd == fds[i].fd; });
            if (it != readers_.end() && !it->drain()) {
                ::close(it->fd);
                readers_.erase(it);
            }
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
            } else {
                log_.debug("reaped pid {}, a descendant of {}: it {}", pid, program_, describe_status(status));
            }
        }
        return main_exit;
    }

    std::uint64_t after_exit(const Exit& exit) {
        const bool success = WIFEXITED(exit.status) && WEXITSTATUS(exit.status) == 0;
        const bool crashed = !success && exit.runtime_ns < to_ns(kCrashWindow);
        failures_ = crashed ? failures_ + 1 : 0;
        const auto delay = crashed ? backoff() : options_.interval;
        log_.log(success ? spdlog::level::info : spdlog::level::warn, "{} {} after {}; next start in {}{}", program_,
                 describe_status(exit.status), human_duration(ms_between(0, exit.runtime_ns)), human_duration(delay),
                 crashed ? " (crash " + std::to_string(failures_) + " in a row: backoff, max " +
                               human_duration(options_.max_backoff) + ")"
                         : "");
        stopped_.push_back(child_identity_);
        if (!children_of(::getpid()).empty()) stop_everything("its main process exited; stopping what it left running");
        else release_slots();
        return monotonic_now_ns() + to_ns(delay);
    }

    // SIGTERM to every descendant through verified pidfds, SIGKILL to what is left at the
    // deadline, and every one of them reaped. Late-found descendants share the deadline.
    void stop_everything(const std::string& why) {
        std::size_t exited = 0, killed = 0;
        std::set<pid_t> given_up;
        Stopper stopper(options_.grace, [&](const StopEvent& event) {
            if (event.kind == StopEvent::Kind::exited) {
                ++exited;
                killed += event.killed;
            } else if (event.kind == StopEvent::Kind::kill_failed) {
                given_up.insert(static_cast<pid_t>(event.id));
                log_.error("pid {} could not be stopped: {}", event.id, event.detail);
            }
        });
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
            if (auto exit = reap()) log_.info("{} {}", program_, describe_status(exit->status));
            if (stopper.idle() && children_of(::getpid()).empty()) break;
            fds.clear();
            fds.push_back(pollfd{signal_fd_, POLLIN, 0});
            stopper.add_pollfds(fds);
            // Rescan now and then: a process may fork while it is being stopped.
            int timeout = 100;
            if (auto next = stopper.next_deadline_ns()) timeout = std::min(timeout, poll_timeout_ms(*next, monotonic_now_ns()));
            ::poll(fds.data(), fds.size(), timeout);
            if (fds[0].revents & POLLIN) read_signals();
            stopper.advance(monotonic_now_ns());
            if (stopper.idle() && !given_up.empty()) {
                // What SIGKILL could not end is left; everything else is reaped below.
                bool others = false;
                for (pid_t pid : children_of(::getpid())) others |= !given_up.count(pid);
                if (!others) break;
            }
        }
        while (auto exit = reap()) log_.info("{} {}", program_, describe_status(exit->status));
        if (announced)
            log_.info("{} process(es) stopped: {} on SIGTERM, {} by SIGKILL{}", exited, exited - killed, killed,
                      given_up.empty() ? "" : "; " + std::to_string(given_up.size()) + " could not be stopped");
        release_slots();
    }

    // Frees the heartbeat entries of the processes procctl stopped or reaped, and only those:
    // a service stopped without releasing its slot leaves no stale entry behind.
    void release_slots() {
        if (stopped_.empty()) return;
        std::vector<ProcessIdentity> dead;
        std::swap(dead, stopped_);
        try {
            TableOptions options;
            options.key = key_from_environment();
            for (const auto& entry : options_.env)
                if (entry.starts_with("HBWATCH_KEY=")) options.key = parse_key(entry.substr(12));
            auto table = Table::open_existing(options, Table::Access::read_write);
            if (!table) return;
            table->for_each([&](const SlotSnapshot& s) {
                if (s.phase != SlotPhase::live) return;
                for (const auto& who : dead) {
                    if (!same_process(who, s.process) || liveness(s.process) == Liveness::alive) continue;
                    if (table->free_slot(s.index, s.token))
                        log_.info("freed slot {} of pid {} '{}' at key {}: it ended without releasing it", s.index,
                                  s.process.pid, std::string(s.name()), format_key(table->key()));
                    return;
                }
            });
        } catch (const Error& e) {
            log_.warn("could not free the heartbeat entries of stopped processes: {}", e.what());
        }
    }

    const SuperviseOptions& options_;
    spdlog::logger& log_;
    int signal_fd_;
    std::string program_;
    std::map<std::string, std::shared_ptr<spdlog::sinks::rotating_file_sink_st>> sinks_;
    std::vector<OutputReader> readers_;
    std::vector<char*> argv_;
    std::vector<std::string> env_storage_;
    std::vector<char*> envp_;
    pid_t child_ = 0;
    std::uint64_t child_started_ns_ = 0;
    int failures_ = 0;
    std::deque<std::uint64_t> starts_;
    bool stop_requested_ = false;
    std::vector<ProcessIdentity> stopped_;  // ended under procctl: their entries are freed
    ProcessIdentity child_identity_;
};

}  // namespace

int supervise(const SuperviseOptions& options, spdlog::logger& log, int signal_fd) {
    return Supervisor(options, log, signal_fd).run();
}

}  // namespace hbwatch::tool
