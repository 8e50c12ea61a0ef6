// proctab, the binary, on real processes and a scratch table.
#include <doctest/doctest.h>

#include <grp.h>
#include <pwd.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "engine/checker.h"
#include "core/clock.h"

#include "core/layout.h"
#include "support.h"

using namespace std::chrono_literals;
using hbtest::Process;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string key_text(const hbtest::ScratchKey& scratch) { return hbwatch::format_key(scratch.key()); }

std::pair<int, std::string> run(const std::vector<std::string>& argv, const std::function<void()>& in_child = {}) {
    Process p(argv, in_child);
    REQUIRE(p.wait_exit(60s));
    const int status = p.wait();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), p.output()};
}

std::pair<int, std::string> proctab(const hbtest::ScratchKey& scratch, std::vector<std::string> args) {
    args.insert(args.begin(), {hbtest::bin("proctab"), "--key", key_text(scratch)});
    return run(args);
}

std::unique_ptr<Process> service(const hbtest::ScratchKey& scratch, const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> argv{hbtest::bin("demo_service"), name, "--key", key_text(scratch)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = std::make_unique<Process>(argv);
    REQUIRE(p->wait_for_output("registered in slot"));
    return p;
}

// promtool check metrics on `metrics`: its exit code and what it printed.
std::pair<int, std::string> promtool_check(const std::string& metrics) {
    char path[] = "/tmp/hbwatch-metrics-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(::write(fd, metrics.data(), metrics.size()) == static_cast<ssize_t>(metrics.size()));
    ::close(fd);
    auto result = run({"sh", "-c", std::string(HBWATCH_PROMTOOL " check metrics < ") + path});
    ::unlink(path);
    return result;
}

json entry_named(const json& entries, const std::string& name) {
    for (const auto& e : entries)
        if (e["name"] == name) return e;
    return json();
}

// A copy of sleep under a name no other test runs.
struct Sleeper {
    fs::path dir, path;
    Sleeper() {
        char buffer[] = "/tmp/hbwatch-proctab-XXXXXX";
        dir = ::mkdtemp(buffer);
        path = dir / ("hbwsl-" + std::to_string(::getpid()));  // under 15 bytes: its zombie is found by name
        fs::copy_file("/usr/bin/sleep", path);
        fs::permissions(path, fs::perms::owner_all);
    }
    ~Sleeper() { fs::remove_all(dir); }
    std::string name() const { return path.filename().string(); }
    std::unique_ptr<Process> start(const std::string& seconds) const {
        return std::make_unique<Process>(std::vector<std::string>{path.string(), seconds});
    }
};

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("the list shows ok, hung and dead entries of real processes, in text and JSON") {
    hbtest::ScratchKey scratch;
    auto healthy = service(scratch, "healthy", {"--timeout", "10s"});
    auto stuck = service(scratch, "stuck", {"--timeout", "200ms", "--hang-after", "0ms"});
    auto gone = service(scratch, "gone", {"--timeout", "10s"});
    ::kill(gone->pid(), SIGKILL);
    gone->wait();
    {
        auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_only);
        REQUIRE(hbtest::eventually([&] {
            bool hung = false;
            table->for_each([&](const hbwatch::SlotSnapshot& s) {
                hung |= s.name() == "stuck" && hbwatch::tool::health_of(s, hbwatch::monotonic_now_ns()) == hbwatch::tool::Health::hung;
            });
            return hung;
        }));
    }
    const auto listed = proctab(scratch, {});
    CHECK(listed.first == 0);
    const std::string& text = listed.second;
    const passwd* user = ::getpwuid(::geteuid());
    const group* grp = ::getgrgid(::getegid());
    REQUIRE(user);
    REQUIRE(grp);
    std::string owner = std::string(user->pw_name) + ":" + grp->gr_name;
    if (owner.size() > 20) owner = owner.substr(0, 19) + "~";
    const std::string mode = hbtest::default_table_mode() == 0660 ? "0660" : "0600";
    CHECK_MESSAGE(text.starts_with("table " + key_text(scratch) + ": 3/4096 slots, mode " + mode + " " + owner + ", 3 regs, 0 kills\n"),
                  text);
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) CHECK(line.size() <= 80);

    const auto [json_code, json_text] = proctab(scratch, {"--json"});
    CHECK(json_code == 0);
    const auto entries = json::parse(json_text);
    REQUIRE(entries.size() == 3);
    CHECK(entry_named(entries, "healthy")["state"] == "ok");
    CHECK(entry_named(entries, "stuck")["state"] == "hung");
    CHECK(entry_named(entries, "gone")["state"] == "dead");
    CHECK(entry_named(entries, "gone")["dead_reason"] == "gone");
    const auto e = entry_named(entries, "healthy");
    for (const char* field : {"slot", "pid", "name", "state", "timeout_ms", "since_beat_ms", "beats", "rss_bytes", "cpu_percent"})
        CHECK_MESSAGE(e.contains(field), field);
    CHECK(e["pid"] == healthy->pid());
    CHECK(e["timeout_ms"] == 10000);
    CHECK(e["rss_bytes"].get<std::uint64_t>() > 0);
}

