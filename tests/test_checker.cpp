// checkproc's engine in-process: the clock is a parameter, so hangs are judged at chosen
// instants without sleeping; the stops are real signals to real forked processes.
#include <doctest/doctest.h>

#include <unistd.h>

#include "core/clock.h"
#include "core/duration.h"
#include "engine/checker.h"
#include <hbwatch/heartbeat.h>

#include "core/process.h"
#include "core/table.h"

#include "support.h"

using namespace std::chrono_literals;
using hbwatch::tool::Checker;
using hbwatch::tool::Health;
using hbwatch::tool::LogLevel;
using hbwatch::Table;

namespace {

// What checkproc logs without -v.
struct Log {
    std::vector<std::string> lines;
    hbwatch::tool::LogSink sink() {
        return [this](LogLevel level, const std::string& line) {
            if (level != LogLevel::debug) lines.push_back(line);
        };
    }
    std::string all() const {
        std::string text;
        for (const auto& l : lines) text += l + "\n";
        return text;
    }
};

// A forked child registered under `name`, which then sleeps without beating.
struct Registrant {
    hbtest::Pipe ready;
    std::unique_ptr<hbtest::Child> child;
    std::uint32_t slot = 0;
    Registrant(const hbwatch::TableOptions& options, const std::string& name, std::chrono::milliseconds timeout,
               bool ignore_term = false) {
        child = std::make_unique<hbtest::Child>([&] {
            if (ignore_term) ::signal(SIGTERM, SIG_IGN);
            hbwatch::Heartbeat hb(name, timeout, options);
            const std::uint32_t index = hb.slot();
            (void)!::write(ready.write_end(), &index, sizeof index);
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(::read(ready.read_end(), &slot, sizeof slot) == sizeof slot);
        // Asleep in pause() before the test judges it: a process still runnable at its
        // deadline gets a second look (hang_verdict.h), which these tests do not wait for.
        REQUIRE(hbtest::eventually([&] {
            const auto stat = hbwatch::read_proc_stat(child->pid());
            return stat && stat->state == 'S';
        }));
    }
};

std::uint64_t deadline_of(Table& table, std::uint32_t slot) {
    auto s = table.read(slot);
    REQUIRE(s);
    return hbwatch::tool::deadline_ns(*s);
}

}  // namespace

TEST_CASE("health is ok to half the timeout, late to the timeout, hung past it") {
    hbwatch::SlotSnapshot s;
    s.last_beat_ns = 1'000'000'000;
    s.timeout = 10s;
    CHECK(hbwatch::tool::health_of(s, 1'000'000'000) == Health::ok);
    CHECK(hbwatch::tool::health_of(s, 6'000'000'000) == Health::ok);
    CHECK(hbwatch::tool::health_of(s, 6'000'000'001) == Health::late);
    const auto tick = hbwatch::beat_lag_bound_ns();  // the beat may have been up to two ticks later
    CHECK(hbwatch::tool::health_of(s, 11'000'000'000) == Health::late);
    CHECK(hbwatch::tool::health_of(s, 11'000'000'000 + tick) == Health::late);
    CHECK(hbwatch::tool::health_of(s, 11'000'000'001 + tick) == Health::hung);
    CHECK(hbwatch::tool::health_of(s, 500) == Health::ok);  // a beat "in the future" counts as just now
}

TEST_CASE("an entry is healthy up to its deadline and hung one nanosecond after") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Registrant service(options, "order-svc", 1s);
    Table table = Table::open_or_create(options);
    const auto deadline = deadline_of(table, service.slot);
    Log log;
    Checker checker(table, {}, log.sink());

    auto summary = checker.scan(deadline);
    CHECK(summary.healthy == 1);
    CHECK(summary.hung == 0);
    CHECK(summary.next_deadline_ns == deadline + 1);
    CHECK(service.child->wait_exit(0ms) == false);

    summary = checker.scan(deadline + 1);
    CHECK(summary.hung == 1);
    CHECK(summary.stopping == 1);
    checker.finish();
    REQUIRE(service.child->wait_exit(10s));
    CHECK(WTERMSIG(service.child->wait()) == SIGTERM);
    CHECK_FALSE(table.read(service.slot));
    CHECK(table.info().kills == 1);
    const std::string who = "slot " + std::to_string(service.slot) + " pid " + std::to_string(service.child->pid()) + " 'order-svc'";
    INFO(log.all());
    REQUIRE(log.lines.size() == 2);
    // Acted on two ticks after the stamped deadline: the beat may have come that long after its stamp.
    const auto tick = hbwatch::human_duration(std::chrono::milliseconds(hbwatch::beat_lag_bound_ns() / 1'000'000));
    CHECK(log.lines[0] == who + ": hung: last beat 1.0s ago, timeout 1.0s, " + tick +
                              " late (asleep, not waiting to run): SIGTERM sent, SIGKILL in 5.0s unless it exits");
    CHECK(log.lines[1].starts_with(who + ": exited "));
    CHECK(log.lines[1].ends_with(" after SIGTERM; slot freed"));
}

TEST_CASE("a process that ignores SIGTERM gets SIGKILL when the grace runs out") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Registrant stubborn(options, "stubborn", 1s, true);
    Table table = Table::open_or_create(options);
    Log log;
    hbwatch::tool::CheckOptions check;
    check.grace = 300ms;
    Checker checker(table, check, log.sink());
    checker.scan(deadline_of(table, stubborn.slot) + 1);
    const auto start = std::chrono::steady_clock::now();
    checker.finish();
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE(stubborn.child->wait_exit(10s));
    CHECK(WTERMSIG(stubborn.child->wait()) == SIGKILL);
    CHECK(took >= 250ms);
    CHECK(took < 5s);
    CHECK(log.all().find("did not exit within the 300ms grace after SIGTERM: SIGKILL sent") != std::string::npos);
    CHECK(log.all().find("(SIGKILL was needed); slot freed") != std::string::npos);
}

TEST_CASE("a dry run signals nothing and changes nothing") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Registrant service(options, "order-svc", 1s);
    Table table = Table::open_or_create(options);
    const auto token = table.read(service.slot)->token;
    Log log;
    hbwatch::tool::CheckOptions check;
    check.dry_run = true;
    Checker checker(table, check, log.sink());
    checker.scan(deadline_of(table, service.slot) + 1);
    CHECK(checker.idle());
    CHECK(service.child->wait_exit(0ms) == false);
    CHECK(table.read(service.slot)->token == token);
    CHECK(log.all().find("dry run: would send SIGTERM, then SIGKILL after 5.0s") != std::string::npos);
}

TEST_CASE("an entry another live checkproc is stopping is left to it, and a dead one's claim is taken over") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Registrant service(options, "order-svc", 1s);
    Table table = Table::open_or_create(options);
    const auto s = *table.read(service.slot);
    hbtest::Child other_checkproc([] {
        ::pause();
        return 0;
    });
    const auto other = *hbwatch::identity_of(other_checkproc.pid());
    REQUIRE(table.take_stop(s.index, s.token, other).result == hbwatch::StopClaim::Result::taken);
    Log log;
    Checker checker(table, {}, log.sink());

    SUBCASE("alive: skipped") {
        checker.scan(deadline_of(table, service.slot) + 1);
        CHECK(checker.idle());
        CHECK(service.child->wait_exit(0ms) == false);
        CHECK(log.all().find("already being stopped by checkproc pid " + std::to_string(other.pid) + ", skipped") !=
              std::string::npos);
    }
    SUBCASE("dead: taken over") {
        ::kill(other_checkproc.pid(), SIGKILL);
        other_checkproc.wait();
        checker.scan(deadline_of(table, service.slot) + 1);
        checker.finish();
        REQUIRE(service.child->wait_exit(10s));
        CHECK(WTERMSIG(service.child->wait()) == SIGTERM);
    }
}

TEST_CASE("an entry with the scanner's own pid is garbage: reported, freed, never signalled") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Table table = Table::open_or_create(options);
    const auto claim = table.claim("impostor", 1s, hbwatch::self_identity(), 0);
    Log log;
    Checker checker(table, {}, log.sink());
    const auto summary = checker.scan(deadline_of(table, claim.index) + 1);
    CHECK(summary.freed == 1);
    CHECK(checker.idle());
    CHECK_FALSE(table.read(claim.index));
    CHECK(log.lines == std::vector<std::string>{"slot " + std::to_string(claim.index) + ": garbage entry (pid " +
                                                std::to_string(::getpid()) +
                                                " is this checkproc, which never registers): slot freed, nothing signalled"});
}

TEST_CASE("a revoked entry is never signalled, and its slot is freed once its process has exited") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    Registrant service(options, "removed-svc", 1s);
    Table table = Table::open_or_create(options);
    const auto deadline = deadline_of(table, service.slot);
    REQUIRE(table.revoke(service.slot, table.read(service.slot)->token) == Table::Revoked::revoked);
    Log log;
    Checker checker(table, {}, log.sink());

    auto summary = checker.scan(deadline + 1);  // long past its deadline, but an operator removed it
    checker.finish();
    CHECK(summary.hung == 0);
    CHECK(summary.stopping == 0);
    CHECK_FALSE(service.child->wait_exit(0ms));
    CHECK(table.read(service.slot)->phase == hbwatch::SlotPhase::revoked);

    ::kill(service.child->pid(), SIGKILL);
    service.child->wait();
    summary = checker.scan(deadline + 1);
    CHECK(summary.freed == 1);
    CHECK_FALSE(table.read(service.slot));
    CHECK(table.info().kills == 0);
}

// The hang verdict's rules, on looks as /proc would give them (hang_verdict.h).
namespace {
hbwatch::tool::ProcessLook look(std::uint64_t at_ms, std::vector<hbwatch::tool::ProcessLook::Thread> threads) {
    hbwatch::tool::ProcessLook l;
    l.at_ns = at_ms * 1'000'000;
    l.threads = std::move(threads);
    return l;
}
hbwatch::tool::ProcessLook::Thread thread(pid_t tid, char state, std::uint64_t cpu_ms, std::uint64_t delay_ms = 0) {
    return {tid, state, cpu_ms * 1'000'000, delay_ms * 1'000'000, 0};
}
}  // namespace

TEST_CASE("hang verdicts: asleep is hung at once, runnable is looked at again and then starved or busy-hung, stopped or traced or frozen is spared") {
    using Kind = hbwatch::tool::HangVerdict::Kind;
    using hbwatch::tool::judge_hang;
    // A deadlock: every thread asleep, no run delay. Hung at the first look.
    CHECK(judge_hang(look(0, {thread(1, 'S', 5), thread(2, 'S', 1)}), nullptr).kind == Kind::hung);
    // Runnable: a second look decides.
    const auto first = look(0, {thread(1, 'R', 100), thread(2, 'S', 1)});
    CHECK(judge_hang(first, nullptr).kind == Kind::look_again);
    // Still runnable and barely run over 200 ms: starved, even though run_delay has not moved
    // (the kernel adds a wait when it ends).
    const auto waiting = look(200, {thread(1, 'R', 101), thread(2, 'S', 1)});
    const auto starved = judge_hang(first, &waiting);
    CHECK(starved.kind == Kind::starved);
    CHECK(starved.words.find("CPU-starved") == 0);
    // Waited, then ran: the run delay between the looks says it.
    const auto ran = look(200, {thread(1, 'S', 110, 150), thread(2, 'S', 1)});
    CHECK(judge_hang(first, &ran).kind == Kind::starved);
    // Runnable and running all along (a busy loop): hung.
    const auto busy = look(200, {thread(1, 'R', 295), thread(2, 'S', 1)});
    CHECK(judge_hang(first, &busy).kind == Kind::hung);
    // In uninterruptible I/O at both looks (no delay accounting): starved of I/O.
    const auto io_first = look(0, {thread(1, 'D', 3)});
    const auto io_later = look(200, {thread(1, 'D', 3)});
    CHECK(judge_hang(io_first, &io_later).kind == Kind::starved);
    // Stopped, traced, frozen: spared, whatever the rest says.
    CHECK(judge_hang(look(0, {thread(1, 'T', 1), thread(2, 'T', 1)}), nullptr).kind == Kind::stopped);
    CHECK(judge_hang(look(0, {thread(1, 'T', 1), thread(2, 'S', 1)}), nullptr).kind == Kind::hung);  // one thread stopped is not the process
    auto traced = look(0, {thread(1, 't', 1)});
    traced.tracer = 4242;
    traced.tracer_name = "gdb";
    CHECK(judge_hang(traced, nullptr).words == "traced by pid 4242 (gdb)");
    auto frozen = look(0, {thread(1, 'S', 1)});
    frozen.frozen = true;
    CHECK(judge_hang(frozen, nullptr).kind == Kind::frozen);
    // Unreadable: nothing to spare it for.
    CHECK(judge_hang(look(0, {}), nullptr).kind == Kind::hung);
    // The window: a quarter of the timeout, within 50 ms and 1 s.
    CHECK(hbwatch::tool::look_window_ns(100'000'000) == 50'000'000);
    CHECK(hbwatch::tool::look_window_ns(2'000'000'000) == 500'000'000);
    CHECK(hbwatch::tool::look_window_ns(60'000'000'000) == 1'000'000'000);
}
