// The promise that no local user can turn hbwatch against a process they could not signal
// themselves: each attack is made for real, as the user nobody, against root's tools, and the
// target is a root process that counts the signals it receives.
#include <doctest/doctest.h>

#include <dirent.h>
#include <pwd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/times.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/checker.h"
#include "core/clock.h"
#include <hbwatch/heartbeat.h>

#include "core/table.h"
#include "core/pidfd.h"

#include "core/layout.h"
#include "core/stopper.h"
#include "engine/inspect.h"
#include "support.h"

using namespace std::chrono_literals;
using hbtest::Process;
using hbwatch::Table;
namespace fs = std::filesystem;

namespace {

constexpr gid_t kNogroup = 65534;

#define REQUIRE_ROOT()                                                                                   \
    if (::geteuid() != 0) {                                                                              \
        MESSAGE("SKIPPED: needs root (to act as the user nobody, and to be the privileged victim)");    \
        return;                                                                                          \
    }

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// A root process that never registered and counts what it receives: 'T' per SIGTERM, 'M' per
// SIGRTMIN (the test's own marker, delivered after any SIGTERM already pending).
class SignalCounter {
public:
    SignalCounter() {
        child_ = std::make_unique<hbtest::Child>([this] {
            static int out = -1;
            out = pipe_.write_end();
            ::signal(SIGTERM, [](int) { (void)!::write(out, "T", 1); });
            ::signal(SIGRTMIN, [](int) { (void)!::write(out, "M", 1); });
            (void)!::write(out, "R", 1);
            for (;;) ::pause();
            return 0;
        });
        char byte = 0;
        REQUIRE(::read(pipe_.read_end(), &byte, 1) == 1);
        REQUIRE(byte == 'R');
    }
    pid_t pid() const { return child_->pid(); }
    bool alive() const { return !child_->wait_exit(0ms); }
    /// Whether a SIGTERM ever reached it: sends the marker and reads everything up to it.
    bool got_term() {
        REQUIRE(::kill(pid(), SIGRTMIN) == 0);
        bool term = false;
        for (char byte = 0; byte != 'M';) {
            pollfd p{pipe_.read_end(), POLLIN, 0};
            REQUIRE(::poll(&p, 1, 10000) == 1);
            REQUIRE(::read(pipe_.read_end(), &byte, 1) == 1);
            term |= byte == 'T';
        }
        return term;
    }

private:
    hbtest::Pipe pipe_;
    std::unique_ptr<hbtest::Child> child_;
};

std::pair<int, std::string> run(const std::vector<std::string>& argv, const std::function<void()>& in_child = {}) {
    Process p(argv, in_child);
    REQUIRE(p.wait_exit(60s));
    const int status = p.wait();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), p.output()};
}

std::pair<int, std::string> run_checkproc(const hbtest::ScratchKey& scratch) {
    return run({hbtest::bin("checkproc"), "--key", hbwatch::format_key(scratch.key()), "--grace", "500ms"});
}

void become_nobody() {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNogroup, kNogroup, kNogroup) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
        ::_exit(3);
}

std::size_t hung_entries(const hbtest::ScratchKey& scratch) { return hbtest::hung_entries(scratch.options()); }
std::size_t live_entries(const hbtest::ScratchKey& scratch) { return hbtest::live_entries(scratch.options()); }

// The strongest forger: knows the victim's exact identity and exec mark (root reads them here
// and hands them over, as a patient attacker could learn them).
hbwatch::Pinned pin(pid_t pid) {
    auto pinned = hbwatch::Pidfd::pin(pid);
    REQUIRE(pinned);
    return std::move(*pinned);
}

}  // namespace

TEST_CASE("a member of root's table group cannot make root's checkproc signal a root process that never registered") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.mode = 0660;
    options.group = kNogroup;
    { Table table = Table::create(options); }
    SignalCounter daemon;
    const auto victim = pin(daemon.pid());
    const auto forged = hbtest::as_nobody(kNogroup, [&] {
        auto table = Table::open_existing(options, Table::Access::read_write);
        if (!table) return std::string("no table");
        table->claim("forged-delegated", 100ms, hbwatch::Registrant{victim.identity, 0, 0, victim.stat.start_stack});
        table->claim("forged-self", 100ms, hbwatch::Registrant{victim.identity, 0, 0x5eed, 0});
        table->claim("forged-unmarked", 100ms, victim.identity, 0);  // nobody cannot read root's exec mark
        return std::string("forged");
    });
    REQUIRE(forged == "forged");
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 3; }));

    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(code == 0);
    const std::string pid = std::to_string(daemon.pid());
    CHECK(contains(log, "'forged-delegated': hung: last beat "));
    // The first writer found is named (nobody, or another member of nogroup such as sync).
    CHECK(contains(log, "not signalled: it was registered on its behalf (proctab beat, or a forged entry), and uid "));
    CHECK(contains(log, ", who can write the table, could not signal pid " + pid + " (uid 0) itself"));
    CHECK(contains(log, "but pid " + pid + " does not hold the marker of the program image that registered: it has "
                        "exec'd since, or the entry is forged: slot freed, nothing signalled"));
    CHECK(contains(log, "but pid " + pid + " has exec'd since it was registered on its behalf (or the entry carries no "
                        "exec mark): slot freed, nothing signalled"));
    CHECK_FALSE(contains(log, "SIGTERM sent"));
    CHECK(daemon.alive());
    CHECK_FALSE(daemon.got_term());
    CHECK(Table::open_existing(options, Table::Access::read_only)->info().kills == 0);
}

