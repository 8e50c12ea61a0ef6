// Events and alerts: the typed stream, its ring and cursor, the alert book, and the sinks on
// real processes: an exec hook that records what happened to a program checkproc stopped, a
// webhook to a server in this test that fails, hangs and recovers, the real Alertmanager, and
// proctab events -f following a stop live.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/table.h"
#include "engine/event.h"
#include "engine/alert_book.h"
#include "engine/event_sinks.h"
#include "engine/http_url.h"
#include "engine/stack_config.h"
#include "stack_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;
using namespace hbtest::stack;
using hbwatch::tool::AlertBook;
using hbwatch::tool::Event;
using hbwatch::tool::EventKind;
using hbwatch::tool::EventRing;
using hbwatch::tool::make_event;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

// The kinds a hook recorded for one program, in order ("kind" is each line's first word).
std::vector<std::string> kinds_in(const fs::path& file) {
    std::vector<std::string> kinds;
    for (const auto& line : lines_of(read_file(file))) kinds.push_back(line.substr(0, line.find(' ')));
    return kinds;
}

std::string joined(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
    return out;
}

// A small HTTP server on loopback that answers each POST as the script says, in turn (the
// last entry repeats): "500", "hang" (reads the request, never answers), "200". It records
// every body it was sent.
class ScriptedServer {
public:
    explicit ScriptedServer(std::vector<std::string> script, int port = 0) : script_(std::move(script)) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        const int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(static_cast<std::uint16_t>(port));
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
        REQUIRE(::listen(fd_, 16) == 0);
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
        port_ = ntohs(address.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~ScriptedServer() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
        for (int fd : hanging_) ::close(fd);
    }
    [[nodiscard]] int port() const { return port_; }
    [[nodiscard]] std::vector<nlohmann::json> delivered() {
        std::lock_guard lock(mutex_);
        return delivered_;
    }
    [[nodiscard]] std::size_t requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }

private:
    void serve() {
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (client < 0) continue;
            std::string request;
            char buffer[4096];
            std::size_t need = std::string::npos;
            while (need == std::string::npos || request.size() < need) {
                pollfd c{client, POLLIN, 0};
                if (::poll(&c, 1, 2000) <= 0) break;
                const ssize_t n = ::read(client, buffer, sizeof buffer);
                if (n <= 0) break;
                request.append(buffer, static_cast<std::size_t>(n));
                const auto end = request.find("\r\n\r\n");
                if (need == std::string::npos && end != std::string::npos) {
                    std::smatch m;
                    const std::string head = request.substr(0, end);
                    const std::size_t length =
                        std::regex_search(head, m, std::regex("[Cc]ontent-[Ll]ength: *([0-9]+)")) ? std::stoul(m[1]) : 0;
                    need = end + 4 + length;
                }
            }
            std::string action;
            {
                std::lock_guard lock(mutex_);
                action = script_[std::min(requests_, script_.size() - 1)];
                ++requests_;
                if (action == "200" && need != std::string::npos)
                    delivered_.push_back(nlohmann::json::parse(request.substr(request.find("\r\n\r\n") + 4), nullptr, false));
            }
            if (action == "hang") {
                hanging_.push_back(client);  // open, unanswered, until the test ends
                continue;
            }
            const std::string reply = "HTTP/1.1 " + action + (action == "200" ? " OK" : " Internal Server Error") +
                                      "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            (void)!::write(client, reply.data(), reply.size());
            ::close(client);
        }
    }

    std::vector<std::string> script_;
    int fd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mutex_;
    std::size_t requests_ = 0;
    std::vector<nlohmann::json> delivered_;
    std::vector<int> hanging_;
};