TEST_CASE("the Prometheus output passes promtool check metrics") {
    hbtest::ScratchKey scratch;
    auto a = service(scratch, "order-svc", {"--timeout", "10s"});
    auto b = service(scratch, "billing.v2", {"--timeout", "5s"});
    const auto [code, metrics] = proctab(scratch, {"--prometheus"});
    CHECK(code == 0);
    CHECK(contains(metrics, "hbwatch_entry_timeout_seconds{name=\"order-svc\",pid=\"" + std::to_string(a->pid()) + "\",slot=\""));
    CHECK(contains(metrics, "hbwatch_table_slots 4096\n"));
    const auto [promtool, report] = promtool_check(metrics);
    CHECK(promtool == 0);
    CHECK(report.empty());  // no lint findings either
}

TEST_CASE("a forged name cannot break or forge proctab's text, JSON or Prometheus output") {
    hbtest::ScratchKey scratch;
    auto service_process = service(scratch, "honest", {"--timeout", "10s"});
    {
        auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_write);
        REQUIRE(table);
        std::uint32_t slot = 0;
        table->for_each([&](const hbwatch::SlotSnapshot& s) { slot = s.index; });
        // Rewrite the name in place: a quote, a newline, an escape sequence, invalid UTF-8.
        const std::string forged = std::string("a\"} 1\nhbwatch_entry_hung{name=\"db\x1b[2J\xff", 38) + std::string(10, '\0');
        auto* words = table->slot_at(slot)->name;
        for (int w = 0; w < 6; ++w) {
            std::uint64_t word;
            std::memcpy(&word, forged.data() + w * 8, 8);
            words[w].store(word);
        }
    }
    auto [code, text] = proctab(scratch, {"--json"});
    CHECK(code == 0);
    const auto entries = json::parse(text);  // valid JSON
    REQUIRE(entries.size() == 1);
    const std::string name = entries[0]["name"];
    CHECK(name == "a\\x22\\x7d\\x201\\x0ahbwatch_entry_hung\\x7bname\\x3d\\x22db\\x1b\\x5b2J\\xff");
    std::tie(code, text) = proctab(scratch, {"--prometheus"});
    CHECK(code == 0);
    CHECK(hbtest::count_of(text, "\nhbwatch_entry_hung{") == 1);  // the real family's one line, nothing injected
    const auto [promtool, report] = promtool_check(text);
    CHECK(promtool == 0);
    std::tie(code, text) = proctab(scratch, {});
    CHECK(code == 0);
    CHECK(text.find('\x1b') == std::string::npos);  // no escape sequence reaches a terminal
}

TEST_CASE("a shell script that calls proctab beat stays fresh, and checkproc stops it when it hangs") {
    hbtest::ScratchKey scratch;
    const std::string proctab_bin = hbtest::bin("proctab"), key = key_text(scratch);
    Process script({"sh", "-c",
                    "i=0; while [ $i -lt 10 ]; do " + proctab_bin + " --key " + key +
                        " beat nightly --timeout 500ms >/dev/null || exit 9; sleep 0.1; i=$((i+1)); done; "
                        "echo hanging; while :; do sleep 0.2; done"});
    REQUIRE(script.wait_for_output("hanging"));
    const auto [code, text] = proctab(scratch, {"--json"});
    const auto entry = entry_named(json::parse(text), "nightly");
    REQUIRE(entry.is_object());
    CHECK(entry["pid"] == script.pid());
    CHECK(entry["beats"] == 9);  // one registration, then nine beats into the same entry
    CHECK(entry["state"] != "hung");
    REQUIRE(hbtest::eventually([&] { return hbtest::hung_entries(scratch.options()) > 0; }));
    const auto [checkproc, log] = run({hbtest::bin("checkproc"), "--key", key, "--grace", "2s"});
    CHECK(checkproc == 0);
    REQUIRE(script.wait_exit(5s));
    CHECK(WTERMSIG(script.wait()) == SIGTERM);
    CHECK(contains(log, "'nightly': exited"));
}