TEST_CASE("a table squatted by another user is refused by root's library and checkproc, naming its owner and creator") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    SignalCounter daemon;
    const auto victim = pin(daemon.pid());
    const auto squatted = hbtest::as_nobody(kNogroup, [&] {
        auto options = scratch.options(8);
        options.mode = 0666;
        Table table = Table::create(options);
        table.claim("forged", 100ms, hbwatch::Registrant{victim.identity, 0, 0, victim.stat.start_stack});
        return std::to_string(::getpid());
    });
    REQUIRE_FALSE(squatted.empty());
    const std::string key = hbwatch::format_key(scratch.key());
    const std::string expected = "the table at key " + key + " is owned by uid 65534, who is neither root nor you (uid 0), "
                                 "so that user can rewrite every entry and its permissions at will (creator pid " +
                                 squatted + "). hbwatch trusts only a table owned by root or by you: if the segment is "
                                 "not meant to be there, remove it as root (ipcrm -M " + key + ") and have root create "
                                 "the table (proctab init), or use another key (HBWATCH_KEY)";
    CHECK(hbtest::error_of([&] { hbwatch::Heartbeat hb("root-svc", 1s, scratch.options()); }) == expected);
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    const auto [code, log] = run_checkproc(scratch);
    CHECK(code == 1);
    CHECK(contains(log, expected));
    CHECK(daemon.alive());
    CHECK_FALSE(daemon.got_term());
}

TEST_CASE("proctab beat refuses to register a process its caller could not signal") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.group = kNogroup;
    { Table table = Table::create(options); }
    SignalCounter daemon;
    const auto [code, text] = run({hbtest::bin_for(65534, kNogroup, "proctab"), "--key", hbwatch::format_key(scratch.key()), "beat", "victim",
                                   "--timeout", "100ms", "--pid", std::to_string(daemon.pid())},
                                  become_nobody);
    CHECK(code == 1);
    CHECK(text == "proctab: cannot register pid " + std::to_string(daemon.pid()) +
                      " (uid 0): you (uid 65534) could not signal it yourself, so proctab will not have checkproc do it\n");
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("a forged entry naming a kernel thread is freed as garbage, never signalled, never counted as a kill") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    // A kernel thread started after boot (kthreadd's start time is 0, refused earlier as garbage).
    std::optional<hbwatch::ProcStat> kthread;
    for (const auto& entry : fs::directory_iterator("/proc")) {
        const pid_t pid = std::atoi(entry.path().filename().c_str());
        auto stat = pid > 2 ? hbwatch::read_proc_stat(pid) : std::nullopt;
        if (stat && hbwatch::is_kernel_thread(*stat) && stat->start_time > 0) {
            kthread = stat;
            break;
        }
    }
    if (!kthread) {
        MESSAGE("SKIPPED: needs a kernel thread in /proc (none is visible: a pid namespace, as in a container, hides them)");
        return;
    }
    Table table = Table::open_or_create(scratch.options(8));
    table.claim("kworker-forged", 100ms, hbwatch::ProcessIdentity{kthread->pid, kthread->start_time, 0}, 0);
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    const auto [code, log] = run_checkproc(scratch);
    CHECK(code == 0);
    CHECK(contains(log, ": garbage entry (pid " + std::to_string(kthread->pid) +
                            " is a kernel thread, never a service): slot freed, nothing signalled"));
    CHECK(table.info().kills == 0);
    CHECK(live_entries(scratch) == 0);
}

TEST_CASE("a service that re-execs itself and registers again survives its old entry going stale") {
    hbtest::ScratchKey scratch;
    Process service({hbtest::bin("reexec_service")},
                    [&] { ::setenv("HBWATCH_KEY", hbwatch::format_key(scratch.key()).c_str(), 1); });
    REQUIRE(service.wait_for_output("ready slot"));
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));  // the first image's entry
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(code == 0);
    CHECK(contains(log, "but pid " + std::to_string(service.pid()) +
                            " does not hold the marker of the program image that registered: it has exec'd since, or "
                            "the entry is forged: slot freed, nothing signalled"));
    CHECK(contains(log, "2 entries, 1 healthy, 1 hung, 0 stopped, 1 freed without a signal"));
    CHECK(service.running());
    CHECK(live_entries(scratch) == 1);
}

