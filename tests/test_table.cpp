#include <doctest/doctest.h>

#include <grp.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/clock.h"
#include <hbwatch/error.h>
#include "core/table.h"

#include "core/layout.h"
#include "support.h"

using namespace std::chrono_literals;
using hbwatch::Table;
using hbtest::ScratchKey;
using hbtest::as_nobody;
using hbtest::error_of;

namespace {

// A raw System V segment of `bytes` at `key`, filled by `fill`; as a foreign program would make it.
std::vector<unsigned char> make_raw_segment(key_t key, std::size_t bytes, const std::function<void(unsigned char*)>& fill) {
    const int id = ::shmget(key, bytes, IPC_CREAT | IPC_EXCL | 0600);
    REQUIRE(id >= 0);
    auto* base = static_cast<unsigned char*>(::shmat(id, nullptr, 0));
    REQUIRE(base != reinterpret_cast<void*>(-1));
    fill(base);
    std::vector<unsigned char> copy(base, base + bytes);
    ::shmdt(base);
    return copy;
}

std::vector<unsigned char> segment_bytes(key_t key) {
    const int id = ::shmget(key, 0, 0);
    REQUIRE(id >= 0);
    shmid_ds ds{};
    REQUIRE(::shmctl(id, IPC_STAT, &ds) == 0);
    auto* base = static_cast<unsigned char*>(::shmat(id, nullptr, SHM_RDONLY));
    std::vector<unsigned char> copy(base, base + ds.shm_segsz);
    ::shmdt(base);
    return copy;
}

// Runs `body` in a child as uid/gid 65534 ("nobody") and returns what it wrote.
}  // namespace

TEST_CASE("a table key is read in hex or decimal, and anything else is refused") {
    CHECK(hbwatch::parse_key("0x48425754") == 0x48425754);
    CHECK(hbwatch::parse_key("1212307284") == 0x48425754);
    CHECK(hbwatch::parse_key("0xFFFFFFFF") == static_cast<key_t>(0xFFFFFFFFu));
    CHECK(hbwatch::format_key(0x5095) == "0x00005095");
    for (const char* bad : {"", "0", "0x", "zz", "0x1g", "12 ", "-5", "0x100000000"}) {
        CAPTURE(bad);
        CHECK_THROWS_WITH_AS((void)hbwatch::parse_key(bad),
                             ("bad table key '" + std::string(bad) +
                              "': give a non-zero 32-bit number in hex (0x48425754) or decimal (1212307284)")
                                 .c_str(),
                             hbwatch::Error);
    }
}

TEST_CASE("HBWATCH_KEY overrides the default key, and a bad one is named") {
    ::unsetenv("HBWATCH_KEY");
    CHECK(hbwatch::key_from_environment() == hbwatch::kDefaultKey);
    CHECK(hbwatch::kDefaultKey != 0x5095);
    ::setenv("HBWATCH_KEY", "0x1234", 1);
    CHECK(hbwatch::key_from_environment() == 0x1234);
    ::setenv("HBWATCH_KEY", "4660", 1);
    CHECK(hbwatch::key_from_environment() == 0x1234);
    ::setenv("HBWATCH_KEY", "nope", 1);
    CHECK_THROWS_WITH_AS((void)hbwatch::key_from_environment(),
                         "HBWATCH_KEY: bad table key 'nope': give a non-zero 32-bit number in hex (0x48425754) or "
                         "decimal (1212307284)",
                         hbwatch::Error);
    ::unsetenv("HBWATCH_KEY");
}

