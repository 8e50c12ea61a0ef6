#include "engine/control_command.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/duration.h"
#include "core/table.h"
#include "engine/stack_config.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {
namespace {

constexpr const char* kVerbs[] = {"", "start", "stop", "restart", "signal", "output", "", "", "", "", "", "", ""};

bool whole_number(const std::string& text, std::uint64_t high, std::uint64_t& out) {
    if (text.empty() || text.size() > 19 || !std::all_of(text.begin(), text.end(), ::isdigit)) return false;
    out = std::stoull(text);
    return out <= high;
}

// A path segment or query value with its %XX escapes decoded (a browser writes "api@1" as
// "api%401"); nullopt for a broken escape, or one that decodes to '/' or NUL.
std::optional<std::string> percent_decoded(const std::string& text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            out += text[i];
            continue;
        }
        if (i + 2 >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(text[i + 2])))
            return std::nullopt;
        const char c = static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
        if (c == '/' || c == '\0') return std::nullopt;
        out += c;
        i += 2;
    }
    return out;
}

}  // namespace

ControlReply ControlError::reply() const {
    const nlohmann::json body{{"error", message}};
    return ControlReply{status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

std::string shown_target(const std::string& text) {
    return escaped(text, [](unsigned char c) { return c > 0x20 && c < 0x7f && c != '\\'; });
}

std::optional<OutputFile::Cursor> parse_cursor(const std::string& text) {
    unsigned long long inode = 0, generation = 0, offset = 0;
    char end = 0;
    if (std::sscanf(text.c_str(), "%llu:%llu:%llu%c", &inode, &generation, &offset, &end) != 3) return std::nullopt;
    return OutputFile::Cursor{inode, generation, offset};
}

std::string cursor_text(const OutputFile::Cursor& cursor) {
    return std::to_string(cursor.inode) + ":" + std::to_string(cursor.generation) + ":" + std::to_string(cursor.offset);
}

Role required_role(ControlCommand::Verb verb) noexcept {
    using Verb = ControlCommand::Verb;
    switch (verb) {
        case Verb::page: return Role::none;
        case Verb::list:
        case Verb::output:
        case Verb::events:
        case Verb::heartbeats:
        case Verb::ports:
        case Verb::metrics: return Role::read;
        case Verb::start:
        case Verb::stop:
        case Verb::restart:
        case Verb::signal:
        case Verb::reload:
        case Verb::port_kill: return Role::operate;
    }
    return Role::operate;
}

std::string share_key(const ControlCommand& command) {
    using Verb = ControlCommand::Verb;
    switch (command.verb) {
        case Verb::metrics: return "metrics";
        case Verb::heartbeats: return "heartbeats";
        case Verb::ports: return "ports";
        default: return "";
    }
}

std::variant<ControlCommand, ControlError> parse_command(const ControlRequest& request) {
    const std::string shown = shown_target(request.target);
    const auto question = request.target.find('?');
    const std::string path = request.target.substr(0, question);
    std::map<std::string, std::string> query;
    if (question != std::string::npos)
        for (std::size_t at = question + 1; at <= request.target.size();) {
            auto end = request.target.find('&', at);
            if (end == std::string::npos) end = request.target.size();
            const std::string pair = request.target.substr(at, end - at);
            const auto equals = pair.find('=');
            const auto value = percent_decoded(equals == std::string::npos ? "" : pair.substr(equals + 1));
            if (!value) return ControlError{400, "a broken %-escape in the query of " + shown};
            if (!pair.empty()) query[pair.substr(0, equals)] = *value;
            at = end + 1;
        }
    std::vector<std::string> parts;
    for (std::size_t at = 0; at <= path.size();) {
        const auto slash = path.find('/', at);
        const auto end = slash == std::string::npos ? path.size() : slash;
        if (end > at) {
            auto part = percent_decoded(path.substr(at, end - at));
            if (!part) return ControlError{400, "a broken %-escape (or an escaped '/') in " + shown};
            parts.push_back(std::move(*part));
        }
        at = end + 1;
    }
    auto method = [&](const char* wanted) -> std::optional<ControlError> {
        if (request.method == wanted) return std::nullopt;
        return ControlError{405, request.method + " " + shown + ": use " + wanted};
    };
    ControlCommand command;
    auto is = [&](std::initializer_list<const char*> words) {
        return parts.size() == words.size() && std::equal(words.begin(), words.end(), parts.begin());
    };
    if (parts.empty() || is({"index.html"})) {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::page;
        return command;
    }
    if (is({"metrics"})) {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::metrics;
        return command;
    }
    // The seed's names (api/...) beside the API's own.
    if (is({"v1", "heartbeats"}) || is({"api", "heartbeat", "status"})) {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::heartbeats;
        return command;
    }
    if (is({"v1", "ports"}) || is({"api", "ports", "status"})) {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::ports;
        return command;
    }
    if (parts.size() == 4 && (parts[0] == "v1" || parts[0] == "api") && parts[1] == "ports" && parts[3] == "kill") {
        if (auto wrong = method("POST")) return *wrong;
        command.verb = ControlCommand::Verb::port_kill;
        std::uint64_t port = 0;
        if (!whole_number(parts[2], 65535, port) || port == 0)
            return ControlError{400, "port " + shown_name(parts[2]) + ": give a TCP port from 1 to 65535"};
        command.port = static_cast<std::uint16_t>(port);
        if (query.count("any")) {
            if (query["any"] != "1" && query["any"] != "0") return ControlError{400, "any=" + shown_name(query["any"]) + ": give 1 or 0"};
            command.any = query["any"] == "1";
        }
        if (query.count("grace")) {
            try {
                command.grace = parse_duration_in(query["grace"], "grace", kPortKillGraceRange);
            } catch (const std::exception& e) {
                return ControlError{400, "grace=" + shown_name(query["grace"]) + ": " + e.what()};
            }
        }
        return command;
    }
    if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "reload") {
        if (auto wrong = method("POST")) return *wrong;
        command.verb = ControlCommand::Verb::reload;
        return command;
    }
    if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "events") {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::events;
        if (query.count("since") && !whole_number(query["since"], UINT64_MAX / 2, command.since))
            return ControlError{400, "since=" + shown_name(query["since"]) + ": give the cursor (`next`) a reply returned, or 0"};
        std::uint64_t limit = command.limit;
        if (query.count("limit") && (!whole_number(query["limit"], kMaxEventsPerReply, limit) || limit == 0))
            return ControlError{400, "limit=" + shown_name(query["limit"]) + ": give a number of events from 1 to " +
                                         std::to_string(kMaxEventsPerReply)};
        command.limit = static_cast<std::size_t>(limit);
        if (query.count("follow")) {
            if (query["follow"] != "1" && query["follow"] != "0") return ControlError{400, "follow=" + shown_name(query["follow"]) + ": give 1 or 0"};
            command.follow = query["follow"] == "1";
        }
        return command;
    }
    if (parts.size() < 2 || parts[0] != "v1" || parts[1] != "programs" || parts.size() > 4)
        return ControlError{404, "no such path: " + shown +
                                     " (the API is /v1/programs[/NAME[/start|stop|restart|signal|output]], /v1/events, /v1/reload, "
                                     "/v1/heartbeats, /v1/ports[/N/kill] and /metrics)"};
    if (parts.size() >= 3) command.name = parts[2];
    if (parts.size() <= 3) {
        if (auto wrong = method("GET")) return *wrong;
        return command;
    }
    const std::string& action = parts[3];
    if (action == "output") {
        if (auto wrong = method("GET")) return *wrong;
        command.verb = ControlCommand::Verb::output;
        const std::string stream = query.count("stream") ? query["stream"] : "stdout";
        if (stream != "stdout" && stream != "stderr") return ControlError{400, "stream=" + shown_name(stream) + ": use stdout or stderr"};
        command.stderr_stream = stream == "stderr";
        if (query.count("tail")) {
            const std::string& text = query["tail"];
            if (text.empty() || text.size() > 5 || !std::all_of(text.begin(), text.end(), ::isdigit) || std::stoul(text) > kMaxTailLines)
                return ControlError{400, "tail=" + shown_name(text) + ": give a number of lines from 0 to 10000"};
            command.tail = std::stoul(text);
        }
        if (query.count("from")) {
            command.from = parse_cursor(query["from"]);
            if (!command.from) return ControlError{400, "from=" + shown_name(query["from"]) + ": give the cursor a reply returned"};
        }
        return command;
    }
    if (auto wrong = method("POST")) return *wrong;
    if (action == "start") command.verb = ControlCommand::Verb::start;
    else if (action == "stop") command.verb = ControlCommand::Verb::stop;
    else if (action == "restart") command.verb = ControlCommand::Verb::restart;
    else if (action == "signal") command.verb = ControlCommand::Verb::signal;
    else return ControlError{404, "no action '" + shown_name(action) + "': use start, stop, restart, signal or output"};
    if (command.verb == ControlCommand::Verb::signal) {
        const auto sig = signal_by_name(query["signal"]);
        if (!sig)
            return ControlError{400, "signal=" + shown_name(query["signal"]) +
                                         " is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL (give ?signal=NAME)"};
        command.signal = *sig;
    }
    return command;
}

