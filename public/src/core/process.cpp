#include "core/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include <hbwatch/error.h>
#include "core/pidfd.h"

namespace hbwatch {
namespace {

template <class T>
bool parse_number(std::string_view text, T& out) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && end == text.data() + text.size();
}

constexpr std::uint32_t kPfKthread = 0x00200000;  // PF_KTHREAD, include/linux/sched.h

}  // namespace

std::optional<std::string> read_proc_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    std::string text;
    char buffer[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return text;
}

std::vector<std::uint64_t> whole_numbers(std::string_view text) {
    std::vector<std::uint64_t> numbers;
    std::size_t at = 0;
    for (;;) {
        at = text.find_first_not_of(" \t\n", at);
        if (at == std::string_view::npos) break;
        const std::size_t end = std::min(text.find_first_of(" \t\n", at), text.size());
        std::uint64_t number = 0;
        if (!parse_number(text.substr(at, end - at), number)) break;
        numbers.push_back(number);
        at = end;
    }
    return numbers;
}

std::vector<std::string_view> lines_of(std::string_view text) {
    std::vector<std::string_view> lines;
    while (!text.empty()) {
        const std::size_t end = std::min(text.find('\n'), text.size());
        lines.push_back(text.substr(0, end));
        text.remove_prefix(std::min(end + 1, text.size()));
    }
    return lines;
}

std::vector<std::string_view> leading_words(std::string_view line, std::size_t count) {
    std::vector<std::string_view> words;
    constexpr std::string_view kBlanks = " \t";
    for (;;) {
        const std::size_t at = line.find_first_not_of(kBlanks);
        if (at == std::string_view::npos) break;
        line.remove_prefix(at);
        if (words.size() == count) {
            words.push_back(line);
            break;
        }
        const std::size_t end = std::min(line.find_first_of(kBlanks), line.size());
        words.push_back(line.substr(0, end));
        line.remove_prefix(end);
    }
    return words;
}

bool same_process(const ProcessIdentity& recorded, const ProcessIdentity& observed) noexcept {
    if (recorded.pid != observed.pid || recorded.start_time != observed.start_time) return false;
    return recorded.pidfs_inode == 0 || observed.pidfs_inode == 0 || recorded.pidfs_inode == observed.pidfs_inode;
}

namespace {
// /proc/PID/stat or /proc/PID/task/TID/stat: one read() gives a consistent line of a few
// hundred bytes.
std::optional<ProcStat> read_stat_file(const std::string& path, pid_t pid) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    char buffer[1024];
    ssize_t n;
    do {
        n = ::read(fd, buffer, sizeof buffer);
    } while (n < 0 && errno == EINTR);
    ::close(fd);
    if (n <= 0) return std::nullopt;
    const std::string_view line(buffer, static_cast<std::size_t>(n));
    // comm may hold spaces and ')', so it ends at the last ')'.
    const auto open = line.find('(');
    const auto close = line.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return std::nullopt;

    ProcStat stat;
    stat.pid = pid;
    stat.comm = std::string(line.substr(open + 1, close - open - 1));
    std::string_view fields[40];  // fields[0] is field 3 of proc(5), the state; up to field 42
    std::size_t count = 0;
    std::string_view rest = line.substr(close + 1);
    while (!rest.empty() && count < std::size(fields)) {
        const auto start = rest.find_first_not_of(" \n");
        if (start == std::string_view::npos) break;
        rest.remove_prefix(start);
        const auto stop = std::min(rest.find_first_of(" \n"), rest.size());
        fields[count++] = rest.substr(0, stop);
        rest.remove_prefix(stop);
    }
    auto field = [&](int number) { return fields[static_cast<std::size_t>(number - 3)]; };
    if (count < 26 || field(3).size() != 1) return std::nullopt;  // field 28 at least
    stat.state = field(3)[0];
    std::int64_t rss = 0;
    if (!parse_number(field(4), stat.ppid) || !parse_number(field(5), stat.pgrp) ||
        !parse_number(field(6), stat.session) || !parse_number(field(9), stat.flags) ||
        !parse_number(field(14), stat.utime_ticks) || !parse_number(field(15), stat.stime_ticks) ||
        !parse_number(field(22), stat.start_time) || !parse_number(field(24), rss) ||
        !parse_number(field(28), stat.start_stack))
        return std::nullopt;
    stat.rss_pages = rss > 0 ? static_cast<std::uint64_t>(rss) : 0;
    if (count >= 40) (void)parse_number(field(42), stat.blkio_ticks);
    return stat;
}
}  // namespace

std::optional<ProcStat> read_proc_stat(pid_t pid) {
    if (pid <= 0) return std::nullopt;
    return read_stat_file("/proc/" + std::to_string(pid) + "/stat", pid);
}

