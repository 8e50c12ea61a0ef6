#include <hbwatch/hbwatch.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include <hbwatch/heartbeat.h>

struct hbw_handle {
    hbwatch::Heartbeat heartbeat;
};

namespace {
thread_local std::string last_error;

int fail(int code, const char* message) {
    last_error = message;
    return -code;
}
}  // namespace

extern "C" {

int hbw_register(const char* name, unsigned timeout_ms, hbw_handle** out) {
    if (out == nullptr) return fail(EINVAL, "hbw_register: out is NULL");
    *out = nullptr;
    if (name == nullptr) return fail(EINVAL, "hbw_register: name is NULL");
    try {
        *out = new hbw_handle{hbwatch::Heartbeat(name, std::chrono::milliseconds(timeout_ms))};
        last_error.clear();
        return 0;
    } catch (const hbwatch::Error& e) {
        return fail(e.code() > 0 ? e.code() : EIO, e.what());
    } catch (const std::bad_alloc&) {
        return fail(ENOMEM, "hbw_register: out of memory");
    } catch (const std::exception& e) {
        return fail(EIO, e.what());
    }
}

int hbw_beat(hbw_handle* h) {
    if (h == nullptr) return -EINVAL;
    switch (h->heartbeat.beat()) {
        case hbwatch::BeatStatus::ok: return 0;
        case hbwatch::BeatStatus::forked: return -ECHILD;
        case hbwatch::BeatStatus::lost: return -ESTALE;
        case hbwatch::BeatStatus::inactive: return -EINVAL;
    }
    return -EINVAL;
}

void hbw_unregister(hbw_handle* h) { delete h; }

const char* hbw_strerror(int code) {
    switch (code < 0 ? -code : code) {
        case 0: return "success";
        case EINVAL: return "invalid argument: a NULL pointer, a bad name or a timeout out of range";
        case ENOSPC: return "the heartbeat table is full";
        case EACCES: return "no permission on the heartbeat table";
        case EPROTO: return "the shared-memory segment at the key is not an hbwatch table of this version";
        case ESTALE: return "the slot no longer holds this registration: register again";
        case ECHILD: return "called in a fork()ed child: the parent's registration is left alone";
        case ENOMEM: return "out of memory";
        default: {
            const char* text = strerrordesc_np(code < 0 ? -code : code);
            return text != nullptr ? text : "unknown error";
        }
    }
}

const char* hbw_last_error(void) { return last_error.c_str(); }

}  // extern "C"
