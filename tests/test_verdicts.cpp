// Hang verdicts on real processes: checkproc spares a process that is stopped (SIGSTOP), traced
// (ptrace) or starved of CPU by a real-time busy loop on its core, stops a deadlocked one beside
// it, keeps a diagnosis of every thread (and, with eu-stack, the function it hangs in) before
// its SIGTERM, and with --report-only signals nothing.

#include <doctest/doctest.h>
#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/process.h"
#include "core/table.h"
#include "engine/checker.h"
#include "engine/hang_diagnosis.h"
#include "checkproc_support.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;
using namespace hbtest::checkproc;

namespace {


// A scratch directory for diagnosis files, removed after.
struct Diagnoses {
    fs::path dir;
    Diagnoses() {
        char buffer[] = "/tmp/hbwatch-diagnoses-XXXXXX";
        dir = ::mkdtemp(buffer);
    }
    ~Diagnoses() { fs::remove_all(dir); }
    [[nodiscard]] std::vector<fs::path> files() const {
        std::vector<fs::path> found;
        for (const auto& entry : fs::directory_iterator(dir)) found.push_back(entry.path());
        return found;
    }
};

// checkproc once, to its end: its log.
std::string checkproc_once(const hbtest::ScratchKey& scratch, const Diagnoses& diagnoses, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{hbtest::bin("checkproc"), "--key", key_text(scratch), "--grace", "1s", "--diagnoses", diagnoses.dir.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Process checkproc(argv);
    REQUIRE(checkproc.wait_exit(60s));
    CHECK(WIFEXITED(checkproc.wait()));
    return checkproc.output();
}

// Until every live entry named `name` is past its deadline, as checkproc judges it.
void wait_until_hung(const hbtest::ScratchKey& scratch, const std::string& name) {
    auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_only);
    REQUIRE(table);
    REQUIRE(hbtest::eventually([&] {
        bool hung = false;
        const auto now = hbwatch::monotonic_now_ns();
        table->for_each([&](const hbwatch::SlotSnapshot& s) {
            hung = hung || (s.name() == name && hbwatch::tool::health_of(s, now) == hbwatch::tool::Health::hung);
        });
        return hung;
    }, 30s));
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}


void pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)::sched_setaffinity(0, sizeof set, &set);
}

// Why a SCHED_FIFO busy loop on CPU 1 cannot starve a service there as the tests need (root,
// two CPUs, the default real-time throttling: ordinary tasks keep 50 ms a second beside it).
std::optional<std::string> real_time_loop_unusable() {
    if (::geteuid() != 0 || std::thread::hardware_concurrency() < 2) return "needs root (a SCHED_FIFO busy loop) and two CPUs";
    if (read_text("/proc/sys/kernel/sched_rt_runtime_us") != "950000\n" || read_text("/proc/sys/kernel/sched_rt_period_us") != "1000000\n")
        return "needs the default real-time throttling (950000 of 1000000 us): ordinary tasks keep 50 ms a second beside the busy loop";
    return std::nullopt;
}

// checkproc --watch -v on the scratch table, pinned to CPU 0, away from the real-time loop.
Process watching_on_cpu0(const hbtest::ScratchKey& scratch, const Diagnoses& diagnoses) {
    return Process({hbtest::bin("checkproc"), "--watch", "-v", "--key", key_text(scratch), "--grace", "1s", "--diagnoses", diagnoses.dir.string()},
                   [] { pin_to(0); });
}

// A SCHED_FIFO busy loop on CPU 1 (see real_time_loop_unusable), killed by end() or at the end.
struct RealTimeLoop {
    Process loop{{"chrt", "-f", "10", "taskset", "-c", "1", "sh", "-c", "while :; do :; done"}, [] { pin_to(0); }};
    void end() {
        ::kill(loop.pid(), SIGKILL);
        REQUIRE(loop.wait_exit(10s));
    }
};

}  // namespace

