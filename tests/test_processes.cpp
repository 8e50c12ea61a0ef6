// The table under real processes: many registering at once, and registrants SIGKILLed at
// random instants. Each child is a fork() of this test; every wait has a deadline.
#include <doctest/doctest.h>

#include <unistd.h>

#include <random>
#include <set>
#include <vector>

#include <hbwatch/heartbeat.h>

#include "core/table.h"

#include "support.h"

using namespace std::chrono_literals;
using hbwatch::Heartbeat;
using hbwatch::Table;

TEST_CASE("200 processes registering at once get 200 distinct slots") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options();
    { Table table = Table::open_or_create(options); }
    constexpr int kProcesses = 200;
    hbtest::Pipe start, report, finish;
    std::vector<std::unique_ptr<hbtest::Child>> children;
    for (int i = 0; i < kProcesses; ++i) {
        children.push_back(std::make_unique<hbtest::Child>([&] {
            start.close_write();
            finish.close_write();
            char byte;
            if (::read(start.read_end(), &byte, 1) != 0) return 2;  // released when the parent closes it
            Heartbeat hb("racer", 10s, options);
            const std::uint32_t slot = hb.slot();
            if (::write(report.write_end(), &slot, sizeof slot) != sizeof slot) return 3;
            (void)!::read(finish.read_end(), &byte, 1);  // hold the slot until everyone has one
            return 0;
        }));
    }
    start.close_write();  // go
    report.close_write();
    std::set<std::uint32_t> slots;
    std::uint32_t slot;
    for (int i = 0; i < kProcesses && ::read(report.read_end(), &slot, sizeof slot) == sizeof slot; ++i) slots.insert(slot);
    CHECK(slots.size() == kProcesses);

    auto table = Table::open_existing(options, Table::Access::read_only);
    std::set<pid_t> owners;
    table->for_each([&](const hbwatch::SlotSnapshot& s) {
        CHECK(s.name() == "racer");
        CHECK(slots.count(s.index) == 1);
        owners.insert(s.process.pid);
    });
    CHECK(owners.size() == kProcesses);
    finish.close_write();
    for (auto& child : children) CHECK(child->wait() == 0);
    int left = 0;
    table->for_each([&](const hbwatch::SlotSnapshot&) { ++left; });
    CHECK(left == 0);
}

TEST_CASE("registrants SIGKILLed at random instants never block or corrupt the table") {
    hbtest::ScratchKey scratch;
    constexpr std::uint32_t kSlots = 16;
    const auto options = scratch.options(kSlots);
    { Table table = Table::open_or_create(options); }
    std::mt19937 random(12345);
    std::uniform_int_distribution<int> delay_us(0, 3000);
    constexpr int kRounds = 300;
    for (int round = 0; round < kRounds; ++round) {
        hbtest::Pipe running;
        hbtest::Child child([&] {
            char byte = 1;
            (void)!::write(running.write_end(), &byte, 1);
            for (;;) {
                Heartbeat hb("churn", 1s, options);  // map, claim, publish ... release, unmap
                hb.beat();
            }
            return 0;
        });
        char byte;
        REQUIRE(::read(running.read_end(), &byte, 1) == 1);
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(random)));
        ::kill(child.pid(), SIGKILL);
        child.wait();
    }

    // Every slot is free or held by a dead process, so all of it can be taken back.
    auto table = Table::open_existing(options, Table::Access::read_only);
    int leftovers = 0;
    table->for_each([&](const hbwatch::SlotSnapshot& s) {
        ++leftovers;
        CHECK(hbwatch::liveness({s.process.pid, s.process.start_time}) != hbwatch::Liveness::alive);
    });
    MESSAGE(leftovers << " of " << kSlots << " slots were left by killed registrants");
    const auto reclaims_before = table->info().reclaims;  // the churn itself may have reclaimed some
    std::vector<Heartbeat> all;
    for (std::uint32_t i = 0; i < kSlots; ++i) all.emplace_back("survivor", 1s, options);
    std::set<std::uint32_t> slots;
    for (auto& hb : all) {
        slots.insert(hb.slot());
        CHECK(hb.beat() == hbwatch::BeatStatus::ok);
    }
    CHECK(slots.size() == kSlots);
    CHECK(table->info().reclaims - reclaims_before == static_cast<std::uint64_t>(leftovers));
}
