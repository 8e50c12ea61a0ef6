#include <doctest/doctest.h>

#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>
#include <string>

#include <hbwatch/heartbeat.h>

#include "core/table.h"

#include "support.h"

using namespace std::chrono_literals;
using hbwatch::BeatStatus;
using hbwatch::Heartbeat;
using hbwatch::Table;
using hbtest::ScratchKey;
using hbtest::error_of;

// The two halves of Heartbeat::beat(), the check and the stores, so that a test can put a
// release and a new claim between them.
struct hbwatch::detail::BeatProbe {
    static BeatStatus check(const Heartbeat& hb) { return hb.owned(); }
    static void store(Heartbeat& hb) { hb.stamp(); }
};
using hbwatch::detail::BeatProbe;

namespace {
// How many attachments the segment at `key` has, from the kernel.
unsigned long attachments(key_t key) {
    const int id = ::shmget(key, 0, 0);
    shmid_ds ds{};
    if (id < 0 || ::shmctl(id, IPC_STAT, &ds) != 0) return 0;
    return ds.shm_nattch;
}
}  // namespace

TEST_CASE("a heartbeat registers the process, beats, and frees its slot when destroyed") {
    ScratchKey scratch;
    auto options = scratch.options();
    std::uint32_t index;
    {
        Heartbeat hb("order-svc", 30s, options);  // creates the table on first use
        index = hb.slot();
        CHECK(hb.key() == scratch.key());
        auto table = Table::open_existing(options, Table::Access::read_only);
        REQUIRE(table);
        auto s = table->read(index);
        REQUIRE(s);
        CHECK(s->name() == "order-svc");
        CHECK(s->process == hbwatch::self_identity());
        CHECK(s->uid == ::getuid());
        CHECK(s->timeout == 30s);
        const auto registered = s->last_beat_ns;

        // The coarse clock ticks every few ms; beat until a tick shows.
        REQUIRE(hbtest::eventually([&] {
            CHECK(hb.beat() == BeatStatus::ok);
            return table->read(index)->last_beat_ns > registered;
        }));
        CHECK(table->read(index)->beats >= 1);
    }
    auto table = Table::open_existing(options, Table::Access::read_only);
    CHECK_FALSE(table->read(index));
    CHECK(table->info().registrations == 1);
    CHECK(table->info().releases == 1);
}

