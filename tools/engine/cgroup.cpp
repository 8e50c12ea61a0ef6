#include "engine/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "core/process.h"

namespace hbwatch::tool {
namespace {

// The cgroup2 mount point, from /proc/self/mountinfo ("... MOUNTPOINT ... - cgroup2 ...").
std::optional<std::string> cgroup2_mount() {
    auto text = read_proc_file("/proc/self/mountinfo");
    if (!text) return std::nullopt;
    for (std::size_t at = 0; at < text->size();) {
        const std::size_t end = std::min(text->find('\n', at), text->size());
        const std::string_view line = std::string_view(*text).substr(at, end - at);
        at = end + 1;
        const auto dash = line.find(" - ");
        if (dash == std::string_view::npos || line.substr(dash + 3, 8) != "cgroup2 ") continue;
        // The fifth field: ID PARENT DEVICE ROOT MOUNT (no field holds a blank: the kernel
        // writes one in a path as \040).
        std::size_t field = 0;
        for (int skip = 0; skip < 4 && field != std::string_view::npos; ++skip) {
            field = line.find(' ', field);
            if (field != std::string_view::npos) ++field;
        }
        if (field == std::string_view::npos || field >= dash) continue;
        return std::string(line.substr(field, line.find(' ', field) - field));
    }
    return std::nullopt;
}

// procctl's own cgroup in the v2 hierarchy ("0::/path" in /proc/self/cgroup).
std::string own_cgroup() {
    auto text = read_proc_file("/proc/self/cgroup");
    if (!text) return "/";
    const auto at = text->find("0::");
    if (at == std::string::npos) return "/";
    return text->substr(at + 3, text->find('\n', at) - at - 3);
}

bool populated_at(int dir_fd) {
    const int fd = ::openat(dir_fd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;  // cannot tell: keep it
    char text[256];
    const ssize_t n = ::read(fd, text, sizeof text - 1);
    ::close(fd);
    if (n <= 0) return true;
    text[n] = '\0';
    return std::strstr(text, "populated 1") != nullptr;
}

// Removes the empty cgroups in `parent` that no procctl holds: those of procctls that were
// SIGKILLed and never succeeded by one of the same name. A populated one is left for its
// successor, which kills what is in it before starting anything.
void remove_abandoned(const std::string& parent) {
    DIR* dir = ::opendir(parent.c_str());
    if (dir == nullptr) return;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_type != DT_DIR || entry->d_name[0] == '.') continue;
        const int fd = ::openat(::dirfd(dir), entry->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) continue;
        // Removed under our lock, as a holder does: a taker that raced us sees the name gone.
        if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && !populated_at(fd)) ::unlinkat(::dirfd(dir), entry->d_name, AT_REMOVEDIR);
        ::close(fd);
    }
    ::closedir(dir);
}

}  // namespace

std::optional<Cgroup> Cgroup::take(const std::string& name, std::string* why) {
    auto fail = [&](const std::string& reason) -> std::optional<Cgroup> {
        if (why) *why = reason;
        return std::nullopt;
    };
    const auto mount = cgroup2_mount();
    if (!mount) return fail("no cgroup v2 hierarchy is mounted");
    std::string parent = *mount + own_cgroup();
    while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
    parent += "/hbwatch";  // every procctl's cgroup in one place, beside procctl's own
    remove_abandoned(parent);
    int vanished = 0;
    for (int n = 1; n <= 100; ++n) {
        Cgroup group;
        group.path_ = parent + "/" + name;
        group.parent_ = parent;
        if (n > 1) group.path_.append(".").append(std::to_string(n));
        // The parent too, each time: the last procctl to leave removes it.
        if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST)
            return fail("cannot create " + parent + ": " + std::strerror(errno));
        group.created_ = ::mkdir(group.path_.c_str(), 0755) == 0;
        if (!group.created_ && errno != EEXIST) {
            if (errno == ENOENT && ++vanished <= 100) {  // the parent was removed meanwhile
                --n;
                continue;
            }
            return fail("cannot create " + group.path_ + ": " + std::strerror(errno));
        }
        group.dir_fd_ = ::open(group.path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (group.dir_fd_ < 0) return fail("cannot open " + group.path_ + ": " + std::strerror(errno));
        if (::flock(group.dir_fd_, LOCK_EX | LOCK_NB) != 0) continue;  // a running procctl's: try the next
        // The previous holder removes an empty cgroup before it lets go of the lock: the
        // directory locked may be gone from its name. Then make it again.
        struct stat held {}, named {};
        if (::fstat(group.dir_fd_, &held) != 0 || ::stat(group.path_.c_str(), &named) != 0 || held.st_ino != named.st_ino) {
            if (++vanished > 100) return fail(group.path_ + " keeps disappearing");
            --n;
            continue;
        }
        group.held_ = true;
        group.procs_fd_ = ::openat(group.dir_fd_, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        group.events_fd_ = ::openat(group.dir_fd_, "cgroup.events", O_RDONLY | O_CLOEXEC);
        if (group.procs_fd_ < 0 || group.events_fd_ < 0)
            return fail("cannot open the control files of " + group.path_ + ": " + std::strerror(errno));
        return group;
    }
    return fail("100 procctls already hold cgroups named " + name);
}

Cgroup::Cgroup(Cgroup&& other) noexcept
    : path_(std::move(other.path_)),
      parent_(std::move(other.parent_)),
      held_(std::exchange(other.held_, false)),
      created_(other.created_),
      killed_(other.killed_),
      dir_fd_(std::exchange(other.dir_fd_, -1)),
      procs_fd_(std::exchange(other.procs_fd_, -1)),
      events_fd_(std::exchange(other.events_fd_, -1)) {}

Cgroup::~Cgroup() {
    if (dir_fd_ < 0) return;
    // Only the holder removes it, and before letting go of the lock (closing dir_fd_). What
    // cgroup.kill struck may take a moment to leave: wait for that, briefly.
    if (held_) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        while (populated() && std::chrono::steady_clock::now() < deadline) {
            pollfd p{events_fd_, POLLPRI, 0};
            (void)::poll(&p, 1, 50);
        }
        if (!populated()) ::rmdir(path_.c_str());
    }
    for (int fd : {procs_fd_, events_fd_, dir_fd_})
        if (fd >= 0) ::close(fd);
    if (held_) ::rmdir(parent_.c_str());  // fails, as it should, while another procctl's cgroup is in it
}

bool Cgroup::populated() const {
    char text[256];
    const ssize_t n = ::pread(events_fd_, text, sizeof text - 1, 0);
    if (n <= 0) return false;
    text[n] = '\0';
    return std::strstr(text, "populated 1") != nullptr;
}

std::vector<pid_t> Cgroup::pids() const {
    std::vector<pid_t> pids;
    auto text = read_proc_file(path_ + "/cgroup.procs");
    if (!text) return pids;
    for (const auto pid : whole_numbers(*text))
        if (pid > 0 && pid <= std::numeric_limits<pid_t>::max()) pids.push_back(static_cast<pid_t>(pid));
    return pids;
}

bool Cgroup::kill() {
    killed_ = true;  // even a failed write may have reached the kernel: clone into it no more
    const int fd = ::openat(dir_fd_, "cgroup.kill", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool done = ::write(fd, "1", 1) == 1;
    ::close(fd);
    return done;
}

}  // namespace hbwatch::tool