std::optional<ProcStat> read_task_stat(pid_t pid, pid_t tid) {
    if (pid <= 0 || tid <= 0) return std::nullopt;
    return read_stat_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat", tid);
}

bool is_kernel_thread(const ProcStat& stat) noexcept { return (stat.flags & kPfKthread) != 0 || stat.pid == 2; }

std::optional<ProcessUids> read_uids(pid_t pid) {
    if (pid <= 0) return std::nullopt;
    auto status = read_proc_file("/proc/" + std::to_string(pid) + "/status");
    if (!status) return std::nullopt;
    const auto at = status->find("\nUid:");
    if (at == std::string::npos) return std::nullopt;
    // "Uid:\treal\teffective\tsaved\tfs"
    const auto numbers = whole_numbers(std::string_view(*status).substr(at + 5, status->find('\n', at + 1) - at - 5));
    if (numbers.size() < 3) return std::nullopt;
    return ProcessUids{static_cast<uid_t>(numbers[0]), static_cast<uid_t>(numbers[1]), static_cast<uid_t>(numbers[2])};
}

bool user_may_signal(uid_t user, const ProcessUids& target) noexcept {
    return user == 0 || user == target.real || user == target.saved;
}

std::optional<ProcessIdentity> identity_of(pid_t pid) {
    auto stat = read_proc_stat(pid);
    if (!stat) return std::nullopt;
    return ProcessIdentity{pid, stat->start_time, 0};
}

ProcessIdentity self_identity() {
    // A process's identity never changes, so it is read once per pid: a fork()ed child has a
    // new pid and reads its own. No mutex: one held by another thread at fork() would stay
    // locked in the child. Racing writers store the same values; the release on the pid
    // publishes the fields that belong to it.
    static std::atomic<std::uint64_t> cached_start{0};
    static std::atomic<std::uint64_t> cached_inode{0};
    static std::atomic<pid_t> cached_pid{0};
    const pid_t pid = ::getpid();
    if (cached_pid.load(std::memory_order_acquire) == pid)
        return {pid, cached_start.load(std::memory_order_relaxed), cached_inode.load(std::memory_order_relaxed)};
    auto self = identity_of(pid);
    if (!self)
        throw Error(ENOENT, "cannot read /proc/" + std::to_string(pid) +
                                "/stat: hbwatch needs /proc mounted to record the process start time");
    if (auto pidfd = Pidfd::open_pid(pid)) self->pidfs_inode = pidfd->pidfs_inode();
    cached_start.store(self->start_time, std::memory_order_relaxed);
    cached_inode.store(self->pidfs_inode, std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
    return *self;
}

Liveness liveness(const ProcessIdentity& who) { return liveness(who, read_proc_stat(who.pid)); }

namespace {
// The threads of `pid` that have not exited, from /proc/PID/status; nullopt when unreadable.
// An exited process still counts its main thread: 1.
std::optional<long> thread_count(pid_t pid) {
    const auto status = read_proc_file("/proc/" + std::to_string(pid) + "/status");
    if (!status) return std::nullopt;
    const auto at = status->find("\nThreads:");
    if (at == std::string::npos) return std::nullopt;
    return std::strtol(status->c_str() + at + 9, nullptr, 10);
}
}  // namespace

Liveness liveness(const ProcessIdentity& who, const std::optional<ProcStat>& stat) {
    if (!stat) {
        // Not readable is not gone: hidepid hides other users' processes. Signal 0 sends
        // nothing and tells whether any process holds the pid.
        if (who.pid > 1 && ::kill(who.pid, 0) != 0 && errno == ESRCH) return Liveness::gone;
        return who.pid > 1 ? Liveness::alive : Liveness::gone;
    }
    if (stat->start_time != who.start_time) return Liveness::reused;
    if (has_exited(*stat)) {
        const auto threads = thread_count(who.pid);
        if (threads && *threads > 1) return Liveness::alive;  // the main thread exited, others run
        return Liveness::zombie;
    }
    return Liveness::alive;
}

bool has_exited(const ProcStat& stat) noexcept { return stat.state == 'Z' || stat.state == 'X'; }

bool is_running(pid_t pid) {
    if (pid <= 0) return false;
    auto stat = read_proc_stat(pid);
    if (!stat) return ::kill(pid, 0) == 0 || errno != ESRCH;  // hidden by hidepid is not gone
    if (!has_exited(*stat)) return true;
    const auto threads = thread_count(pid);
    return threads && *threads > 1;
}

std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> children;
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    DIR* dir = ::opendir(tasks.c_str());
    if (dir == nullptr) return children;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] == '.') continue;
        const auto text = read_proc_file(tasks + "/" + entry->d_name + "/children");
        if (!text) continue;
        for (const auto child : whole_numbers(*text))
            if (child > 0 && child <= std::numeric_limits<pid_t>::max()) children.push_back(static_cast<pid_t>(child));
    }
    ::closedir(dir);
    return children;
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
