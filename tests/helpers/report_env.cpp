// Reports what it inherited, one line: its SIGTERM disposition, its signal mask, and its open
// descriptors. Then exits 0.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main() {
    struct sigaction action {};
    sigaction(SIGTERM, nullptr, &action);
    const char* disposition = action.sa_handler == SIG_DFL ? "default" : action.sa_handler == SIG_IGN ? "ignored" : "handled";
    sigset_t mask;
    sigprocmask(SIG_BLOCK, nullptr, &mask);
    int blocked = 0;
    for (int sig = 1; sig < NSIG; ++sig) blocked += sigismember(&mask, sig) == 1;
    std::string fds;
    DIR* dir = opendir("/proc/self/fd");
    const int own = dirfd(dir);
    while (const dirent* entry = readdir(dir)) {
        if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == own) continue;
        fds += (fds.empty() ? "" : ",") + std::string(entry->d_name);
    }
    closedir(dir);
    std::printf("sigterm=%s blocked=%d fds=%s\n", disposition, blocked, fds.c_str());
    return 0;
}
