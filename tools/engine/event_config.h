#pragma once
// What the `events:` section of a stack config (and checkproc's --on-event) asks for: the
// sinks that tell people, and the restart-storm rule.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "engine/event.h"

namespace hbwatch::tool {

/// A command run for each event it accepts (no shell), with the event in its environment.
struct HookConfig {
    std::vector<std::string> command;
    EventFilter filter;
    std::chrono::milliseconds timeout{std::chrono::seconds(10)};  // then SIGKILL to it and its session
    unsigned max_running = 4;
    std::string user;  // empty: the tool's own user
    bool operator==(const HookConfig&) const = default;
};

/// An HTTP POST of each event's JSON.
struct WebhookConfig {
    std::string url;  // http://[user:password@]host[:port]/path
    EventFilter filter;
    std::size_t queue = 1000;
    unsigned retries = 3;  // after the first try: 1 s, 2 s, 4 s ... apart
    std::chrono::milliseconds timeout{std::chrono::seconds(5)};
    bool operator==(const WebhookConfig&) const = default;
};

/// Alertmanager's v2 API: programs hung, given up, crash-looping or over their memory are
/// alerts, re-sent while the condition holds and resolved when it ends.
struct AlertmanagerConfig {
    std::string url;  // http://host:9093
    std::chrono::milliseconds resend{std::chrono::minutes(1)};
    std::chrono::milliseconds timeout{std::chrono::seconds(5)};
    bool operator==(const AlertmanagerConfig&) const = default;
};

struct EventsConfig {
    std::size_t keep = 1000;  // the control API's ring
    unsigned storm_restarts = 5;  // restart_storm: this many starts within storm_window
    std::chrono::milliseconds storm_window{std::chrono::minutes(5)};
    std::vector<HookConfig> hooks;
    std::vector<WebhookConfig> webhooks;
    std::optional<AlertmanagerConfig> alertmanager;
    bool operator==(const EventsConfig&) const = default;
};

}  // namespace hbwatch::tool
