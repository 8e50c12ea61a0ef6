// The stack's control API (README, "The control API"): requests parsed, answered from the
// units' state, commands handed to the units as events.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <variant>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include "engine/inspect.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {

std::string Member::last_exit() const {
    std::string text = unit.last_exit();
    if (!text.empty() && exit_errno != 0)
        text += " (it said ERRNO=" + std::to_string(exit_errno) + ": " + std::strerror(exit_errno) + ")";
    return text;
}

// The heartbeat entries of the units' processes, read once per request: one pass over each
// table the programs use, and /proc read only for the entries of the stack's pids.
class Stack::Heartbeats {
public:
    Heartbeats(spdlog::logger& log, const std::vector<std::unique_ptr<Member>>& members) : log_(log) {
        for (const auto& member : members)
            if (member->unit.running()) pids_.push_back(member->unit.pid());
        std::sort(pids_.begin(), pids_.end());
    }
    nlohmann::json of(const Member& member, std::uint64_t now) {
        if (!member.unit.running()) return nullptr;
        key_t key;
        try {
            key = table_key(member.program());
        } catch (const Error&) {  // HBWATCH_KEY in procctl's own environment is not a key
            return nullptr;
        }
        auto found = tables_.find(key);
        if (found == tables_.end()) {
            std::vector<Entry> entries;
            try {
                TableOptions options;
                options.key = key;
                auto ours = [this](const SlotSnapshot& slot) {
                    return std::binary_search(pids_.begin(), pids_.end(), slot.process.pid);
                };
                if (auto table = Table::open_existing(options, Table::Access::read_only)) entries = inspect(*table, now, ours);
            } catch (const Error& e) {
                log_.warn("cannot read the heartbeat table at {} for proctab status: {}", format_key(key), e.what());
            }
            found = tables_.emplace(key, std::move(entries)).first;
        }
        nlohmann::json list = nlohmann::json::array();
        for (const auto& entry : found->second) {
            if (!same_process(member.identity, entry.slot.process)) continue;
            list.push_back({{"name", std::string(entry.slot.name())},
                            {"state", to_string(entry.state)},
                            {"since_beat_seconds", static_cast<double>(entry.since_beat.count()) / 1000.0},
                            {"timeout_seconds", static_cast<double>(entry.slot.timeout.count()) / 1000.0}});
        }
        return list;
    }

private:
    spdlog::logger& log_;
    std::vector<pid_t> pids_;
    std::map<key_t, std::vector<Entry>> tables_;
};

nlohmann::json Stack::describe(const Member& member, std::uint64_t now, Heartbeats& beats) const {
    const Unit& unit = member.unit;
    nlohmann::json o{{"name", unit.name()},
                     {"program", unit.program().name},
                     {"state", to_string(shown_phase(member))},
                     {"restarts", unit.starts() > 0 ? unit.starts() - 1 : 0}};
    o["pid"] = unit.running() ? nlohmann::json(unit.pid()) : nlohmann::json(nullptr);
    o["uptime_seconds"] = unit.running() ? nlohmann::json(static_cast<double>(ms_between(unit.started_ns(), now).count()) / 1000.0)
                                         : nlohmann::json(nullptr);
    const std::string last_exit = member.last_exit();
    o["last_exit"] = last_exit.empty() ? nlohmann::json(nullptr) : nlohmann::json(last_exit);
    o["heartbeats"] = beats.of(member, now);
    o["status"] = member.said_status.empty() ? nlohmann::json(nullptr) : nlohmann::json(member.said_status);
    if (member.program().notify) {
        o["notify"] = {{"socket", member.notify ? member.notify->path() : std::string()},
                       {"state", member.said_state.empty() ? nlohmann::json(nullptr) : nlohmann::json(member.said_state)},
                       {"refused", member.notify_refused},
                       {"dropped", member.notify_drops.truncated + member.notify_drops.malformed},
                       {"receive_buffer_bytes", member.notify ? member.notify->receive_buffer() : 0},
                       {"sender_pidfds", member.notify && member.notify->sender_pidfds()}};
        // Its WATCHDOG=1 pings, in the same column as the table's heartbeats: one kind of heartbeat.
        if (member.watchdog.count() > 0 && unit.running()) {
            const std::uint64_t since = now - std::min(now, member.last_ping_ns != 0 ? member.last_ping_ns : unit.started_ns());
            const bool overdue = member.watchdog_due_ns != 0 && now >= member.watchdog_due_ns;
            o["heartbeats"].push_back({{"name", "sd_notify watchdog"},
                                       {"state", overdue ? "hung" : since * 2 > to_ns(member.watchdog) ? "late" : "ok"},
                                       {"since_beat_seconds", static_cast<double>(since / 1'000'000) / 1000.0},
                                       {"timeout_seconds", static_cast<double>(member.watchdog.count()) / 1000.0}});
        }
    }
    nlohmann::json waiting_for = nlohmann::json::array();
    if (shown_phase(member) == Phase::waiting)
        for (const Member* dependency : unready_dependencies(member))
            waiting_for.push_back({{"name", dependency->name()}, {"state", to_string(shown_phase(*dependency))}});
    o["waiting_for"] = std::move(waiting_for);
    if (unit.goal() == Goal::retire) o["retiring"] = true;  // a reload removed or replaced it: stopping, then gone
    return o;
}