ControlRequest to_request(const ControlCommand& command) {
    using Verb = ControlCommand::Verb;
    if (command.verb == Verb::reload) return ControlRequest{"POST", "/v1/reload"};
    if (command.verb == Verb::page) return ControlRequest{"GET", "/"};
    if (command.verb == Verb::metrics) return ControlRequest{"GET", "/metrics"};
    if (command.verb == Verb::heartbeats) return ControlRequest{"GET", "/v1/heartbeats"};
    if (command.verb == Verb::ports) return ControlRequest{"GET", "/v1/ports"};
    if (command.verb == Verb::port_kill) {
        std::string target = "/v1/ports/" + std::to_string(command.port) + "/kill";
        std::string query;
        if (command.any) query += "&any=1";
        if (command.grace) query += "&grace=" + std::to_string(command.grace->count()) + "ms";
        if (!query.empty()) target += "?" + query.substr(1);
        return ControlRequest{"POST", target};
    }
    if (command.verb == Verb::events)
        return ControlRequest{"GET", "/v1/events?since=" + std::to_string(command.since) + "&limit=" + std::to_string(command.limit) +
                                         (command.follow ? "&follow=1" : "")};
    std::string target = "/v1/programs";
    if (command.name != "all" || command.verb != Verb::list) target += "/" + command.name;
    switch (command.verb) {
        case Verb::list: return ControlRequest{"GET", target};
        case Verb::output:
            target += std::string("/output?stream=") + (command.stderr_stream ? "stderr" : "stdout");
            target += command.from ? "&from=" + cursor_text(*command.from) : "&tail=" + std::to_string(command.tail);
            return ControlRequest{"GET", target};
        case Verb::signal: return ControlRequest{"POST", target + "/signal?signal=" + signal_name(command.signal).substr(3)};
        default: return ControlRequest{"POST", target + "/" + kVerbs[static_cast<int>(command.verb)]};
    }
}

}  // namespace hbwatch::tool
