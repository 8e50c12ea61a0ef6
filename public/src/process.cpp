#include <hbwatch/process.h>

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <atomic>
#include <fstream>
#include <string_view>
#include <vector>

#include <hbwatch/error.h>

namespace hbwatch {
namespace {

// /proc/PID/stat is at most a few hundred bytes; one read() gives a consistent line.
std::optional<std::string> read_small_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    char buffer[1024];
    ssize_t n;
    do {
        n = ::read(fd, buffer, sizeof buffer);
    } while (n < 0 && errno == EINTR);
    ::close(fd);
    if (n <= 0) return std::nullopt;
    return std::string(buffer, static_cast<std::size_t>(n));
}

template <class T>
bool parse_number(std::string_view text, T& out) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && end == text.data() + text.size();
}

}  // namespace

std::optional<ProcStat> read_proc_stat(pid_t pid) {
    if (pid <= 0) return std::nullopt;
    auto line = read_small_file("/proc/" + std::to_string(pid) + "/stat");
    if (!line) return std::nullopt;
    // comm may hold spaces and ')', so it ends at the last ')'.
    const auto open = line->find('(');
    const auto close = line->rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) return std::nullopt;

    ProcStat stat;
    stat.pid = pid;
    stat.comm = line->substr(open + 1, close - open - 1);
    std::vector<std::string_view> fields;  // fields[0] is field 3 of proc(5), the state
    std::string_view rest(*line);
    rest.remove_prefix(close + 1);
    while (!rest.empty()) {
        const auto start = rest.find_first_not_of(" \n");
        if (start == std::string_view::npos) break;
        rest.remove_prefix(start);
        const auto stop = std::min(rest.find_first_of(" \n"), rest.size());
        fields.push_back(rest.substr(0, stop));
        rest.remove_prefix(stop);
    }
    auto field = [&](int number) { return fields[static_cast<std::size_t>(number - 3)]; };
    if (fields.size() < 22 || field(3).size() != 1) return std::nullopt;
    stat.state = field(3)[0];
    std::int64_t rss = 0;
    if (!parse_number(field(4), stat.ppid) || !parse_number(field(5), stat.pgrp) ||
        !parse_number(field(6), stat.session) || !parse_number(field(14), stat.utime_ticks) ||
        !parse_number(field(15), stat.stime_ticks) || !parse_number(field(22), stat.start_time) ||
        !parse_number(field(24), rss))
        return std::nullopt;
    stat.rss_pages = rss > 0 ? static_cast<std::uint64_t>(rss) : 0;
    return stat;
}

std::optional<ProcessIdentity> identity_of(pid_t pid) {
    auto stat = read_proc_stat(pid);
    if (!stat) return std::nullopt;
    return ProcessIdentity{pid, stat->start_time};
}

ProcessIdentity self_identity() {
    // A process's start time never changes, so /proc is read once per pid: a fork()ed child
    // has a new pid and reads its own. No mutex: one held by another thread at fork() would
    // stay locked in the child. Racing writers store the same values; the release on the pid
    // publishes the start time that belongs to it.
    static std::atomic<std::uint64_t> cached_start{0};
    static std::atomic<pid_t> cached_pid{0};
    const pid_t pid = ::getpid();
    if (cached_pid.load(std::memory_order_acquire) == pid) return {pid, cached_start.load(std::memory_order_relaxed)};
    auto self = identity_of(pid);
    if (!self)
        throw Error(ENOENT, "cannot read /proc/" + std::to_string(pid) +
                                "/stat: hbwatch needs /proc mounted to record the process start time");
    cached_start.store(self->start_time, std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
    return *self;
}

Liveness liveness(const ProcessIdentity& who) { return liveness(who, read_proc_stat(who.pid)); }

Liveness liveness(const ProcessIdentity& who, const std::optional<ProcStat>& stat) noexcept {
    if (!stat) return Liveness::gone;
    if (stat->start_time != who.start_time) return Liveness::reused;
    if (has_exited(*stat)) return Liveness::zombie;
    return Liveness::alive;
}

bool has_exited(const ProcStat& stat) noexcept { return stat.state == 'Z' || stat.state == 'X'; }

bool is_running(pid_t pid) {
    auto stat = read_proc_stat(pid);
    return stat && !has_exited(*stat);
}

std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> children;
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    DIR* dir = ::opendir(tasks.c_str());
    if (dir == nullptr) return children;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] == '.') continue;
        std::ifstream in(tasks + "/" + entry->d_name + "/children");
        pid_t child;
        while (in >> child) children.push_back(child);
    }
    ::closedir(dir);
    return children;
}

std::vector<pid_t> descendants_of(pid_t pid) {
    std::vector<pid_t> all = children_of(pid);
    for (std::size_t i = 0; i < all.size(); ++i) {
        for (pid_t grandchild : children_of(all[i])) all.push_back(grandchild);
    }
    return all;
}

const char* to_string(Liveness liveness) noexcept {
    switch (liveness) {
        case Liveness::alive: return "alive";
        case Liveness::gone: return "gone";
        case Liveness::reused: return "reused";
        case Liveness::zombie: return "zombie";
    }
    return "unknown";
}

}  // namespace hbwatch