TEST_CASE("a script that registered with proctab beat and then exec'd is never signalled: its entry is freed") {
    hbtest::ScratchKey scratch;
    const std::string key = key_text(scratch);
    Process script({"sh", "-c", hbtest::bin("proctab") + " --key " + key +
                                    " beat nightly --timeout 200ms >/dev/null || exit 9; echo exec; exec sleep 1000"});
    REQUIRE(script.wait_for_output("exec"));
    REQUIRE(hbtest::eventually([&] {  // hung, and the shell has become sleep
        auto stat = hbwatch::read_proc_stat(script.pid());
        return hbtest::hung_entries(scratch.options()) > 0 && stat && stat->comm == "sleep";
    }));
    const auto [checkproc, log] = run({hbtest::bin("checkproc"), "--key", key, "--grace", "1s"});
    CHECK(checkproc == 0);
    CHECK(contains(log, "pid " + std::to_string(script.pid()) + " has exec'd since it was registered on its behalf: "
                        "slot freed, nothing signalled"));
    CHECK(script.running());
    CHECK(hbtest::live_entries(scratch.options()) == 0);
}

TEST_CASE("proctab run: the script's own beats keep it alive, and when it hangs checkproc stops the wrapper and the command") {
    hbtest::ScratchKey scratch;
    const std::string key = key_text(scratch), proctab_bin = hbtest::bin("proctab");
    // The command beats five times, says so, then hangs in a loop that ignores nothing.
    Process wrapper({proctab_bin, "--key", key, "run", "nightly", "--timeout", "300ms", "--grace", "2s", "--", "sh", "-c",
                     "for i in 1 2 3 4 5; do " + proctab_bin + " beat nightly || exit 9; sleep 0.05; done; "
                     "echo hanging $$; exec sleep 1000"});
    REQUIRE(wrapper.wait_for_output("hanging"));
    const auto [code, text] = proctab(scratch, {"--json"});
    const auto entry = entry_named(json::parse(text), "nightly");
    REQUIRE(entry.is_object());
    CHECK(entry["pid"] == wrapper.pid());  // the wrapper is the registrant, not the shell
    CHECK(entry["beats"] == 5);
    REQUIRE(hbtest::eventually([&] { return hbtest::hung_entries(scratch.options()) > 0; }));
    const auto [checkproc, log] = run({hbtest::bin("checkproc"), "--key", key, "--grace", "5s"});
    CHECK(checkproc == 0);
    CHECK(contains(log, "'nightly': hung"));
    REQUIRE(wrapper.wait_exit(10s));
    CHECK(wrapper.wait() == (128 + SIGTERM) << 8);  // exits with its command's fate: SIGTERM
    CHECK(contains(wrapper.output(), "proctab run: SIGTERM from pid"));
    CHECK(hbtest::live_entries(scratch.options()) == 0);
}

TEST_CASE("names match whole: a shared 15-byte prefix is not a match, and an empty name is refused") {
    const fs::path dir = [] {
        char buffer[] = "/tmp/hbwatch-names-XXXXXX";
        return fs::path(::mkdtemp(buffer));
    }();
    const fs::path canary = dir / "payments-gateway-canary", primary = dir / "payments-gateway-primary";
    fs::copy_file("/usr/bin/sleep", canary);
    fs::copy_file("/usr/bin/sleep", primary);
    Process kept({primary.string(), "1000"});
    hbtest::ScratchKey scratch;
    auto [code, text] = proctab(scratch, {"kill", "payments-gateway-canary", "--grace", "1s"});
    CHECK(code == 1);
    CHECK(contains(text, "no process named 'payments-gateway-canary'"));
    CHECK(kept.running());
    std::tie(code, text) = proctab(scratch, {"ps", "payments-gateway-prim"});
    CHECK(code == 1);
    std::tie(code, text) = proctab(scratch, {"ps", "payments-gateway-primary"});
    CHECK(code == 0);
    CHECK(contains(text, std::to_string(kept.pid())));
    std::tie(code, text) = proctab(scratch, {"ps", ""});
    CHECK(code == 2);
    CHECK(contains(text, "an empty NAME matches nothing"));
    std::tie(code, text) = proctab(scratch, {"ps", "kthreadd"});  // a kernel thread is never matched
    CHECK(code == 1);
    fs::remove_all(dir);
}