// The control API (README, "The control API"): a request said as a command (control_command),
// answered here. NAME is a program (all its instances), one instance (NAME@I), or `all`.
ControlReply Stack::handle(const ControlRequest& request, std::uint64_t now) {
    const auto parsed = parse_command(request);
    if (const auto* refused = std::get_if<ControlError>(&parsed)) return refused->reply();
    const auto& command = std::get<ControlCommand>(parsed);
    using Verb = ControlCommand::Verb;
    if (static_cast<int>(request.role) < static_cast<int>(required_role(command.verb)))
        return ControlError{403, request.caller + " has the " + to_string(request.role) + " role; " + request.method + " " +
                                     shown_target(request.target.substr(0, request.target.find('?'))) + " needs " +
                                     to_string(required_role(command.verb)) + " (a token of that role in the tokens file)"}.reply();
    switch (command.verb) {
        case Verb::page: return page_reply();
        case Verb::metrics: return metrics_reply(now);
        case Verb::heartbeats: return heartbeats_reply();
        case Verb::ports: return ports_reply();
        case Verb::port_kill:
            if (stopping_all_) return ControlError{409, "the stack is stopping"}.reply();
            return port_kill_reply(command, request);
        default: break;
    }
    if (command.verb == Verb::reload) {
        if (stopping_all_) return ControlError{409, "the stack is stopping"}.reply();
        try {
            return ControlReply{200, json_text(reload())};
        } catch (const std::exception& e) {  // whatever failed, the stack goes on as it was
            log_.error("reload refused, the running config is kept: {}", e.what());
            return ControlError{400, std::string(e.what()) + " (the running config is kept)"}.reply();
        }
    }
    if (command.verb == Verb::events) return events_reply(command);
    const bool acting = command.verb != Verb::list && command.verb != Verb::output;
    std::vector<Member*> chosen;
    for (auto& member : members_)
        if ((command.name == "all" || member->name() == command.name || member->program().name == command.name) &&
            !(acting && member->unit.goal() == Goal::retire))
            chosen.push_back(member.get());
    if (chosen.empty()) return ControlError{404, "no program named '" + escaped(command.name, name_char) + "' in " + config_.path}.reply();
    Heartbeats beats(log_, members_);
    auto described = [&] {
        nlohmann::json list = nlohmann::json::array();
        for (Member* member : chosen) list.push_back(describe(*member, now, beats));
        return ControlReply{200, json_text(list)};
    };
    if (command.verb == Verb::list) return described();
    if (command.verb == Verb::output) return output(chosen, command);
    if (stopping_all_) return ControlError{409, "the stack is stopping"}.reply();
    if (command.verb == Verb::signal) {
        if (std::none_of(chosen.begin(), chosen.end(), [](const Member* m) { return m->unit.running(); }))
            return ControlError{409, escaped(command.name, name_char) + " is not running: nothing to signal"}.reply();
        for (Member* member : chosen) {
            if (!member->unit.running()) continue;
            log_.info("{}: {} to pid {}, as asked by {}", member->name(), signal_name(command.signal), member->unit.pid(),
                      request.caller);
            send(*member, command.signal);
        }
        return described();
    }
    for (Member* member : chosen) act(*member, command.verb, request.caller, now);
    return described();
}

// GET .../output?tail=N[&stream=stderr][&from=CURSOR]: the last N lines of each chosen unit's
// output file, or, with `from` (the cursor a reply gave), the lines written since.
ControlReply Stack::output(const std::vector<Member*>& chosen, const ControlCommand& command) {
    // One budget for the whole reply (all the units named): its JSON is at most 6 times that.
    constexpr std::size_t kReplyBytes = 256 << 10;
    const std::string stream = command.stderr_stream ? "stderr" : "stdout";
    nlohmann::json list = nlohmann::json::array();
    std::size_t budget = kReplyBytes;
    for (const Member* member : chosen) {
        const OutputFile* file = command.stderr_stream ? member->err : member->out;
        if (file == nullptr && chosen.size() > 1) continue;  // `all`, or instances: those that have one
        if (file == nullptr)
            return ControlError{404, member->name() + " has no " + stream + " file (no '" + stream +
                                         ":' in the config): its output goes to procctl's own"}.reply();
        const auto lines = command.from ? file->follow(*command.from, budget)
                                        : file->tail(command.tail, budget);
        budget -= std::min(budget, lines.bytes_read);
        list.push_back({{"name", member->name()},
                        {"path", file->path()},
                        {"lines", lines.lines},
                        {"cursor", cursor_text(lines.next)},
                        {"skipped", lines.skipped}});
    }
    if (list.empty()) return ControlError{404, "none of these programs has a " + stream + " file (no '" + stream + ":' in the config)"}.reply();
    return ControlReply{200, json_text(list)};
}

// start, stop, restart by name. A stop (and the stop of a restart) waits for the programs that
// wait for this one and are being stopped too: `stop all` goes in reverse order.
void Stack::act(Member& member, ControlCommand::Verb verb, const std::string& caller, std::uint64_t now) {
    using Verb = ControlCommand::Verb;
    const char* action = verb == Verb::stop ? "stop" : verb == Verb::restart ? "restart" : "start";
    log_.info("{}: {} requested by {}", member.name(), action, caller);
    apply(member, UnitEvent(verb == Verb::stop ? UnitEvent::Kind::stop : verb == Verb::restart ? UnitEvent::Kind::restart : UnitEvent::Kind::start), now);
}

}  // namespace hbwatch::tool
