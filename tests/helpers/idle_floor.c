/* The smallest dynamically linked program that stays: it only waits. bench_peers measures its
 * memory as the floor every supervisor linked against the shared libc stands on. */
#include <unistd.h>

int main(void) {
    for (;;) pause();
}
