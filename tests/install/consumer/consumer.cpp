// A service outside the hbwatch tree: registers, beats, and checks the C API too.
#include <cstdio>

#include <hbwatch/hbwatch.h>
#include <hbwatch/heartbeat.h>

int main() {
    hbwatch::Heartbeat hb{"consumer", std::chrono::seconds(30)};
    if (hb.beat() != hbwatch::BeatStatus::ok) return 1;
    hbw_handle* h = nullptr;
    if (hbw_register("consumer-c", 30000, &h) != 0 || hbw_beat(h) != 0) return 1;
    hbw_unregister(h);
    std::printf("consumer registered in slot %u at key 0x%08x\n", hb.slot(), static_cast<unsigned>(hb.key()));
    return 0;
}
