// A stack unit's state table, driven with chosen events at chosen instants: no process, no
// clock, no sleep. Each case is a transition the stack relies on, the awkward ones included.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "engine/unit.h"

using namespace std::chrono_literals;
using hbwatch::tool::ProgramConfig;
using hbwatch::tool::ReadyCheck;
using hbwatch::tool::RestartMode;
using hbwatch::to_ns;
using hbwatch::tool::Effect;
using hbwatch::tool::Facts;
using hbwatch::tool::Goal;
using hbwatch::tool::Phase;
using hbwatch::tool::Change;
using hbwatch::tool::Unit;
using hbwatch::tool::UnitEvent;
using Kind = UnitEvent::Kind;

namespace {

constexpr std::uint64_t kSecond = 1'000'000'000;

std::shared_ptr<const ProgramConfig> program(const std::function<void(ProgramConfig&)>& edit = {}) {
    auto p = std::make_shared<ProgramConfig>();
    p->name = "svc";
    p->command = {"svc"};
    p->stop_grace = 10s;
    p->restart_delay = 1s;
    if (edit) edit(*p);
    return p;
}

// A unit with a recorder of every phase it passes through, and helpers to hand it events.
struct Driven {
    Unit unit;
    std::vector<std::pair<Phase, Phase>> transitions;
    explicit Driven(std::shared_ptr<const ProgramConfig> p, Goal goal = Goal::up) : unit(std::move(p), "svc", goal) {
        unit.set_observer([this](const Unit&, const Change& change) {
            if (change.from != change.to) transitions.emplace_back(change.from, change.to);
        });
    }
    std::vector<Effect> on(Kind kind, std::uint64_t now, Facts facts = {}) { return unit.on(UnitEvent(kind), now, facts); }
    std::vector<Effect> tick(std::uint64_t now, Facts facts = {}) { return on(Kind::tick, now, facts); }
    std::vector<Effect> spawned(std::uint64_t now, pid_t pid = 4242) {
        UnitEvent event(Kind::spawned);
        event.pid = pid;
        return unit.on(event, now, {});
    }
    std::vector<Effect> exited(std::uint64_t now, int status, Facts facts = {}) {
        UnitEvent event(Kind::exited);
        event.status = status;
        return unit.on(event, now, facts);
    }
    std::vector<Effect> ready(std::uint64_t now) {
        UnitEvent event(Kind::ready);
        event.what = "its port accepts";
        return unit.on(event, now, {});
    }
    // Waiting -> spawn -> started, at `now`.
    void start(std::uint64_t now) {
        Facts may;
        may.may_start = true;
        REQUIRE(has(tick(now, may), Effect::Kind::spawn));
        spawned(now);
    }
    static bool has(const std::vector<Effect>& effects, Effect::Kind kind, int signal = 0) {
        return std::any_of(effects.begin(), effects.end(), [&](const Effect& e) { return e.kind == kind && (signal == 0 || e.signal == signal); });
    }
    static bool said(const std::vector<Effect>& effects, const std::string& text) {
        return std::any_of(effects.begin(), effects.end(), [&](const Effect& e) { return e.kind == Effect::Kind::log && e.text == text; });
    }
};

int exit_code(int code) { return code << 8; }  // a waitpid status for exit(code)
int killed_by(int sig) { return sig; }         // a waitpid status for a death by `sig`

}  // namespace

TEST_CASE("a unit waits for what it depends on, starts, and is ready at once or after its check") {
    Driven d(program());
    CHECK(d.unit.phase() == Phase::waiting);
    CHECK(d.tick(0).empty());  // may_start false: it waits
    CHECK(d.unit.phase() == Phase::waiting);
    d.start(kSecond);
    CHECK(d.unit.phase() == Phase::ready);  // ready: started
    CHECK(d.unit.running());
    CHECK(d.unit.pid() == 4242);

    Driven checked(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::tcp;
        p.ready_timeout = 5s;
    }));
    checked.start(kSecond);
    CHECK(checked.unit.phase() == Phase::starting);
    // A probe at once, then after 1, 2, 4 ... ms, doubling up to every 100 ms.
    CHECK(Driven::has(checked.tick(kSecond), Effect::Kind::probe));
    std::uint64_t at = kSecond, gap = to_ns(1ms);
    for (int look = 0; look < 12; ++look) {
        CHECK(checked.unit.next_wake() == at + gap);
        CHECK(checked.tick(at + gap - 1).empty());  // never early
        at += gap;
        CHECK(Driven::has(checked.tick(at), Effect::Kind::probe));
        gap = std::min<std::uint64_t>(2 * gap, to_ns(100ms));
    }
    CHECK(gap == to_ns(100ms));
    const auto effects = checked.ready(2 * kSecond);
    CHECK(Driven::said(effects, "svc is ready (its port accepts) 1.0s after its start"));
    CHECK(checked.unit.phase() == Phase::ready);
}