TEST_CASE("a new table is one System V segment with the header and 4096 free slots") {
    ScratchKey scratch;
    CHECK_FALSE(Table::open_existing(scratch.options()));
    const auto before = hbwatch::realtime_now_ns();
    Table table = Table::open_or_create(scratch.options());
    const auto info = table.info();
    CHECK(info.key == scratch.key());
    CHECK(info.slot_count == 4096);
    CHECK(info.bytes == 128 + 4096 * 8 + 4096 * 128);  // header, journal, slots
    CHECK(info.version == 3);
    CHECK(info.mode == hbtest::default_table_mode());
    CHECK(info.owner_uid == ::geteuid());
    CHECK(info.owner_gid == ::getegid());
    CHECK(info.created_realtime_ns >= before);
    CHECK(info.registrations == 0);
    for (std::uint32_t i = 0; i < table.slot_count(); ++i) CHECK_FALSE(table.read(i));
    CHECK(::shmget(scratch.key(), 0, 0) == info.shmid);  // what `ipcs -m` lists

    SUBCASE("opening it again sees the same segment") {
        auto again = Table::open_existing(scratch.options(), Table::Access::read_only);
        REQUIRE(again);
        CHECK(again->info().shmid == info.shmid);
        CHECK(again->slot_count() == 4096);
    }
    SUBCASE("creating it again is refused") {
        CHECK(error_of([&] { (void)Table::create(scratch.options()); }) ==
              "a shared-memory segment already exists at key " + hbwatch::format_key(scratch.key()) +
                  ": remove it first (proctab destroy, or ipcrm -M " + hbwatch::format_key(scratch.key()) + ")");
    }
    SUBCASE("destroying it removes the key") {
        CHECK(Table::destroy(scratch.key()));
        CHECK_FALSE(Table::destroy(scratch.key()));
        CHECK(::shmget(scratch.key(), 0, 0) < 0);
    }
}

TEST_CASE("the slot count and mode are chosen at creation, within bounds") {
    ScratchKey scratch;
    SUBCASE("65536 slots") {
        auto options = scratch.options(65536);
        options.mode = 0640;
        Table table = Table::create(options);
        CHECK(table.info().slot_count == 65536);
        CHECK(table.info().mode == 0640);
    }
    SUBCASE("a group of our choosing") {
        auto options = scratch.options(8);
        options.group = 65534;
        CHECK(Table::create(options).info().owner_gid == 65534);
    }
    SUBCASE("zero or too many slots") {
        CHECK(error_of([&] { (void)Table::create(scratch.options(0)); }) ==
              "cannot create a table of 0 slots at key " + hbwatch::format_key(scratch.key()) + ": give 1 to 1048576 slots");
        CHECK(error_of([&] { (void)Table::create(scratch.options(hbwatch::kMaxSlots + 1)); }).starts_with(
            "cannot create a table of 1048577 slots"));
        CHECK(::shmget(scratch.key(), 0, 0) < 0);
    }
    SUBCASE("a mode that would lock out the table's own creator") {
        auto options = scratch.options(8);
        options.mode = 0440;
        CHECK(error_of([&] { (void)Table::create(options); }) ==
              "bad table mode 0440: give permission bits that let the owner read and write, such as 0660 or 0600");
        CHECK(::shmget(scratch.key(), 0, 0) < 0);
    }
}