TEST_CASE("a SIGSTOPped registrant is spared and reported, and beats again after SIGCONT: nothing was signalled") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto stopped = service(scratch, "paused", {"--timeout", "300ms", "--every", "50ms", "--graceful"});
    REQUIRE(::kill(stopped->pid(), SIGSTOP) == 0);
    wait_until_hung(scratch, "paused");
    const std::string log = checkproc_once(scratch, diagnoses);
    CHECK_MESSAGE(contains(log, "'paused': hung:"), log);
    CHECK_MESSAGE(contains(log, "stopped by a signal (state T"), log);
    CHECK(contains(log, "spared, not signalled"));
    CHECK(!contains(log, "SIGTERM sent"));
    // proctab says the same.
    Process proctab({hbtest::bin("proctab"), "--key", key_text(scratch), "--json"});
    REQUIRE(proctab.wait_exit(30s));
    const auto entries = nlohmann::json::parse(proctab.output());
    REQUIRE(entries.size() == 1);
    CHECK(entries[0]["state"] == "hung");
    CHECK(entries[0]["verdict"].get<std::string>().rfind("stopped by a signal", 0) == 0);
    // Continued, it beats again: healthy, and it never saw a SIGTERM (--graceful would have exited).
    REQUIRE(::kill(stopped->pid(), SIGCONT) == 0);
    auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_only);
    REQUIRE(hbtest::eventually([&] {
        bool ok = false;
        table->for_each([&](const hbwatch::SlotSnapshot& s) { ok = hbwatch::tool::health_of(s, hbwatch::monotonic_now_ns()) == hbwatch::tool::Health::ok; });
        return ok;
    }));
    const std::string again = checkproc_once(scratch, diagnoses);
    CHECK_MESSAGE(!contains(again, "'paused': hung"), again);
    CHECK(stopped->running());
    CHECK(diagnoses.files().empty());  // no stop, so no diagnosis
}

TEST_CASE("checkproc --watch says a SIGSTOPped registrant is spared again every interval, sends its event once, and shows it in proctab") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    const fs::path events = diagnoses.dir / "events.jsonl";
    auto stopped = service(scratch, "paused", {"--timeout", "300ms", "--every", "50ms"});
    REQUIRE(::kill(stopped->pid(), SIGSTOP) == 0);
    Process checkproc({hbtest::bin("checkproc"), "--watch", "--key", key_text(scratch), "--grace", "1s", "--diagnoses",
                       diagnoses.dir.string(), "--events", events.string()});
    // Said at least every second while it lasts (its timeout is shorter): three times within 10 s.
    REQUIRE_MESSAGE(checkproc.wait_for_output_count("'paused': hung:", 3, 10s), checkproc.output_so_far());
    CHECK(hbtest::count_of(checkproc.output_so_far(), "stopped by a signal (state T") >= 3);
    CHECK(!contains(checkproc.output_so_far(), "SIGTERM sent"));
    Process proctab({hbtest::bin("proctab"), "--key", key_text(scratch)});
    REQUIRE(proctab.wait_exit(30s));
    CHECK_MESSAGE(contains(proctab.output(), "^ stopped by a signal (state T"), proctab.output());
    ::kill(checkproc.pid(), SIGTERM);
    REQUIRE(checkproc.wait_exit(30s));
    int spared_events = 0;
    std::ifstream lines(events);
    for (std::string line; std::getline(lines, line);) {
        const auto event = nlohmann::json::parse(line);
        if (event["kind"] == "heartbeat_hung") {
            ++spared_events;
            CHECK(event["details"]["verdict"] == "stopped");
            CHECK(event["message"].get<std::string>().find("spared, not signalled") != std::string::npos);
        }
    }
    CHECK(spared_events == 1);
    CHECK(diagnoses.files().size() == 1);  // the events file alone: no stop, no diagnosis
    REQUIRE(::kill(stopped->pid(), SIGCONT) == 0);
    CHECK(stopped->running());
}

TEST_CASE("--stopped kill stops a SIGSTOPped registrant as hung") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto stopped = service(scratch, "paused", {"--timeout", "300ms", "--every", "50ms"});
    REQUIRE(::kill(stopped->pid(), SIGSTOP) == 0);
    wait_until_hung(scratch, "paused");
    const std::string log = checkproc_once(scratch, diagnoses, {"--stopped", "kill"});
    CHECK_MESSAGE(contains(log, "'paused': hung:"), log);
    CHECK(contains(log, "SIGTERM sent"));
    CHECK(stopped->wait_exit(10s));  // SIGKILL after the grace: a stopped process cannot handle SIGTERM
}

