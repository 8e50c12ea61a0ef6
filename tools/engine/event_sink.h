#pragma once
// What every sink shares (internal to the sinks' files: event_sinks.cpp, event_hooks.cpp,
// event_http.cpp): a thread, a bounded queue that drops its oldest and says so, a wake-up
// eventfd, and log lines handed to the caller's loop rather than to its logger.

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "engine/event_sinks.h"

namespace hbwatch::tool {

namespace sink_detail {

inline constexpr std::size_t kLogLines = 1000;  // waiting for the loop; more are counted, not kept
inline constexpr std::uint64_t kDropReportNs = 10'000'000'000u;  // one "dropped" line per sink per 10 s at most

inline int make_eventfd() {
    const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) throw Error(errno, "cannot create an eventfd for the event sinks");
    return fd;
}

inline void poke(int fd) {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
}

inline void drain_fd(int fd) {
    std::uint64_t value;
    (void)!::read(fd, &value, sizeof value);
}

}  // namespace sink_detail

using namespace sink_detail;  // NOLINT: within hbwatch::tool, for the sinks' files

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
    virtual void offer(const Event& event) {
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
    void wake_up() { poke(wake_fd_); }

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

std::unique_ptr<EventSinks::Sink> make_hook_sink(std::shared_ptr<EventSinks::Shared> shared, const HookConfig& config);
std::unique_ptr<EventSinks::Sink> make_webhook_sink(std::shared_ptr<EventSinks::Shared> shared, const WebhookConfig& config);
std::unique_ptr<EventSinks::Sink> make_alertmanager_sink(std::shared_ptr<EventSinks::Shared> shared, const AlertmanagerConfig& config,
                                                         std::chrono::milliseconds quiet_window);

}  // namespace hbwatch::tool