TEST_CASE("bad names and timeouts are refused before any table is made") {
    ScratchKey scratch;
    auto options = scratch.options();
    CHECK(error_of([&] { Heartbeat hb("", 1s, options); }) ==
          "heartbeat name is empty: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(error_of([&] { Heartbeat hb("order svc", 1s, options); }) ==
          "heartbeat name 'order svc' has a bad character at byte 5: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(error_of([&] { Heartbeat hb(std::string(48, 'a'), 1s, options); }) ==
          "heartbeat name 'aaaaaaaaaaaaaaaaaaaa...' is 48 bytes long: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(error_of([&] { Heartbeat hb("tab\there", 1s, options); }).find("'tab\\x09here'") != std::string::npos);
    // A NUL inside the name (strchr found the string's own terminator, and took it for allowed).
    CHECK(error_of([&] { Heartbeat hb(std::string_view("nul\0inside", 10), 1s, options); }) ==
          "heartbeat name 'nul\\x00inside' has a bad character at byte 3: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(error_of([&] { Heartbeat hb("svc", 99ms, options); }) ==
          "heartbeat timeout 99ms is out of range: give 100ms to 7d");
    CHECK(error_of([&] { Heartbeat hb("svc", 169h, options); }) ==
          "heartbeat timeout 169h is out of range: give 100ms to 7d");
    CHECK(::shmget(scratch.key(), 0, 0) < 0);
    CHECK_NOTHROW(Heartbeat(std::string(47, 'a'), 100ms, options));
    CHECK_NOTHROW(Heartbeat("team/order-svc_2.eu:main@host+x", 168h, options));
}

TEST_CASE("a full table says so, and takes back the slots of owners that died") {
    ScratchKey scratch;
    auto options = scratch.options(3);
    Heartbeat a("a", 1s, options), b("b", 1s, options);

    hbtest::Pipe registered;
    hbtest::Child owner([&] {
        Heartbeat c("doomed", 1s, options);
        char byte = 1;
        (void)!::write(registered.write_end(), &byte, 1);
        ::pause();
        return 0;
    });
    char byte;
    REQUIRE(::read(registered.read_end(), &byte, 1) == 1);

    CHECK(error_of([&] { Heartbeat d("d", 1s, options); }) ==
          "the hbwatch table at key " + hbwatch::format_key(scratch.key()) +
              " is full: all 3 slots hold live processes, so 'd' cannot register. Remove entries that are not needed "
              "(proctab remove), or recreate the table with more slots (proctab init --slots 6) once the services "
              "are stopped");

    SUBCASE("a SIGKILLed owner's slot is reclaimed") {
        ::kill(owner.pid(), SIGKILL);
        owner.wait();
    }
    SUBCASE("a zombie owner's slot is reclaimed") {
        ::kill(owner.pid(), SIGKILL);
        REQUIRE(owner.wait_exit(10s));  // not reaped: a zombie
    }
    Heartbeat d("d", 1s, options);
    auto table = Table::open_existing(options, Table::Access::read_only);
    CHECK(table->read(d.slot())->name() == "d");
    CHECK(table->info().reclaims == 1);
}

TEST_CASE("a beat into a slot that was freed under the handle reports the loss and writes nothing") {
    ScratchKey scratch;
    auto options = scratch.options(2);
    Heartbeat hb("victim", 1s, options);
    Table table = Table::open_or_create(options);
    auto mine = table.read(hb.slot());
    REQUIRE(table.free_slot(hb.slot(), mine->token));
    CHECK(hb.beat() == BeatStatus::lost);

    // Whoever takes the slot next is not disturbed by the old handle, nor freed by its destructor.
    const auto other = table.claim("successor", 1s, hbwatch::self_identity(), 0);
    const auto before = *table.read(other.index);
    for (int i = 0; i < 100; ++i) CHECK(hb.beat() == BeatStatus::lost);
    CHECK(table.read(other.index)->beats == before.beats);
    { Heartbeat gone = std::move(hb); }
    CHECK(table.read(other.index)->token == other.token);
}

TEST_CASE("a heartbeat moves, and the moved-from handle is inert") {
    ScratchKey scratch;
    auto options = scratch.options(2);
    Heartbeat first("mover", 1s, options);
    const auto index = first.slot();
    Heartbeat second = std::move(first);
    CHECK(first.beat() == BeatStatus::inactive);  // NOLINT(bugprone-use-after-move): the point of the test
    CHECK(second.beat() == BeatStatus::ok);
    CHECK(second.slot() == index);
    Heartbeat third("other", 1s, options);
    third = std::move(second);  // frees "other", takes over "mover"
    auto table = Table::open_existing(options, Table::Access::read_only);
    int live = 0;
    table->for_each([&](const hbwatch::SlotSnapshot& s) {
        ++live;
        CHECK(s.name() == "mover");
    });
    CHECK(live == 1);
}

TEST_CASE("a fork()ed child never beats or frees its parent's slot") {
    ScratchKey scratch;
    auto options = scratch.options(4);
    Heartbeat parent("parent", 1s, options);
    auto table = Table::open_existing(options, Table::Access::read_only);
    const auto before = *table->read(parent.slot());

    hbtest::Child child([&] {
        int failures = 0;
        for (int i = 0; i < 1000; ++i) failures += parent.beat() != BeatStatus::forked;
        // The child may register itself, in a slot of its own.
        Heartbeat own("child", 1s, options);
        failures += own.slot() == parent.slot();
        failures += own.beat() != BeatStatus::ok;
        { Heartbeat copy_of_parent = std::move(parent); }  // runs the destructor in the child
        return failures;
    });
    CHECK(child.wait() == 0);
    const auto after = table->read(parent.slot());
    REQUIRE(after);
    CHECK(after->token == before.token);
    CHECK(after->beats == before.beats);
    CHECK(parent.beat() == BeatStatus::ok);
}

TEST_CASE("a stale beat never lands in another registration: check, revoke, a new claim, then the store") {
    ScratchKey scratch;
    auto options = scratch.options(1);  // one slot: a new registration could only take A's
    Table table = Table::open_or_create(options);
    std::optional<Heartbeat> a(std::in_place, "stale-a", 1s, options);
    const auto token = table.read(a->slot())->token;

    // 1. A's beat passes its check, and A is preempted before its stores ...
    REQUIRE(BeatProbe::check(*a) == BeatStatus::ok);
    // 2. ... an operator removes A's entry while A runs ...
    CHECK(table.revoke(a->slot(), token) == Table::Revoked::revoked);
    CHECK(table.read(a->slot())->phase == hbwatch::SlotPhase::revoked);
    // 3. ... another registration needs a slot: A's is not handed over while A may still store ...
    const auto self = hbwatch::self_identity();
    CHECK(error_of([&] { (void)table.claim("successor", 1s, self, ::getuid()); }).find("is full") != std::string::npos);
    // 4. ... A's stale stores land in A's own revoked slot, and A learns it was removed.
    BeatProbe::store(*a);
    CHECK(table.read(a->slot())->name() == "stale-a");
    CHECK(table.read(a->slot())->phase == hbwatch::SlotPhase::revoked);
    CHECK(a->beat() == BeatStatus::lost);
    // 5. A unregisters: now the slot changes hands, and the new registration's record is its own.
    a.reset();
    const auto successor = table.claim("successor", 1s, self, ::getuid());
    const auto fresh = *table.read(successor.index);
    CHECK(fresh.name() == "successor");
    CHECK(fresh.beats == 0);
    CHECK(fresh.last_beat_ns == fresh.registered_ns);
}

TEST_CASE("a revoked registration's slot is freed when its process dies, and a revoke of a dead one frees at once") {
    ScratchKey scratch;
    auto options = scratch.options(1);
    Table table = Table::open_or_create(options);
    hbtest::Pipe ready;
    hbtest::Child owner([&] {
        Heartbeat hb("revoked-owner", 1s, options);
        ready.signal();
        ::pause();
        return 0;
    });
    REQUIRE(ready.wait(10s));
    const auto entry = table.read(0);
    REQUIRE(entry);
    CHECK(table.revoke(0, entry->token) == Table::Revoked::revoked);
    CHECK(table.revoke(0, entry->token) == Table::Revoked::changed);  // the token was the live one
    const auto revoked = *table.read(0);
    CHECK(table.revoke(0, revoked.token) == Table::Revoked::revoked);  // still running: still held
    ::kill(owner.pid(), SIGKILL);
    REQUIRE(owner.wait_exit(10s));
    CHECK(table.revoke(0, revoked.token) == Table::Revoked::freed);
    CHECK(!table.read(0));
}

TEST_CASE("a beat on another's behalf never lands in a later registration of the slot") {
    ScratchKey scratch;
    auto options = scratch.options(1);
    Table table = Table::open_or_create(options);
    hbtest::Child first([] {
        ::pause();
        return 0;
    });
    const auto registered = table.claim("delegated", 1s, *hbwatch::identity_of(first.pid()), ::getuid());
    // The beat reads the slot and checks the token ...
    const auto pending = table.prepare_beat(registered.index, registered.token);
    REQUIRE(pending);
    // ... the process dies and its slot goes to a new registration ...
    ::kill(first.pid(), SIGKILL);
    REQUIRE(first.wait_exit(10s));
    REQUIRE(table.free_slot(registered.index, registered.token));
    const auto successor = table.claim("successor", 1s, hbwatch::self_identity(), ::getuid());
    REQUIRE(successor.index == registered.index);
    const auto before = *table.read(successor.index);
    // ... and the old beat, committed now, changes nothing in it.
    CHECK_FALSE(table.commit_beat(*pending));
    const auto after = *table.read(successor.index);
    CHECK(after.last_beat_ns == before.last_beat_ns);
    CHECK(after.beats == before.beats);
    CHECK(table.beat(successor.index, successor.token));  // a current beat does land
    CHECK(table.read(successor.index)->beats == before.beats + 1);
}

TEST_CASE("a process maps the table once for all its handles, and maps anew when the table is replaced") {
    ScratchKey scratch;
    auto options = scratch.options(8);
    Heartbeat first("first", 1s, options);
    const auto mapped = attachments(scratch.key());
    REQUIRE(mapped >= 1);
    {
        Heartbeat second("second", 1s, options);
        Heartbeat third("third", 1s, options);
        CHECK(attachments(scratch.key()) == mapped);
        CHECK(second.slot() != third.slot());
    }
    CHECK(attachments(scratch.key()) == mapped);

    // An operator replaces the table (proctab destroy --force, then init): the next
    // registration goes into the new one, and the old handle keeps its old mapping.
    REQUIRE(Table::destroy(scratch.key()));
    Table replacement = Table::create(options);
    Heartbeat after("after", 1s, options);
    int found = 0;
    replacement.for_each([&](const hbwatch::SlotSnapshot& s) { found += s.name() == "after"; });
    CHECK(found == 1);
    CHECK(first.beat() == BeatStatus::ok);

    // A fork()ed child registers through the mapping it inherited, as itself.
    hbtest::Child child([&] {
        Heartbeat own("forked-child", 1s, options);
        return own.beat() == BeatStatus::ok && Table::open_existing(options, Table::Access::read_only)
                                                       ->read(own.slot())->process.pid == ::getpid()
                   ? 0
                   : 1;
    });
    CHECK(child.wait() == 0);
}

TEST_CASE("a child made without fork()'s handlers (_Fork) never beats or frees its parent's slot, and registers as itself") {
    ScratchKey scratch;
    auto options = scratch.options(4);
    Heartbeat parent("parent", 1s, options);
    auto table = Table::open_existing(options, Table::Access::read_only);
    const auto before = *table->read(parent.slot());

    hbtest::Pipe done;
    const pid_t child = ::_Fork();  // runs no pthread_atfork handler
    REQUIRE(child >= 0);
    if (child == 0) {
        int failures = parent.beat() != BeatStatus::forked;
        try {
            Heartbeat own("raw-child", 1s, options);
            const auto entry = Table::open_existing(options, Table::Access::read_only)->read(own.slot());
            failures += !entry || entry->process.pid != ::getpid() || entry->process.pid == before.process.pid;
            failures += own.beat() != BeatStatus::ok;
        } catch (...) {
            failures += 100;
        }
        { Heartbeat copy_of_parent = std::move(parent); }  // its destructor, in the child
        ::_exit(failures);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    const auto after = table->read(parent.slot());
    REQUIRE(after);
    CHECK(after->token == before.token);
    CHECK(after->beats == before.beats);
    CHECK(parent.beat() == BeatStatus::ok);
}
