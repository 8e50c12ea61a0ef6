#include "engine/event_sinks.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/pidfd.h"
#include "core/process.h"
#include "engine/http_url.h"
#include "engine/spawn.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

std::string redacted_url(const std::string& url) {
    const auto scheme = url.find("://");
    const auto start = scheme == std::string::npos ? 0 : scheme + 3;
    const auto at = url.find('@', start);
    const auto slash = url.find('/', start);
    if (at == std::string::npos || (slash != std::string::npos && at > slash)) return url;
    const auto colon = url.find(':', start);
    const auto user_end = colon != std::string::npos && colon < at ? colon : at;
    return url.substr(0, user_end) + ":***" + url.substr(at);
}

std::vector<std::string> hook_environment(const Event& event) {
    return {"HBWATCH_EVENT=" + std::string(to_string(event.kind)),
            "HBWATCH_PROGRAM=" + event.program,
            "HBWATCH_INSTANCE=" + event.instance,
            "HBWATCH_PID=" + std::to_string(event.pid),
            "HBWATCH_MESSAGE=" + event.message,
            "HBWATCH_DETAILS=" + event.details.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
            "HBWATCH_SEQ=" + std::to_string(event.seq),
            "HBWATCH_TIME=" + rfc3339(event.wall_ns),
            "HBWATCH_HOST=" + host_name(),
            "HBWATCH_EVENT_JSON=" + to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

// ---------------------------------------------------------------- alerts

AlertBook::Alert* AlertBook::find(const std::string& name, const std::string& unit) {
    for (auto& alert : alerts_)
        if (!alert.resolved && alert.name == name && alert.unit == unit) return &alert;
    return nullptr;
}

void AlertBook::fire(const Event& event, const char* name, const char* severity, const std::string& summary, bool quiet) {
    Alert* alert = find(name, event.instance);
    if (alert == nullptr) {
        alerts_.push_back(Alert{});
        alert = &alerts_.back();
        alert->name = name;
        alert->unit = event.instance;
        alert->program = event.program;
        alert->severity = severity;
        alert->starts_wall_ns = event.wall_ns;
    }
    alert->summary = summary;
    alert->description = event.message;
    alert->last_mono_ns = event.mono_ns;
    alert->quiet_resolves = quiet;
}

bool AlertBook::resolve(const std::string& unit, std::initializer_list<const char*> names, std::uint64_t wall_ns) {
    bool changed = false;
    for (const char* name : names) {
        if (Alert* alert = find(name, unit)) {
            alert->resolved = true;
            alert->ends_wall_ns = wall_ns;
            changed = true;
        }
    }
    return changed;
}

bool AlertBook::on(const Event& event) {
    const std::string& unit = event.instance;
    switch (event.kind) {
        case EventKind::heartbeat_hung:
            fire(event, "HbwatchProgramHung", "critical", unit + " is hung: its heartbeat is past its timeout", false);
            return true;
        case EventKind::heartbeat_recovered: return resolve(unit, {"HbwatchProgramHung"}, event.wall_ns);
        case EventKind::gave_up:
            fire(event, "HbwatchProgramGaveUp", "critical", unit + " is down: procctl gave up restarting it", false);
            return true;
        case EventKind::restart_storm:
            fire(event, "HbwatchProgramCrashLooping", "warning", unit + " is crash-looping", true);
            return true;
        case EventKind::started:  // a crash loop lasts while starts keep coming
            if (Alert* alert = find("HbwatchProgramCrashLooping", unit)) alert->last_mono_ns = event.mono_ns;
            return resolve(unit, {"HbwatchProgramGaveUp"}, event.wall_ns);
        case EventKind::max_rss_exceeded:
            fire(event, "HbwatchProgramOverMemory", "warning", unit + " went over its max_rss and was restarted", true);
            return true;
        case EventKind::ready:  // a new process: the old one's hang is over
            return resolve(unit, {"HbwatchProgramHung", "HbwatchProgramGaveUp"}, event.wall_ns);
        case EventKind::stopped:  // an operator stopped it: nothing left to page about
            return resolve(unit, {"HbwatchProgramHung", "HbwatchProgramGaveUp", "HbwatchProgramCrashLooping", "HbwatchProgramOverMemory"},
                           event.wall_ns);
        default: return false;
    }
}

bool AlertBook::expire(std::uint64_t now_mono_ns, std::uint64_t now_wall_ns) {
    bool changed = false;
    for (auto& alert : alerts_) {
        if (alert.resolved || !alert.quiet_resolves || now_mono_ns < alert.last_mono_ns + quiet_ns_) continue;
        alert.resolved = true;
        alert.ends_wall_ns = now_wall_ns;
        changed = true;
    }
    return changed;
}

std::uint64_t AlertBook::next_expiry() const noexcept {
    std::uint64_t next = 0;
    for (const auto& alert : alerts_)
        if (!alert.resolved && alert.quiet_resolves) {
            const std::uint64_t at = alert.last_mono_ns + quiet_ns_;
            next = next == 0 ? at : std::min(next, at);
        }
    return next;
}

nlohmann::json AlertBook::payload(std::uint64_t now_wall_ns, std::uint64_t valid_ns) const {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& alert : alerts_) {
        list.push_back({{"labels",
                         {{"alertname", alert.name}, {"program", alert.program}, {"unit", alert.unit}, {"host", host_name()},
                          {"severity", alert.severity}}},
                        {"annotations", {{"summary", alert.summary}, {"description", alert.description}}},
                        {"startsAt", rfc3339(alert.starts_wall_ns)},
                        {"endsAt", rfc3339(alert.resolved ? alert.ends_wall_ns : now_wall_ns + valid_ns)}});
    }
    return list;
}

void AlertBook::forget_resolved() {
    alerts_.erase(std::remove_if(alerts_.begin(), alerts_.end(), [](const Alert& a) { return a.resolved; }), alerts_.end());
}

// ---------------------------------------------------------------- the sinks' common part

namespace {

using Clock = std::chrono::milliseconds;
constexpr std::size_t kLogLines = 1000;  // waiting for the loop; more are counted, not kept
constexpr std::uint64_t kDropReportNs = 10'000'000'000u;  // one "dropped" line per sink per 10 s at most
constexpr std::size_t kHookOutputBytes = 64 * 1024;  // per run, to the log; the rest is discarded, counted

int make_eventfd() {
    const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) throw Error(errno, "cannot create an eventfd for the event sinks");
    return fd;
}

void poke(int fd) {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
}

void drain_fd(int fd) {
    std::uint64_t value;
    (void)!::read(fd, &value, sizeof value);
}

}  // namespace