TEST_CASE("proctab kill signals the very process it matched, never a later holder of its pid") {
    REQUIRE_ROOT();
    const fs::path dir = [] {
        char buffer[] = "/tmp/hbwatch-race-XXXXXX";
        return fs::path(::mkdtemp(buffer));
    }();
    const std::string name = "hbwrace-" + std::to_string(::getpid());
    fs::copy_file("/usr/bin/sleep", dir / name);
    auto matched = std::make_unique<Process>(std::vector<std::string>{(dir / name).string(), "1000"});
    const pid_t pid = matched->pid();
    REQUIRE(hbtest::eventually([&] { return hbwatch::tool::find_processes(name).size() == 1; }));

    // What proctab kill does, in two halves with the window between them held open here: the
    // match, which pins each process with a pidfd before reading it ...
    std::vector<hbwatch::Pidfd> targets;
    for (const auto& p : hbwatch::tool::find_processes(name)) {
        REQUIRE(p.pidfd);
        auto target = p.pidfd->duplicate();
        REQUIRE(target);
        targets.push_back(std::move(*target));
    }
    REQUIRE(targets.size() == 1);
    ::kill(pid, SIGKILL);
    matched->wait();
    matched.reset();

    // ... the pid goes to an unrelated process that counts signals ...
    std::unique_ptr<SignalCounter> unrelated;
    for (int attempt = 0; attempt < 200 && !unrelated; ++attempt) {
        {
            std::ofstream last_pid("/proc/sys/kernel/ns_last_pid");
            REQUIRE(last_pid);
            last_pid << pid - 1;
        }
        auto candidate = std::make_unique<SignalCounter>();
        if (candidate->pid() == pid) unrelated = std::move(candidate);
    }
    REQUIRE_MESSAGE(unrelated, "could not get pid " << pid << " reused");

    // ... and the signal, through what was pinned: it reaches nothing.
    const auto tally = hbwatch::stop_all(std::move(targets), 1s);
    CHECK(tally.stopped == 1);
    CHECK(tally.killed == 0);
    CHECK(tally.failed == 0);
    CHECK(unrelated->alive());
    CHECK_FALSE(unrelated->got_term());
    fs::remove_all(dir);
}

TEST_CASE("procctl frees the heartbeat entries of the processes it stopped, and no other") {
    hbtest::ScratchKey scratch;
    const std::string key = hbwatch::format_key(scratch.key());
    {  // another team's service, dead without releasing its entry
        hbtest::Pipe ready;
        hbtest::Child other([&] {
            hbwatch::Heartbeat hb("other-team", 10s, scratch.options());
            (void)!::write(ready.write_end(), "r", 1);
            for (;;) ::pause();
            return 0;
        });
        char byte;
        REQUIRE(::read(ready.read_end(), &byte, 1) == 1);
        ::kill(other.pid(), SIGKILL);
        other.wait();
    }
    // term_counter ignores SIGTERM, so procctl's stop ends it with SIGKILL: no release.
    Process procctl({hbtest::bin("procctl"), "-f", "--grace", "300ms", "0", hbtest::bin("term_counter"), "ours", "10s"},
                    [&] { ::setenv("HBWATCH_KEY", key.c_str(), 1); });
    REQUIRE(procctl.wait_for_output("started"));
    REQUIRE(hbtest::eventually([&] { return live_entries(scratch) == 2; }));
    ::kill(procctl.pid(), SIGTERM);
    REQUIRE(procctl.wait_exit(30s));
    CHECK(procctl.wait() == 0);
    const std::string log = procctl.output();
    INFO(log);
    CHECK(contains(log, "'ours' at key " + key + ": it ended without releasing it"));
    auto table = Table::open_existing(scratch.options(), Table::Access::read_only);
    std::vector<std::string> left;
    table->for_each([&](const hbwatch::SlotSnapshot& s) { left.emplace_back(s.name()); });
    CHECK(left == std::vector<std::string>{"other-team"});
}

TEST_CASE("with pidfs, an entry whose pid and start time match but whose pidfs inode differs is another process") {
    hbtest::ScratchKey scratch;
    const std::string key = hbwatch::format_key(scratch.key());
    Process service({hbtest::bin("term_counter"), "same-tick", "100ms"}, [&] { ::setenv("HBWATCH_KEY", key.c_str(), 1); });
    REQUIRE(service.wait_for_output("ready"));
    Table table = Table::open_or_create(scratch.options());
    std::optional<hbwatch::SlotSnapshot> entry;
    table.for_each([&](const hbwatch::SlotSnapshot& s) { entry = s; });
    REQUIRE(entry);
    if (entry->process.pidfs_inode == 0) {
        MESSAGE("SKIPPED: needs a kernel with pidfs (Linux 6.9+)");
        return;
    }
    // As if a process that died had held the pid within the same 10 ms tick: same pid, same
    // start time, another pidfs inode.
    table.slot_at(entry->index)->pidfs_inode.store(entry->process.pidfs_inode + 1);
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(code == 0);
    CHECK(contains(log, "'same-tick': hung: "));
    CHECK(contains(log, "but the pid now belongs to another process: slot freed, nothing signalled"));
    CHECK(service.running());
    CHECK_FALSE(contains(service.output_so_far(), "TERM"));
}

