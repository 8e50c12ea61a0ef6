// checkproc, the binary, against real processes: demo_service and term_counter instances on a
// scratch table. Every wait is on an event (pidfd, output line) or a poll with a deadline.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <ctime>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "engine/checker.h"
#include "core/clock.h"
#include <hbwatch/heartbeat.h>

#include "core/table.h"

#include "core/layout.h"
#include "checkproc_support.h"
#include "support.h"

using namespace std::chrono_literals;
using hbtest::Process;
using hbwatch::Table;
using namespace hbtest::checkproc;

namespace {

std::unique_ptr<Process> term_counter(const hbtest::ScratchKey& scratch, const std::string& name) {
    auto p = std::make_unique<Process>(std::vector<std::string>{hbtest::bin("term_counter"), name, "100ms"},
                                       [&] { ::setenv("HBWATCH_KEY", key_text(scratch).c_str(), 1); });
    REQUIRE(p->wait_for_output("ready"));
    return p;
}

std::vector<std::string> checkproc_args(const hbtest::ScratchKey& scratch, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{hbtest::bin("checkproc"), "--key", key_text(scratch)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

// Runs checkproc to completion; returns its exit status and log.
std::pair<int, std::string> run_checkproc(const hbtest::ScratchKey& scratch, std::vector<std::string> extra = {},
                                          const std::function<void()>& in_child = {}) {
    Process checkproc(checkproc_args(scratch, std::move(extra)), in_child);
    REQUIRE(checkproc.wait_exit(60s));
    const int status = checkproc.wait();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), checkproc.output()};
}

// Waits until every live entry named `name` is past its timeout.
void wait_until_hung(const hbtest::ScratchKey& scratch, std::size_t count) {
    auto table = Table::open_existing(scratch.options(), Table::Access::read_only);
    REQUIRE(table);
    REQUIRE(hbtest::eventually([&] {
        std::size_t hung = 0;
        const auto now = hbwatch::monotonic_now_ns();
        table->for_each([&](const hbwatch::SlotSnapshot& s) { hung += hbwatch::tool::health_of(s, now) == hbwatch::tool::Health::hung; });
        return hung >= count;
    }));
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }


}  // namespace

TEST_CASE("a hung service gets SIGTERM, a stubborn one SIGKILL after the grace, a healthy one nothing") {
    hbtest::ScratchKey scratch;
    auto healthy = service(scratch, "healthy", {"--timeout", "5s"});
    auto stuck = service(scratch, "stuck", {"--timeout", "200ms", "--hang-after", "0ms"});
    auto stubborn = service(scratch, "stubborn", {"--timeout", "200ms", "--hang-after", "0ms", "--ignore-term"});
    wait_until_hung(scratch, 2);

    const auto [code, log] = run_checkproc(scratch, {"--grace", "500ms"});
    CHECK(code == 0);
    REQUIRE(stuck->wait_exit(5s));
    CHECK(WTERMSIG(stuck->wait()) == SIGTERM);
    REQUIRE(stubborn->wait_exit(5s));
    CHECK(WTERMSIG(stubborn->wait()) == SIGKILL);
    CHECK(healthy->running());
    CHECK(live_entries(scratch) == 1);
    CHECK(contains(log, "'stuck': hung: last beat "));
    CHECK(contains(log, "'stubborn': did not exit within the 500ms grace after SIGTERM: SIGKILL sent"));
    CHECK(std::regex_search(log, std::regex("'stubborn': exited [0-9]+ms after SIGTERM \\(SIGKILL was needed\\); slot freed")));
    CHECK(contains(log, "3 entries, 1 healthy, 2 hung, 2 stopped, 0 freed without a signal"));
}

