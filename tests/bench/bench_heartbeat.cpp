// Speed of the hot path and of registration, on private segments. Run with `make bench`.
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <map>

#include <benchmark/benchmark.h>

#include <hbwatch/heartbeat.h>

#include "core/process.h"
#include "core/table.h"

using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t kBigTable = 65536;

// Private keys for this run, their segments removed at exit.
struct BenchKeys {
    key_t base = static_cast<key_t>(0x48D00000u | ((static_cast<unsigned>(::getpid()) & 0xFFFu) << 8));
    std::map<key_t, bool> used;
    ~BenchKeys() {
        for (const auto& [key, _] : used) hbwatch::Table::destroy(key);
    }
    hbwatch::TableOptions options(int which, std::uint32_t slots) {
        hbwatch::TableOptions o;
        o.key = base + which;
        o.slots = slots;
        used[*o.key] = true;
        return o;
    }
};
BenchKeys keys;

// The physical limit of a stamped beat: the coarse clock read and one relaxed store into
// shared memory, as the classic tools do with time(0).
void BM_BareClockStore(benchmark::State& state) {
    const int id = ::shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    auto* word = static_cast<std::atomic<std::uint64_t>*>(::shmat(id, nullptr, 0));
    ::shmctl(id, IPC_RMID, nullptr);
    for (auto _ : state) {
        timespec now;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
        word->store(static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(now.tv_nsec),
                    std::memory_order_relaxed);
        benchmark::ClobberMemory();
    }
    ::shmdt(word);
}
BENCHMARK(BM_BareClockStore);

void BM_Beat(benchmark::State& state) {
    hbwatch::Heartbeat hb("bench-beat", 30s, keys.options(0, hbwatch::kDefaultSlots));
    for (auto _ : state) {
        benchmark::DoNotOptimize(hb.beat());
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_Beat);

// The classic heartbeat for comparison: time(0) stored into a shared-memory slot.
struct ClassicSlot {
    int pid;
    char name[32];
    time_t last;
};
void BM_ClassicBeat(benchmark::State& state) {
    const int id = ::shmget(IPC_PRIVATE, sizeof(ClassicSlot) * 64, IPC_CREAT | 0600);
    auto* slots = static_cast<ClassicSlot*>(::shmat(id, nullptr, 0));
    ::shmctl(id, IPC_RMID, nullptr);
    volatile ClassicSlot* slot = &slots[0];
    for (auto _ : state) slot->last = time(nullptr);
    ::shmdt(slots);
}
BENCHMARK(BM_ClassicBeat);

// A 65,536-slot table filled to `percent` by this process (one process may hold many
// registrations), made once per fill level.
hbwatch::TableOptions filled_table(int percent) {
    static std::map<int, hbwatch::TableOptions> tables;
    if (auto it = tables.find(percent); it != tables.end()) return it->second;
    const auto options = keys.options(1 + percent, kBigTable);
    hbwatch::Table::destroy(*options.key);
    hbwatch::Table table = hbwatch::Table::create(options);
    const hbwatch::Registrant self{hbwatch::self_identity(), ::getuid(), 0, 1};
    const auto entries = static_cast<std::uint32_t>(std::uint64_t{kBigTable} * static_cast<unsigned>(percent) / 100);
    for (std::uint32_t i = 0; i < entries; ++i) table.claim("bench-entry", 30s, self);
    return tables[percent] = options;
}

// Register + release through the public API, with the table at a fill level.
void BM_RegisterRelease(benchmark::State& state) {
    const auto options = filled_table(static_cast<int>(state.range(0)));
    for (auto _ : state) {
        hbwatch::Heartbeat hb("bench-register", 30s, options);
        benchmark::DoNotOptimize(hb.slot());
    }
    state.SetLabel(std::to_string(state.range(0)) + "% of 65536 slots full");
}
BENCHMARK(BM_RegisterRelease)->Arg(0)->Arg(50)->Arg(90)->Unit(benchmark::kMicrosecond);

void BM_ReadFullTable(benchmark::State& state) {
    const auto options = keys.options(100, static_cast<std::uint32_t>(state.range(0)));
    hbwatch::Table::destroy(*options.key);
    hbwatch::Table table = hbwatch::Table::create(options);
    const hbwatch::Registrant self{hbwatch::self_identity(), ::getuid(), 0, 1};
    for (std::uint32_t i = 0; i < table.slot_count(); ++i) table.claim("bench-entry", 30s, self);
    for (auto _ : state) {
        std::uint64_t live = 0;
        table.for_each([&](const hbwatch::SlotSnapshot& s) { live += s.beats + 1; });
        benchmark::DoNotOptimize(live);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_ReadFullTable)->Arg(4096)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