TEST_CASE("a registration in a table that others can write warns once, naming who can write it") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.mode = 0666;
    { Table table = Table::create(options); }
    Process service({hbtest::bin("term_counter"), "warned", "10s"},
                    [&] { ::setenv("HBWATCH_KEY", hbwatch::format_key(scratch.key()).c_str(), 1); });
    REQUIRE(service.wait_for_output("ready"));
    CHECK(contains(service.output_so_far(),
                   "hbwatch: warning: the hbwatch table at key " + hbwatch::format_key(scratch.key()) +
                       " can be written by every user (its mode gives write access to others): any of them can make "
                       "checkproc stop this process by forging its entry."));
}

TEST_CASE("procctl never follows a symbolic link at its pidfile, and writes its pid before the pidfile is locked") {
    const fs::path dir = [] {
        char buffer[] = "/tmp/hbwatch-pidfile-XXXXXX";
        return fs::path(::mkdtemp(buffer));
    }();
    const fs::path victim = dir / "victim", link = dir / "svc.pid", pidfile = dir / "real.pid";
    { std::ofstream(victim) << "precious\n"; }
    fs::create_symlink(victim, link);
    auto [code, text] = run({hbtest::bin("procctl"), "-f", "--pidfile", link.string(), "1", "sleep", "1"});
    CHECK(code == 1);
    CHECK(contains(text, "cannot take the pidfile " + link.string() +
                             ": it is a symbolic link, which procctl never follows"));
    std::ifstream in(victim);
    std::string line;
    std::getline(in, line);
    CHECK(line == "precious");

    if (::geteuid() == 0) {  // a directory another user can change: the pidfile could be swapped
        fs::create_directory(dir / "theirs");
        REQUIRE(::chown((dir / "theirs").c_str(), 65534, 65534) == 0);
        std::tie(code, text) = run({hbtest::bin("procctl"), "-f", "--pidfile", (dir / "theirs/svc.pid").string(), "1", "sleep", "1"});
        CHECK(code == 1);
        CHECK(contains(text, "the directory " + (dir / "theirs").string() + " belongs to uid 65534, who could swap what is in it"));
        fs::remove_all(dir / "theirs");
    }

    { std::ofstream(pidfile) << "99999999\n"; }  // stale, from a procctl long gone
    Process procctl({hbtest::bin("procctl"), "-f", "--pidfile", pidfile.string(), "1", "sleep", "100"});
    REQUIRE(procctl.wait_for_output("started"));
    std::ifstream held(pidfile);
    std::getline(held, line);
    CHECK(line == std::to_string(procctl.pid()));
    std::vector<std::string> left;
    for (const auto& entry : fs::directory_iterator(dir)) left.push_back(entry.path().filename());
    std::sort(left.begin(), left.end());
    CHECK(left == std::vector<std::string>{"real.pid", "svc.pid", "victim"});  // no temporary left behind
    ::kill(procctl.pid(), SIGTERM);
    REQUIRE(procctl.wait_exit(30s));
    fs::remove_all(dir);
}

TEST_CASE("a registrant's pid reused by an unrelated process: nothing is signalled, the slot is freed") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    Process registrant_process({hbtest::bin("demo_service"), "reused", "--key", hbwatch::format_key(scratch.key()),
                                "--timeout", "100ms", "--hang-after", "0ms"});
    auto* registrant = &registrant_process;
    REQUIRE(registrant->wait_for_output("registered in slot"));
    const pid_t pid = registrant->pid();
    ::kill(pid, SIGKILL);
    registrant->wait();
    // Start times tick at 100 Hz: make sure the new holder of the pid starts in a later tick.
    for (const clock_t before = ::times(nullptr); ::times(nullptr) < before + 2;) std::this_thread::yield();

    // Really reuse the pid: ask the kernel to hand it out next.
    std::unique_ptr<Process> unrelated;
    for (int attempt = 0; attempt < 200 && !unrelated; ++attempt) {
        {
            std::ofstream last_pid("/proc/sys/kernel/ns_last_pid");
            REQUIRE_MESSAGE(last_pid, "writing /proc/sys/kernel/ns_last_pid needs root");
            last_pid << pid - 1;
        }
        auto candidate = std::make_unique<Process>(std::vector<std::string>{"sleep", "60"});
        if (candidate->pid() == pid) unrelated = std::move(candidate);
    }
    REQUIRE_MESSAGE(unrelated, "could not get pid " << pid << " reused");
    // Before its deadline the entry gets only the cheap look (some process holds the pid);
    // its identity is checked when it is due.
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));

    const auto [code, log] = run_checkproc(scratch);
    CHECK(code == 0);
    CHECK(contains(log, "pid " + std::to_string(pid) + " 'reused': the pid now belongs to another process (its start "
                        "time differs): slot freed, nothing signalled"));
    CHECK(unrelated->running());
    CHECK(live_entries(scratch) == 0);
}