TEST_CASE("forged and garbage entries are reported and freed, never signalled") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(16);
    Table table = Table::open_or_create(options);
    auto forge = [&](std::uint32_t slot, std::int32_t pid, std::uint64_t start_time, std::uint32_t timeout_ms,
                     const std::string& name) {
        auto* s = table.slot_at(slot);
        s->start_time.store(start_time);
        s->timeout_ms.store(timeout_ms);
        s->last_beat_ns.store(1);  // long ago
        unsigned char bytes[48] = {};
        std::memcpy(bytes, name.data(), std::min<std::size_t>(name.size(), 48));
        for (int w = 0; w < 6; ++w) {
            std::uint64_t word;
            std::memcpy(&word, bytes + w * 8, 8);
            s->name[w].store(word);
        }
        s->state.store(hbwatch::detail::make_state(7, pid, hbwatch::SlotPhase::live));
    };
    const auto init = *hbwatch::identity_of(1);
    forge(0, 1, init.start_time, 1000, "init");
    forge(1, -1, 1, 1000, "everyone");
    forge(2, 0, 1, 1000, "my-group");
    forge(3, ::getpid(), hbwatch::self_identity().start_time, 1000, std::string(48, 'x'));  // no NUL
    forge(4, ::getpid(), hbwatch::self_identity().start_time, 0, "zero-timeout");
    // checkproc's own identity: forged in the forked child, which then execs checkproc (same pid, same start time).
    const auto [code, log] = run_checkproc(scratch, {"--grace", "200ms"}, [&] {
        forge(5, ::getpid(), hbwatch::self_identity().start_time, 1000, "checkproc-itself");
    });
    CHECK(code == 0);
    CHECK(contains(log, "slot 0: garbage entry (pid 1 is init, never a registered service): slot freed, nothing signalled"));
    CHECK(contains(log, "slot 1: garbage entry (pid -1 is not a process): slot freed, nothing signalled"));
    CHECK(contains(log, "slot 2: garbage entry (pid 0 is not a process): slot freed, nothing signalled"));
    CHECK(contains(log, "slot 3: garbage entry (name is not NUL-terminated): slot freed, nothing signalled"));
    CHECK(contains(log, "slot 4: garbage entry (heartbeat timeout 0ms is out of range: give 100ms to 7d): slot freed"));
    CHECK(std::regex_search(log, std::regex("slot 5: garbage entry \\(pid [0-9]+ is this checkproc, which never "
                                            "registers\\): slot freed, nothing signalled")));
    CHECK_FALSE(contains(log, "SIGTERM sent"));
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("a hung entry of checkproc's ancestor is reported and never signalled") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(4);
    Table table = Table::open_or_create(options);
    // This test process is checkproc's parent; if it were signalled, the test would die.
    const auto claim = table.claim("my-parent", 100ms, hbwatch::self_identity(), ::getuid());
    wait_until_hung(scratch, 1);
    const auto [code, log] = run_checkproc(scratch, {"--grace", "200ms"});
    CHECK(code == 0);
    CHECK(contains(log, "'my-parent': hung: "));
    CHECK(contains(log, "not signalled: pid " + std::to_string(::getpid()) + " is an ancestor of this process"));
    CHECK(table.read(claim.index));
}

TEST_CASE("after a service exits cleanly on SIGTERM, nothing else in checkproc's process group is touched") {
    hbtest::ScratchKey scratch;
    // --graceful: on TERM it releases its own slot and exits 0, the moment the classic tool
    // re-read the cleared slot and sent kill(0, SIGKILL) to its own group.
    auto graceful = service(scratch, "graceful", {"--timeout", "100ms", "--hang-after", "0ms", "--graceful"});
    wait_until_hung(scratch, 1);
    hbtest::Pipe sentinel_pipe;
    const auto [code, log] = run_checkproc(scratch, {"--grace", "2s"}, [&] {
        ::setpgid(0, 0);  // checkproc leads a group of its own ...
        const pid_t sentinel = ::fork();  // ... which holds a sentinel
        if (sentinel == 0) {
            const int devnull = ::open("/dev/null", O_WRONLY);  // not holding the log pipe open
            ::dup2(devnull, 1);
            ::dup2(devnull, 2);
            ::execlp("sleep", "sleep", "60", nullptr);
            ::_exit(127);
        }
        (void)!::write(sentinel_pipe.write_end(), &sentinel, sizeof sentinel);
    });
    pid_t sentinel = 0;
    sentinel_pipe.close_write();
    REQUIRE(::read(sentinel_pipe.read_end(), &sentinel, sizeof sentinel) == sizeof sentinel);
    CHECK(code == 0);
    REQUIRE(graceful->wait_exit(5s));
    const int status = graceful->wait();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(contains(log, "slot already freed (by the process itself or its supervisor)"));
    const int sentinel_fd = ::pidfd_open(sentinel, 0);
    REQUIRE(sentinel_fd >= 0);
    pollfd p{sentinel_fd, POLLIN, 0};
    CHECK(::poll(&p, 1, 200) == 0);  // still running
    ::kill(sentinel, SIGKILL);
    ::close(sentinel_fd);
}