TEST_CASE("an exec readiness check that fails is tried again after 10 ms, then doubling up to every 500 ms") {
    Driven d(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::exec;
        p.ready_timeout = 60s;
    }));
    d.start(kSecond);
    std::uint64_t at = kSecond, gap = to_ns(10ms);
    REQUIRE(Driven::has(d.tick(at), Effect::Kind::probe));
    for (int attempt = 0; attempt < 10; ++attempt) {
        d.on(Kind::probe_failed, at);
        CHECK(d.tick(at + gap - 1).empty());  // never early
        at += gap;
        CHECK(Driven::has(d.tick(at), Effect::Kind::probe));
        gap = std::min<std::uint64_t>(2 * gap, to_ns(500ms));
    }
    CHECK(gap == to_ns(500ms));
}

TEST_CASE("autostart: false is stopped until an operator's start, and a stopped unit is never ticked into a start") {
    Driven d(program(), Goal::down);
    CHECK(d.unit.phase() == Phase::stopped);
    Facts may;
    may.may_start = true;
    CHECK(d.tick(0, may).empty());
    d.on(Kind::start, 0);
    CHECK(d.unit.phase() == Phase::waiting);
    CHECK(d.unit.operator_set());
    CHECK(Driven::has(d.tick(0, may), Effect::Kind::spawn));
}

TEST_CASE("not ready within ready_timeout: stopped, then started again after the backoff") {
    Driven d(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::exec;
        p.ready_timeout = 2s;
        p.stop_grace = 1s;
    }));
    d.start(0);
    const auto effects = d.tick(2 * kSecond);
    CHECK(Driven::said(effects, "svc was not ready within 2.0s: stopping it, to start it again"));
    CHECK(Driven::has(effects, Effect::Kind::signal, SIGTERM));
    CHECK(d.unit.phase() == Phase::stopping);
    const auto gone = d.exited(2 * kSecond + 1, killed_by(SIGTERM));
    CHECK(d.unit.phase() == Phase::backoff);
    CHECK(Driven::said(gone, "svc stopped; next start in 1.0s"));
}

TEST_CASE("a hang, a ready timeout or max_rss is a failure: restart: never leaves the unit exited, on-failure starts it again") {
    auto hang = [](Driven& d, std::uint64_t now) {
        UnitEvent event(Kind::hung);
        event.what = "missed its WATCHDOG=1 deadline";
        return d.unit.on(event, now, {});
    };
    for (const RestartMode mode : {RestartMode::never, RestartMode::on_failure, RestartMode::always}) {
        CAPTURE(static_cast<int>(mode));
        const bool restarted = mode != RestartMode::never;
        Driven hung(program([&](ProgramConfig& p) { p.restart = mode; }));
        hung.start(0);
        const auto stop = hang(hung, kSecond);
        CHECK(Driven::has(stop, Effect::Kind::signal, SIGTERM));
        CHECK(Driven::said(stop, restarted ? "svc (pid 4242) missed its WATCHDOG=1 deadline: stopping it, to start it again"
                                           : "svc (pid 4242) missed its WATCHDOG=1 deadline: stopping it; not restarted (restart: never)"));
        const auto gone = hung.exited(kSecond + 1, killed_by(SIGTERM));
        CHECK(hung.unit.phase() == (restarted ? Phase::backoff : Phase::exited));
        CHECK(Driven::said(gone, restarted ? "svc stopped; next start in 1.0s" : "svc stopped; not restarted (restart: never)"));
        Facts may;
        may.may_start = true;
        CHECK(Driven::has(hung.tick(10 * kSecond, may), Effect::Kind::spawn) == restarted);  // started again only after a restartable failure

        Driven slow(program([&](ProgramConfig& p) {
            p.restart = mode;
            p.ready.kind = ReadyCheck::Kind::exec;
            p.ready_timeout = 2s;
        }));
        slow.start(0);
        CHECK(Driven::has(slow.tick(2 * kSecond), Effect::Kind::signal, SIGTERM));
        slow.exited(2 * kSecond + 1, killed_by(SIGTERM));
        CHECK(slow.unit.phase() == (restarted ? Phase::backoff : Phase::exited));

        Driven big(program([&](ProgramConfig& p) {
            p.restart = mode;
            p.max_rss = 1 << 20;
        }));
        big.start(0);
        for (int sample = 1; sample <= 3; ++sample) {
            UnitEvent rss(Kind::rss);
            rss.bytes = 2 << 20;
            big.unit.on(rss, sample * kSecond, {});
        }
        CHECK(big.unit.phase() == Phase::stopping);
        big.exited(4 * kSecond, killed_by(SIGTERM));
        CHECK(big.unit.phase() == (restarted ? Phase::backoff : Phase::exited));
    }
}

