// What the network view adds to the control API (README, "The network view"): /metrics, the
// heartbeat table, the host's listening ports and the stop of a port's holders, and the status
// page. Whatever reads much (every table entry, every process's fds) or waits (a stop's grace)
// is done on a worker thread of the control server from what the loop hands it, never in the
// supervision loop and never touching the stack.
#include <unistd.h>

#include <set>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/process.h"
#include "core/table.h"
#include "engine/ports.h"
#include "engine/prometheus_text.h"
#include "engine/stack_internal.h"
#include "engine/status_page.h"
#include "engine/table_view.h"

#ifndef HBWATCH_VERSION
#define HBWATCH_VERSION "unknown"
#endif

namespace hbwatch::tool {
namespace {

// The states of hbwatch_program_state, one-hot as node_exporter's node_systemd_unit_state.
constexpr Phase kShownPhases[] = {Phase::waiting, Phase::starting, Phase::ready,  Phase::stopping,
                                  Phase::backoff, Phase::stopped,  Phase::exited, Phase::gave_up};

// The tables at `keys`, read whole: on a worker thread.
std::vector<Table> open_tables(const std::vector<key_t>& keys) {
    std::vector<Table> tables;
    for (const key_t key : keys) {
        TableOptions options;
        options.key = key;
        try {
            if (auto table = Table::open_existing(options, Table::Access::read_only)) tables.push_back(std::move(*table));
        } catch (const Error&) {  // a foreign segment, or not ours to read: left out
        }
    }
    return tables;
}

}  // namespace

std::vector<key_t> Stack::table_keys() const {
    std::set<key_t> keys;
    try {
        keys.insert(key_from_environment());
    } catch (const Error&) {  // HBWATCH_KEY in procctl's own environment is not a key
    }
    for (const auto& program : programs_) {
        try {
            keys.insert(table_key(*program));
        } catch (const Error&) {
        }
    }
    return {keys.begin(), keys.end()};
}

// Which program a process belongs to: itself or an ancestor is a program's process; or
// procctl is an ancestor (a daemon that left its program's tree is reparented to procctl,
// the subreaper).
StackMembership Stack::membership() const {
    std::map<pid_t, std::pair<std::string, std::uint64_t>> programs;  // pid: name, start time
    for (const auto& member : members_)
        if (member->unit.running()) programs.emplace(member->unit.pid(), std::pair{member->name(), member->identity.start_time});
    return [programs = std::move(programs), self = ::getpid()](pid_t pid, const std::vector<pid_t>& ancestors) -> std::string {
        // A pid is a program's only while it is that very process (its start time): a pid
        // reused since procctl looked makes nothing part of the stack.
        auto program = [&](pid_t candidate) -> const std::string* {
            const auto found = programs.find(candidate);
            if (found == programs.end()) return nullptr;
            const auto stat = read_proc_stat(candidate);
            return stat && stat->start_time == found->second.second ? &found->second.first : nullptr;
        };
        if (const auto* name = program(pid)) return *name;
        for (const pid_t ancestor : ancestors) {
            if (const auto* name = program(ancestor)) return *name;
            if (ancestor == self) return "procctl";
        }
        return "";
    };
}

ControlReply Stack::metrics_reply(std::uint64_t now) const {
    // A unit a reload retires shares its name with the one replacing it: only the latter is
    // shown, so that no series appears twice.
    std::vector<const Member*> shown;
    for (const auto& member : members_)
        if (member->unit.goal() != Goal::retire) shown.push_back(member.get());
    PrometheusText out;
    out.family("hbwatch_build_info", "gauge", "hbwatch's version, always 1.");
    out.sample("hbwatch_build_info", {{"version", HBWATCH_VERSION}}, 1);
    out.family("hbwatch_program_state", "gauge", "The program's state, one-hot over its possible states.");
    for (const Member* member : shown)
        for (const Phase phase : kShownPhases)
            out.sample("hbwatch_program_state", {{"program", member->name()}, {"state", to_string(phase)}},
                       std::string_view(to_string(shown_phase(*member))) == to_string(phase) ? 1 : 0);
    out.family("hbwatch_program_ready", "gauge", "1 when the program is ready (its dependents may start).");
    for (const Member* member : shown) out.sample("hbwatch_program_ready", {{"program", member->name()}}, member->unit.is_ready() ? 1 : 0);
    out.family("hbwatch_program_restarts_total", "counter", "Starts of the program after its first.");
    for (const Member* member : shown)
        out.sample("hbwatch_program_restarts_total", {{"program", member->name()}},
                   member->unit.starts() > 0 ? member->unit.starts() - 1 : 0);
    const std::uint64_t wall = realtime_now_ns();
    out.family("hbwatch_program_start_time_seconds", "gauge", "When the program's running process started, in Unix time.");
    for (const Member* member : shown) {
        if (!member->unit.running()) continue;
        const std::uint64_t age = now > member->unit.started_ns() ? now - member->unit.started_ns() : 0;
        out.sample("hbwatch_program_start_time_seconds", {{"program", member->name()}}, static_cast<double>((wall - age) / 1'000'000) / 1000.0);
    }
    out.family("hbwatch_program_resident_memory_bytes", "gauge", "Resident memory of the program's main process.");
    const auto page = static_cast<double>(::sysconf(_SC_PAGESIZE));
    for (const Member* member : shown) {
        if (!member->unit.running()) continue;
        if (const auto stat = read_proc_stat(member->unit.pid()))
            out.sample("hbwatch_program_resident_memory_bytes", {{"program", member->name()}}, static_cast<double>(stat->rss_pages) * page);
    }
    out.family("hbwatch_program_max_rss_bytes", "gauge", "The program's max_rss: procctl restarts it above this (programs that set one).");
    for (const Member* member : shown)
        if (member->program().max_rss > 0)
            out.sample("hbwatch_program_max_rss_bytes", {{"program", member->name()}}, static_cast<double>(member->program().max_rss));
    out.family("hbwatch_events_total", "counter", "Events the stack emitted, by kind.");
    for (std::size_t kind = 0; kind < kEventKinds; ++kind)
        out.sample("hbwatch_events_total", {{"kind", to_string(static_cast<EventKind>(kind))}}, static_cast<double>(event_counts_[kind]));
    if (control_ != nullptr) {
        const auto counters = control_->counters();
        out.family("hbwatch_http_auth_failures_total", "counter", "TCP requests refused for a missing or unknown token (401).");
        out.sample("hbwatch_http_auth_failures_total", static_cast<double>(counters.auth_failures));
        out.family("hbwatch_http_rate_limited_total", "counter", "TCP requests refused after too many failed authentications (429).");
        out.sample("hbwatch_http_rate_limited_total", static_cast<double>(counters.rate_limited));
        out.family("hbwatch_control_connections_refused_total", "counter", "Connections turned away over a per-user or per-address cap.");
        out.sample("hbwatch_control_connections_refused_total", static_cast<double>(counters.turned_away));
    }
    ControlReply reply(200, "", false, kPrometheusContentType);
    // The table's entries (every one read with its process's /proc) on a worker.
    reply.later = [text = out.take(), keys = table_keys()]() mutable {
        const auto tables = open_tables(keys);
        std::vector<const Table*> pointers;
        for (const auto& table : tables) pointers.push_back(&table);
        if (!pointers.empty()) text += prometheus_tables(pointers);
        return ControlReply(200, std::move(text), false, kPrometheusContentType);
    };
    reply.share_as = "metrics";  // share_key() of each: the server answers from it before the loop sees a request
    return reply;
}

ControlReply Stack::heartbeats_reply() const {
    ControlReply reply;
    reply.later = [keys = table_keys()] {
        nlohmann::json all = nlohmann::json::array();
        for (const auto& table : open_tables(keys))
            for (auto& entry : entries_json(table)) {
                entry["key"] = format_key(table.key());
                all.push_back(std::move(entry));
            }
        return ControlReply{200, json_text(all)};
    };
    reply.share_as = "heartbeats";
    return reply;
}

ControlReply Stack::ports_reply() const {
    ControlReply reply;
    reply.later = [membership = membership()] { return ControlReply{200, json_text(ports_json(listening_sockets(membership)))}; };
    reply.share_as = "ports";
    return reply;
}

// POST /v1/ports/N/kill: whoever holds port N, stopped (TERM, grace, KILL) through pidfds.
// Never pid 1, a kernel thread, procctl or its ancestors (Pidfd::pin refuses them); only the
// stack's processes unless any=1; for a local caller, only what it could signal itself.
ControlReply Stack::port_kill_reply(const ControlCommand& command, const ControlRequest& request) {
    PortKillRules rules;
    rules.any = command.any;
    rules.caller_uid = request.uid;
    rules.grace = command.grace.value_or(std::chrono::seconds(10));
    rules.cancel_fd = control_ != nullptr ? control_->cancel_fd() : -1;
    log_.info("port {}: stopping what holds it{} (SIGTERM, SIGKILL after {}), as asked by {}", command.port,
              command.any ? ", in the stack or not" : " among the stack's processes", human_duration(rules.grace), request.caller);
    ControlReply reply;
    reply.later = [port = command.port, rules, membership = membership()] {
        auto report = kill_port_holders(port, rules, membership);
        const int status = report["holders"].empty() ? 404 : report["stopped"].get<int>() == 0 && report["refused"].get<int>() > 0 ? 403 : 200;
        if (report["holders"].empty()) report["error"] = "nothing listens on TCP port " + std::to_string(port);
        else if (status == 403) report["error"] = "every holder of port " + std::to_string(port) + " was refused: see holders[].detail";
        return ControlReply{status, json_text(report)};
    };
    return reply;
}

ControlReply Stack::page_reply() {
    return ControlReply(200, std::string(status_page_html()), false, "text/html; charset=utf-8");
}

}  // namespace hbwatch::tool