TEST_CASE("a ptrace-stopped registrant (a debugger attached) is spared, and named with its tracer") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto traced = service(scratch, "debugged", {"--timeout", "300ms", "--every", "50ms"});
    // The test itself is the debugger (its own child: allowed whatever Yama's ptrace_scope).
    REQUIRE(::ptrace(PTRACE_SEIZE, traced->pid(), nullptr, nullptr) == 0);
    REQUIRE(::ptrace(PTRACE_INTERRUPT, traced->pid(), nullptr, nullptr) == 0);
    int status = 0;
    REQUIRE(::waitpid(traced->pid(), &status, __WALL) == traced->pid());
    REQUIRE(WIFSTOPPED(status));
    wait_until_hung(scratch, "debugged");
    const std::string log = checkproc_once(scratch, diagnoses);
    CHECK_MESSAGE(contains(log, "traced by pid " + std::to_string(::getpid()) + " ("), log);
    CHECK(contains(log, "spared, not signalled"));
    CHECK(!contains(log, "SIGTERM sent"));
    REQUIRE(::ptrace(PTRACE_DETACH, traced->pid(), nullptr, nullptr) == 0);
    CHECK(traced->running());
}

TEST_CASE("on a core held by a real-time busy loop, a starved healthy service is spared and a deadlocked one beside it is stopped") {
    if (const auto why_not = real_time_loop_unusable()) {
        MESSAGE("SKIPPED: " << *why_not);
        return;
    }
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    // Both on CPU 1. Under the busy loop, the kernel leaves ordinary tasks 50 ms a second there,
    // so the healthy one beats about once a second: past its 800 ms timeout every time, which
    // without a verdict is a stop. Its extension (one more timeout) leaves 600 ms to spare.
    auto healthy = service(scratch, "healthy", {"--timeout", "800ms", "--every", "100ms"}, [] { pin_to(1); });
    auto stuck = service(scratch, "deadlocked", {"--timeout", "800ms", "--every", "100ms", "--hang-after", "1500ms"}, [] { pin_to(1); });
    Process checkproc = watching_on_cpu0(scratch, diagnoses);
    REQUIRE(checkproc.wait_for_output("watching the table"));
    // Deadlocked (asleep in sigsuspend(), never runnable) before the loop starts: before that it was
    // a healthy service, which the loop would starve too.
    REQUIRE(stuck->wait_for_output("hanging: no more beats", 30s));
    RealTimeLoop hog;
    // The deadlocked one (asleep, not waiting to run) is stopped; the healthy one is not, for 4 s more.
    const bool stopped = checkproc.wait_for_output("'deadlocked': exited", 30s);
    const bool another_stop = checkproc.wait_for_output_count("SIGTERM sent", 2, 4s);  // the deadlocked one's is the first
    hog.end();
    CHECK_MESSAGE(stopped, checkproc.output_so_far());
    CHECK_MESSAGE(!another_stop, checkproc.output_so_far());
    CHECK(hbtest::count_of(checkproc.output_so_far(), "'deadlocked': hung:") >= 1);
    CHECK_MESSAGE(!contains(checkproc.output_so_far(), "'deadlocked': late"), checkproc.output_so_far());  // never spared
    CHECK(healthy->running());
    // It was overdue, where a watchdog without verdicts stops it (-v shows the second looks).
    CHECK_MESSAGE(contains(checkproc.output_so_far(), "'healthy': hung:"), checkproc.output_so_far());
    CHECK(contains(checkproc.output_so_far(), "runnable or in I/O: looked at again in"));
    // Overdue each second: judged starved, or beaten before its second look. Either way not stopped.
    MESSAGE("the starved service was judged CPU-starved " << hbtest::count_of(checkproc.output_so_far(), "'healthy': late: CPU-starved")
                                                          << " times");
    ::kill(checkproc.pid(), SIGTERM);
    CHECK(checkproc.wait_exit(30s));
}