TEST_CASE("EXTEND_TIMEOUT_USEC: a ready timeout and a stop's grace move later, never earlier, and not during stop all") {
    auto extend = [](Driven& d, std::uint64_t now, std::uint64_t until) {
        UnitEvent event(Kind::extend);
        event.until_ns = until;
        return d.unit.on(event, now, {});
    };
    Driven d(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::exec;
        p.ready_timeout = 2s;
    }));
    d.start(0);
    extend(d, kSecond, 5 * kSecond);
    CHECK(!Driven::has(d.tick(2 * kSecond), Effect::Kind::signal));  // its own timeout has passed: extended
    extend(d, 3 * kSecond, 4 * kSecond);                               // earlier than the extension: ignored
    CHECK(!Driven::has(d.tick(4 * kSecond), Effect::Kind::signal));
    CHECK(!Driven::has(d.tick(5 * kSecond - 1), Effect::Kind::signal));  // never early
    CHECK(Driven::has(d.tick(5 * kSecond), Effect::Kind::signal, SIGTERM));
    CHECK(d.unit.phase() == Phase::stopping);

    // The stop's grace (10 s, from 5 s): extended to 20 s, then SIGKILL at 20 s and not before.
    extend(d, 6 * kSecond, 20 * kSecond);
    CHECK(!Driven::has(d.tick(15 * kSecond), Effect::Kind::kill));
    CHECK(!Driven::has(d.tick(20 * kSecond - 1), Effect::Kind::kill));
    CHECK(Driven::has(d.tick(20 * kSecond), Effect::Kind::kill));

    // procctl stopping everything: its own stop has an end, so the grace is not extended.
    Driven halted(program());
    halted.start(0);
    halted.unit.on(UnitEvent(Kind::stop_all), kSecond, {});
    halted.tick(kSecond);
    REQUIRE(halted.unit.phase() == Phase::stopping);
    extend(halted, 2 * kSecond, 60 * kSecond);
    CHECK(Driven::has(halted.tick(11 * kSecond), Effect::Kind::kill));
}

TEST_CASE("a start counts from its fork: an exec the host held up is part of its ready_timeout and its uptime") {
    Driven d(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::exec;
        p.ready_timeout = 2s;
    }));
    Facts may;
    may.may_start = true;
    REQUIRE(Driven::has(d.tick(kSecond, may), Effect::Kind::spawn));
    UnitEvent spawned(Kind::spawned);
    spawned.pid = 4242;
    spawned.forked_ns = kSecond;  // its exec seen 1.5 s after its fork
    d.unit.on(spawned, 2 * kSecond + kSecond / 2, {});
    CHECK(d.unit.started_ns() == kSecond);
    CHECK(d.unit.phase() == Phase::starting);
    CHECK(d.unit.next_wake() <= 3 * kSecond);
    CHECK(Driven::said(d.tick(3 * kSecond), "svc was not ready within 2.0s: stopping it, to start it again"));
}

