#include "engine/event_outlet.h"

#include <cerrno>
#include <sstream>

#include <hbwatch/error.h>

#include "core/clock.h"

namespace hbwatch::tool {

EventOutlet::EventOutlet(const std::string& file, const std::string& hook, spdlog::logger& log) : log_(log) {
    if (!file.empty())
        file_ = std::make_unique<OutputFile>(file, 10u << 20, 5, [this](const std::string& problem, bool) { log_.error("{}", problem); });
    if (!hook.empty()) {
        EventsConfig config;
        HookConfig command;
        std::istringstream words(hook);
        for (std::string word; words >> word;) command.command.push_back(word);
        if (command.command.empty()) throw Error(EINVAL, "--on-event: give a command, such as --on-event '/usr/local/bin/page-oncall'");
        command.max_running = 1;  // in the order they happened
        config.hooks.push_back(std::move(command));
        sinks_ = std::make_unique<EventSinks>(config, "checkproc");
    }
}

EventOutlet::~EventOutlet() = default;

void EventOutlet::publish(Event event) {
    event.seq = next_seq_++;
    if (file_) {
        file_->write(to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
        file_->finish();  // whole lines now: a reader tails it
    }
    if (sinks_) {
        sinks_->publish(event);
        sinks_->write_log(log_);
    }
}

void EventOutlet::finish() {
    if (!sinks_) return;
    const std::uint64_t lost = sinks_->finish(monotonic_now_ns() + 2'000'000'000u, log_);
    if (lost > 0) log_.warn("{} event(s) were not delivered to the --on-event hook", lost);
    sinks_.reset();
}

}  // namespace hbwatch::tool
