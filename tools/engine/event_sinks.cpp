#include "engine/event_sinks.h"

#include "engine/event_sink.h"

namespace hbwatch::tool {

EventSinks::EventSinks(const EventsConfig& config, std::string tool) : shared_(std::make_shared<Shared>()) {
    (void)tool;
    for (const auto& hook : config.hooks) sinks_.push_back(make_hook_sink(shared_, hook));
    for (const auto& webhook : config.webhooks) sinks_.push_back(make_webhook_sink(shared_, webhook));
    if (config.alertmanager) sinks_.push_back(make_alertmanager_sink(shared_, *config.alertmanager, config.storm_window));
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
