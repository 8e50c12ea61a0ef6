// An exec hook for the benchmarks: appends to FILE how long after its event it started, in
// microseconds (CLOCK_MONOTONIC now minus HBWATCH_MONOTONIC_NS), then sleeps SECONDS if given.
//     hook_latency FILE [SECONDS]
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const long long now = static_cast<long long>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
    const char* at = std::getenv("HBWATCH_MONOTONIC_NS");
    if (argc < 2 || at == nullptr) return 2;
    if (FILE* out = std::fopen(argv[1], "a")) {
        std::fprintf(out, "%lld\n", (now - std::atoll(at)) / 1000);
        std::fclose(out);
    }
    if (argc > 2) ::sleep(static_cast<unsigned>(std::atoi(argv[2])));
    return 0;
}
