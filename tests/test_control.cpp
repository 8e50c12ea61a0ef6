// The stack's control protocol: every command a client builds is the command the server
// parses, and every request that says no command is refused with its status and its reason.
#include <doctest/doctest.h>

#include <signal.h>

#include <nlohmann/json.hpp>

#include <string>
#include <variant>
#include <vector>

#include "engine/control_command.h"

using hbwatch::tool::ControlCommand;
using hbwatch::tool::ControlError;
using hbwatch::tool::ControlRequest;
using hbwatch::tool::OutputFile;
using hbwatch::tool::parse_command;
using hbwatch::tool::to_request;
using Verb = ControlCommand::Verb;

namespace {

ControlCommand make(Verb verb, std::string name = "all") {
    ControlCommand c;
    c.verb = verb;
    c.name = std::move(name);
    return c;
}

// The refusal a request gets: "STATUS message", or "" when it parses.
std::string refusal(const std::string& method, const std::string& target) {
    const auto parsed = parse_command(ControlRequest{method, target});
    const auto* error = std::get_if<ControlError>(&parsed);
    return error ? std::to_string(error->status) + " " + error->message : "";
}

}  // namespace

TEST_CASE("every command proctab builds is the command procctl parses, with the request the README documents") {
    std::vector<std::pair<ControlCommand, ControlRequest>> cases{
        {make(Verb::list), {"GET", "/v1/programs"}},
        {make(Verb::list, "api"), {"GET", "/v1/programs/api"}},
        {make(Verb::list, "pool@2"), {"GET", "/v1/programs/pool@2"}},
        {make(Verb::start, "api"), {"POST", "/v1/programs/api/start"}},
        {make(Verb::stop, "all"), {"POST", "/v1/programs/all/stop"}},
        {make(Verb::restart, "db"), {"POST", "/v1/programs/db/restart"}},
        {make(Verb::reload), {"POST", "/v1/reload"}},
    };
    ControlCommand hup = make(Verb::signal, "api");
    hup.signal = SIGHUP;
    cases.push_back({hup, {"POST", "/v1/programs/api/signal?signal=HUP"}});
    ControlCommand tail = make(Verb::output, "api");
    tail.tail = 25;
    tail.stderr_stream = true;
    cases.push_back({tail, {"GET", "/v1/programs/api/output?stream=stderr&tail=25"}});
    ControlCommand follow = make(Verb::output, "api");
    follow.from = OutputFile::Cursor{1234, 3, 99};
    cases.push_back({follow, {"GET", "/v1/programs/api/output?stream=stdout&from=1234:3:99"}});
    cases.push_back({make(Verb::page), {"GET", "/"}});
    cases.push_back({make(Verb::metrics), {"GET", "/metrics"}});
    cases.push_back({make(Verb::heartbeats), {"GET", "/v1/heartbeats"}});
    cases.push_back({make(Verb::ports), {"GET", "/v1/ports"}});
    ControlCommand kill = make(Verb::port_kill);
    kill.port = 8080;
    cases.push_back({kill, {"POST", "/v1/ports/8080/kill"}});
    kill.any = true;
    kill.grace = std::chrono::milliseconds(2500);
    cases.push_back({kill, {"POST", "/v1/ports/8080/kill?any=1&grace=2500ms"}});
    for (const auto& entry : cases) {  // not a structured binding: clang 14 cannot capture one in doctest's macros
        const ControlCommand& command = entry.first;
        const ControlRequest& request = entry.second;
        const ControlRequest built = to_request(command);
        CHECK(built.method == request.method);
        CHECK(built.target == request.target);
        const auto parsed = parse_command(built);
        REQUIRE(std::holds_alternative<ControlCommand>(parsed));
        CHECK(std::get<ControlCommand>(parsed) == command);
    }
    // What a client may also write: /v1/programs/all lists every program, tail defaults to 10.
    CHECK(std::get<ControlCommand>(parse_command({"GET", "/v1/programs/all"})) == make(Verb::list));
    CHECK(std::get<ControlCommand>(parse_command({"GET", "/v1/programs/api/output"})).tail == 10);
    CHECK(std::get<ControlCommand>(parse_command({"POST", "/v1/programs/api/signal?signal=SIGKILL"})).signal == SIGKILL);
    // The seed's names for the same resources.
    CHECK(std::get<ControlCommand>(parse_command({"GET", "/api/heartbeat/status"})) == make(Verb::heartbeats));
    CHECK(std::get<ControlCommand>(parse_command({"GET", "/api/ports/status"})) == make(Verb::ports));
    CHECK(std::get<ControlCommand>(parse_command({"POST", "/api/ports/8080/kill"})).port == 8080);
    CHECK(std::get<ControlCommand>(parse_command({"GET", "/index.html"})) == make(Verb::page));
    // As a browser writes names: %-escapes decoded.
    CHECK(std::get<ControlCommand>(parse_command({"POST", "/v1/programs/pool%402/restart"})) == make(Verb::restart, "pool@2"));
    CHECK(refusal("GET", "/v1/programs/a%2Fb") == "400 a broken %-escape (or an escaped '/') in /v1/programs/a%2Fb");
    CHECK(refusal("GET", "/v1/programs/a%zz") == "400 a broken %-escape (or an escaped '/') in /v1/programs/a%zz");
    CHECK(refusal("GET", "/v1/programs/a%00") == "400 a broken %-escape (or an escaped '/') in /v1/programs/a%00");
}

