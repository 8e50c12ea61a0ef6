#pragma once
// Alerts as Alertmanager should hold them: which programs are hung, given up, crash-looping or
// over their memory, made from events, fired, re-sent and resolved. No I/O: the Alertmanager
// sink (event_http.cpp) posts what it holds.

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/event.h"

namespace hbwatch::tool {

/// The alerts Alertmanager should hold at `now` (the sink's state, for tests and for the
/// sink itself): one per condition that holds.
class AlertBook {
public:
    explicit AlertBook(std::chrono::milliseconds quiet_window) : quiet_ns_(to_ns(quiet_window)) {}
    struct Alert {
        std::string name;  // alertname: HbwatchProgramHung, ...
        std::string unit;
        std::string program;
        std::string severity;
        std::string summary;
        std::string description;
        std::uint64_t starts_wall_ns = 0;
        std::uint64_t last_mono_ns = 0;  // the last event that kept it firing
        bool quiet_resolves = false;      // resolved once quiet_window passes without such an event
        bool resolved = false;
        std::uint64_t ends_wall_ns = 0;
        std::uint64_t version = 0;  // the book's version when it last changed
    };
    static constexpr std::size_t kMaxAlerts = 10000;
    /// Fires, refreshes or resolves alerts for `event`; returns whether anything changed.
    bool on(const Event& event);
    /// Resolves the quiet ones whose window has passed; returns whether any was.
    bool expire(std::uint64_t now_mono_ns, std::uint64_t now_wall_ns);
    /// The Alertmanager payload: every alert, firing ones with endsAt `valid_ns` ahead,
    /// resolved ones with their end.
    [[nodiscard]] nlohmann::json payload(std::uint64_t now_wall_ns, std::uint64_t valid_ns) const;
    /// Forgets the resolved alerts Alertmanager was told of: those of versions up to `delivered`.
    void forget_resolved(std::uint64_t delivered);
    /// Grows with every change: a post of version V left nothing unsaid when it is still V.
    [[nodiscard]] std::uint64_t version() const noexcept { return version_; }
    [[nodiscard]] const std::vector<Alert>& alerts() const noexcept { return alerts_; }
    /// The next instant a quiet alert resolves (0: none).
    [[nodiscard]] std::uint64_t next_expiry() const noexcept;

private:
    static constexpr std::uint64_t to_ns(std::chrono::milliseconds d) { return static_cast<std::uint64_t>(d.count()) * 1'000'000u; }
    Alert* find(const std::string& name, const std::string& unit);
    void fire(const Event& event, const char* name, const char* severity, const std::string& summary, bool quiet);
    bool resolve(const std::string& unit, std::initializer_list<const char*> names, std::uint64_t wall_ns);
    std::uint64_t quiet_ns_;
    std::vector<Alert> alerts_;  // one per condition and unit, firing or resolved (until delivered)
    std::uint64_t version_ = 0;
    std::uint64_t refused_ = 0;  // new alerts past kMaxAlerts
};

}  // namespace hbwatch::tool
