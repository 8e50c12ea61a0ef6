// Speed of the hot path and of the table, on a private segment. Run with `make bench`.
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <ctime>

#include <benchmark/benchmark.h>

#include <hbwatch/heartbeat.h>

using namespace std::chrono_literals;

namespace {

// A private key for this run, its segment removed at exit.
struct BenchKey {
    key_t key = static_cast<key_t>(0x48D00000u | (static_cast<unsigned>(::getpid()) & 0xFFFFFu));
    ~BenchKey() { hbwatch::Table::destroy(key); }
    hbwatch::TableOptions options(std::uint32_t slots = hbwatch::kDefaultSlots) const {
        hbwatch::TableOptions o;
        o.key = key;
        o.slots = slots;
        return o;
    }
};
BenchKey bench_key;

void BM_Beat(benchmark::State& state) {
    hbwatch::Heartbeat hb("bench-beat", 30s, bench_key.options());
    for (auto _ : state) benchmark::DoNotOptimize(hb.beat());
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

void BM_RegisterRelease(benchmark::State& state) {
    const auto options = bench_key.options();
    hbwatch::Heartbeat keep_mapped("bench-anchor", 30s, options);  // the table exists already
    for (auto _ : state) {
        hbwatch::Heartbeat hb("bench-register", 30s, options);
        benchmark::DoNotOptimize(hb.slot());
    }
}
BENCHMARK(BM_RegisterRelease);

void BM_ReadFullTable(benchmark::State& state) {
    hbwatch::TableOptions options = bench_key.options();
    options.key = bench_key.key + 1;
    options.slots = static_cast<std::uint32_t>(state.range(0));
    hbwatch::Table::destroy(*options.key);
    hbwatch::Table table = hbwatch::Table::create(options);
    const auto self = hbwatch::self_identity();
    for (std::uint32_t i = 0; i < table.slot_count(); ++i) table.claim("bench-entry", 30s, self, ::getuid());
    for (auto _ : state) {
        std::uint64_t live = 0;
        table.for_each([&](const hbwatch::SlotSnapshot& s) { live += s.beats + 1; });
        benchmark::DoNotOptimize(live);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
    hbwatch::Table::destroy(*options.key);
}
BENCHMARK(BM_ReadFullTable)->Arg(4096)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
