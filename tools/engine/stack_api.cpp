// The stack's control API (README, "The control API"): requests parsed, answered from the
// units' state, commands handed to the units as events.
#include <cstdio>

#include <algorithm>
#include <cctype>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include "engine/inspect.h"
#include "engine/stack_internal.h"

namespace hbwatch::tool {
namespace {

std::string json_text(const nlohmann::json& value) { return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

ControlReply error(int status, const std::string& message) { return ControlReply{status, json_text({{"error", message}})}; }

}  // namespace

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
                     {"state", to_string(unit.phase())},
                     {"restarts", unit.starts() > 0 ? unit.starts() - 1 : 0}};
    o["pid"] = unit.running() ? nlohmann::json(unit.pid()) : nlohmann::json(nullptr);
    o["uptime_seconds"] = unit.running() ? nlohmann::json(static_cast<double>(ms_between(unit.started_ns(), now).count()) / 1000.0)
                                         : nlohmann::json(nullptr);
    o["last_exit"] = unit.last_exit().empty() ? nlohmann::json(nullptr) : nlohmann::json(unit.last_exit());
    o["heartbeats"] = beats.of(member, now);
    nlohmann::json waiting_for = nlohmann::json::array();
    if (unit.phase() == Phase::waiting)
        for (const Member* dependency : unready_dependencies(member))
            waiting_for.push_back({{"name", dependency->name()}, {"state", to_string(dependency->unit.phase())}});
    o["waiting_for"] = std::move(waiting_for);
    if (unit.goal() == Goal::retire) o["retiring"] = true;  // a reload removed or replaced it: stopping, then gone
    return o;
}

// The control API (README, "The control API"). NAME is a program (all its instances), one
// instance (NAME@I), or `all`.
ControlReply Stack::handle(const ControlRequest& request, std::uint64_t now) {
    // Never echoed raw: a target is whatever bytes a client sent.
    const std::string shown = escaped(request.target, [](unsigned char c) { return c > 0x20 && c < 0x7f && c != '\\'; });
    const auto question = request.target.find('?');
    const std::string target = request.target.substr(0, question);
    std::map<std::string, std::string> query;
    if (question != std::string::npos)
        for (std::size_t at = question + 1; at <= request.target.size();) {
            auto end = request.target.find('&', at);
            if (end == std::string::npos) end = request.target.size();
            const std::string pair = request.target.substr(at, end - at);
            const auto equals = pair.find('=');
            if (!pair.empty()) query[pair.substr(0, equals)] = equals == std::string::npos ? "" : pair.substr(equals + 1);
            at = end + 1;
        }
    std::vector<std::string> parts;
    for (std::size_t at = 0; at <= target.size();) {
        const auto slash = target.find('/', at);
        const auto end = slash == std::string::npos ? target.size() : slash;
        if (end > at) parts.push_back(target.substr(at, end - at));
        at = end + 1;
    }
    if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "reload") {
        if (request.method != "POST") return error(405, request.method + " " + shown + ": use POST");
        if (stopping_all_) return error(409, "the stack is stopping");
        try {
            return ControlReply{200, json_text(reload())};
        } catch (const std::exception& e) {  // whatever failed, the stack goes on as it was
            log_.error("reload refused, the running config is kept: {}", e.what());
            return error(400, std::string(e.what()) + " (the running config is kept)");
        }
    }
    if (parts.size() < 2 || parts[0] != "v1" || parts[1] != "programs" || parts.size() > 4)
        return error(404, "no such path: " + shown +
                              " (the API is /v1/programs[/NAME[/start|stop|restart|signal|output]] and /v1/reload)");
    const bool every = parts.size() == 2 || parts[2] == "all";
    const bool acting = parts.size() == 4 && parts[3] != "output";
    std::vector<Member*> chosen;
    for (auto& member : members_)
        if ((every || member->name() == parts[2] || member->program().name == parts[2]) && !(acting && member->unit.goal() == Goal::retire))
            chosen.push_back(member.get());
    if (chosen.empty()) return error(404, "no program named '" + escaped(parts[2], name_char) + "' in " + config_.path);
    Heartbeats beats(log_, members_);
    auto described = [&] {
        nlohmann::json list = nlohmann::json::array();
        for (Member* member : chosen) list.push_back(describe(*member, now, beats));
        return ControlReply{200, json_text(list)};
    };
    if (parts.size() <= 3 || parts[3] == "output") {
        if (request.method != "GET") return error(405, request.method + " " + shown + ": use GET");
        return parts.size() <= 3 ? described() : output(chosen, query);
    }
    if (request.method != "POST") return error(405, request.method + " " + shown + ": use POST");
    const std::string& action = parts[3];
    if (action != "start" && action != "stop" && action != "restart" && action != "signal")
        return error(404, "no action '" + escaped(action, name_char) + "': use start, stop, restart, signal or output");
    if (stopping_all_) return error(409, "the stack is stopping");
    if (action == "signal") {
        const auto sig = signal_by_name(query["signal"]);
        if (!sig)
            return error(400, "signal=" + escaped(query["signal"], name_char) +
                                  " is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL (give ?signal=NAME)");
        if (std::none_of(chosen.begin(), chosen.end(), [](const Member* m) { return m->unit.running(); }))
            return error(409, escaped(parts[2], name_char) + " is not running: nothing to signal");
        for (Member* member : chosen) {
            if (!member->unit.running()) continue;
            log_.info("{}: {} to pid {}, as asked through the control socket", member->name(), signal_name(*sig), member->unit.pid());
            send(*member, *sig);
        }
        return described();
    }
    for (Member* member : chosen) act(*member, action, now);
    return described();
}

