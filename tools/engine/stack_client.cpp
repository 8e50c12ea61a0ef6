// proctab's side of the stack's control socket: status, start, stop, restart, signal, reload
// and tail, each a ControlCommand sent to procctl and its answer shown to an operator, with
// whatever procctl or a program wrote made terminal-safe.
#include "engine/stack_client.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include <hbwatch/error.h>

#include "core/duration.h"
#include "core/table.h"
#include "engine/control.h"
#include "engine/control_command.h"
#include "engine/stack_config.h"
#include "engine/support.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {
namespace {

using json = nlohmann::json;

// One command to the stack's control socket: the JSON it answered (an array, or an object for
// a reload). Throws Error with procctl's message when it refused.
json call(const std::string& run_dir, const ControlCommand& command) {
    const ControlRequest request = to_request(command);
    const auto reply = control_request(run_dir + "/control.sock", request.method, request.target);
    json body = json::parse(reply.body, nullptr, false);
    if (reply.status != 200) {
        const std::string why = body.is_object() && body.contains("error") ? body["error"].get<std::string>() : reply.body;
        throw Error(reply.status == 404 ? ENOENT : EIO, why);
    }
    const bool object = command.verb == ControlCommand::Verb::reload;
    if (object ? !body.is_object() : !body.is_array())
        throw Error(EIO, std::string("the control socket answered something that is not ") + (object ? "an object: " : "a list: ") +
                             reply.body);
    return body;
}

ControlCommand command(ControlCommand::Verb verb, const std::string& name = "all") {
    ControlCommand c;
    c.verb = verb;
    c.name = name;
    return c;
}

// "ok 0.2s ago", "hung 31s ago", "-": a program's heartbeat entry, as the status line shows it.
std::string heartbeat_column(const json& program) {
    if (!program["heartbeats"].is_array() || program["heartbeats"].empty()) return "-";
    const auto& first = program["heartbeats"][0];
    std::string text = first["state"].get<std::string>() + " " +
                       human_duration(std::chrono::milliseconds(
                           static_cast<long>(first["since_beat_seconds"].get<double>() * 1000))) +
                       " ago";
    if (program["heartbeats"].size() > 1) text.append(" +").append(std::to_string(program["heartbeats"].size() - 1));
    return text;
}

// Why a waiting program waits, or its last exit.
std::string note_column(const json& program) {
    if (program["waiting_for"].is_array() && !program["waiting_for"].empty()) {
        std::string text = "waits for";
        for (const auto& dependency : program["waiting_for"])
            text.append(" ").append(shown_name(dependency["name"].get<std::string>())).append(" (").append(dependency["state"].get<std::string>()).append(")");
        return text;
    }
    std::string text = program["last_exit"].is_null() ? "-" : program["last_exit"].get<std::string>();
    if (program.contains("status") && program["status"].is_string())  // what it said (sd_notify STATUS=)
        text = "\"" + terminal_safe(program["status"].get<std::string>()) + "\"" + (program["last_exit"].is_null() ? "" : "; last exit: " + text);
    if (program.contains("notify") && program["notify"]["state"].is_string())  // it said RELOADING=1 or STOPPING=1
        text = "(" + terminal_safe(program["notify"]["state"].get<std::string>()) + ", it says) " + text;
    if (program.value("retiring", false)) text = "(removed or replaced by a reload) " + text;
    return text;
}

// proctab status [NAME...]: each program's state, pid, uptime, restarts and last exit.

}  // namespace

void check_program_name(const std::string& name) {
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return name_char(static_cast<unsigned char>(c)); }) ||
        name.find('/') != std::string::npos)
        throw Error(EINVAL, "'" + shown_name(name) + "' is not a program name: use letters, digits and . _ - : @ +");
}

