/* The hbwatch C API, for C and for anything with an FFI.
 *
 *     hbw_handle *hb;
 *     int rc = hbw_register("order-svc", 30000, &hb);
 *     if (rc < 0) { fprintf(stderr, "%s\n", hbw_last_error()); exit(1); }
 *     for (;;) { serve_one(); hbw_beat(hb); }
 *     hbw_unregister(hb);
 *
 * Return contract, as sd_notify: 0 on success, a negative errno on failure. The table key
 * comes from HBWATCH_KEY (hex or decimal), else the default 0x48425754. */
#ifndef HBWATCH_HBWATCH_H
#define HBWATCH_HBWATCH_H

#include <hbwatch/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hbw_handle hbw_handle;

/* Registers the calling process under `name` (1-47 of [A-Za-z0-9._:@+/-]) with a timeout of
 * 100 ms to 7 days. Returns 0 and sets *out, or: -EINVAL (bad argument), -ENOSPC (table full),
 * -EACCES (no permission on the table), -EPROTO (a foreign segment holds the key), -ENOMEM.
 * hbw_last_error() then gives the whole message, with the key and what to do. */
HBWATCH_API int hbw_register(const char *name, unsigned timeout_ms, hbw_handle **out);

/* The hot path: no syscall, no lock, no allocation. Returns 0, or -ESTALE when the slot no
 * longer holds this registration (register again), -ECHILD in a fork()ed child (the parent's
 * slot is left alone), -EINVAL for a NULL handle. Ignoring the result is fine. */
HBWATCH_API int hbw_beat(hbw_handle *h);

/* Frees the slot and the handle. NULL is a no-op. In a fork()ed child only the handle is freed. */
HBWATCH_API void hbw_unregister(hbw_handle *h);

/* A short, static description of a code returned above (either sign). */
HBWATCH_API const char *hbw_strerror(int code);

/* The full message of this thread's last failed hbw_register, or "" when there is none. */
HBWATCH_API const char *hbw_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* HBWATCH_HBWATCH_H */