// GET .../output?tail=N[&stream=stderr][&from=CURSOR]: the last N lines of each chosen
// unit's output file, or, with `from` (the cursor a reply gave), the lines written since.
ControlReply Stack::output(const std::vector<Member*>& chosen, std::map<std::string, std::string>& query) {
    // One budget for the whole reply (all the units named): its JSON is at most 6 times that.
    constexpr std::size_t kMaxLines = 10000, kReplyBytes = 256 << 10;
    const std::string stream = query.count("stream") ? query["stream"] : "stdout";
    if (stream != "stdout" && stream != "stderr") return error(400, "stream=" + escaped(stream, name_char) + ": use stdout or stderr");
    std::size_t count = 10;
    if (query.count("tail")) {
        const std::string& text = query["tail"];
        if (text.empty() || text.size() > 5 || !std::all_of(text.begin(), text.end(), ::isdigit) || std::stoul(text) > kMaxLines)
            return error(400, "tail=" + escaped(text, name_char) + ": give a number of lines from 0 to 10000");
        count = std::stoul(text);
    }
    std::optional<OutputFile::Cursor> from;
    if (query.count("from")) {
        unsigned long long inode = 0, generation = 0, offset = 0;
        char end = 0;
        if (std::sscanf(query["from"].c_str(), "%llu:%llu:%llu%c", &inode, &generation, &offset, &end) != 3)
            return error(400, "from=" + escaped(query["from"], name_char) + ": give the cursor a reply returned");
        from = OutputFile::Cursor{inode, generation, offset};
    }
    nlohmann::json list = nlohmann::json::array();
    std::size_t budget = kReplyBytes;
    for (const Member* member : chosen) {
        const OutputFile* file = stream == "stdout" ? member->out : member->err;
        if (file == nullptr && chosen.size() > 1) continue;  // `all`, or instances: those that have one
        if (file == nullptr)
            return error(404, member->name() + " has no " + stream + " file (no '" + stream +
                                  ":' in the config): its output goes to procctl's own");
        const auto lines = from ? file->follow(*from, budget) : file->tail(count, budget);
        budget -= std::min(budget, lines.bytes_read);
        list.push_back({{"name", member->name()},
                        {"path", file->path()},
                        {"lines", lines.lines},
                        {"cursor", std::to_string(lines.next.inode) + ":" + std::to_string(lines.next.generation) + ":" +
                                       std::to_string(lines.next.offset)},
                        {"skipped", lines.skipped}});
    }
    if (list.empty()) return error(404, "none of these programs has a " + stream + " file (no '" + stream + ":' in the config)");
    return ControlReply{200, json_text(list)};
}

// start, stop, restart by name. A stop (and the stop of a restart) waits for the programs that
// wait for this one and are being stopped too: `stop all` goes in reverse order.
void Stack::act(Member& member, const std::string& action, std::uint64_t now) {
    log_.info("{}: {} requested through the control socket", member.name(), action);
    const auto kind = action == "stop" ? UnitEvent::Kind::stop : action == "restart" ? UnitEvent::Kind::restart : UnitEvent::Kind::start;
    apply(member, UnitEvent{kind}, now);
}

}  // namespace hbwatch::tool