TEST_CASE("a fork()ed child of a registered root service does not inherit its consent") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.group = kNogroup;
    { Table table = Table::create(options); }
    hbtest::Pipe events, worker_pid;
    hbtest::Child service([&] {
        hbwatch::Heartbeat hb("root-svc", 10s, options);
        const pid_t worker = ::fork();
        if (worker == 0) {  // a worker that never registered: it counts what it receives
            static int out = events.write_end();
            ::signal(SIGTERM, [](int) { (void)!::write(out, "T", 1); });
            ::signal(SIGRTMIN, [](int) { (void)!::write(out, "M", 1); });
            (void)!::write(worker_pid.write_end(), &worker, 0);
            const pid_t self = ::getpid();
            (void)!::write(worker_pid.write_end(), &self, sizeof self);
            for (;;) ::pause();
        }
        for (;;) hb.beat(), ::pause();
        return 0;
    });
    pid_t worker = 0;
    REQUIRE(::read(worker_pid.read_end(), &worker, sizeof worker) == sizeof worker);
    hbwatch::SlotSnapshot parent_entry;
    Table::open_existing(options, Table::Access::read_only)->for_each([&](const hbwatch::SlotSnapshot& s) { parent_entry = s; });
    REQUIRE(parent_entry.image != 0);
    const auto victim = pin(worker);
    const auto forged = hbtest::as_nobody(kNogroup, [&] {
        auto table = Table::open_existing(options, Table::Access::read_write);
        auto who = victim.identity;
        who.pidfs_inode = 0;  // a forger need not know it
        table->claim("worker", 100ms, hbwatch::Registrant{who, 0, parent_entry.image, 0});
        return std::string("forged");
    });
    REQUIRE(forged == "forged");
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(code == 0);
    CHECK(contains(log, "'worker': hung: "));
    CHECK(contains(log, "does not hold the marker of the program image that registered"));
    CHECK_FALSE(contains(log, "SIGTERM sent"));
    REQUIRE(::kill(worker, SIGRTMIN) == 0);
    char byte = 0;
    REQUIRE(::read(events.read_end(), &byte, 1) == 1);
    CHECK(byte == 'M');  // no 'T' came first
    ::kill(worker, SIGKILL);
}

TEST_CASE("a root process that maps a memfd another user named like a marker is not taken for a registrant") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.group = kNogroup;
    { Table table = Table::create(options); }
    int channel[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) == 0);
    hbtest::Pipe events;
    hbtest::Child server([&] {  // a root server that maps the memory its clients send (as X11's MIT-SHM fd passing)
        static int out = events.write_end();
        ::signal(SIGTERM, [](int) { (void)!::write(out, "T", 1); });
        ::signal(SIGRTMIN, [](int) { (void)!::write(out, "M", 1); });
        char byte;
        char control[CMSG_SPACE(sizeof(int))] = {};
        iovec io{&byte, 1};
        msghdr message{};
        message.msg_iov = &io;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        if (::recvmsg(channel[1], &message, 0) != 1) return 5;
        int fd;
        std::memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&message)), sizeof fd);
        if (::mmap(nullptr, 4096, PROT_NONE, MAP_SHARED, fd, 0) == MAP_FAILED) return 6;
        (void)!::write(out, "R", 1);
        for (;;) ::pause();
        return 0;
    });
    const auto victim = pin(server.pid());
    const auto forged = hbtest::as_nobody(kNogroup, [&] {
        const int fd = ::memfd_create("hbwatch-image:4141414141414141", MFD_CLOEXEC);
        char byte = 'x';
        char control[CMSG_SPACE(sizeof(int))] = {};
        iovec io{&byte, 1};
        msghdr message{};
        message.msg_iov = &io;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        cmsghdr* header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
        if (::sendmsg(channel[0], &message, 0) != 1) return std::string("not sent");
        auto table = Table::open_existing(options, Table::Access::read_write);
        table->claim("server", 100ms, hbwatch::Registrant{victim.identity, 0, 0x4141414141414141ull, 0});
        return std::string("forged");
    });
    REQUIRE(forged == "forged");
    char byte = 0;
    REQUIRE(::read(events.read_end(), &byte, 1) == 1);
    REQUIRE(byte == 'R');  // the server holds a mapping named like a marker
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(contains(log, "does not hold the marker of the program image that registered"));
    CHECK_FALSE(contains(log, "SIGTERM sent"));
    REQUIRE(::kill(server.pid(), SIGRTMIN) == 0);
    REQUIRE(::read(events.read_end(), &byte, 1) == 1);
    CHECK(byte == 'M');
    ::close(channel[0]);
    ::close(channel[1]);
}