int stack_status(const std::string& run_dir, const std::vector<std::string>& names, bool as_json) {
    json programs = json::array();
    if (names.empty()) programs = call(run_dir, command(ControlCommand::Verb::list));
    for (const auto& name : names) check_program_name(name);
    for (const auto& name : names)
        for (auto& p : call(run_dir, command(ControlCommand::Verb::list, name))) programs.push_back(p);
    bool all_ready = true;
    for (const auto& p : programs) all_ready = all_ready && p["state"] == "ready";
    if (as_json) {
        std::cout << programs.dump(2) << "\n";
    } else {
        std::printf("%-20s %-9s %8s %10s %8s  %-16s %s\n", "PROGRAM", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT",
                    "STATUS OR LAST EXIT");
        for (const auto& p : programs) {
            const std::string uptime = p["uptime_seconds"].is_null()
                                           ? "-"
                                           : human_duration(std::chrono::milliseconds(
                                                 static_cast<long>(p["uptime_seconds"].get<double>() * 1000)));
            std::printf("%-20s %-9s %8s %10s %8d  %-16s %s\n", shown_name(p["name"].get<std::string>()).c_str(),
                        p["state"].get<std::string>().c_str(),
                        p["pid"].is_null() ? "-" : std::to_string(p["pid"].get<int>()).c_str(), uptime.c_str(),
                        p["restarts"].get<int>(), heartbeat_column(p).c_str(), note_column(p).c_str());
        }
    }
    return all_ready ? kExitOk : kExitNotRunning;
}

// proctab start|stop|restart NAME...: asks procctl, prints each program's state after it.
int stack_action(const std::string& run_dir, const std::string& action, const std::vector<std::string>& names) {
    const auto verb = action == "stop" ? ControlCommand::Verb::stop : action == "restart" ? ControlCommand::Verb::restart : ControlCommand::Verb::start;
    for (const auto& name : names) check_program_name(name);
    for (const auto& name : names) {  // every name known before anything is done
        if (name == "all") continue;
        const json found = call(run_dir, command(ControlCommand::Verb::list, name));
        if (std::all_of(found.begin(), found.end(), [](const json& p) { return p.value("retiring", false); }))
            throw Error(ENOENT, "'" + shown_name(name) + "' is being removed by a reload: it takes no requests");
    }
    for (const auto& name : names)
        for (const auto& p : call(run_dir, command(verb, name)))
            std::printf("%s: %s\n", shown_name(p["name"].get<std::string>()).c_str(), p["state"].get<std::string>().c_str());
    return kExitOk;
}

// proctab signal NAME SIGNAL: the signal to each running process of NAME.
int stack_signal(const std::string& run_dir, const std::string& name, const std::string& signal) {
    check_program_name(name);
    const auto number = signal_by_name(signal);
    if (!number) throw Error(EINVAL, "'" + shown_name(signal) + "' is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL");
    const std::string sig = signal_name(*number);
    ControlCommand signal_command = command(ControlCommand::Verb::signal, name);
    signal_command.signal = *number;
    for (const auto& p : call(run_dir, signal_command))
        if (!p["pid"].is_null()) std::printf("%s: %s sent to pid %d\n", shown_name(p["name"].get<std::string>()).c_str(), sig.c_str(), p["pid"].get<int>());
    return kExitOk;
}

// proctab reload: procctl reads its config again; what it added, removed, changed, kept.
int stack_reload(const std::string& run_dir) {
    const json report = call(run_dir, command(ControlCommand::Verb::reload));
    for (const char* what : {"added", "removed", "changed", "unchanged"}) {
        std::string names;
        for (const auto& name : report[what]) names.append(names.empty() ? "" : ", ").append(shown_name(name.get<std::string>()));
        std::printf("%-10s %s\n", (std::string(what) + ":").c_str(), names.empty() ? "-" : names.c_str());
    }
    return kExitOk;
}