TEST_CASE("a hang stop keeps a diagnosis of every thread, and with --diagnose user the function it hangs in, which proctab shows") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    Process hanging({hbtest::bin("hang_threads"), "threads3"}, [&] { ::setenv("HBWATCH_KEY", key_text(scratch).c_str(), 1); });
    REQUIRE(hanging.wait_for_output("stuck, slot"));
    wait_until_hung(scratch, "threads3");
    const bool user_stacks = ::access("/usr/bin/eu-stack", X_OK) == 0;
    const std::string log = checkproc_once(scratch, diagnoses, {"--diagnose", user_stacks ? "user" : "kernel", "--diagnose-bound", "5s"});
    CHECK_MESSAGE(contains(log, "SIGTERM sent"), log);
    CHECK(contains(log, "diagnosis in " + diagnoses.dir.string() + "/"));
    const auto files = diagnoses.files();
    REQUIRE(files.size() == 1);
    const std::string text = read_text(files[0].string());
    CHECK(files[0].filename().string().rfind("diagnosis-", 0) == 0);
    CHECK(files[0].filename().string().find("-threads3-" + std::to_string(hanging.pid()) + ".txt") != std::string::npos);
    CHECK_MESSAGE(contains(text, "threads: 3"), text);
    CHECK(hbtest::count_of(text, "--- thread ") == 3);
    CHECK(hbtest::count_of(text, "wchan: ") == 3);
    CHECK(hbtest::count_of(text, "syscall: ") == 3);
    if (::geteuid() == 0) CHECK_MESSAGE(!contains(text, "(not readable: needs root)"), text);
    if (user_stacks) CHECK_MESSAGE(contains(text, "hbwatch_test_stuck_here"), text);
    if (user_stacks) CHECK(contains(text, "hbwatch_test_worker_waits"));
    if (!user_stacks) MESSAGE("eu-stack is not installed (elfutils): the user-space stacks were not checked");
    // proctab diagnosis NAME: the newest file of that name.
    Process shown({hbtest::bin("proctab"), "diagnosis", "threads3", "--diagnoses", diagnoses.dir.string()});
    REQUIRE(shown.wait_exit(30s));
    CHECK(shown.wait() == 0);
    CHECK(contains(shown.output(), files[0].string()));
    CHECK(contains(shown.output(), "threads: 3"));
}

TEST_CASE("--report-only judges, diagnoses and reports a hang, and signals nothing") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto hung = service(scratch, "reported", {"--timeout", "300ms", "--hang-after", "100ms", "--graceful"});
    wait_until_hung(scratch, "reported");
    const std::string log = checkproc_once(scratch, diagnoses, {"--report-only"});
    CHECK_MESSAGE(contains(log, "'reported': hung:"), log);
    CHECK(contains(log, "report only: not signalled"));
    CHECK(!contains(log, "SIGTERM sent"));
    CHECK(diagnoses.files().size() == 1);
    CHECK(hung->running());
    CHECK(live_entries(scratch) == 1);  // its slot kept
}