struct EventSinks::Shared {
    Shared() : log_fd(make_eventfd()) {}
    ~Shared() { ::close(log_fd); }
    void say(spdlog::level::level_enum level, std::string line) {
        {
            std::lock_guard lock(mutex);
            if (lines.size() >= kLogLines) {
                ++lines_lost;
                return;
            }
            lines.emplace_back(level, std::move(line));
        }
        poke(log_fd);
    }
    int log_fd;
    std::mutex mutex;
    std::deque<std::pair<spdlog::level::level_enum, std::string>> lines;
    std::uint64_t lines_lost = 0;
};

struct EventSinks::Sink {
    Sink(std::shared_ptr<Shared> shared, std::string name, EventFilter filter, std::size_t capacity)
        : shared_(std::move(shared)), name_(std::move(name)), filter_(std::move(filter)), capacity_(std::max<std::size_t>(capacity, 1)),
          wake_fd_(make_eventfd()) {}
    virtual ~Sink() {
        stop(0);
        ::close(wake_fd_);
    }

    void start() {
        thread_ = std::thread([this] { run(); });
    }
    void offer(const Event& event) {
        if (!filter_.accepts(event)) return;
        bool dropped = false;
        {
            std::lock_guard lock(mutex_);
            if (queue_.size() >= capacity_) {
                queue_.pop_front();
                ++dropped_;
                ++unreported_drops_;
                dropped = true;
            }
            queue_.push_back(event);
        }
        poke(wake_fd_);
        if (dropped) report_drops();  // here: the sink's thread may be stuck in a delivery
    }
    [[nodiscard]] bool idle() const {
        std::lock_guard lock(mutex_);
        return queue_.empty() && !busy_;
    }
    // Lets the thread deliver until `deadline_ns` (0: stop at once), then joins it.
    void stop(std::uint64_t deadline_ns) {
        if (!thread_.joinable()) return;
        {
            std::lock_guard lock(mutex_);
            finishing_ = true;
            deadline_ns_ = deadline_ns;
        }
        poke(wake_fd_);
        thread_.join();
    }
    // After stop(): what never reached its destination.
    [[nodiscard]] std::uint64_t undelivered() const {
        std::lock_guard lock(mutex_);
        return dropped_ + failed_ + queue_.size();
    }
    [[nodiscard]] const std::string& name() const noexcept { return name_; }

protected:
    virtual void run() = 0;