TEST_CASE("a foreign segment at the key is refused, named, and left byte for byte") {
    ScratchKey scratch;
    const std::string key = hbwatch::format_key(scratch.key());
    SUBCASE("a classic 0x5095-style table: pid, name, time(0) per entry") {
        const auto original = make_raw_segment(scratch.key(), 100 * 64, [](unsigned char* base) {
            for (int i = 0; i < 100; ++i) {
                const int pid = 1000 + i;
                std::memcpy(base + i * 64, &pid, sizeof pid);
                std::snprintf(reinterpret_cast<char*>(base + i * 64 + 4), 32, "svc%d", i);
            }
        });
        const auto message = error_of([&] { (void)Table::open_or_create(scratch.options()); });
        CHECK(message.starts_with("the shared-memory segment at key " + key + " (6400 bytes) is not an hbwatch table: found magic 0x"));
        CHECK(message.ends_with(", expected 0x4842574154434831. It was left untouched. Point hbwatch elsewhere with "
                                "HBWATCH_KEY, or, if nothing uses the segment, remove it with: ipcrm -M " + key));
        CHECK(segment_bytes(scratch.key()) == original);
        CHECK(error_of([&] { (void)Table::open_existing(scratch.options(), Table::Access::read_only); }) == message);
    }
    SUBCASE("a segment too small for the header") {
        const auto original = make_raw_segment(scratch.key(), 16, [](unsigned char* base) { std::memset(base, 0xAB, 16); });
        CHECK(error_of([&] { (void)Table::open_or_create(scratch.options()); }) ==
              "the shared-memory segment at key " + key +
                  " (16 bytes) is not an hbwatch table: it is smaller than the 128-byte header. It was left untouched. "
                  "Point hbwatch elsewhere with HBWATCH_KEY, or, if nothing uses the segment, remove it with: ipcrm -M " + key);
        CHECK(segment_bytes(scratch.key()) == original);
    }
    SUBCASE("our magic, another layout version") {
        { Table table = Table::create(scratch.options(4)); }
        const int id = ::shmget(scratch.key(), 0, 0);
        auto* header = static_cast<hbwatch::detail::Header*>(::shmat(id, nullptr, 0));
        header->version.store(1);
        ::shmdt(header);
        const auto original = segment_bytes(scratch.key());
        CHECK(error_of([&] { (void)Table::open_or_create(scratch.options()); }) ==
              "the hbwatch table at key " + key + " has layout version 1 but this build reads version 3: stop the "
              "services that use it, then remove and recreate it (ipcrm -M " + key + ")");
        CHECK(segment_bytes(scratch.key()) == original);
    }
    SUBCASE("our magic, a slot count that does not match the size") {
        { Table table = Table::create(scratch.options(4)); }
        const int id = ::shmget(scratch.key(), 0, 0);
        auto* header = static_cast<hbwatch::detail::Header*>(::shmat(id, nullptr, 0));
        header->slot_count.store(5000);
        ::shmdt(header);
        CHECK(error_of([&] { (void)Table::open_or_create(scratch.options()); }) ==
              "the shared-memory segment at key " + key + " (33408 bytes) is not an hbwatch table: its header says 5000 "
              "slots of 128 bytes after a 32896-byte header, which does not match its size. It was left untouched. "
              "Point hbwatch elsewhere with HBWATCH_KEY, or, if nothing uses the segment, remove it with: ipcrm -M " + key);
    }
    SUBCASE("all zeros, of a table's size, from a creator that is still running") {
        const auto original = make_raw_segment(scratch.key(), hbwatch::detail::kSlotsOffset + 31 * 128, [](unsigned char*) {});
        CHECK(error_of([&] { (void)Table::open_or_create(scratch.options()); }) ==
              "the shared-memory segment at key " + key + " (36864 bytes) is not an hbwatch table: its magic is 0 and "
              "its creator, pid " + std::to_string(::getpid()) + ", is running but has not made it a table. It was "
              "left untouched. Point hbwatch elsewhere with HBWATCH_KEY, or, if nothing uses the segment, remove it "
              "with: ipcrm -M " + key);
        CHECK(segment_bytes(scratch.key()) == original);
    }
    SUBCASE("zero magic but data in it, from a creator that is gone") {
        hbtest::Child creator([&] {
            make_raw_segment(scratch.key(), hbwatch::detail::kSlotsOffset + 4 * 128, [](unsigned char* base) { base[300] = 7; });
            return 0;
        });
        REQUIRE(creator.wait() == 0);
        const auto original = segment_bytes(scratch.key());
        CHECK(error_of([&] { (void)Table::open_or_create(scratch.options()); }).find("its magic is 0 and it holds data") !=
              std::string::npos);
        CHECK(segment_bytes(scratch.key()) == original);
    }
}

TEST_CASE("a table whose creator died before publishing it is finished by the next user") {
    ScratchKey scratch;
    // What a creator SIGKILLed between shmget and the magic leaves: zeros, sized for 4 slots.
    hbtest::Child creator([&] {
        make_raw_segment(scratch.key(), hbwatch::detail::kSlotsOffset + 4 * 128, [](unsigned char* base) {
            auto* header = reinterpret_cast<hbwatch::detail::Header*>(base);
            header->slot_size.store(128);  // it got this far
        });
        return 0;
    });
    REQUIRE(creator.wait() == 0);
    Table table = Table::open_or_create(scratch.options());
    CHECK(table.slot_count() == 4);
    CHECK(table.info().version == 3);
    const auto claim = table.claim("late-bloomer", 1s, hbwatch::self_identity(), ::getuid());
    CHECK(table.read(claim.index)->name() == "late-bloomer");
}