TEST_CASE("a registrant in a frozen cgroup (cgroup.freeze) is spared and reported, and stopped as hung once thawed if it still does not beat") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (a cgroup of the test's own)");
        return;
    }
    fs::path mount;
    for (const char* candidate : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"})
        if (fs::exists(fs::path(candidate) / "cgroup.subtree_control")) {
            mount = candidate;
            break;
        }
    if (mount.empty()) {
        MESSAGE("SKIPPED: needs cgroup v2");
        return;
    }
    const fs::path group = mount / ("hbwatch-test-frozen-" + std::to_string(::getpid()));
    REQUIRE(fs::create_directory(group));
    struct Remove {
        fs::path path;
        ~Remove() {
            std::ofstream(path / "cgroup.freeze") << "0\n";
            std::ofstream(path / "cgroup.kill") << "1\n";
            for (int i = 0; i < 1000 && ::rmdir(path.c_str()) != 0; ++i) ::usleep(1000);
        }
    } remove{group};
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto frozen = service(scratch, "frozen", {"--timeout", "300ms", "--every", "50ms", "--hang-after", "5s"});
    std::ofstream(group / "cgroup.procs") << frozen->pid() << std::endl;
    std::ofstream(group / "cgroup.freeze") << "1" << std::endl;
    REQUIRE(hbtest::eventually([&] { return read_text((group / "cgroup.events").string()).find("frozen 1") != std::string::npos; }));
    wait_until_hung(scratch, "frozen");
    const std::string log = checkproc_once(scratch, diagnoses);
    CHECK_MESSAGE(contains(log, "its cgroup is frozen (cgroup.freeze): spared, not signalled"), log);
    CHECK(!contains(log, "SIGTERM sent"));
    // Thawed, it beats again until its own --hang-after: then stopped as the hang it is.
    std::ofstream(group / "cgroup.freeze") << "0" << std::endl;
    auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_only);
    REQUIRE(hbtest::eventually([&] {
        bool beat = false;
        table->for_each([&](const hbwatch::SlotSnapshot& s) { beat = hbwatch::tool::health_of(s, hbwatch::monotonic_now_ns()) == hbwatch::tool::Health::ok; });
        return beat;
    }));
    wait_until_hung(scratch, "frozen");
    const std::string thawed = checkproc_once(scratch, diagnoses);
    CHECK_MESSAGE(contains(thawed, "SIGTERM sent"), thawed);
    CHECK(frozen->wait_exit(10s));
}

TEST_CASE("starved past its extension: on a core a real-time loop holds for 950 ms at a time, the service is late once, then stopped one timeout later, never sooner") {
    if (const auto why_not = real_time_loop_unusable()) {
        MESSAGE("SKIPPED: " << *why_not);
        return;
    }
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    // A 300 ms timeout under a loop that leaves its core 50 ms a second: after a beat it cannot
    // run again for about 900 ms, past its deadline (300 ms) and its one extension (600 ms).
    auto starved = service(scratch, "starved", {"--timeout", "300ms", "--every", "50ms"}, [] { pin_to(1); });
    Process checkproc = watching_on_cpu0(scratch, diagnoses);
    REQUIRE(checkproc.wait_for_output("watching the table"));
    RealTimeLoop hog;
    const bool stopped = checkproc.wait_for_output("'starved': exited", 30s);
    hog.end();
    const std::string out = checkproc.output_so_far();
    REQUIRE_MESSAGE(stopped, out);
    // Late first, with the figures of its starvation; then its extension ran out; then the stop.
    const auto late = out.find("'starved': late: CPU-starved, ");
    const auto over = out.find("and its extension of one timeout is over");
    const auto term = out.find("SIGTERM sent");
    REQUIRE_MESSAGE(late != std::string::npos, out);
    CHECK(contains(out.substr(late, 200), " runnable; spared for one more timeout"));
    REQUIRE_MESSAGE(over != std::string::npos, out);
    CHECK(late < over);
    CHECK(over < term);
    // Never sooner: the stop's own line says how late it was, at least one timeout past its deadline.
    const std::regex since("'starved': hung: last beat ([0-9.]+)(ms|s) ago, timeout 300ms");
    std::smatch m;
    const std::string stop_line = out.substr(out.rfind("\n", term) + 1, term - out.rfind("\n", term));
    REQUIRE_MESSAGE(std::regex_search(stop_line, m, since), stop_line);
    const double beat_ms = std::stod(m[1]) * (m[2] == "s" ? 1000.0 : 1.0);
    CHECK_MESSAGE(beat_ms >= 600.0, stop_line);
    ::kill(checkproc.pid(), SIGTERM);
    CHECK(checkproc.wait_exit(30s));
}