    // The next queued event, if any.
    std::optional<Event> take() {
        std::lock_guard lock(mutex_);
        busy_ = !queue_.empty();
        if (queue_.empty()) return std::nullopt;
        Event event = std::move(queue_.front());
        queue_.pop_front();
        return event;
    }
    void done_with_event() {
        std::lock_guard lock(mutex_);
        busy_ = false;
    }
    // Whether the thread must stop now: finishing and past the deadline (or told to stop at once).
    [[nodiscard]] bool must_stop() const {
        std::lock_guard lock(mutex_);
        return finishing_ && monotonic_now_ns() >= deadline_ns_;
    }
    [[nodiscard]] bool finishing() const {
        std::lock_guard lock(mutex_);
        return finishing_;
    }
    [[nodiscard]] bool queue_empty() const {
        std::lock_guard lock(mutex_);
        return queue_.empty();
    }
    // Waits for an event, for `extra` fds, or until `until_ns` (0: no limit but the finish deadline).
    void wait(std::vector<pollfd>& extra, std::uint64_t until_ns) {
        std::uint64_t limit = until_ns;
        {
            std::lock_guard lock(mutex_);
            if (finishing_) limit = limit == 0 ? deadline_ns_ : std::min(limit, deadline_ns_);
        }
        extra.insert(extra.begin(), pollfd{wake_fd_, POLLIN, 0});
        const int timeout = limit == 0 ? -1 : poll_timeout_ms(limit, monotonic_now_ns());
        (void)::poll(extra.data(), extra.size(), timeout);
        if (extra.front().revents & POLLIN) drain_fd(wake_fd_);
        extra.erase(extra.begin());
    }
    void failed_one() {
        std::lock_guard lock(mutex_);
        ++failed_;
    }
    void say(spdlog::level::level_enum level, std::string line) { shared_->say(level, name_ + ": " + std::move(line)); }
    // One line about drops since the last, at most every 10 s.
    void report_drops() {
        std::uint64_t drops = 0, total = 0;
        const std::uint64_t now = monotonic_now_ns();
        {
            std::lock_guard lock(mutex_);
            if (unreported_drops_ == 0 || (last_drop_report_ns_ != 0 && now < last_drop_report_ns_ + kDropReportNs)) return;
            drops = unreported_drops_;
            total = dropped_;
            unreported_drops_ = 0;
            last_drop_report_ns_ = now;
        }
        say(spdlog::level::warn, "its queue of " + std::to_string(capacity_) + " events was full: dropped the " + std::to_string(drops) +
                                     " oldest (" + std::to_string(total) + " in all since procctl started)");
    }

    std::shared_ptr<Shared> shared_;

private:
    std::string name_;
    EventFilter filter_;
    std::size_t capacity_;
    int wake_fd_;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::deque<Event> queue_;
    bool busy_ = false;
    bool finishing_ = false;
    std::uint64_t deadline_ns_ = 0;
    std::uint64_t dropped_ = 0;
    std::uint64_t unreported_drops_ = 0;
    std::uint64_t failed_ = 0;
    std::uint64_t last_drop_report_ns_ = 0;
};