TEST_CASE("a caller without access is told the key, the mode and the owner") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (to act as the user nobody)");
        return;
    }
    ScratchKey scratch;
    auto options = scratch.options(4);
    options.mode = 0640;
    options.group = 4242;
    Table table = Table::create(options);
    const std::string key = hbwatch::format_key(scratch.key());

    SUBCASE("no access at all") {
        const auto message = as_nobody(65534, [&] { return error_of([&] { (void)Table::open_or_create(options); }); });
        CHECK(message == "no permission to open the hbwatch table at key " + key + " for reading and writing" +
                             " (mode 0640, owner uid " + std::to_string(::geteuid()) + " gid 4242, created by pid " +
                             std::to_string(::getpid()) + " (running); you are uid 65534 gid 65534): run as the owner or "
                             "in its group, or have root recreate the table with a wider --mode or --group (proctab init). "
                             "If you do not know that owner, the key may be squatted: remove the segment as root (ipcrm -M " +
                             key + ") or use another key (HBWATCH_KEY)");
    }
    SUBCASE("the group may read but not write") {
        const auto read = as_nobody(4242, [&] {
            auto view = Table::open_existing(options, Table::Access::read_only);
            return view ? "read " + std::to_string(view->slot_count()) : std::string("none");
        });
        CHECK(read == "read 4");
        const auto write = as_nobody(4242, [&] { return error_of([&] { (void)Table::open_or_create(options); }); });
        CHECK(write.starts_with("no permission to open the hbwatch table at key " + key +
                                " for reading and writing (mode 0640"));
        const auto none = as_nobody(65534, [&] {
            return error_of([&] { (void)Table::open_existing(options, Table::Access::read_only); });
        });
        CHECK(none.starts_with("no permission to open the hbwatch table at key " + key + " for reading (mode 0640"));
    }
}

TEST_CASE("a claim is published whole, freed only by its own token, and the generation moves on") {
    ScratchKey scratch;
    Table table = Table::create(scratch.options(4));
    const auto self = hbwatch::self_identity();
    const auto claim = table.claim("order-svc", 30s, self, 1000);
    auto s = table.read(claim.index);
    REQUIRE(s);
    CHECK(s->phase == hbwatch::SlotPhase::live);
    CHECK(s->token == claim.token);
    CHECK(s->process == self);
    CHECK(s->uid == 1000);
    CHECK(s->name() == "order-svc");
    CHECK(s->timeout == 30s);
    CHECK(s->beats == 0);
    CHECK(s->last_beat_ns == s->registered_ns);
    CHECK(s->garbage_reason().empty());
    CHECK(table.info().registrations == 1);

    CHECK(table.beat(claim.index, claim.token));
    CHECK(table.read(claim.index)->beats == 1);

    CHECK_FALSE(table.free_slot(claim.index, claim.token + (1ull << 34)));  // another generation
    CHECK(table.free_slot(claim.index, claim.token));
    CHECK_FALSE(table.read(claim.index));
    CHECK_FALSE(table.free_slot(claim.index, claim.token));  // only once
    CHECK_FALSE(table.beat(claim.index, claim.token));
    CHECK(table.info().releases == 1);

    // The same slot again: a new token, so the old one can neither free nor beat it.
    std::optional<hbwatch::Claim> again;
    for (int i = 0; i < 4 && (!again || again->index != claim.index); ++i)
        again = table.claim("order-svc", 30s, self, 1000);
    REQUIRE(again->index == claim.index);
    CHECK(again->token != claim.token);
    CHECK_FALSE(table.free_slot(claim.index, claim.token));
    CHECK(table.read(claim.index)->phase == hbwatch::SlotPhase::live);
}