TEST_CASE("--dry-run judges as a real run: a stopped registrant is said to be spared, a deadlocked one would be stopped, and nothing changes") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    auto stopped = service(scratch, "paused", {"--timeout", "300ms", "--every", "50ms", "--graceful"});
    auto hung = service(scratch, "deadlocked", {"--timeout", "300ms", "--hang-after", "100ms", "--graceful"});
    REQUIRE(::kill(stopped->pid(), SIGSTOP) == 0);
    wait_until_hung(scratch, "paused");
    wait_until_hung(scratch, "deadlocked");
    const fs::path events = diagnoses.dir / "events.jsonl";
    const std::string log = checkproc_once(scratch, diagnoses, {"--dry-run", "--events", events.string()});
    CHECK_MESSAGE(contains(log, "'paused': hung:"), log);
    CHECK(contains(log, "stopped by a signal (state T"));
    CHECK(contains(log, "spared, not signalled"));
    CHECK(hbtest::count_of(log, "dry run: would send SIGTERM") == 1);
    const auto would = log.find("dry run: would send SIGTERM");
    REQUIRE(would != std::string::npos);
    CHECK(contains(log.substr(log.rfind('\n', would) + 1, would - log.rfind('\n', would)), "'deadlocked'"));
    CHECK(!contains(log, "SIGTERM sent"));
    CHECK((!fs::exists(events) || fs::file_size(events) == 0));  // no event: no hook runs for what was not done
    for (const auto& file : diagnoses.files()) CHECK(file == events);  // and no diagnosis
    CHECK(live_entries(scratch) == 2);
    REQUIRE(::kill(stopped->pid(), SIGCONT) == 0);
    CHECK(stopped->running());
    CHECK(hung->running());
}

TEST_CASE("a hang stop's event names its diagnosis, the newest --keep-diagnoses are kept, and an unsafe diagnosis directory keeps none while the stop goes on") {
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    const fs::path events = diagnoses.dir / "events.jsonl";
    const fs::path kept = diagnoses.dir / "kept";
    std::vector<std::unique_ptr<Process>> hung;
    for (const char* name : {"one", "two", "three"}) hung.push_back(service(scratch, name, {"--timeout", "300ms", "--hang-after", "100ms"}));
    for (const char* name : {"one", "two", "three"}) wait_until_hung(scratch, name);
    std::vector<std::string> argv{hbtest::bin("checkproc"), "--key", key_text(scratch), "--grace", "1s", "--diagnoses", kept.string(),
                                  "--keep-diagnoses", "2", "--events", events.string()};
    Process checkproc(argv);
    REQUIRE(checkproc.wait_exit(60s));
    const std::string log = checkproc.output();
    CHECK_MESSAGE(hbtest::count_of(log, "SIGTERM sent") == 3, log);
    CHECK(hbtest::count_of(log, "diagnosis in " + kept.string() + "/") == 3);
    std::size_t files = 0;
    for (const auto& entry : fs::directory_iterator(kept)) files += entry.path().filename().string().rfind("diagnosis-", 0) == 0;
    CHECK(files == 2);
    CHECK((fs::status(kept).permissions() & fs::perms::all) == fs::perms::owner_all);
    int with_diagnosis = 0;
    std::ifstream lines(events);
    for (std::string line; std::getline(lines, line);) {
        const auto event = nlohmann::json::parse(line);
        if (event["kind"] == "heartbeat_hung" && event["details"].contains("diagnosis")) {
            const std::string path = event["details"]["diagnosis"];
            CHECK(path.rfind(kept.string() + "/diagnosis-", 0) == 0);
            CHECK(contains(log, path));
            ++with_diagnosis;
        }
    }
    CHECK(with_diagnosis == 3);
    for (auto& p : hung) CHECK(p->wait_exit(10s));

    if (::geteuid() != 0) {
        MESSAGE("SKIPPED (the rest): needs root (a directory owned by nobody)");
        return;
    }
    // A directory another user owns: no file written there, said in the stop's line; the stop goes on.
    const fs::path foreign = diagnoses.dir / "foreign";
    fs::create_directory(foreign);
    REQUIRE(::chown(foreign.c_str(), 65534, 65534) == 0);
    auto victim = service(scratch, "four", {"--timeout", "300ms", "--hang-after", "100ms"});
    wait_until_hung(scratch, "four");
    Process again({hbtest::bin("checkproc"), "--key", key_text(scratch), "--grace", "1s", "--diagnoses", foreign.string()});
    REQUIRE(again.wait_exit(60s));
    CHECK_MESSAGE(contains(again.output(), "SIGTERM sent"), again.output());
    CHECK_MESSAGE(contains(again.output(), "no diagnosis kept: "), again.output());
    CHECK(fs::is_empty(foreign));
    CHECK(victim->wait_exit(10s));

    // A path through another user's link: nothing made where it points, not even a directory.
    const fs::path target = diagnoses.dir / "target";
    fs::create_directory(target);
    REQUIRE(::lchown(foreign.c_str(), 65534, 65534) == 0);
    fs::create_directory_symlink(target, foreign / "link");
    REQUIRE(::lchown((foreign / "link").c_str(), 65534, 65534) == 0);
    auto fifth = service(scratch, "five", {"--timeout", "300ms", "--hang-after", "100ms"});
    wait_until_hung(scratch, "five");
    Process through({hbtest::bin("checkproc"), "--key", key_text(scratch), "--grace", "1s", "--diagnoses", (foreign / "link" / "diag").string()});
    REQUIRE(through.wait_exit(60s));
    CHECK_MESSAGE(contains(through.output(), "no diagnosis kept: "), through.output());
    CHECK(fs::is_empty(target));
    CHECK(fifth->wait_exit(10s));
}