namespace {

// ---------------------------------------------------------------- exec hooks

// SIGKILL to every process of the session `leader` leads, each through a pidfd checked to be
// in that session after it was opened. The leader is our unreaped child, so its pid (and the
// session id) cannot pass to another process meanwhile; a descendant that left the session
// with setsid() is out of reach, which the log line says.
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
        std::string pending;  // a partial line of its output
        std::size_t logged = 0;
        bool timed_out = false;
    };

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
                fds.push_back(pollfd{r.out_fd, POLLIN, 0});
                until = until == 0 ? r.deadline_ns : std::min(until, r.deadline_ns);
            }
            wait(fds, until);
            for (auto& r : runs_) read_output(r);
            const std::uint64_t now = monotonic_now_ns();
            for (auto& r : runs_) {
                if (!r.timed_out && now >= r.deadline_ns) {
                    r.timed_out = true;
                    say(spdlog::level::warn, "still running " + human_duration(config_.timeout) + " after it started for event #" +
                                                 std::to_string(r.seq) + " (" + r.kind + "): SIGKILL to it and its session");
                    kill_session(r.pidfd);
                }
            }
            finish_exited();
        }
        for (auto& r : runs_) {  // procctl is exiting: what still runs is cut off
            kill_session(r.pidfd);
            failed_one();
        }
        for (auto& r : runs_) reap(r);
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
                            monotonic_now_ns() + static_cast<std::uint64_t>(config_.timeout.count()) * 1'000'000u, {}, 0, false});
    }

    void read_output(Run& r) {
        char buffer[4096];
        for (;;) {
            const ssize_t n = ::read(r.out_fd, buffer, sizeof buffer);
            if (n <= 0) break;
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
        r.logged += line.size();
        if (r.logged <= kHookOutputBytes)
            say(spdlog::level::info, "event #" + std::to_string(r.seq) + " (" + r.kind + ") says: " + terminal_safe(line));
    }

    // Waits for a clone child that waitpid(-1) cannot see; returns its status as waitpid would.
    static int reap(Run& r) {
        siginfo_t info{};
        int status = 0;
        if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(r.pidfd.fd()), &info, WEXITED | __WALL) == 0)
            status = info.si_code == CLD_EXITED ? (info.si_status & 0xff) << 8 : info.si_status & 0x7f;
        ::close(r.out_fd);
        return status;
    }

    void finish_exited() {
        for (auto it = runs_.begin(); it != runs_.end();) {
            if (!it->pidfd.has_exited()) {
                ++it;
                continue;
            }
            read_output(*it);
            if (!it->pending.empty()) log_line(*it, it->pending);
            if (it->logged > kHookOutputBytes)
                say(spdlog::level::warn, "event #" + std::to_string(it->seq) + ": " + std::to_string(it->logged - kHookOutputBytes) +
                                             " bytes of its output were not logged (" + std::to_string(kHookOutputBytes) +
                                             " bytes per run at most)");
            const int status = reap(*it);
            if (it->timed_out || status != 0) {
                failed_one();
                say(spdlog::level::warn, "for event #" + std::to_string(it->seq) + " (" + it->kind + ") it " + describe_exit(status));
            }
            it = runs_.erase(it);
        }
    }

    HookConfig config_;
    HookUser user_;
    std::vector<std::string> base_env_;
    std::vector<Run> runs_;
};

// ---------------------------------------------------------------- HTTP: webhooks and Alertmanager

// One POST with a deadline for the whole exchange. The status code, or nullopt with `error`.
std::optional<unsigned> http_post(const HttpUrl& url, const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout, const std::function<bool()>& cancelled, std::string& error) {
    try {
        asio::io_context io;
        asio::ip::tcp::resolver resolver(io);
        beast::tcp_stream stream(io);
        stream.expires_after(timeout);
        bool failed = false;
        beast::error_code result;
        http::response<http::string_body> response;
        beast::flat_buffer buffer;
        http::request<http::string_body> request{http::verb::post, target, 11};
        request.set(http::field::host, url.host);
        request.set(http::field::user_agent, "hbwatch");
        request.set(http::field::content_type, "application/json");
        if (!url.credentials.empty()) request.set(http::field::authorization, "Basic " + url.basic_auth());
        request.body() = body;
        request.prepare_payload();
        auto fail = [&](beast::error_code ec) {
            failed = true;
            result = ec;
        };
        resolver.async_resolve(url.host, url.port, [&](beast::error_code ec, asio::ip::tcp::resolver::results_type found) {
            if (ec) return fail(ec);
            stream.async_connect(found, [&](beast::error_code ec2, const asio::ip::tcp::endpoint&) {
                if (ec2) return fail(ec2);
                http::async_write(stream, request, [&](beast::error_code ec3, std::size_t) {
                    if (ec3) return fail(ec3);
                    http::async_read(stream, buffer, response, [&](beast::error_code ec4, std::size_t) {
                        if (ec4) fail(ec4);
                    });
                });
            });
        });
        // The resolver has no deadline of its own: the io_context's run is bounded instead, in
        // slices, so that procctl's exit cuts a delivery short.
        const auto end = std::chrono::steady_clock::now() + timeout + std::chrono::milliseconds(100);
        while (!io.stopped() && std::chrono::steady_clock::now() < end) {
            io.run_for(std::chrono::milliseconds(100));
            if (!io.stopped() && cancelled()) {
                error = "cut short: procctl is exiting";
                return std::nullopt;
            }
        }
        if (!io.stopped()) {
            error = "no answer within " + human_duration(timeout);
            return std::nullopt;
        }
        if (failed) {
            error = result == beast::error::timeout ? "no answer within " + human_duration(timeout) : result.message();
            return std::nullopt;
        }
        beast::error_code ignored;
        stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
        return response.result_int();
    } catch (const std::exception& e) {
        error = e.what();
        return std::nullopt;
    }
}