TEST_CASE("the members of the creator's group count among the table's writers") {
    REQUIRE_ROOT();
    hbtest::ScratchKey scratch;
    auto options = scratch.options(8);
    options.group = 50;  // staff: no members; the creator's group (cgid) is nogroup
    hbtest::Child creator([&] {
        if (::setresgid(kNogroup, kNogroup, kNogroup) != 0) return 3;
        Table table = Table::create(options);
        return 0;
    });
    REQUIRE(creator.wait() == 0);
    SignalCounter daemon;
    const auto victim = pin(daemon.pid());
    {
        Table table = *Table::open_existing(options, Table::Access::read_write);
        table.claim("root-script", 100ms, hbwatch::Registrant{victim.identity, 0, 0, victim.stat.start_stack});
    }
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(contains(log, ", who can write the table, could not signal pid " + std::to_string(daemon.pid()) + " (uid 0) itself"));
    CHECK_FALSE(daemon.got_term());
}

TEST_CASE("a registrant that execs a clean-up program on SIGTERM is not sent SIGKILL in it") {
    hbtest::ScratchKey scratch;
    Process service({hbtest::bin("reexec_service"), "exec-on-term"},
                    [&] { ::setenv("HBWATCH_KEY", hbwatch::format_key(scratch.key()).c_str(), 1); });
    REQUIRE(service.wait_for_output("ready slot"));
    REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
    int code = 0;
    std::string log;
    std::tie(code, log) = run_checkproc(scratch);
    INFO(log);
    CHECK(code == 0);
    CHECK(contains(log, "'exec-on-term': hung: "));
    CHECK(contains(log, "SIGTERM sent"));
    CHECK(contains(log, "no longer the program that registered (it exec'd): SIGKILL not sent; its slot is freed"));
    CHECK(service.running());  // sleep 30, the clean-up, runs on
    CHECK(live_entries(scratch) == 0);
}

namespace {

// A scratch directory root owns, which nobody may enter (0755): the victim's side of a plant.
struct RootScratch {
    fs::path dir;
    RootScratch() {
        char buffer[] = "/tmp/hbwatch-trust-XXXXXX";
        dir = ::mkdtemp(buffer);
        fs::permissions(dir, fs::perms(0755));
    }
    ~RootScratch() { fs::remove_all(dir); }
    // A directory inside, owned by nobody: what an attacker controls.
    fs::path theirs(const std::string& name) const {
        fs::create_directory(dir / name);
        REQUIRE(::chown((dir / name).c_str(), 65534, kNogroup) == 0);
        return dir / name;
    }
};

std::pair<int, std::string> procctl_check(const fs::path& config) {
    return run({hbtest::bin("procctl"), "--check", "-c", config.string()});
}

}  // namespace

TEST_CASE("procctl runs no config that another user could change: not at start, not at --check, not at reload") {
    REQUIRE_ROOT();
    RootScratch scratch;
    const fs::path config = scratch.dir / "stack.yaml";
    const std::string text = "run_dir: " + (scratch.dir / "run").string() + "\nprograms:\n  a:\n    command: [sleep, \"600\"]\n";
    std::ofstream(config) << text;
    fs::permissions(config, fs::perms(0644));
    REQUIRE(procctl_check(config).first == 0);

    SUBCASE("a config file others may write") {
        fs::permissions(config, fs::perms(0666));
        const auto [code, out] = procctl_check(config);
        CHECK(code == 1);
        CHECK(out == "procctl: cannot use the config file " + config.string() +
                         ": its mode gives write access to every user, who could change what procctl runs; chmod go-w it\n");
        Process start({hbtest::bin("procctl"), "-f", "-c", config.string()});
        REQUIRE(start.wait_exit(30s));
        CHECK(WEXITSTATUS(start.wait()) == 1);
        CHECK(contains(start.output(), "its mode gives write access to every user"));
    }
    SUBCASE("a config file that belongs to another user") {
        REQUIRE(::chown(config.c_str(), 65534, kNogroup) == 0);
        const auto [code, out] = procctl_check(config);
        CHECK(code == 1);
        CHECK(contains(out, config.string() + ": it belongs to uid 65534, who could change what procctl runs"));
    }
    SUBCASE("a config in a directory that belongs to another user") {
        const fs::path planted = scratch.theirs("theirs") / "stack.yaml";
        std::ofstream(planted) << text;
        const auto [code, out] = procctl_check(planted);
        CHECK(code == 1);
        CHECK(contains(out, "the directory " + (scratch.dir / "theirs").string() + " belongs to uid 65534, who could swap what is in it"));
    }
    SUBCASE("a symbolic link to the config that another user owns; one root owns is followed") {
        const fs::path link = scratch.dir / "link.yaml";
        fs::create_symlink(config, link);
        REQUIRE(procctl_check(link).first == 0);
        REQUIRE(::lchown(link.c_str(), 65534, kNogroup) == 0);
        const auto [code, out] = procctl_check(link);
        CHECK(code == 1);
        CHECK(contains(out, "the symbolic link " + link.string() + " belongs to uid 65534, which procctl does not follow"));
    }
    SUBCASE("a reload re-checks the file: the running config is kept") {
        Process stack({hbtest::bin("procctl"), "-f", "-c", config.string()});
        REQUIRE(stack.wait_for_output("a is ready", 30s));
        std::ofstream(config) << text << "  b:\n    command: [sleep, \"601\"]\n";
        fs::permissions(config, fs::perms(0666));
        const auto code_out = run({hbtest::bin("proctab"), "reload", "--run-dir", (scratch.dir / "run").string()});
        const int code = code_out.first;
        const std::string& out = code_out.second;
        CHECK(code == 1);
        CHECK_MESSAGE(contains(out, "its mode gives write access to every user"), out);
        CHECK(stack.wait_for_output("reload refused, the running config is kept", 10s));
        const auto [status_code, status] = run({hbtest::bin("proctab"), "status", "--run-dir", (scratch.dir / "run").string()});
        CHECK_FALSE(contains(status, "\nb "));
        ::kill(stack.pid(), SIGTERM);
        REQUIRE(stack.wait_exit(30s));
    }
}