TEST_CASE("a zombie registrant is reported with its parent, and its slot is freed") {
    hbtest::ScratchKey scratch;
    auto crasher = service(scratch, "crasher", {"--timeout", "100ms", "--crash-after", "0ms"});
    REQUIRE(crasher->wait_exit(10s));  // not reaped: a zombie, whose parent is this test
    wait_until_hung(scratch, 1);  // before its deadline, a zombie gets only the cheap look: signal 0 finds it
    const auto [code, log] = run_checkproc(scratch);
    CHECK(code == 0);
    CHECK(contains(log, "pid " + std::to_string(crasher->pid()) + " 'crasher': the process is a zombie; pid " +
                            std::to_string(::getpid()) + " (test_checkproc) must reap it: slot freed, nothing signalled"));
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("ten hung services are all gone within one grace period plus a margin") {
    hbtest::ScratchKey scratch;
    std::vector<std::unique_ptr<Process>> services;
    for (int i = 0; i < 10; ++i)
        services.push_back(service(scratch, "stubborn-" + std::to_string(i),
                                   {"--timeout", "100ms", "--hang-after", "0ms", "--ignore-term"}));
    wait_until_hung(scratch, 10);
    const auto start = std::chrono::steady_clock::now();
    const auto [code, log] = run_checkproc(scratch, {"--grace", "1s"});
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(code == 0);
    MESSAGE("ten hung services cleared in " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took >= 1s);
    CHECK(took < 3s);  // ten in sequence would take 10 s
    for (auto& s : services) {
        REQUIRE(s->wait_exit(1s));
        CHECK(WTERMSIG(s->wait()) == SIGKILL);
    }
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("with two checkprocs at once, each hung process receives exactly one SIGTERM") {
    hbtest::ScratchKey scratch;
    std::vector<std::unique_ptr<Process>> counters;
    for (int i = 0; i < 5; ++i) counters.push_back(term_counter(scratch, "counter-" + std::to_string(i)));
    wait_until_hung(scratch, 5);
    Process first(checkproc_args(scratch, {"--grace", "1s"}));
    Process second(checkproc_args(scratch, {"--grace", "1s"}));
    REQUIRE(first.wait_exit(30s));
    REQUIRE(second.wait_exit(30s));
    CHECK(WEXITSTATUS(first.wait()) == 0);
    CHECK(WEXITSTATUS(second.wait()) == 0);
    for (auto& c : counters) {
        REQUIRE(c->wait_exit(5s));
        CHECK(WTERMSIG(c->wait()) == SIGKILL);
        const auto& out = c->output();
        CHECK(contains(out, "TERM 1 at"));
        CHECK_FALSE(contains(out, "TERM 2 at"));
    }
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("a wall clock an hour ahead does not kill a service that beats") {
    hbtest::ScratchKey scratch;
    auto beating = service(scratch, "beating", {"--timeout", "30s"});
    const std::time_t before = std::time(nullptr);
    const std::string checkproc = hbtest::bin("checkproc"), key = key_text(scratch);
    const auto [code, log] = run_checkproc(scratch, {"-v"}, [&] {
        ::setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
        ::setenv("TZ", "UTC", 1);
        ::execlp("faketime", "faketime", "-f", "+3600s", checkproc.c_str(), "--key", key.c_str(), "-v", nullptr);
        ::_exit(127);
    });
    CHECK(code == 0);
    CHECK(beating->running());
    CHECK(contains(log, "'beating': healthy, last beat"));
    // The log's own timestamps show that checkproc ran with the clock an hour ahead.
    std::smatch m;
    REQUIRE(std::regex_search(log, m, std::regex("(\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d)\\.\\d{3} checkproc")));
    std::tm tm{};
    REQUIRE(::strptime(m[1].str().c_str(), "%Y-%m-%d %H:%M:%S", &tm) != nullptr);
    const auto logged = ::timegm(&tm);
    CHECK(logged - before >= 3590);
    CHECK(logged - before <= 3700);
}

TEST_CASE("--watch stops a service soon after its deadline, and exits on SIGTERM") {
    hbtest::ScratchKey scratch;
    // Started before any table exists: it waits for one.
    Process watcher(checkproc_args(scratch, {"--watch", "--grace", "1s"}));
    REQUIRE(watcher.wait_for_output("yet: waiting for the first registration"));
    auto stuck = service(scratch, "stuck", {"--timeout", "300ms", "--hang-after", "0ms"});
    auto table = Table::open_existing(scratch.options(), Table::Access::read_only);
    std::uint64_t deadline = 0;
    table->for_each([&](const hbwatch::SlotSnapshot& s) { deadline = s.last_beat_ns + 300'000'000; });
    REQUIRE(stuck->wait_exit(10s));
    const auto latency_ms = static_cast<std::int64_t>(hbwatch::monotonic_now_ns() - deadline) / 1'000'000;
    MESSAGE("--watch: deadline to exit in " << latency_ms << " ms");
    CHECK(WTERMSIG(stuck->wait()) == SIGTERM);
    CHECK(latency_ms < 1500);  // generous: new registrations are seen within 1 s, deadlines within 100 ms
    REQUIRE(watcher.wait_for_output("slot freed"));
    ::kill(watcher.pid(), SIGTERM);
    REQUIRE(watcher.wait_exit(10s));
    CHECK(WEXITSTATUS(watcher.wait()) == 0);
    CHECK(contains(watcher.output(), "stop requested: finishing the stops in flight, then exiting"));
}

TEST_CASE("checkproc exits 0 with no table, 1 when the table cannot be read, 2 on bad arguments") {
    hbtest::ScratchKey scratch;
    SUBCASE("no table") {
        const auto [code, log] = run_checkproc(scratch);
        CHECK(code == 0);
        CHECK(contains(log, "no table at key " + key_text(scratch) + ": nothing registered, nothing to watch"));
    }
    SUBCASE("a foreign segment") {
        const int id = ::shmget(scratch.key(), 4096, IPC_CREAT | 0600);
        REQUIRE(id >= 0);
        const auto [code, log] = run_checkproc(scratch);
        CHECK(code == 1);
        CHECK(contains(log, "checkproc: the shared-memory segment at key " + key_text(scratch) +
                                " (4096 bytes) is not an hbwatch table"));
    }
    SUBCASE("bad arguments") {
        auto [code, log] = run_checkproc(scratch, {"--grace", "soon"});
        CHECK(code == 2);
        CHECK(contains(log, "--grace: bad duration 'soon'"));
        std::tie(code, log) = run_checkproc(scratch, {"--no-such-flag"});
        CHECK(code == 2);
    }
}

namespace {

// What a last_beat service reported: its precise clock around its last beat, the coarse stamp
// that beat left, when SIGTERM reached it, and the longest it went without beating before.
struct LastBeat {
    std::uint64_t before = 0, after = 0, stamp = 0, term = 0, longest_gap = 0;
};

// Starts `count` last_beat services with timeout `timeout_ms`, each with its own rhythm so
// that their last beats fall at every phase of the coarse clock's tick.
std::vector<std::unique_ptr<Process>> last_beat_services(const hbtest::ScratchKey& scratch, int count, int timeout_ms) {
    std::vector<std::unique_ptr<Process>> services;
    for (int i = 0; i < count; ++i)
        services.push_back(std::make_unique<Process>(std::vector<std::string>{
            hbtest::bin("last_beat"), key_text(scratch), "never-early-" + std::to_string(i),
            std::to_string(timeout_ms) + "ms", std::to_string(2 + i % 9), std::to_string(1 + (i * 7) % 11) + "ms"}));
    return services;
}

LastBeat report_of(Process& service) {
    LastBeat r;
    std::istringstream(service.output()) >> r.before >> r.after >> r.stamp >> r.term >> r.longest_gap;
    return r;
}

}  // namespace

TEST_CASE("no service is ever signalled before its real deadline, in watch and in one-shot mode") {
    constexpr int kTimeoutMs = 200;
    constexpr std::uint64_t kTimeoutNs = kTimeoutMs * 1'000'000ull;
    for (const bool watch : {true, false}) {
        CAPTURE(watch);
        hbtest::ScratchKey scratch;
        { Table table = Table::open_or_create(scratch.options(128)); }
        std::unique_ptr<Process> watcher;
        if (watch) {
            watcher = std::make_unique<Process>(checkproc_args(scratch, {"--watch"}));
            REQUIRE(watcher->wait_for_output("watching the table"));
        }
        auto services = last_beat_services(scratch, 50, kTimeoutMs);
        // One-shot mode: back-to-back runs, as a tight `procctl 0 checkproc` would make them.
        const auto give_up = std::chrono::steady_clock::now() + 60s;
        auto all_done = [&] {
            return std::all_of(services.begin(), services.end(), [](auto& s) { return !s->running(); });
        };
        std::string kill_logs;  // one-shot runs that sent SIGKILL: shown if a service was killed
        while (!all_done() && std::chrono::steady_clock::now() < give_up) {
            if (watch) {
                services.front()->wait_exit(100ms);  // any exit, or a while: then look again
            } else if (const auto log = run_checkproc(scratch).second; log.find("SIGKILL") != std::string::npos) {
                kill_logs += log;
            }
        }
        REQUIRE(all_done());
        std::int64_t least_margin_ns = INT64_MAX;
        int held = 0;
        for (auto& service : services) {
            const int status = service->wait();
            CHECK_MESSAGE(WIFEXITED(status), "status " << status << " (signal " << (status & 0x7f) << ")\n"
                                                        << (watch ? watcher->output_so_far() : kill_logs));
            const LastBeat r = report_of(*service);
            REQUIRE_MESSAGE(r.term != 0, service->output());
            // A service that the scheduler held for a timeout between two of its beats (beats
            // are at most 11 ms apart) was really overdue then: checkproc may rightly stop it,
            // and the SIGTERM can land just after the beat that came late. Such a service tells
            // nothing about early kills; the loaded 2-core machines of CI make a few.
            if (r.longest_gap >= kTimeoutNs) {
                ++held;
                continue;
            }
            // The beat happened inside beat(), between `before` and `after` by the service's own
            // precise clock: SIGTERM came no sooner than the timeout after `before`. (`after`
            // may be much later when the service was preempted inside beat().)
            CHECK(r.term >= r.before + kTimeoutNs);
            least_margin_ns = std::min(least_margin_ns, static_cast<std::int64_t>(r.term - (r.before + kTimeoutNs)));
        }
        CHECK_MESSAGE(held <= 40, held << " of 50 services were held off the CPU for a whole timeout: too few left to judge");
        MESSAGE(std::string(watch ? "watch" : "one-shot") << ": SIGTERM came at least " << least_margin_ns / 1000
                                                          << " us after the real deadline; " << held
                                                          << " services held off the CPU for a timeout were not judged");
    }
}

TEST_CASE("--watch follows the key to a new table within a second, whatever the old table's registrants do") {
    hbtest::ScratchKey scratch;
    { Table table = Table::open_or_create(scratch.options(16)); }
    Process watcher(checkproc_args(scratch, {"--watch", "--grace", "1s"}));
    REQUIRE(watcher.wait_for_output("watching the table"));
    // An old registrant that keeps beating, and registering anew, in the table being replaced.
    auto old_service = std::make_unique<Process>(std::vector<std::string>{hbtest::bin("many_entries"), key_text(scratch), "4",
                                                                          "old-", "1s", "10ms"});
    REQUIRE(old_service->wait_for_output("ready"));

    REQUIRE(Table::destroy(scratch.key()));
    { Table table = Table::create(scratch.options(16)); }
    const auto replaced = std::chrono::steady_clock::now();
    REQUIRE(watcher.wait_for_output("was replaced: switching to the new one", 5s));
    REQUIRE(watcher.wait_for_output("watching the table", 5s));
    const auto switched = std::chrono::steady_clock::now();
    CHECK(switched - replaced < 2s);  // within one second of the replacement, plus a margin for a loaded machine

    // A hung service in the new table is stopped.
    auto hung = service(scratch, "hung-in-new-table", {"--timeout", "200ms", "--hang-after", "0ms"});
    REQUIRE(hung->wait_exit(10s));
    CHECK(WTERMSIG(hung->wait()) == SIGTERM);
    CHECK(watcher.running());
}

TEST_CASE("--watch keeps its memory flat over 100,000 registrations and releases") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(256);
    { Table table = Table::open_or_create(options); }
    Process watcher(checkproc_args(scratch, {"--watch"}));
    REQUIRE(watcher.wait_for_output("watching the table"));
    auto rss_kib = [&] {
        const auto status = hbwatch::read_proc_file("/proc/" + std::to_string(watcher.pid()) + "/status");
        REQUIRE(status);
        const auto at = status->find("VmRSS:");
        REQUIRE(at != std::string::npos);
        return std::stol(status->substr(at + 6));
    };
    // Up to 100 entries held at once. checkproc follows through the journal, or, when more
    // changed than the journal holds between two of its looks, by reading every slot.
    auto churn = [&](int cycles) {
        std::vector<hbwatch::Heartbeat> held;
        for (int i = 0; i < cycles; ++i) {
            held.emplace_back("churn-" + std::to_string(i % 100), 1s, options);
            if (held.size() == 100) held.clear();
        }
    };
    churn(10'000);  // warm up: the structures reach their size
    const long warm = rss_kib();
    churn(100'000);
    const long after = rss_kib();
    MESSAGE("checkproc --watch RSS: " << warm << " KiB after 10,000 registrations, " << after << " KiB after 100,000 more");
    CHECK(after - warm < 1024);
    CHECK(watcher.running());
    auto table = Table::open_existing(options, Table::Access::read_only);
    CHECK(table->info().registrations == 110'000);
}