bool permanent_failure(unsigned status) { return status >= 400 && status < 500 && status != 408 && status != 429; }

class WebhookSink final : public EventSinks::Sink {
public:
    WebhookSink(std::shared_ptr<EventSinks::Shared> shared, WebhookConfig config)
        : Sink(std::move(shared), "webhook " + redacted_url(config.url), config.filter, config.queue),
          config_(std::move(config)),
          url_(parse_http_url(config_.url, "webhook url")) {}
    ~WebhookSink() override { stop(0); }

private:
    void run() override {
        std::vector<pollfd> none;
        for (;;) {
            report_drops();
            if (must_stop()) break;
            auto event = take();
            if (!event) {
                if (finishing()) break;
                wait(none, 0);
                continue;
            }
            deliver(*event);
            done_with_event();
        }
        report_drops();
    }

    void deliver(const Event& event) {
        const std::string body = to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        std::vector<pollfd> none;
        for (unsigned attempt = 0;; ++attempt) {
            std::string error;
            const auto status = http_post(url_, url_.target, body, config_.timeout, [this] { return must_stop(); }, error);
            if (status && *status >= 200 && *status < 300) return;
            if (status) error = "HTTP " + std::to_string(*status);
            if (attempt >= config_.retries || (status && permanent_failure(*status))) {
                say(spdlog::level::err, "could not deliver event #" + std::to_string(event.seq) + " (" + to_string(event.kind) + ") after " +
                                            std::to_string(attempt + 1) + " tries: " + error);
                failed_one();
                return;
            }
            const auto pause = std::chrono::milliseconds(1000) * (1u << std::min(attempt, 5u));
            say(spdlog::level::warn, "event #" + std::to_string(event.seq) + ": " + error + "; trying again in " + human_duration(pause));
            const std::uint64_t until = monotonic_now_ns() + static_cast<std::uint64_t>(pause.count()) * 1'000'000u;
            while (monotonic_now_ns() < until && !must_stop()) wait(none, until);
            if (must_stop()) {
                failed_one();
                return;
            }
        }
    }

    WebhookConfig config_;
    HttpUrl url_;
};