TEST_CASE("an exit is restarted by the restart mode: always after the delay, never and on-failure not") {
    Driven always(program());
    always.start(0);
    const auto effects = always.exited(10 * kSecond, exit_code(3));
    CHECK(Driven::said(effects, "svc exited with code 3 after 10.0s; next start in 1.0s"));
    CHECK(Driven::has(effects, Effect::Kind::kill_leftovers));
    CHECK(always.unit.phase() == Phase::backoff);
    CHECK(always.unit.last_exit() == "exited with code 3 after 10.0s");
    Facts may;
    may.may_start = true;
    CHECK(always.tick(10 * kSecond + to_ns(999ms), may).empty());
    CHECK(Driven::has(always.tick(11 * kSecond, may), Effect::Kind::spawn));

    Driven never(program([](ProgramConfig& p) { p.restart = RestartMode::never; }));
    never.start(0);
    CHECK(Driven::said(never.exited(kSecond, exit_code(0)), "svc exited with code 0 after 1.0s; not restarted (restart: never)"));
    CHECK(never.unit.phase() == Phase::exited);

    Driven on_failure(program([](ProgramConfig& p) { p.restart = RestartMode::on_failure; }));
    on_failure.start(0);
    on_failure.exited(kSecond, exit_code(0));
    CHECK(on_failure.unit.phase() == Phase::exited);
    on_failure.on(Kind::start, 2 * kSecond);
    on_failure.start(2 * kSecond);
    on_failure.exited(3 * kSecond, killed_by(SIGSEGV));
    CHECK(on_failure.unit.phase() == Phase::backoff);
}

TEST_CASE("a backoff whose dependency went away waits again instead of starting") {
    Driven d(program());
    d.start(0);
    d.exited(kSecond, exit_code(1));
    REQUIRE(d.unit.phase() == Phase::backoff);
    CHECK(d.tick(5 * kSecond).empty());  // due, but may_start is false
    CHECK(d.unit.phase() == Phase::waiting);
}

TEST_CASE("a stop is queued while what waits for it is stopping, then TERM, KILL after the grace, and giving up after that") {
    Driven d(program([](ProgramConfig& p) { p.stop_grace = 3s; }));
    d.start(0);
    d.on(Kind::stop, kSecond);
    CHECK(d.unit.phase() == Phase::stop_queued);
    CHECK(d.unit.goal() == Goal::down);
    Facts dependents;
    dependents.dependents_stopping = true;
    CHECK(d.tick(kSecond, dependents).empty());
    CHECK(d.unit.phase() == Phase::stop_queued);
    const auto term = d.tick(2 * kSecond);
    CHECK(Driven::has(term, Effect::Kind::signal, SIGTERM));
    CHECK(Driven::said(term, "stopping svc (pid 4242): SIGTERM, SIGKILL after 3.0s"));
    CHECK(d.unit.phase() == Phase::stopping);
    CHECK(d.unit.next_wake() == 5 * kSecond);
    CHECK(d.tick(5 * kSecond - 1).empty());
    const auto kill = d.tick(5 * kSecond);
    CHECK(Driven::has(kill, Effect::Kind::kill));
    CHECK(d.unit.phase() == Phase::killing);
    const auto abandon = d.tick(10 * kSecond);
    CHECK(Driven::has(abandon, Effect::Kind::abandon));
    CHECK(Driven::said(abandon, "svc: processes are still there 5.0s after SIGKILL; leaving them"));
    CHECK(d.unit.phase() == Phase::stopped);
    CHECK_FALSE(d.unit.running());
}

TEST_CASE("a main process gone while its cgroup still holds processes: those are killed, and the stop ends when the cgroup is empty") {
    Driven d(program());
    d.start(0);
    d.on(Kind::stop, kSecond);
    d.tick(kSecond);
    Facts left;
    left.cgroup_populated = true;
    d.exited(2 * kSecond, killed_by(SIGTERM), left);
    CHECK(d.tick(2 * kSecond, left).empty());  // waits, SIGKILL sent, for the cgroup to empty
    CHECK(d.unit.phase() == Phase::killing);
    CHECK(d.tick(3 * kSecond).size() == 1);  // the cgroup is empty: stopped, and said
    CHECK(d.unit.phase() == Phase::stopped);
}

TEST_CASE("an operator's restart during a stop starts the unit again as soon as it is gone, without a backoff") {
    Driven d(program());
    d.start(0);
    d.on(Kind::stop, kSecond);
    d.tick(kSecond);
    REQUIRE(d.unit.phase() == Phase::stopping);
    d.on(Kind::restart, 2 * kSecond);
    CHECK(d.unit.phase() == Phase::stopping);  // the stop goes on
    CHECK(d.unit.goal() == Goal::up);
    const auto gone = d.exited(3 * kSecond, killed_by(SIGTERM));
    CHECK(Driven::said(gone, "svc stopped; starting it again"));
    CHECK(d.unit.phase() == Phase::waiting);
}