TEST_CASE("each command needs its role: none for the page, read to look, operate to act") {
    using hbwatch::tool::Role;
    using hbwatch::tool::required_role;
    CHECK(required_role(Verb::page) == Role::none);
    for (Verb verb : {Verb::list, Verb::output, Verb::events, Verb::heartbeats, Verb::ports, Verb::metrics}) CHECK(required_role(verb) == Role::read);
    for (Verb verb : {Verb::start, Verb::stop, Verb::restart, Verb::signal, Verb::reload, Verb::port_kill})
        CHECK(required_role(verb) == Role::operate);
    CHECK(refusal("POST", "/v1/ports/0/kill") == "400 port 0: give a TCP port from 1 to 65535");
    CHECK(refusal("POST", "/v1/ports/70000/kill") == "400 port 70000: give a TCP port from 1 to 65535");
    CHECK(refusal("GET", "/v1/ports/80/kill") == "405 GET /v1/ports/80/kill: use POST");
    CHECK(refusal("POST", "/v1/ports/80/kill?any=yes") == "400 any=yes: give 1 or 0");
    CHECK(refusal("POST", "/metrics") == "405 POST /metrics: use GET");
    // What the server may answer from a shared answer, as the stack names its answers.
    CHECK(hbwatch::tool::share_key(make(Verb::metrics)) == "metrics");
    CHECK(hbwatch::tool::share_key(make(Verb::heartbeats)) == "heartbeats");
    CHECK(hbwatch::tool::share_key(make(Verb::ports)) == "ports");
    CHECK(hbwatch::tool::share_key(make(Verb::list)).empty());
    CHECK(hbwatch::tool::share_key(make(Verb::port_kill)).empty());
}

TEST_CASE("a request that says no command is refused with its status and what to do, and never echoes raw bytes") {
    CHECK(refusal("GET", "/v1/reload") == "405 GET /v1/reload: use POST");
    CHECK(refusal("POST", "/v1/programs") == "405 POST /v1/programs: use GET");
    CHECK(refusal("DELETE", "/v1/programs/api/output") == "405 DELETE /v1/programs/api/output: use GET");
    CHECK(refusal("GET", "/v1/programs/api/stop") == "405 GET /v1/programs/api/stop: use POST");
    CHECK(refusal("GET", "/v2/programs") ==
          "404 no such path: /v2/programs (the API is /v1/programs[/NAME[/start|stop|restart|signal|output]], /v1/events, /v1/reload, /v1/heartbeats, /v1/ports[/N/kill] and /metrics)");
    CHECK(refusal("GET", "/v1/programs/a/b/c").starts_with("404 no such path: /v1/programs/a/b/c "));
    CHECK(refusal("POST", "/v1/programs/api/explode") == "404 no action 'explode': use start, stop, restart, signal or output");
    CHECK(refusal("POST", "/v1/programs/api/signal?signal=STOP") ==
          "400 signal=STOP is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL (give ?signal=NAME)");
    CHECK(refusal("POST", "/v1/programs/api/signal") ==
          "400 signal= is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL (give ?signal=NAME)");
    CHECK(refusal("GET", "/v1/programs/api/output?stream=stdin") == "400 stream=stdin: use stdout or stderr");
    CHECK(refusal("GET", "/v1/programs/api/output?tail=10001") == "400 tail=10001: give a number of lines from 0 to 10000");
    CHECK(refusal("GET", "/v1/programs/api/output?tail=-1") == "400 tail=-1: give a number of lines from 0 to 10000");
    CHECK(refusal("GET", "/v1/programs/api/output?from=1:2") == "400 from=1:2: give the cursor a reply returned");
    CHECK(refusal("GET", "/v1/programs/api/output?from=1:2:3x") == "400 from=1:2:3x: give the cursor a reply returned");
    // Bytes a client sent are shown escaped, never raw.
    CHECK(refusal("GET", "/v2/\x1b[2J\xff") ==
          "404 no such path: /v2/\\x1b[2J\\xff (the API is /v1/programs[/NAME[/start|stop|restart|signal|output]], /v1/events, /v1/reload, /v1/heartbeats, /v1/ports[/N/kill] and /metrics)");
    CHECK(refusal("POST", "/v1/programs/api/\xe2\x80\xae") == "404 no action '\\xe2\\x80\\xae': use start, stop, restart, signal or output");
    // One rendering of every refusal: {"error": message}, with its status, valid JSON whatever the bytes.
    const auto reply = ControlError{409, "the stack is stopping"}.reply();
    CHECK(reply.status == 409);
    CHECK(nlohmann::json::parse(reply.body) == nlohmann::json{{"error", "the stack is stopping"}});
    CHECK(nlohmann::json::parse(ControlError{404, "bad \xff byte"}.reply().body).contains("error"));
}
