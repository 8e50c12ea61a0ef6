#include "engine/alert_book.h"

#include <algorithm>

namespace hbwatch::tool {

AlertBook::Alert* AlertBook::find(const std::string& name, const std::string& unit) {
    for (auto& alert : alerts_)
        if (alert.name == name && alert.unit == unit) return &alert;
    return nullptr;
}

void AlertBook::fire(const Event& event, const char* name, const char* severity, const std::string& summary, bool quiet) {
    Alert* alert = find(name, event.instance);
    if (alert == nullptr) {
        if (alerts_.size() >= kMaxAlerts) {  // one per condition and unit: only a huge stack gets here
            ++refused_;
            return;
        }
        alerts_.push_back(Alert{});
        alert = &alerts_.back();
        alert->name = name;
        alert->unit = event.instance;
        alert->program = event.program;
        alert->severity = severity;
    }
    if (alert->resolved || alert->starts_wall_ns == 0) {  // (again): a new firing
        alert->resolved = false;
        alert->ends_wall_ns = 0;
        alert->starts_wall_ns = event.wall_ns;
    }
    alert->summary = summary;
    alert->description = event.message;
    alert->last_mono_ns = event.mono_ns;
    alert->quiet_resolves = quiet;
    alert->version = ++version_;
}

bool AlertBook::resolve(const std::string& unit, std::initializer_list<const char*> names, std::uint64_t wall_ns) {
    bool changed = false;
    for (const char* name : names) {
        if (Alert* alert = find(name, unit); alert != nullptr && !alert->resolved) {
            alert->resolved = true;
            alert->ends_wall_ns = wall_ns;
            alert->version = ++version_;
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
            if (Alert* alert = find("HbwatchProgramCrashLooping", unit); alert != nullptr && !alert->resolved)
                alert->last_mono_ns = event.mono_ns;
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
        alert.version = ++version_;
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

void AlertBook::forget_resolved(std::uint64_t delivered) {
    alerts_.erase(std::remove_if(alerts_.begin(), alerts_.end(), [delivered](const Alert& a) { return a.resolved && a.version <= delivered; }),
                  alerts_.end());
}

}  // namespace hbwatch::tool