TEST_CASE("a start calls off a stop not yet begun, and a stop during the backoff just stops") {
    Driven d(program([](ProgramConfig& p) { p.ready.kind = ReadyCheck::Kind::beat; }));
    d.start(0);
    REQUIRE(d.unit.phase() == Phase::starting);
    d.on(Kind::stop, kSecond);
    CHECK(d.unit.phase() == Phase::stop_queued);
    d.on(Kind::start, kSecond);
    CHECK(d.unit.phase() == Phase::starting);  // back where it was, its check going on
    d.on(Kind::stop, kSecond);
    d.ready(kSecond);  // its check passed while the stop was queued
    d.on(Kind::start, kSecond);
    CHECK(d.unit.phase() == Phase::ready);

    Driven backing(program());
    backing.start(0);
    backing.exited(kSecond, exit_code(1));
    REQUIRE(backing.unit.phase() == Phase::backoff);
    CHECK(backing.on(Kind::stop, kSecond).empty());
    CHECK(backing.unit.phase() == Phase::stopped);
    Facts may;
    may.may_start = true;
    CHECK(backing.tick(100 * kSecond, may).empty());
}

TEST_CASE("an exit while its stop is queued ends the stop, and an exit during readiness is a crash") {
    Driven queued(program());
    queued.start(0);
    queued.on(Kind::stop, kSecond);
    const auto effects = queued.exited(2 * kSecond, exit_code(0));
    CHECK(Driven::said(effects, "svc exited with code 0 after 2.0s"));
    CHECK(queued.unit.phase() == Phase::stopped);

    Driven starting(program([](ProgramConfig& p) { p.ready.kind = ReadyCheck::Kind::tcp; }));
    starting.start(0);
    const auto crash = starting.exited(kSecond, killed_by(SIGABRT));
    CHECK(Driven::has(crash, Effect::Kind::close_probe));
    CHECK(starting.unit.phase() == Phase::backoff);
}

TEST_CASE("a retired unit (a reload removed it) stops after what waits for it, is never restarted, and is then dropped") {
    Driven d(program());
    d.start(0);
    d.on(Kind::retire, kSecond);
    CHECK(d.unit.phase() == Phase::stop_queued);
    CHECK_FALSE(d.unit.retired());
    d.tick(kSecond);
    d.on(Kind::restart, kSecond);  // nothing brings it back: a reload replaced it
    CHECK(d.unit.goal() == Goal::retire);
    d.exited(2 * kSecond, killed_by(SIGTERM));
    CHECK(d.unit.phase() == Phase::stopped);
    CHECK(d.unit.retired());

    Driven quiet(program());
    quiet.start(0);
    quiet.on(Kind::retire, kSecond);
    quiet.tick(kSecond);
    quiet.exited(2 * kSecond, killed_by(SIGTERM));
    CHECK(quiet.unit.phase() == Phase::stopped);
    CHECK(quiet.unit.retired());

    Driven idle(program(), Goal::down);
    idle.on(Kind::retire, 0);
    CHECK(idle.unit.retired());
}

TEST_CASE("stop all: nothing starts again, whatever a stop was for, and starts asked meanwhile are ignored") {
    Driven d(program([](ProgramConfig& p) { p.ready.kind = ReadyCheck::Kind::exec; }));
    d.start(0);
    d.on(Kind::restart, kSecond);  // a restart queued...
    d.on(Kind::stop_all, kSecond);  // ...then procctl stops everything
    d.tick(kSecond);
    REQUIRE(d.unit.phase() == Phase::stopping);
    d.on(Kind::start, kSecond);
    d.exited(2 * kSecond, killed_by(SIGTERM));
    CHECK(d.unit.phase() == Phase::stopped);

    Driven waiting(program());
    waiting.on(Kind::stop_all, 0);
    CHECK(waiting.unit.phase() == Phase::stopped);
    Facts may;
    may.may_start = true;
    CHECK(waiting.tick(kSecond, may).empty());
}

TEST_CASE("max_restarts: the start past the limit gives up, and an operator's start begins a new count") {
    Driven d(program([](ProgramConfig& p) {
        p.max_restarts = 2;
        p.max_restarts_window = 60s;
    }));
    Facts may;
    may.may_start = true;
    std::uint64_t now = 0;
    for (int i = 0; i < 2; ++i) {
        d.start(now);
        now += 2 * kSecond;
        d.exited(now, exit_code(1));
        now += 10 * kSecond;
    }
    const auto effects = d.tick(now, may);
    CHECK(Driven::said(effects, "giving up on svc: started 2 times within 1m00s"));
    CHECK(d.unit.phase() == Phase::gave_up);
    d.on(Kind::start, now);
    CHECK(d.unit.phase() == Phase::waiting);
    CHECK(Driven::has(d.tick(now, may), Effect::Kind::spawn));
}

