// A service outside the hbwatch tree: registers, beats, and checks the C API too.
#include <cerrno>
#include <cstdio>

#include <hbwatch/hbwatch.h>
#include <hbwatch/heartbeat.h>

int main() {
    hbwatch::Heartbeat hb{"consumer", std::chrono::seconds(30)};
    if (hb.beat() != hbwatch::BeatStatus::ok) return 1;
    hbw_handle* h = nullptr;
    if (hbw_register("consumer-c", 30000, &h) != 0 || hbw_beat(h) != 0) return 1;
    hbw_unregister(h);
    try {  // the library's exception type crosses from libhbwatch into the service
        hbwatch::Heartbeat bad{"", std::chrono::seconds(30)};
        return 1;
    } catch (const hbwatch::Error& e) {
        if (e.code() != EINVAL) return 1;
    }
    std::printf("consumer registered in slot %u at key 0x%08x\n", hb.slot(), static_cast<unsigned>(hb.key()));
    return 0;
}
