// Threads racing on one table, for ThreadSanitizer: claims, releases and beats against a reader
// that must never see a torn slot.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <hbwatch/heartbeat.h>

#include "core/table.h"

#include "support.h"

using namespace std::chrono_literals;

TEST_CASE("a reader never sees a torn slot while writers claim, beat and release") {
    hbtest::ScratchKey scratch;
    const auto options = scratch.options(8);
    { hbwatch::Table table = hbwatch::Table::open_or_create(options); }
    std::atomic<bool> stop{false};
    std::atomic<long> registrations{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
        writers.emplace_back([&, t] {
            // Each writer's name and timeout belong together, so a torn read would show a mismatch.
            const std::string name = "writer-" + std::to_string(t);
            const auto timeout = std::chrono::milliseconds(1000 + t);
            while (!stop.load()) {
                hbwatch::Heartbeat hb(name, timeout, options);
                for (int b = 0; b < 10; ++b) hb.beat();
                registrations.fetch_add(1);
            }
        });
    }
    // One registration lives throughout, beaten all along, so that the reader always has a
    // live slot to copy, however the threads are scheduled on two cores.
    writers.emplace_back([&] {
        hbwatch::Heartbeat hb("writer-9", std::chrono::milliseconds(1009), options);
        while (!stop.load()) hb.beat();
    });
    hbwatch::Table reader = *hbwatch::Table::open_existing(options, hbwatch::Table::Access::read_only);
    long snapshots = 0, torn = 0;
    // At least 1.5 s of racing and 1000 live snapshots; a generous bound only for a stuck run.
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < start + 1500ms ||
           (snapshots < 1000 && std::chrono::steady_clock::now() < start + 60s)) {
        reader.for_each([&](const hbwatch::SlotSnapshot& s) {
            if (s.phase != hbwatch::SlotPhase::live) return;
            ++snapshots;
            const auto expected = "writer-" + std::to_string(s.timeout.count() - 1000);
            torn += s.name() != expected || s.process.pid != ::getpid() || !s.garbage_reason().empty();
        });
    }
    stop.store(true);
    for (auto& w : writers) w.join();
    MESSAGE(snapshots << " live snapshots during " << registrations.load() << " registrations");
    CHECK(registrations.load() > 0);
    CHECK(snapshots >= 1000);
    CHECK(torn == 0);
    int left = 0;
    reader.for_each([&](const hbwatch::SlotSnapshot&) { ++left; });
    CHECK(left == 0);
}