class AlertmanagerSink final : public EventSinks::Sink {
public:
    AlertmanagerSink(std::shared_ptr<EventSinks::Shared> shared, AlertmanagerConfig config, std::chrono::milliseconds quiet_window)
        : Sink(std::move(shared), "alertmanager " + redacted_url(config.url), EventFilter{}, 1000),
          config_(std::move(config)),
          url_(parse_http_url(config_.url, "alertmanager url")),
          book_(quiet_window) {}
    ~AlertmanagerSink() override { stop(0); }

private:
    void run() override {
        std::vector<pollfd> none;
        bool dirty = false;
        std::uint64_t next_send = 0, retry_at = 0;
        unsigned failures = 0;
        for (;;) {
            report_drops();
            while (auto event = take()) {
                dirty = book_.on(*event) || dirty;
                done_with_event();
            }
            std::uint64_t now = monotonic_now_ns();
            dirty = book_.expire(now, realtime_now_ns()) || dirty;
            const bool due = (dirty || (!book_.alerts().empty() && now >= next_send)) && now >= retry_at;
            if (due && !book_.alerts().empty()) {
                std::string error;
                const auto valid = static_cast<std::uint64_t>(config_.resend.count()) * 4'000'000u;
                const std::string body = book_.payload(realtime_now_ns(), valid).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
                const auto status =
                    http_post(url_, url_.target_under("/api/v2/alerts"), body, config_.timeout, [this] { return must_stop(); }, error);
                now = monotonic_now_ns();
                if (status && *status >= 200 && *status < 300) {
                    if (failures > 0) say(spdlog::level::info, "delivered again after " + std::to_string(failures) + " failed tries");
                    failures = 0;
                    book_.forget_resolved();
                    dirty = false;
                    next_send = now + static_cast<std::uint64_t>(config_.resend.count()) * 1'000'000u;
                    retry_at = 0;
                } else {
                    if (status) error = "HTTP " + std::to_string(*status);
                    if (failures++ == 0 || failures % 10 == 0)
                        say(spdlog::level::err, "could not post " + std::to_string(book_.alerts().size()) + " alert(s): " + error +
                                                    " (tried " + std::to_string(failures) + " times; trying again)");
                    const auto pause = std::min<std::uint64_t>(1'000'000'000ull << std::min(failures, 5u),
                                                               static_cast<std::uint64_t>(config_.resend.count()) * 1'000'000u);
                    retry_at = now + pause;
                }
            } else if (book_.alerts().empty()) {
                dirty = false;
            }
            if (must_stop() || (finishing() && queue_empty() && (!dirty || failures > 0))) break;
            std::uint64_t until = book_.alerts().empty() ? 0 : std::max(next_send, retry_at);
            if (dirty) until = retry_at;
            if (const std::uint64_t expiry = book_.next_expiry(); expiry != 0) until = until == 0 ? expiry : std::min(until, expiry);
            if (until != 0 && until <= now) until = now + 1'000'000;  // at least a millisecond
            wait(none, until);
        }
        if (dirty) failed_one();
    }

    AlertmanagerConfig config_;
    HttpUrl url_;
    AlertBook book_;
};

}  // namespace

EventSinks::EventSinks(const EventsConfig& config, std::string tool) : shared_(std::make_shared<Shared>()) {
    (void)tool;
    for (const auto& hook : config.hooks) sinks_.push_back(std::make_unique<HookSink>(shared_, hook));
    for (const auto& webhook : config.webhooks) sinks_.push_back(std::make_unique<WebhookSink>(shared_, webhook));
    if (config.alertmanager) sinks_.push_back(std::make_unique<AlertmanagerSink>(shared_, *config.alertmanager, config.storm_window));
    for (auto& sink : sinks_) sink->start();
}

EventSinks::~EventSinks() {
    for (auto& sink : sinks_) sink->stop(0);
}

void EventSinks::publish(const Event& event) {
    for (auto& sink : sinks_) sink->offer(event);
}

bool EventSinks::empty() const noexcept { return sinks_.empty(); }

int EventSinks::log_fd() const noexcept { return shared_->log_fd; }

void EventSinks::write_log(spdlog::logger& log) {
    drain_fd(shared_->log_fd);
    std::deque<std::pair<spdlog::level::level_enum, std::string>> lines;
    std::uint64_t lost = 0;
    {
        std::lock_guard lock(shared_->mutex);
        std::swap(lines, shared_->lines);
        std::swap(lost, shared_->lines_lost);
    }
    for (const auto& [level, line] : lines) log.log(level, "{}", line);
    if (lost > 0) log.warn("event sinks: {} log lines were dropped (more than {} waited at once)", lost, kLogLines);
}

std::uint64_t EventSinks::finish(std::uint64_t deadline_ns, spdlog::logger& log) {
    // Every sink gets the same deadline, and they deliver in parallel.
    std::vector<std::thread> stoppers;
    for (auto& sink : sinks_) stoppers.emplace_back([&sink, deadline_ns] { sink->stop(deadline_ns); });
    for (auto& t : stoppers) t.join();
    std::uint64_t lost = 0;
    for (auto& sink : sinks_) {
        const std::uint64_t n = sink->undelivered();
        if (n > 0) log.warn("{}: {} event(s) were not delivered", sink->name(), n);
        lost += n;
    }
    write_log(log);
    return lost;
}

}  // namespace hbwatch::tool