TEST_CASE("max_rss: three samples in a row above the limit restart the unit, and one below resets the count") {
    Driven d(program([](ProgramConfig& p) { p.max_rss = 100 << 20; }));
    d.start(0);
    UnitEvent over(Kind::rss);
    over.bytes = 200 << 20;
    UnitEvent under(Kind::rss);
    under.bytes = 50 << 20;
    CHECK(Driven::has(d.tick(kSecond), Effect::Kind::sample_rss));
    d.unit.on(over, kSecond, {});
    d.unit.on(over, 2 * kSecond, {});
    d.unit.on(under, 3 * kSecond, {});
    d.unit.on(over, 4 * kSecond, {});
    d.unit.on(over, 5 * kSecond, {});
    CHECK(d.unit.phase() == Phase::ready);
    const auto effects = d.unit.on(over, 6 * kSecond, {});
    CHECK(Driven::said(effects, "svc (pid 4242) uses 200 MiB, above its max_rss of 100 MiB for 3 checks in a row: stopping it, to start it again"));
    CHECK(d.unit.phase() == Phase::stopping);
}

TEST_CASE("a start that fails backs off, and says what failed") {
    Driven d(program());
    Facts may;
    may.may_start = true;
    REQUIRE(Driven::has(d.tick(0, may), Effect::Kind::spawn));
    UnitEvent failed(Kind::spawn_failed);
    failed.what = "exec";
    failed.error = ENOENT;
    const auto effects = d.unit.on(failed, 0, {});
    CHECK(Driven::said(effects, "cannot start svc: exec failed: No such file or directory; next attempt in 1.0s"));
    CHECK(d.unit.phase() == Phase::backoff);
    CHECK(d.unit.last_exit() == "could not start: exec failed: No such file or directory");
    CHECK_FALSE(d.unit.running());
}

TEST_CASE("every change of phase passes the observer, and only changes do") {
    Driven d(program([](ProgramConfig& p) { p.ready.kind = ReadyCheck::Kind::tcp; }));
    d.start(0);
    d.ready(kSecond);
    d.on(Kind::stop, 2 * kSecond);
    d.tick(2 * kSecond);
    d.exited(3 * kSecond, killed_by(SIGTERM));
    const std::vector<std::pair<Phase, Phase>> expected{{Phase::waiting, Phase::starting},
                                                        {Phase::starting, Phase::ready},
                                                        {Phase::ready, Phase::stop_queued},
                                                        {Phase::stop_queued, Phase::stopping},
                                                        {Phase::stopping, Phase::stopped}};
    CHECK(d.transitions == expected);
    CHECK(to_string(Phase::stop_queued) == std::string("stopping"));
    CHECK(to_string(Phase::gave_up) == std::string("gave-up"));
}

TEST_CASE("ready while its stop is queued, then a start that calls the stop off: fully ready, its max_rss checked again") {
    Driven d(program([](ProgramConfig& p) {
        p.ready.kind = ReadyCheck::Kind::exec;
        p.max_rss = 100 << 20;
    }));
    d.start(0);
    d.on(Kind::stop, kSecond);
    REQUIRE(d.unit.phase() == Phase::stop_queued);
    const auto ready = d.ready(2 * kSecond);
    CHECK(Driven::said(ready, "svc is ready (its port accepts) 2.0s after its start"));
    CHECK(d.unit.phase() == Phase::stop_queued);  // the stop still waits
    d.on(Kind::start, 3 * kSecond);
    CHECK(d.unit.phase() == Phase::ready);
    CHECK(d.unit.next_wake() == 3 * kSecond);  // its memory sampled once a second, from the readiness on
    CHECK(Driven::has(d.tick(3 * kSecond), Effect::Kind::sample_rss));
}

TEST_CASE("stop all keeps a retiring unit retiring: it is dropped once stopped") {
    Driven d(program());
    d.start(0);
    d.on(Kind::retire, kSecond);
    d.on(Kind::stop_all, kSecond);
    CHECK(d.unit.goal() == Goal::retire);
    d.tick(kSecond);
    d.exited(2 * kSecond, killed_by(SIGTERM));
    CHECK(d.unit.retired());
}
