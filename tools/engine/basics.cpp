#include "engine/basics.h"

#include <malloc.h>
#include <signal.h>
#include <sys/signalfd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <hbwatch/error.h>

namespace hbwatch::tool {

int signalfd_for(std::initializer_list<int> signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals) sigaddset(&set, s);
    if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) throw Error(errno, std::string("sigprocmask: ") + std::strerror(errno));
    const int fd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) throw Error(errno, std::string("signalfd: ") + std::strerror(errno));
    return fd;
}

void ignore_sigpipe() { ::signal(SIGPIPE, SIG_IGN); }

void one_malloc_arena() { ::mallopt(M_ARENA_MAX, 1); }

}  // namespace hbwatch::tool