// A hook that appends "KIND INSTANCE MESSAGE" to `file`, one line per event.
fs::path recording_hook(const fs::path& dir, const fs::path& file) {
    const fs::path hook = dir / "record.sh";
    std::ofstream(hook) << "#!/bin/sh\necho \"$HBWATCH_EVENT $HBWATCH_INSTANCE $HBWATCH_PID $HBWATCH_MESSAGE\" >> " << file.string()
                        << "\n";
    fs::permissions(hook, fs::perms::owner_all);
    return hook;
}

}  // namespace

TEST_CASE("the event ring pages with a cursor and says how many fell off before they were read") {
    EventRing ring(3);
    for (int i = 0; i < 5; ++i) {
        Event e = make_event(EventKind::started, "api@" + std::to_string(i), 100 + i, "started");
        ring.push(e);
    }
    auto page = ring.since(0, 10);  // from the oldest kept: 3, 4, 5
    REQUIRE(page.events.size() == 3);
    CHECK(page.events.front().seq == 3);
    CHECK(page.events.front().program == "api");
    CHECK(page.events.front().instance == "api@2");
    CHECK(page.next == 6);
    CHECK(page.missed == 0);
    page = ring.since(1, 2);  // 1 and 2 fell off
    CHECK(page.missed == 2);
    REQUIRE(page.events.size() == 2);
    CHECK(page.events[0].seq == 3);
    CHECK(page.next == 5);
    page = ring.since(6, 10);  // nothing new
    CHECK(page.events.empty());
    CHECK(page.next == 6);
    page = ring.since(999, 10);  // a cursor from an earlier procctl: from now on
    CHECK(page.events.empty());
    CHECK(page.next == 6);
}

