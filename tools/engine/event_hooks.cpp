// Exec hooks: a command per event, no shell, the event in its environment, a timeout, at most
// max_running at once, and its output to the log.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstring>

#include "core/duration.h"
#include "core/pidfd.h"
#include "core/process.h"
#include "engine/cgroup.h"
#include "engine/event_sink.h"
#include "engine/spawn.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {

std::vector<std::string> hook_environment(const Event& event) {
    return {"HBWATCH_EVENT=" + std::string(to_string(event.kind)),
            "HBWATCH_PROGRAM=" + event.program,
            "HBWATCH_INSTANCE=" + event.instance,
            "HBWATCH_PID=" + std::to_string(event.pid),
            "HBWATCH_MESSAGE=" + event.message,
            "HBWATCH_DETAILS=" + event.details.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
            "HBWATCH_SEQ=" + std::to_string(event.seq),
            "HBWATCH_TIME=" + rfc3339(event.wall_ns),
            "HBWATCH_MONOTONIC_NS=" + std::to_string(event.mono_ns),
            "HBWATCH_HOST=" + host_name(),
            "HBWATCH_EVENT_JSON=" + to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

namespace {

constexpr std::size_t kHookOutputBytes = 64 * 1024;  // per run, to the log; the rest is discarded, counted

// ---------------------------------------------------------------- exec hooks

// SIGKILL to every process of the session `leader` leads, each through a pidfd checked to be
// in that session after it was opened. The leader is our unreaped child, so its pid (and the
// session id) cannot pass to another process meanwhile; a descendant that left the session
// with setsid() is out of reach: where procctl may make cgroups, each run has one instead.
void kill_session(const Pidfd& leader) {
    leader.send(SIGKILL);
    DIR* proc = ::opendir("/proc");
    if (proc == nullptr) return;
    while (const dirent* entry = ::readdir(proc)) {
        char* end = nullptr;
        const long pid = std::strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != '\0' || pid <= 1 || pid == leader.pid()) continue;
        const auto before = read_proc_stat(static_cast<pid_t>(pid));
        if (!before || before->session != leader.pid()) continue;
        auto pidfd = Pidfd::open_pid(static_cast<pid_t>(pid));
        if (!pidfd) continue;
        const auto after = read_proc_stat(static_cast<pid_t>(pid));
        if (after && after->session == leader.pid() && after->start_time == before->start_time && pidfd->still_running())
            pidfd->send(SIGKILL);
    }
    ::closedir(proc);
}

struct HookUser {
    std::optional<uid_t> uid;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    std::string home = "/", name;
};

HookUser hook_user(const std::string& user) {
    HookUser out;
    const passwd* pw = user.empty() ? ::getpwuid(::geteuid()) : ::getpwnam(user.c_str());
    if (pw == nullptr) {
        if (!user.empty()) throw Error(EINVAL, "events: hook user '" + user + "' does not exist on this host");
        out.name = std::to_string(::geteuid());
        return out;
    }
    out.name = pw->pw_name;
    out.home = pw->pw_dir ? pw->pw_dir : "/";
    if (user.empty()) return out;
    if (::geteuid() != 0 && pw->pw_uid != ::geteuid())
        throw Error(EPERM, "events: hook user '" + user + "': only root may run hooks as another user");
    if (::geteuid() != 0) return out;
    out.uid = pw->pw_uid;
    out.gid = pw->pw_gid;
    int count = 64;
    out.groups.resize(static_cast<std::size_t>(count));
    if (::getgrouplist(user.c_str(), pw->pw_gid, out.groups.data(), &count) < 0) count = 0;
    out.groups.resize(static_cast<std::size_t>(std::max(count, 0)));
    return out;
}

class HookSink final : public EventSinks::Sink {
public:
    HookSink(std::shared_ptr<EventSinks::Shared> shared, HookConfig config)
        : Sink(std::move(shared), "hook " + terminal_safe(config.command.front()), config.filter, 1000),
          config_(std::move(config)),
          user_(hook_user(config_.user)) {
        for (char** e = environ; *e != nullptr; ++e) {
            const std::string_view entry(*e);
            if (entry.starts_with("PATH=") || entry.starts_with("LANG=") || entry.starts_with("LC_") || entry.starts_with("TZ="))
                base_env_.emplace_back(entry);
        }
        if (std::none_of(base_env_.begin(), base_env_.end(), [](const std::string& e) { return e.starts_with("PATH="); }))
            base_env_.emplace_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        base_env_.push_back("HOME=" + user_.home);
        base_env_.push_back("USER=" + user_.name);
    }
    ~HookSink() override { stop(0); }

private:
    struct Run {
        std::uint64_t seq;
        std::string kind;
        Pidfd pidfd;
        int out_fd;
        std::uint64_t deadline_ns;
        std::unique_ptr<Cgroup> group;  // its own, when procctl may make cgroups: its whole tree
        std::string pending;          // a partial line of its output
        std::size_t logged = 0;
        bool timed_out = false;
    };

    // A hook run's cgroup, or none (no cgroup v2 here, or not ours to use: said once).
    std::unique_ptr<Cgroup> cgroup_for_run() {
        if (!use_cgroups_) return nullptr;
        std::string why;
        auto group = Cgroup::take("events-hook", &why);
        if (!group) {
            use_cgroups_ = false;
            say(spdlog::level::info, "hooks run without a cgroup of their own (" + why +
                                         "): what a hook leaves running outside its session outlives it");
            return nullptr;
        }
        return std::make_unique<Cgroup>(std::move(*group));
    }

    // SIGKILL to the run's tree: its cgroup, whatever left the session; else its session.
    static void kill_tree(Run& r) {
        if (r.group && r.group->kill()) return;
        kill_session(r.pidfd);
    }
    // Waits (5 s at most) for its cgroup to empty, so that the directory is removed after it.
    static void release_group(Run& r) {
        if (!r.group) return;
        const std::uint64_t until = monotonic_now_ns() + 5'000'000'000ull;
        while (r.group->populated() && monotonic_now_ns() < until) {
            pollfd p{r.group->events_fd(), POLLPRI, 0};
            (void)::poll(&p, 1, 50);
        }
        r.group.reset();
    }

    void run() override {
        std::vector<pollfd> fds;
        for (;;) {
            while (runs_.size() < config_.max_running && !must_stop()) {
                auto event = take();
                if (!event) break;
                launch(*event);
                done_with_event();
            }
            if (must_stop() || (finishing() && queue_empty() && runs_.empty())) break;
            report_drops();
            fds.clear();
            std::uint64_t until = 0;
            for (const auto& r : runs_) {
                fds.push_back(pollfd{r.pidfd.fd(), POLLIN, 0});
                fds.push_back(pollfd{r.out_fd, POLLIN, 0});  // -1 once its output ended: poll skips it
                if (!r.timed_out) until = until == 0 ? r.deadline_ns : std::min(until, r.deadline_ns);
            }
            wait(fds, until);
            for (auto& r : runs_) read_output(r);
            const std::uint64_t now = monotonic_now_ns();
            for (auto& r : runs_) {
                if (!r.timed_out && now >= r.deadline_ns) {
                    r.timed_out = true;
                    say(spdlog::level::warn, "still running " + human_duration(config_.timeout) + " after it started for event #" +
                                                 std::to_string(r.seq) + " (" + r.kind + "): SIGKILL to it and all it started");
                    kill_tree(r);
                }
            }
            finish_exited(false);
        }
        for (auto& r : runs_) {  // procctl is exiting: what still runs is cut off
            kill_tree(r);
            failed_one();
        }
        finish_exited(true);
        runs_.clear();
    }

    void launch(const Event& event) {
        std::vector<std::string> env = base_env_;
        for (auto& entry : hook_environment(event)) env.push_back(std::move(entry));
        std::vector<char*> envp, argv;
        for (auto& entry : env) envp.push_back(entry.data());
        envp.push_back(nullptr);
        for (const auto& word : config_.command) argv.push_back(const_cast<char*>(word.c_str()));
        argv.push_back(nullptr);
        int pipe_fds[2];
        if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
            say(spdlog::level::err, std::string("cannot run it for event #") + std::to_string(event.seq) + ": pipe: " + std::strerror(errno));
            failed_one();
            return;
        }
        // The child's end must block: a hook that writes a lot waits for us rather than failing.
        ::fcntl(pipe_fds[1], F_SETFL, 0);
        SpawnPlan plan;
        plan.argv = argv.data();
        plan.envp = envp.data();
        plan.uid = user_.uid;
        plan.gid = user_.gid;
        plan.groups = &user_.groups;
        plan.stdout_fd = pipe_fds[1];
        plan.stderr_fd = pipe_fds[1];
        int pidfd = -1;
        plan.pidfd = &pidfd;  // the supervision loop's waitpid(-1) must not take its exit
        std::unique_ptr<Cgroup> group = cgroup_for_run();
        plan.cgroup = group.get();
        std::optional<SpawnFailure> failure;
        const pid_t pid = spawn(plan, failure);
        ::close(pipe_fds[1]);
        if (pid <= 0 || pidfd < 0) {
            ::close(pipe_fds[0]);
            say(spdlog::level::err, "cannot run it for event #" + std::to_string(event.seq) + " (" + to_string(event.kind) + "): " +
                                        (failure ? std::string(failure->what()) + " failed: " + std::strerror(failure->error)
                                                 : std::string("clone gave no pidfd")));
            failed_one();
            return;
        }
        runs_.push_back(Run{event.seq, to_string(event.kind), Pidfd::adopt(pidfd, pid), pipe_fds[0],
                            monotonic_now_ns() + static_cast<std::uint64_t>(config_.timeout.count()) * 1'000'000u, std::move(group), {},
                            0, false});
    }

    // What it wrote since the last look, 64 KiB at most a turn (a hook that writes without end
    // must not hold this thread past its timeout); its output's end closes the pipe.
    void read_output(Run& r) {
        if (r.out_fd < 0) return;
        char buffer[4096];
        for (std::size_t taken = 0; taken < kHookOutputBytes;) {
            const ssize_t n = ::read(r.out_fd, buffer, sizeof buffer);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n == 0 || errno != EAGAIN) {
                    ::close(r.out_fd);
                    r.out_fd = -1;
                }
                break;
            }
            taken += static_cast<std::size_t>(n);
            r.pending.append(buffer, static_cast<std::size_t>(n));
            std::size_t newline;
            while ((newline = r.pending.find('\n')) != std::string::npos) {
                log_line(r, r.pending.substr(0, newline));
                r.pending.erase(0, newline + 1);
            }
            if (r.pending.size() > 4096) {
                log_line(r, r.pending);
                r.pending.clear();
            }
        }
    }
    void log_line(Run& r, const std::string& line) {
        r.logged += line.size() + 1;  // empty lines count too
        if (r.logged <= kHookOutputBytes)
            say(spdlog::level::info, "event #" + std::to_string(r.seq) + " (" + r.kind + ") says: " + terminal_safe(line));
    }

    // The hooks that exited (all of them when `all`, after SIGKILL): what they left in their
    // session is killed with them, while the leader's pid still names the session; then each is
    // reaped. One that is still there 5 s after SIGKILL (uninterruptible sleep) is left behind.
    void finish_exited(bool all) {
        for (auto it = runs_.begin(); it != runs_.end();) {
            if (!all && !it->pidfd.has_exited()) {
                ++it;
                continue;
            }
            kill_tree(*it);  // descendants it left running (a background job, say)
            read_output(*it);
            if (!it->pending.empty()) log_line(*it, it->pending);
            if (it->logged > kHookOutputBytes)
                say(spdlog::level::warn, "event #" + std::to_string(it->seq) + ": " + std::to_string(it->logged - kHookOutputBytes) +
                                             " bytes of its output were not logged (" + std::to_string(kHookOutputBytes) +
                                             " bytes per run at most)");
            const auto status = reap(*it);
            release_group(*it);
            if (!status) {
                say(spdlog::level::err, "event #" + std::to_string(it->seq) + ": the hook is still there 5s after SIGKILL; left behind");
                failed_one();
            } else if (!all && (it->timed_out || *status != 0)) {
                failed_one();
                say(spdlog::level::warn, "for event #" + std::to_string(it->seq) + " (" + it->kind + ") it " + describe_exit(*status));
            }
            it = runs_.erase(it);
        }
    }

    // Reaps a clone child that waitpid(-1) cannot see; its status as waitpid gives it, or
    // nullopt when it has not exited within 5 s.
    static std::optional<int> reap(Run& r) {
        if (r.out_fd >= 0) ::close(r.out_fd);
        r.out_fd = -1;
        if (!r.pidfd.wait_exit(std::chrono::seconds(5))) return std::nullopt;
        siginfo_t info{};
        if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(r.pidfd.fd()), &info, WEXITED | __WALL | WNOHANG) != 0)
            return 0;
        if (info.si_code == CLD_EXITED) return (info.si_status & 0xff) << 8;
        return (info.si_status & 0x7f) | (info.si_code == CLD_DUMPED ? 0x80 : 0);  // as waitpid's status
    }

    HookConfig config_;
    HookUser user_;
    std::vector<std::string> base_env_;
    std::vector<Run> runs_;
    bool use_cgroups_ = true;  // until a cgroup could not be taken
};

}  // namespace

std::unique_ptr<EventSinks::Sink> make_hook_sink(std::shared_ptr<EventSinks::Shared> shared, const HookConfig& config) {
    return std::make_unique<HookSink>(std::move(shared), config);
}

}  // namespace hbwatch::tool