TEST_CASE("--diagnose-bound takes 10ms to 10s and refuses the rest with exit 2, naming the option") {
    for (const char* good : {"10ms", "10s"}) {
        Process checkproc({hbtest::bin("checkproc"), "--diagnose-bound", good, "--key", "0x7e57dead"});
        REQUIRE(checkproc.wait_exit(30s));
        const int status = checkproc.wait();
        CHECK(WIFEXITED(status));
        CHECK_MESSAGE(WEXITSTATUS(status) == 0, checkproc.output());  // no table there: nothing to watch
    }
    for (const char* bad : {"1h", "11s", "5ms"}) {
        Process checkproc({hbtest::bin("checkproc"), "--diagnose-bound", bad, "--key", "0x7e57dead"});
        REQUIRE(checkproc.wait_exit(30s));
        const int status = checkproc.wait();
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 2);
        CHECK_MESSAGE(contains(checkproc.output(), "--diagnose-bound"), checkproc.output());
    }
}

TEST_CASE("a stopped registrant whose eu-stack is cut short is left stopped: --report-only --stopped kill --diagnose user sends no SIGCONT") {
    if (::access("/usr/bin/eu-stack", X_OK) != 0) {
        MESSAGE("SKIPPED: needs eu-stack (elfutils)");
        return;
    }
    hbtest::ScratchKey scratch;
    Diagnoses diagnoses;
    // 300 threads: eu-stack attaches to each, far past the 10 ms it is given.
    Process stopped({hbtest::bin("hang_threads"), "crowd", "300"}, [&] { ::setenv("HBWATCH_KEY", key_text(scratch).c_str(), 1); });
    REQUIRE(stopped.wait_for_output("stuck, slot"));
    REQUIRE(::kill(stopped.pid(), SIGSTOP) == 0);
    REQUIRE(hbtest::eventually([&] {
        const auto stat = hbwatch::read_proc_stat(stopped.pid());
        return stat && stat->state == 'T';
    }));
    wait_until_hung(scratch, "crowd");
    const std::string log =
        checkproc_once(scratch, diagnoses, {"--report-only", "--stopped", "kill", "--diagnose", "user", "--diagnose-bound", "10ms"});
    CHECK_MESSAGE(contains(log, "report only: not signalled"), log);
    const auto files = diagnoses.files();
    REQUIRE(files.size() == 1);
    REQUIRE_MESSAGE(contains(read_text(files[0].string()), "(eu-stack cut short after 10 ms)"), read_text(files[0].string()).substr(0, 2000));
    const auto stat = hbwatch::read_proc_stat(stopped.pid());
    REQUIRE(stat);
    CHECK(stat->state == 'T');  // still stopped: what someone else stopped is theirs to resume
    REQUIRE(::kill(stopped.pid(), SIGCONT) == 0);
}