TEST_CASE("an alert fires on a hang, is re-sent while it holds, and resolves on recovery or once quiet") {
    AlertBook book(5min);
    Event hung = make_event(EventKind::heartbeat_hung, "api@1", 42, "api@1's heartbeat is hung");
    CHECK(book.on(hung));
    REQUIRE(book.alerts().size() == 1);
    CHECK(book.alerts()[0].name == "HbwatchProgramHung");
    auto payload = book.payload(hung.wall_ns, 60'000'000'000ull);
    REQUIRE(payload.size() == 1);
    CHECK(payload[0]["labels"]["alertname"] == "HbwatchProgramHung");
    CHECK(payload[0]["labels"]["program"] == "api");
    CHECK(payload[0]["labels"]["unit"] == "api@1");
    CHECK(payload[0]["labels"]["severity"] == "critical");
    CHECK(payload[0]["labels"]["host"] == hbwatch::tool::host_name());
    CHECK(payload[0]["endsAt"].get<std::string>() > payload[0]["startsAt"].get<std::string>());  // firing: ends ahead
    CHECK(book.on(make_event(EventKind::heartbeat_recovered, "api@1", 42, "back")));
    CHECK(book.alerts()[0].resolved);
    payload = book.payload(hung.wall_ns + 1'000'000'000ull, 60'000'000'000ull);
    CHECK(payload[0]["endsAt"].get<std::string>() <= hbwatch::tool::rfc3339(hung.wall_ns + 1'000'000'000ull));
    const auto told = book.version();
    CHECK(book.on(hung));  // it hangs again before Alertmanager heard of the recovery: the one alert fires again
    REQUIRE(book.alerts().size() == 1);
    CHECK_FALSE(book.alerts()[0].resolved);
    book.forget_resolved(told);  // not resolved now: kept
    CHECK(book.alerts().size() == 1);
    CHECK(book.on(make_event(EventKind::heartbeat_recovered, "api@1", 42, "back")));
    book.forget_resolved(told);  // resolved after the post of `told`: kept until the next post says so
    CHECK(book.alerts().size() == 1);
    book.forget_resolved(book.version());
    CHECK(book.alerts().empty());

    // A crash loop resolves once no start came for the window.
    Event storm = make_event(EventKind::restart_storm, "db", 7, "db is crash-looping");
    CHECK(book.on(storm));
    CHECK(book.next_expiry() == storm.mono_ns + 300'000'000'000ull);
    CHECK_FALSE(book.expire(storm.mono_ns + 299'000'000'000ull, storm.wall_ns));
    CHECK(book.expire(storm.mono_ns + 301'000'000'000ull, storm.wall_ns));
    CHECK(book.alerts()[0].resolved);
    // Other kinds raise nothing.
    CHECK_FALSE(book.on(make_event(EventKind::exited, "db", 7, "exited")));
}

TEST_CASE("URLs: http only, credentials never shown, and each mistake named") {
    using hbwatch::tool::parse_http_url;
    const auto url = parse_http_url("http://alice:s3cret@127.0.0.1:9093/prefix/", "alertmanager url");
    CHECK(url.host == "127.0.0.1");
    CHECK(url.port == "9093");
    CHECK(url.target_under("/api/v2/alerts") == "/prefix/api/v2/alerts");
    CHECK(url.basic_auth() == "YWxpY2U6czNjcmV0");
    CHECK(hbwatch::tool::redacted_url("http://alice:s3cret@host/x") == "http://***@host/x");
    CHECK(hbwatch::tool::redacted_url("http://tok3n@host/x") == "http://***@host/x");        // a token alone
    CHECK(hbwatch::tool::redacted_url("http://u:p@ss@host/x") == "http://***@host/x");       // a '@' in the password
    CHECK(hbtest::error_of([] { (void)parse_http_url("http://user:pa/ss@host/x", "u"); }).find("pa/ss") == std::string::npos);
    CHECK(hbwatch::tool::redacted_url("http://host/x") == "http://host/x");
    CHECK(parse_http_url("http://[::1]:8080", "u").host == "::1");
    CHECK(hbtest::error_of([] { (void)parse_http_url("https://u:pw@host", "webhook url"); }).find("'https://***@host' uses https") !=
          std::string::npos);
    CHECK(hbtest::error_of([] { (void)parse_http_url("http://host:99999/", "webhook url"); }).find("port") != std::string::npos);
    CHECK(hbtest::error_of([] { (void)parse_http_url("ftp://host", "webhook url"); }).find("not an http:// URL") != std::string::npos);
    CHECK(hbtest::error_of([] { (void)parse_http_url("http://host/a b", "webhook url"); }).find("space") != std::string::npos);
}

TEST_CASE("the events section is read whole, and each mistake names its line and what is allowed") {
    using hbwatch::tool::parse_stack_config;
    const auto config = parse_stack_config("events:\n"
                                           "  keep: 50\n"
                                           "  restart_storm: {restarts: 3, window: 1m}\n"
                                           "  hooks:\n"
                                           "    - command: [/bin/true, x]\n"
                                           "      kinds: [exited, gave_up]\n"
                                           "      programs: [api]\n"
                                           "      timeout: 2s\n"
                                           "      max_running: 1\n"
                                           "  webhooks:\n"
                                           "    - {url: \"http://127.0.0.1:1/hook\", retries: 2, queue: 10}\n"
                                           "  alertmanager: {url: \"http://127.0.0.1:9093\", resend: 30s}\n"
                                           "programs:\n  api: {command: [x]}\n",
                                           "s.yaml");
    CHECK(config.events.keep == 50);
    CHECK(config.events.storm_restarts == 3);
    REQUIRE(config.events.hooks.size() == 1);
    CHECK(config.events.hooks[0].filter.kinds.count(EventKind::gave_up) == 1);
    CHECK(config.events.hooks[0].filter.programs.count("api") == 1);
    CHECK(config.events.hooks[0].max_running == 1);
    REQUIRE(config.events.webhooks.size() == 1);
    CHECK(config.events.webhooks[0].queue == 10);
    REQUIRE(config.events.alertmanager);
    CHECK(config.events.alertmanager->resend == 30s);
    auto error = [](const std::string& events) {
        return hbtest::error_of([&] { (void)parse_stack_config("events:\n" + events + "programs:\n  a: {command: [x]}\n", "s.yaml"); });
    };
    CHECK(error("  hooks:\n    - {command: [x], kinds: [exploded]}\n").find("s.yaml:3:") == 0);
    CHECK(error("  hooks:\n    - {command: [x], kinds: [exploded]}\n").find("'exploded' is not an event kind: the kinds are started,") !=
          std::string::npos);
    CHECK(error("  webhooks:\n    - {url: \"https://x\"}\n").find("uses https") != std::string::npos);
    CHECK(error("  alertmanager: {url: \"http://x\", resend: 10m}\n").find("resend") != std::string::npos);
    CHECK(error("  hooks:\n    - {kinds: [exited]}\n").find("command is missing") != std::string::npos);
    CHECK(error("  pager: yes\n").find("unknown key 'pager'") != std::string::npos);
}

TEST_CASE("a hung program stopped by checkproc: every event in order, its exit says why, and checkproc tells its own") {
    hbtest::ScratchKey scratch;
    Scratch dir;
    const std::string key = hbwatch::format_key(scratch.key());
    const fs::path recorded = dir.dir / "events.txt";
    const fs::path checkproc_events = dir.dir / "checkproc-events.jsonl";
    const fs::path checkproc_hooked = dir.dir / "checkproc-hook.txt";
    const fs::path hook = recording_hook(dir.dir, recorded);
    const fs::path checkproc_hook = dir.dir / "checkproc-hook.sh";
    std::ofstream(checkproc_hook) << "#!/bin/sh\necho \"$HBWATCH_EVENT $HBWATCH_PROGRAM $HBWATCH_DETAILS\" >> " << checkproc_hooked.string()
                                  << "\n";
    fs::permissions(checkproc_hook, fs::perms::owner_all);
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  hooks:\n"
                          << "    - command: [" << hook.string() << "]\n"
                          << "      programs: [hangs]\n"
                          << "      max_running: 1\n"  // one at a time: the file is in the order they happened
                          << "programs:\n"
                          << "  checkproc:\n"
                          << "    command: [" << hbtest::bin("checkproc") << ", --diagnoses, " << std::getenv("HBWATCH_DIAGNOSES") << ", --watch, --grace, 1s, --events, "
                          << checkproc_events.string() << ", --on-event, " << checkproc_hook.string() << "]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "  hangs:\n"
                          // Only its first run hangs: the second beats on, and its heartbeat recovers.
                          << "    command: [sh, -c, \"if mkdir " << (dir.dir / "hung-once").string() << " 2>/dev/null; then exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 3s --hang-after 1s; else exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 10s; fi\"]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "    ready: beat\n"
                          << "    restart_delay: 100ms\n"
                          << "    after: [checkproc]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    const std::vector<std::string> expected = {"started", "ready",  "heartbeat_late", "heartbeat_hung",     "exited",
                                               "backoff", "started", "ready",         "heartbeat_recovered"};
    REQUIRE_MESSAGE(hbtest::eventually([&] { return kinds_in(recorded).size() >= expected.size(); }, 60s),
                    "recorded: " << read_file(recorded) << "\nprocctl: " << stack.output_so_far());
    CHECK(joined(kinds_in(recorded)) == joined(expected));
    const auto lines = lines_of(read_file(recorded));
    // The exit is not a bare "killed by SIGTERM": it says who stopped it and why.
    CHECK_MESSAGE(std::regex_search(lines[4], std::regex("^exited hangs [0-9]+ hangs was killed by SIGTERM after .*: stopped by checkproc "
                                                         "\\(pid [0-9]+\\): hung, last beat [0-9.]+m?s before it exited, timeout 3(\\.0)?s$")),
                  lines[4]);
    CHECK(lines[3].find("heartbeat is hung") != std::string::npos);

    // The same events through the control API, with the reason as data.
    int code = 0;
    std::string text;
    std::tie(code, text) = run({"curl", "-sS", "--max-time", "10", "--unix-socket", (dir.dir / "run" / "control.sock").string(),
                                "http://stack/v1/events?since=0"});
    REQUIRE(code == 0);
    const auto page = nlohmann::json::parse(text);
    bool found = false;
    for (const auto& event : page["events"])
        if (event["kind"] == "exited" && event["instance"] == "hangs") {
            found = true;
            CHECK(event["details"]["reason"] == "checkproc_hang_stop");
            CHECK(event["details"]["signal"] == "SIGTERM");
            CHECK(event["details"]["timeout_seconds"] == 3.0);
            CHECK(event["host"] == hbwatch::tool::host_name());
        }
    CHECK(found);
    CHECK(page["next"].get<std::uint64_t>() == page["events"].back()["seq"].get<std::uint64_t>() + 1);

    // Standalone checkproc told its own: the hang it judged, the SIGTERM, the exit.
    REQUIRE(hbtest::eventually([&] { return read_file(checkproc_events).find("\"kind\":\"exited\"") != std::string::npos; }, 30s));
    std::vector<std::string> checkproc_kinds;
    for (const auto& line : lines_of(read_file(checkproc_events))) {
        const auto event = nlohmann::json::parse(line);
        CHECK(event["program"] == "hangs");
        checkproc_kinds.push_back(event["kind"]);
        if (event["kind"] == "hang_stopped") {
            CHECK(event["details"]["signal"] == "SIGTERM");
            CHECK(event["details"]["timeout_seconds"] == 3.0);
            CHECK(event["details"]["last_beat_seconds"].get<double>() >= 3.0);
        }
    }
    CHECK(joined(checkproc_kinds) == "heartbeat_hung hang_stopped exited");
    REQUIRE(hbtest::eventually([&] { return kinds_in(checkproc_hooked).size() == 3; }, 30s));
    CHECK(joined(kinds_in(checkproc_hooked)) == "heartbeat_hung hang_stopped exited");
    CHECK(read_file(checkproc_hooked).find("\"signal\":\"SIGTERM\"") != std::string::npos);

    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
    // The stop itself went out before procctl exited.
    CHECK(joined(kinds_in(recorded)).find("heartbeat_recovered stopping exited stopped") != std::string::npos);
    CHECK_MESSAGE(stack.output().find("every event was delivered") != std::string::npos, stack.output());
}

TEST_CASE("what a hook leaves running is killed with it, even a process that left its session") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (a cgroup for each hook run)");
        return;
    }
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  hooks:\n"
                          // The hook starts a sleeper in a session of its own, says its pid, and exits.
                          << "    - {command: [sh, -c, \"setsid sleep 777 </dev/null >/dev/null 2>&1 & echo escaped $!\"], "
                          << "kinds: [started]}\n"
                          << "programs:\n"
                          << "  quiet:\n"
                          << "    command: [sleep, \"1000\"]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("says: escaped ", 30s));
    std::smatch found;
    const std::string log = stack.output_so_far();
    REQUIRE(std::regex_search(log, found, std::regex("says: escaped ([0-9]+)")));
    const pid_t sleeper = std::stoi(found[1]);
    // Gone once the hook has exited: its pidfd (or its absence) says so, no sleep.
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, sleeper, 0));
    if (pidfd >= 0) {
        pollfd p{pidfd, POLLIN, 0};
        CHECK_MESSAGE(::poll(&p, 1, 30000) == 1, "the sleeper the hook left behind is still running");
        ::close(pidfd);
    }
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("sinks never stall supervision: a hook that never ends and a webhook that never answers leave restarts and the socket as fast") {
    Scratch dir;
    ScriptedServer silent({"hang"});
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  hooks:\n"
                          << "    - {command: [sleep, \"1000\"], timeout: 1h, max_running: 1}\n"
                          << "  webhooks:\n"
                          << "    - {url: \"http://127.0.0.1:" << silent.port() << "/hook\", timeout: 1m, queue: 5, retries: 0}\n"
                          << "programs:\n"
                          << "  flaps:\n"
                          // Each run lasts over a second, so each restart comes at once (no doubling backoff).
                          << "    command: [sh, -c, \"sleep 1.2; exit 3\"]\n"
                          << "    restart_delay: 0ms\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    // Restarts go on, about every 1.2 s, while the hook and the webhook hold every event they
    // were given.
    REQUIRE_MESSAGE(stack.wait_for_output_count("started flaps as pid", 6, 60s), stack.output());
    const auto before = std::chrono::steady_clock::now();
    int code = 0;
    std::string text;
    std::tie(code, text) = run(proctab(dir, {"status"}));
    CHECK(std::chrono::steady_clock::now() - before < 5s);
    CHECK(text.find("flaps") != std::string::npos);
    CHECK(silent.requests() == 1);  // its one connection, never answered
    // The webhook's queue of 5 overflowed: the drops were counted and said.
    REQUIRE(stack.wait_for_output("its queue of 5 events was full: dropped the", 30s));
    ::kill(stack.pid(), SIGTERM);
    // procctl gives the sinks 2 s, then exits and says what was not delivered.
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
    CHECK(std::regex_search(stack.output(), std::regex("[0-9]+ event\\(s\\) were not delivered by the sinks")));
}

TEST_CASE("a webhook that fails, hangs and recovers gets every event, in order, after retries") {
    Scratch dir;
    ScriptedServer flaky({"500", "hang", "200"});
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  webhooks:\n"
                          << "    - {url: \"http://user:pw@127.0.0.1:" << flaky.port() << "/hook\", timeout: 2s, retries: 5, "
                          << "kinds: [started, stopping, stopped]}\n"
                          << "programs:\n"
                          << "  calm:\n"
                          << "    command: [sleep, \"1000\"]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(hbtest::eventually([&] { return !flaky.delivered().empty(); }, 30s));
    auto delivered = flaky.delivered();
    CHECK(delivered[0]["kind"] == "started");
    CHECK(delivered[0]["seq"] == 1);
    CHECK(delivered[0]["program"] == "calm");
    CHECK(flaky.requests() == 3);  // 500, no answer, then delivered
    CHECK(stack.wait_for_output("HTTP 500; trying again in 1.0s"));
    CHECK(stack.wait_for_output("no answer within 2.0s; trying again in 2.0s"));
    CHECK(stack.output_so_far().find("pw@") == std::string::npos);  // the credentials never reach the log
    CHECK(stack.output_so_far().find("webhook http://***@127.0.0.1:") != std::string::npos);
    int code = 0;
    std::string text;
    std::tie(code, text) = run(proctab(dir, {"stop", "calm"}));
    REQUIRE(code == 0);
    REQUIRE(hbtest::eventually([&] { return flaky.delivered().size() == 3; }, 30s));
    delivered = flaky.delivered();
    CHECK(delivered[1]["kind"] == "stopping");
    CHECK(delivered[2]["kind"] == "stopped");
    CHECK(delivered[2]["seq"].get<int>() > delivered[1]["seq"].get<int>());
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("a webhook that is down at first gets the event once it is up") {
    Scratch dir;
    const int port = hbtest::free_port();  // nothing listens there yet
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  webhooks:\n"
                          << "    - {url: \"http://127.0.0.1:" << port << "/hook\", retries: 10, kinds: [started]}\n"
                          << "programs:\n"
                          << "  later:\n"
                          << "    command: [sleep, \"1000\"]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("Connection refused; trying again in 1.0s", 30s));
    ScriptedServer up({"200"}, port);
    REQUIRE(hbtest::eventually([&] { return !up.delivered().empty(); }, 60s));
    CHECK(up.delivered()[0]["kind"] == "started");
    CHECK(up.delivered()[0]["program"] == "later");
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("a crash loop, a give-up, a start that fails and reloads each make their event") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    auto write_config = [&](const std::string& extra) {
        std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                              << "events:\n"
                              << "  restart_storm: {restarts: 3, window: 1m}\n"
                              << "programs:\n"
                              << "  storms:\n"
                              // Over a second each run: restarted at once, no backoff to wait out.
                              << "    command: [sh, -c, \"sleep 1.1; exit 1\"]\n"
                              << "    restart_delay: 0ms\n"
                              << "    max_restarts: {count: 4, window: 1m}\n"
                              << "  missing:\n"
                              << "    command: [" << (dir.dir / "no-such-program").string() << "]\n"
                              << "    restart_delay: 1m\n"
                              << extra;
    };
    write_config("");
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("giving up on storms", 60s));
    std::ofstream(config) << "programs: [this is not a map of programs\n";
    int code = 0;
    std::string text;
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(code == 1);
    write_config("  added:\n    command: [sleep, \"1000\"]\n");
    std::tie(code, text) = run(proctab(dir, {"reload"}));
    CHECK(code == 0);
    std::tie(code, text) = run({"curl", "-sS", "--max-time", "10", "--unix-socket", (dir.dir / "run" / "control.sock").string(),
                                "http://stack/v1/events?since=0"});
    REQUIRE(code == 0);
    std::map<std::string, nlohmann::json> first;  // the first event of each kind
    const auto page = nlohmann::json::parse(text);  // named: a temporary would end before the loop
    for (const auto& event : page["events"]) {
        const std::string kind = event["kind"].get<std::string>();
        if (!first.count(kind)) first[kind] = event;
    }
    REQUIRE_MESSAGE(first.count("restart_storm"), text);
    CHECK(first["restart_storm"]["program"] == "storms");
    CHECK(first["restart_storm"]["details"]["starts"] == 3);
    REQUIRE(first.count("gave_up"));
    CHECK(first["gave_up"]["details"]["starts"] == 4);
    REQUIRE(first.count("start_failed"));
    CHECK(first["start_failed"]["program"] == "missing");
    CHECK(first["start_failed"]["details"]["error"] == "No such file or directory");
    REQUIRE(first.count("reload_refused"));
    CHECK(first["reload_refused"]["message"].get<std::string>().find("not valid YAML") != std::string::npos);
    REQUIRE(first.count("reload_applied"));
    CHECK(first["reload_applied"]["details"]["added"][0] == "added");
    CHECK(first["reload_applied"]["seq"] > first["reload_refused"]["seq"]);
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    CHECK(WEXITSTATUS(stack.wait()) == 0);
}

TEST_CASE("proctab events -f sees a stop as it happens") {
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "programs:\n"
                          << "  calm:\n"
                          << "    command: [sleep, \"1000\"]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    REQUIRE(stack.wait_for_output("calm is ready"));
    Process follower(proctab(dir, {"events", "-f"}));
    REQUIRE(follower.wait_for_output("started calm as pid"));  // what was kept, first
    int code = 0;
    std::string text;
    std::tie(code, text) = run(proctab(dir, {"stop", "calm"}));
    REQUIRE(code == 0);
    REQUIRE_MESSAGE(follower.wait_for_output("calm stopped", 30s), follower.output());
    CHECK(follower.output_so_far().find("stopping calm (pid") != std::string::npos);
    CHECK(follower.output_so_far().find("stopped by procctl for an operator's stop") != std::string::npos);
    // --json: the same as NDJSON, one object per line.
    std::tie(code, text) = run(proctab(dir, {"events", "--json"}));
    REQUIRE(code == 0);
    for (const auto& line : lines_of(text)) CHECK(nlohmann::json::parse(line, nullptr, false).is_object());
    // When procctl stops, the stream ends and the follower exits.
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    REQUIRE(follower.wait_exit(30s));
    CHECK(WEXITSTATUS(follower.wait()) == 0);
}

TEST_CASE("the real Alertmanager gets a hung program's alert, and sees it resolved once the program recovers") {
    Scratch dir;
    hbtest::ScratchKey scratch;
    const std::string key = hbwatch::format_key(scratch.key());
    const int port = hbtest::free_port();
    std::ofstream(dir.dir / "am.yml") << "route: {receiver: nobody, group_wait: 1s}\nreceivers: [{name: nobody}]\n";
    fs::create_directory(dir.dir / "am-data");
    Process alertmanager({HBWATCH_ALERTMANAGER, "--config.file=" + (dir.dir / "am.yml").string(),
                          "--storage.path=" + (dir.dir / "am-data").string(),
                          "--web.listen-address=127.0.0.1:" + std::to_string(port), "--cluster.listen-address="});
    const std::string base = "http://127.0.0.1:" + std::to_string(port);
    REQUIRE_MESSAGE(hbtest::eventually([&] { return run({"curl", "-sf", "--max-time", "2", base + "/-/ready"}).first == 0; }, 60s),
                    alertmanager.output());
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "run_dir: " << (dir.dir / "run").string() << "\n"
                          << "events:\n"
                          << "  alertmanager: {url: \"" << base << "\", resend: 1s}\n"
                          << "programs:\n"
                          << "  checkproc:\n"
                          << "    command: [" << hbtest::bin("checkproc") << ", --diagnoses, " << std::getenv("HBWATCH_DIAGNOSES") << ", --watch, --grace, 1s]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "  hangs:\n"
                          << "    command: [sh, -c, \"if mkdir " << (dir.dir / "hung-once").string() << " 2>/dev/null; then exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 1s --hang-after 1s; else exec "
                          << hbtest::bin("demo_service") << " hangs --timeout 10s; fi\"]\n"
                          << "    environment: {HBWATCH_KEY: \"" << key << "\"}\n"
                          << "    ready: beat\n"
                          << "    restart_delay: 5s\n"  // the alert stays up a while: the test sees it firing
                          << "    after: [checkproc]\n";
    Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
    // What Alertmanager holds; null when it did not answer this time (a slow moment is asked again).
    auto alerts = [&] {
        const auto result = run({"curl", "-sS", "--max-time", "5", base + "/api/v2/alerts?filter=alertname%3D%22HbwatchProgramHung%22"});
        return result.first == 0 ? nlohmann::json::parse(result.second, nullptr, false) : nlohmann::json();
    };
    nlohmann::json firing;
    REQUIRE_MESSAGE(hbtest::eventually(
                        [&] {
                            firing = alerts();
                            return firing.is_array() && !firing.empty() && firing[0]["status"]["state"] == "active";
                        },
                        60s),
                    stack.output_so_far());
    CHECK(firing[0]["labels"]["program"] == "hangs");
    CHECK(firing[0]["labels"]["severity"] == "critical");
    CHECK(firing[0]["labels"]["host"] == hbwatch::tool::host_name());
    CHECK(firing[0]["annotations"]["description"].get<std::string>().find("heartbeat is hung") != std::string::npos);
    // amtool, Alertmanager's own client, sees it too.
    const auto amtool = run({HBWATCH_AMTOOL, "alert", "query", "--alertmanager.url=" + base, "alertname=HbwatchProgramHung"});
    CHECK(amtool.first == 0);
    CHECK(amtool.second.find("HbwatchProgramHung") != std::string::npos);
    // The second run beats: ready, then the heartbeat recovers, and the alert is resolved.
    REQUIRE_MESSAGE(hbtest::eventually(
                        [&] {
                            const auto now = alerts();
                            return now.is_array() && now.empty();
                        },
                        60s),
                    stack.output_so_far());
    CHECK(stack.output_so_far().find("hangs's heartbeat is back") == std::string::npos);  // events are not log lines
    ::kill(stack.pid(), SIGTERM);
    REQUIRE(stack.wait_exit(30s));
    ::kill(alertmanager.pid(), SIGTERM);
    REQUIRE(alertmanager.wait_exit(30s));
}