TEST_CASE("procctl --stop signals no process that a planted or stale pidfile names") {
    REQUIRE_ROOT();
    RootScratch scratch;
    SignalCounter victim;
    const std::string victim_pid = std::to_string(victim.pid()) + "\n";
    auto stop = [&](const fs::path& run_dir) {
        return run({hbtest::bin("procctl"), "--stop", run_dir.string(), "--wait", "2s"});
    };
    // A holder of the pidfile's lock that is not procctl (util-linux flock, as root).
    auto lock_holder = [&](const fs::path& pidfile) {
        auto holder = std::make_unique<Process>(std::vector<std::string>{"flock", pidfile.string(), "sh", "-c", "echo locked; exec sleep 600"});
        REQUIRE(holder->wait_for_output("locked"));
        return holder;
    };

    SUBCASE("a run_dir another user owns, with a pidfile they keep locked") {
        const fs::path run_dir = scratch.theirs("run");
        std::ofstream(run_dir / "procctl.pid") << victim_pid;
        REQUIRE(::chown((run_dir / "procctl.pid").c_str(), 65534, kNogroup) == 0);
        Process holder({"flock", (run_dir / "procctl.pid").string(), "sh", "-c", "echo locked; exec sleep 600"}, become_nobody);
        REQUIRE(holder.wait_for_output("locked"));
        const auto [code, out] = stop(run_dir);
        CHECK(code == 1);
        CHECK(contains(out, "procctl --stop: not signalled: cannot open " + (run_dir / "procctl.pid").string() + ": the directory " +
                                run_dir.string() + " belongs to uid 65534"));
    }
    SUBCASE("a root pidfile, locked, that names a process other than procctl") {
        const fs::path run_dir = scratch.dir / "run";
        fs::create_directory(run_dir);
        std::ofstream(run_dir / "procctl.pid") << victim_pid;
        auto holder = lock_holder(run_dir / "procctl.pid");
        const auto code_out = stop(run_dir);
        const int code = code_out.first;
        const std::string& out = code_out.second;
        CHECK(code == 1);
        CHECK_MESSAGE(contains(out, "procctl --stop: not signalled: pid " + std::to_string(victim.pid()) + " (named by " +
                                        (run_dir / "procctl.pid").string() + ") runs " + fs::canonical("/proc/self/exe").string() +
                                        ", not procctl"), out);
    }
    SUBCASE("a pidfile that names a real procctl which does not hold its lock") {
        const fs::path other = scratch.dir / "other.yaml";
        std::ofstream(other) << "run_dir: " << (scratch.dir / "other-run").string() << "\nprograms:\n  a:\n    command: [sleep, \"600\"]\n";
        Process procctl({hbtest::bin("procctl"), "-f", "-c", other.string()});
        REQUIRE(procctl.wait_for_output("a is ready", 30s));
        const fs::path run_dir = scratch.dir / "run";
        fs::create_directory(run_dir);
        std::ofstream(run_dir / "procctl.pid") << std::to_string(procctl.pid()) << "\n";
        auto holder = lock_holder(run_dir / "procctl.pid");
        const auto [code, out] = stop(run_dir);
        CHECK(code == 1);
        CHECK(contains(out, "procctl --stop: not signalled: pid " + std::to_string(procctl.pid()) + " does not hold the lock on " +
                                (run_dir / "procctl.pid").string()));
        CHECK(procctl.running());
        ::kill(procctl.pid(), SIGTERM);
        REQUIRE(procctl.wait_exit(30s));
    }
    SUBCASE("a stale pidfile that nobody holds locked") {
        const fs::path run_dir = scratch.dir / "run";
        fs::create_directory(run_dir);
        std::ofstream(run_dir / "procctl.pid") << victim_pid;
        const auto [code, out] = stop(run_dir);
        CHECK(code == 0);
        CHECK(out == "procctl --stop: no procctl runs with " + (run_dir / "procctl.pid").string() +
                         " (its pidfile is not locked: stale)\n");
    }
    CHECK(victim.alive());
    CHECK_FALSE(victim.got_term());
}

