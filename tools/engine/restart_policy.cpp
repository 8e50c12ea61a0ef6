#include "engine/restart_policy.h"

#include <algorithm>

#include "core/clock.h"

namespace hbwatch::tool {

bool RestartPolicy::start(std::uint64_t now_ns) {
    if (!rules_.max_restarts) return true;
    const std::uint64_t window = to_ns(rules_.window);
    while (!starts_.empty() && starts_.front() + window <= now_ns) starts_.pop_front();
    if (starts_.size() >= *rules_.max_restarts) return false;
    starts_.push_back(now_ns);
    return true;
}

std::chrono::milliseconds RestartPolicy::backoff() const {
    // Doubling from INTERVAL (at least 1 s, so that INTERVAL 0 backs off too), capped.
    const auto base = std::max<std::chrono::milliseconds>(rules_.interval, std::chrono::seconds(1));
    const auto cap = std::max(rules_.max_backoff, rules_.interval);
    auto delay = base;
    for (unsigned i = 1; i < failures_ && delay < cap; ++i) delay *= 2;
    return std::min(delay, cap);
}

std::chrono::milliseconds RestartPolicy::after_exit(bool success, std::chrono::milliseconds runtime) {
    if (!crashed(success, runtime)) {
        failures_ = 0;
        return rules_.interval;
    }
    failures_ = std::min(failures_ + 1, 64u);
    return backoff();
}

std::chrono::milliseconds RestartPolicy::after_start_failure() {
    failures_ = std::min(failures_ + 1, 64u);
    return backoff();
}

}  // namespace hbwatch::tool
