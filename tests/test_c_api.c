/* The C API from plain C: the header compiles as C and the return contract holds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <hbwatch/hbwatch.h>

static int failures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                     \
        }                                                                   \
    } while (0)

int main(void) {
    char key[32];
    snprintf(key, sizeof key, "0x%08x", 0x48C00000u | ((unsigned)getpid() & 0xFFFFFu));
    setenv("HBWATCH_KEY", key, 1);

    hbw_handle *hb = NULL;
    EXPECT(hbw_register("c-svc", 5000, &hb) == 0);
    EXPECT(hb != NULL);
    EXPECT(strcmp(hbw_last_error(), "") == 0);
    for (int i = 0; i < 1000; ++i) EXPECT(hbw_beat(hb) == 0);

    hbw_handle *bad = (hbw_handle *)0x1;
    EXPECT(hbw_register("no spaces", 5000, &bad) == -EINVAL);
    EXPECT(bad == NULL);
    EXPECT(strcmp(hbw_last_error(), "heartbeat name 'no spaces' has a bad character at byte 2: use 1 to 47 letters, "
                                    "digits or . _ - : @ + /") == 0);
    EXPECT(hbw_register("svc", 10, &bad) == -EINVAL);
    EXPECT(strstr(hbw_last_error(), "timeout 10ms is out of range") != NULL);
    EXPECT(hbw_register(NULL, 5000, &bad) == -EINVAL);
    EXPECT(hbw_register("svc", 5000, NULL) == -EINVAL);
    EXPECT(hbw_beat(NULL) == -EINVAL);
    EXPECT(strcmp(hbw_strerror(-ENOSPC), "the heartbeat table is full") == 0);
    EXPECT(strcmp(hbw_strerror(-ESTALE), "the slot no longer holds this registration: register again") == 0);
    EXPECT(strlen(hbw_strerror(-ENOENT)) > 0);

    hbw_unregister(hb);
    hbw_unregister(NULL);

    /* A foreign segment at the key is refused with -EPROTO and a message naming the key. */
    int id = shmget(0x48C00000 | (getpid() & 0xFFFFF), 0, 0);
    if (id >= 0) shmctl(id, IPC_RMID, NULL);
    id = shmget(0x48C00000 | (getpid() & 0xFFFFF), 4096, IPC_CREAT | IPC_EXCL | 0600);
    EXPECT(id >= 0);
    char *base = shmat(id, NULL, 0);
    memset(base, 0x5a, 4096);
    shmdt(base);
    EXPECT(hbw_register("c-svc", 5000, &hb) == -EPROTO);
    EXPECT(strstr(hbw_last_error(), key) != NULL);
    shmctl(id, IPC_RMID, NULL);

    if (failures) fprintf(stderr, "%d expectations failed\n", failures);
    return failures == 0 ? 0 : 1;
}