TEST_CASE("ps, health and kill work on several instances, a zombie and a process above a memory limit") {
    Sleeper sleeper;
    auto first = sleeper.start("1000"), second = sleeper.start("1000"), doomed = sleeper.start("0");
    REQUIRE(doomed->wait_exit(10s));  // not reaped: a zombie whose parent is this test
    hbtest::ScratchKey scratch;

    auto [code, text] = proctab(scratch, {"ps", sleeper.name()});
    CHECK(code == 0);
    for (pid_t pid : {first->pid(), second->pid(), doomed->pid()}) CHECK(contains(text, std::to_string(pid)));
    CHECK(contains(text, sleeper.path.string()));

    std::tie(code, text) = proctab(scratch, {"--json", "health", sleeper.name(), "--path", sleeper.path.string(), "--max-rss", "64K"});
    CHECK(code == 1);
    const auto report = json::parse(text);
    CHECK(report["healthy"] == false);
    std::string problems;
    for (const auto& issue : report["issues"]) problems += issue["problem"].get<std::string>() + "\n";
    CHECK(contains(problems, "2 instances of '" + sleeper.name() + "' at " + sleeper.path.string() + " are running"));
    CHECK(contains(problems, "pid " + std::to_string(doomed->pid()) + " of '" + sleeper.name() + "' at " +
                                 sleeper.path.string() + " is a zombie"));
    CHECK(contains(problems, "of memory, above the 64.0K limit"));
    for (const auto& issue : report["issues"]) CHECK_FALSE(issue["recommendation"].get<std::string>().empty());

    std::tie(code, text) = proctab(scratch, {"kill", sleeper.name(), "--grace", "2s"});
    CHECK(code == 0);
    CHECK(contains(text, "3 stopped (0 needed SIGKILL), 0 failed"));  // the zombie counts as already gone
    REQUIRE(first->wait_exit(5s));
    REQUIRE(second->wait_exit(5s));
    CHECK(WTERMSIG(first->wait()) == SIGTERM);
    doomed->wait();
    std::tie(code, text) = proctab(scratch, {"health", sleeper.name()});
    CHECK(code == 1);
    CHECK(contains(text, "no '" + sleeper.name() + "' is running"));
}

TEST_CASE("zombies are listed with their parent") {
    Sleeper sleeper;
    auto doomed = sleeper.start("0");
    REQUIRE(doomed->wait_exit(10s));
    hbtest::ScratchKey scratch;
    const auto [code, text] = proctab(scratch, {"zombies"});
    CHECK(code == 0);
    CHECK(contains(text, std::to_string(doomed->pid()) + " Z "));  // a zombie's PID and STATE columns
    CHECK(contains(text, std::to_string(::getpid()) + " (test_proctab)"));
}

TEST_CASE("managing the table: init, beat, remove, destroy, and the errors") {
    hbtest::ScratchKey scratch;
    auto [code, text] = proctab(scratch, {});
    CHECK(code == 2);
    CHECK(text == "proctab: no table at key " + key_text(scratch) +
                      ": nothing has registered yet (services create it on first use; or run proctab init)\n");
    std::tie(code, text) = proctab(scratch, {"init", "--slots", "64", "--mode", "0640"});
    CHECK(code == 0);
    CHECK(contains(text, "created the table " + key_text(scratch) + ": 0/64 slots, mode 0640"));
    std::tie(code, text) = proctab(scratch, {"init"});
    CHECK(code == 1);
    CHECK(contains(text, "already exists at key"));

    auto svc = service(scratch, "order-svc", {"--timeout", "10s"});
    std::tie(code, text) = proctab(scratch, {"destroy"});
    CHECK(code == 1);
    CHECK(contains(text, "refusing to destroy the table at key " + key_text(scratch) + ": 1 live entries"));
    CHECK(contains(text, "pid " + std::to_string(svc->pid()) + " 'order-svc'"));

    std::tie(code, text) = proctab(scratch, {"beat", "for-svc", "--timeout", "1m", "--pid", std::to_string(svc->pid())});
    CHECK(code == 0);
    CHECK(contains(text, "registered 'for-svc' for pid " + std::to_string(svc->pid())));
    std::tie(code, text) = proctab(scratch, {"beat", "init-is-not-ours", "--timeout", "1m", "--pid", "1"});
    CHECK(code == 2);
    CHECK(contains(text, "cannot register pid 1"));

    // The service still runs: a beat of its may be between check and store, so its slot is
    // held (revoked) until it exits, never handed to another registration meanwhile.
    std::tie(code, text) = proctab(scratch, {"remove", "for-svc"});
    CHECK(code == 0);
    CHECK(contains(text, "removed slot"));
    CHECK(contains(text, "pid " + std::to_string(svc->pid()) + " 'for-svc' is still running, so its slot stays held (state revoked)"));
    std::tie(code, text) = proctab(scratch, {"--json"});
    CHECK(entry_named(json::parse(text), "for-svc")["state"] == "revoked");
    std::tie(code, text) = proctab(scratch, {"remove", "--pid", "999999"});
    CHECK(code == 1);

    std::tie(code, text) = proctab(scratch, {"destroy", "--force"});
    CHECK(code == 0);
    CHECK(::shmget(scratch.key(), 0, 0) < 0);

    std::tie(code, text) = proctab(scratch, {"beat", "x", "--timeout", "soon"});
    CHECK(code == 2);
    CHECK(contains(text, "--timeout: bad duration 'soon'"));
}