// proctab tail NAME [-n N] [-f] [--stderr]: the last lines of a program's output file; with
// -f, then what it writes, until interrupted or procctl stops.
int stack_tail(const std::string& run_dir, const std::string& name, unsigned lines, bool follow, bool stderr_stream) {
    check_program_name(name);
    ControlCommand tail = command(ControlCommand::Verb::output, name);
    tail.stderr_stream = stderr_stream;
    tail.tail = lines;
    json units = call(run_dir, tail);
    const bool several = units.size() > 1;
    // On a terminal, each line is cut to its width: a long line padded with spaces must not
    // wrap into what looks like a row of its own (another program's, with a forged prefix).
    winsize window{};
    const std::size_t columns = ::isatty(STDOUT_FILENO) && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &window) == 0 && window.ws_col > 0
                                    ? window.ws_col
                                    : 0;
    auto print = [&](const json& unit) {
        const std::string prefix = several ? shown_name(unit["name"].get<std::string>()) + " | " : "";
        if (unit["skipped"].get<bool>())
            std::fprintf(stderr, "proctab: %s: lines were rotated away before they could be shown\n",
                         shown_name(unit["name"].get<std::string>()).c_str());
        for (const auto& line : unit["lines"]) {
            std::string text = prefix + terminal_safe(line.get<std::string>());
            if (columns > 0) text = fit_columns(text, columns);
            std::printf("%s\n", text.c_str());
        }
        std::fflush(stdout);
    };
    for (const auto& unit : units) print(unit);
    while (follow) {
        ::poll(nullptr, 0, 250);
        try {
            for (auto& unit : units) {
                ControlCommand more = command(ControlCommand::Verb::output, unit["name"].get<std::string>());
                more.stderr_stream = stderr_stream;
                more.from = parse_cursor(unit["cursor"].get<std::string>());
                if (!more.from) throw Error(EIO, "procctl answered a cursor that is not INODE:GENERATION:OFFSET");
                const json next = call(run_dir, more);
                for (const auto& update : next) {
                    print(update);
                    unit["cursor"] = update["cursor"];
                }
            }
        } catch (const Error& e) {
            std::fprintf(stderr, "proctab: stopped following: %s\n", terminal_safe(e.what()).c_str());
            return kExitFailure;
        }
    }
    return kExitOk;
}

// One event as an operator reads it: local time, kind, unit, pid, and what happened.
std::string event_line(const json& event) {
    if (event.contains("missed"))
        return "(" + std::to_string(event["missed"].get<std::uint64_t>()) + " earlier events were no longer kept)";
    std::string time = event.value("time", "");
    if (time.size() >= 23) time = time.substr(0, 10) + " " + time.substr(11, 12);  // 2026-12-06 02:24:57.123 (UTC)
    std::string unit = event.value("instance", "");
    if (unit.empty()) unit = "procctl";
    char head[160];
    std::snprintf(head, sizeof head, "%s  %-19s %-14s", time.c_str(), event.value("kind", "?").c_str(), shown_name(unit).c_str());
    return terminal_safe(std::string(head) + " " + event.value("message", ""));
}

// proctab events [-f] [--json]: the events procctl kept, oldest first; with -f, then each new
// one as it happens, until interrupted or procctl stops.
int stack_events(const std::string& run_dir, bool follow, bool as_json) {
    auto show = [&](const json& event) {
        if (as_json) std::printf("%s\n", event.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
        else std::printf("%s\n", event_line(event).c_str());
        std::fflush(stdout);
        return true;
    };
    ControlCommand events = command(ControlCommand::Verb::events);
    events.limit = kMaxEventsPerReply;
    events.follow = follow;
    const ControlRequest request = to_request(events);
    if (follow) {
        const std::string socket = run_dir + "/control.sock";
        control_stream(socket, request.target, [&](const std::string& line) {
            const json event = json::parse(line, nullptr, false);
            if (event.is_object()) show(event);
            return true;
        });
        // The stream ends when procctl stops, or when it drops a reader that fell behind.
        bool still_there = true;
        try {
            (void)control_request(socket, "GET", "/v1/events?since=0&limit=1");
        } catch (const Error&) {
            still_there = false;
        }
        if (still_there)
            throw Error(EIO, "procctl ended the stream while it runs: this reader fell over 1 MiB behind, or did not read for 5 s. "
                             "Run proctab events -f again");
        std::fprintf(stderr, "proctab: procctl ended the stream (it stopped)\n");
        return kExitOk;
    }
    const auto reply = control_request(run_dir + "/control.sock", request.method, request.target);
    const json body = json::parse(reply.body, nullptr, false);
    if (reply.status != 200 || !body.is_object() || !body["events"].is_array()) {
        const std::string why = body.is_object() && body.contains("error") ? body["error"].get<std::string>() : reply.body;
        throw Error(EIO, why);
    }
    if (body.value("missed", 0) > 0) show(json{{"missed", body["missed"]}});
    for (const auto& event : body["events"]) show(event);
    return kExitOk;
}

}  // namespace hbwatch::tool