namespace {

// A user made for one test, with a group of its own that nobody else has; removed after.
struct FreshUser {
    std::string name = "hbwt" + std::to_string(::getpid());
    uid_t uid = 0;
    gid_t gid = 0;
    FreshUser() {
        REQUIRE(run({"useradd", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name}).first == 0);
        const passwd* pw = ::getpwnam(name.c_str());
        REQUIRE(pw != nullptr);
        uid = pw->pw_uid;
        gid = pw->pw_gid;
    }
    ~FreshUser() { (void)run({"userdel", name}); }
};

mode_t table_mode(const hbtest::ScratchKey& scratch) {
    auto table = Table::open_existing(scratch.options(), Table::Access::read_only);
    REQUIRE(table);
    return table->info().mode;
}

}  // namespace

TEST_CASE("a table is created 0600 when its creator's group has other members, 0660 when the group is its own") {
    REQUIRE_ROOT();
    auto as_user = [](uid_t uid, gid_t gid) {
        return [uid, gid] {
            if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(3);
        };
    };
    SUBCASE("nobody, whose group nogroup other users have too, gets a private table, and is told why") {
        hbtest::ScratchKey scratch;
        const auto code_out = run({hbtest::bin_for(65534, kNogroup, "proctab"), "--key", hbwatch::format_key(scratch.key()),
                                      "init", "--slots", "8"},
                                     as_user(65534, kNogroup));
        const int code = code_out.first;
        const std::string& out = code_out.second;
        CHECK(code == 0);
        CHECK(table_mode(scratch) == 0600);
        CHECK_MESSAGE(contains(out, "hbwatch: creating the table at key " + hbwatch::format_key(scratch.key()) +
                                        " with mode 0600, not 0660: its group nogroup (gid 65534) is shared with "),
                      out);
        CHECK(contains(out, "To share it on purpose: proctab init --mode 0660 --group GROUP\n"));
    }
    SUBCASE("nobody's proctab beat entries in its own table are acted on: checkproc stops the hung script") {
        hbtest::ScratchKey scratch;
        const std::string proctab = hbtest::bin_for(65534, kNogroup, "proctab"), key = hbwatch::format_key(scratch.key());
        Process script({"sh", "-c", proctab + " --key " + key + " beat nightly --timeout 200ms >/dev/null 2>&1 || exit 9; "
                                    "echo hanging; while :; do sleep 0.2; done"},
                       as_user(65534, kNogroup));
        REQUIRE(script.wait_for_output("hanging"));
        REQUIRE(hbtest::eventually([&] { return hung_entries(scratch) == 1; }));
        const auto code_log = run({hbtest::bin_for(65534, kNogroup, "checkproc"), "--key", key, "--grace", "2s"},
                                     as_user(65534, kNogroup));
        const std::string& log = code_log.second;
        CHECK_MESSAGE(contains(log, "'nightly': exited"), log);
        REQUIRE(script.wait_exit(10s));
        CHECK(WTERMSIG(script.wait()) == SIGTERM);
    }
    SUBCASE("a user whose group is its own gets 0660, and no word about it") {
        FreshUser user;
        hbtest::ScratchKey scratch;
        const auto [code, out] = run({hbtest::bin_for(user.uid, user.gid, "proctab"), "--key", hbwatch::format_key(scratch.key()),
                                      "init", "--slots", "8"},
                                     as_user(user.uid, user.gid));
        CHECK(code == 0);
        CHECK(table_mode(scratch) == 0660);
        CHECK_FALSE(contains(out, "creating the table"));
    }
    SUBCASE("a mode given is kept as given") {
        hbtest::ScratchKey scratch;
        const auto [code, out] = run({hbtest::bin_for(65534, kNogroup, "proctab"), "--key", hbwatch::format_key(scratch.key()),
                                      "init", "--slots", "8", "--mode", "0660"},
                                     as_user(65534, kNogroup));
        CHECK(code == 0);
        CHECK(table_mode(scratch) == 0660);
        CHECK_FALSE(contains(out, "creating the table"));
    }
}