TEST_CASE("forged slots are recognised as garbage") {
    ScratchKey scratch;
    Table table = Table::create(scratch.options(4));
    auto* slot = table.slot_at(0);
    const auto self = hbwatch::self_identity();
    auto forge = [&](std::int32_t pid, std::uint32_t timeout_ms, const char* name, std::size_t name_len) {
        slot->start_time.store(self.start_time);
        slot->timeout_ms.store(timeout_ms);
        unsigned char bytes[48];
        std::memset(bytes, 'A', sizeof bytes);
        std::memcpy(bytes, name, name_len);
        for (int w = 0; w < 6; ++w) {
            std::uint64_t word;
            std::memcpy(&word, bytes + w * 8, 8);
            slot->name[w].store(word);
        }
        slot->state.store(hbwatch::detail::make_state(1, pid, hbwatch::SlotPhase::live));
        return table.read(0)->garbage_reason();
    };
    CHECK(forge(1, 1000, "x", 2) == "pid 1 is init, never a registered service");
    CHECK(forge(0, 1000, "x", 2) == "pid 0 is not a process");
    CHECK(forge(-42, 1000, "x", 2) == "pid -42 is not a process");
    CHECK(forge(::getpid(), 1000, "x", 0) == "name is not NUL-terminated");
    CHECK(forge(::getpid(), 1000, "bad\x01", 5) ==
          "heartbeat name 'bad\\x01' has a bad character at byte 3: use 1 to 47 letters, digits or . _ - : @ + /");
    CHECK(forge(::getpid(), 0, "x", 2) == "heartbeat timeout 0ms is out of range: give 100ms to 7d");
    CHECK(forge(::getpid(), 1000, "x", 2).empty());
    CHECK_FALSE(table.read(0)->garbage());

    // The decision is the enum; the words above are derived from it.
    using hbwatch::Garbage;
    forge(1, 1000, "x", 2);
    CHECK(table.read(0)->garbage() == Garbage::init);
    forge(-42, 1000, "x", 2);
    CHECK(table.read(0)->garbage() == Garbage::not_a_pid);
    forge(::getpid(), 1000, "x", 0);
    CHECK(table.read(0)->garbage() == Garbage::unterminated_name);
    forge(::getpid(), 1000, "", 1);
    CHECK(table.read(0)->garbage() == Garbage::bad_name);
    forge(::getpid(), 100, "x", 2);
    CHECK_FALSE(table.read(0)->garbage());
    forge(::getpid(), 99, "x", 2);
    CHECK(table.read(0)->garbage() == Garbage::bad_timeout);
}

TEST_CASE("the journal names each changed slot once, and says when a record is missing or was overwritten") {
    ScratchKey scratch;
    Table table = Table::create(scratch.options(8));
    std::uint64_t next = table.journal_head();
    std::vector<std::uint32_t> changed;
    CHECK(table.read_journal(next, changed) == Table::JournalRead::caught_up);
    CHECK(changed.empty());

    const auto self = hbwatch::self_identity();
    const auto a = table.claim("journal-a", 1s, self, ::getuid());
    const auto b = table.claim("journal-b", 1s, self, ::getuid());
    REQUIRE(table.free_slot(a.index, a.token));
    CHECK(table.read_journal(next, changed) == Table::JournalRead::caught_up);
    CHECK(changed == std::vector<std::uint32_t>{a.index, b.index, a.index});
    CHECK(next == table.journal_head());

    // A writer SIGKILLed between reserving a record and writing it: the reader waits there.
    const int id = ::shmget(scratch.key(), 0, 0);
    auto* header = static_cast<hbwatch::detail::Header*>(::shmat(id, nullptr, 0));
    header->journal_head.fetch_add(1);
    changed.clear();
    const auto c = table.claim("journal-c", 1s, self, ::getuid());
    CHECK(table.read_journal(next, changed) == Table::JournalRead::pending);
    CHECK(changed.empty());
    CHECK(next == table.journal_head() - 2);

    // More records than the ring holds since the last read: the reader must read every slot.
    for (std::uint64_t i = 0; i < hbwatch::detail::kJournalRecords; ++i) {
        const auto d = table.claim("journal-d", 1s, self, ::getuid());
        REQUIRE(table.free_slot(d.index, d.token));
    }
    CHECK(table.read_journal(next, changed) == Table::JournalRead::lost);
    CHECK(next == table.journal_head());
    ::shmdt(header);
    (void)c;
}
