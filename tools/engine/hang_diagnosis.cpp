#include "engine/hang_diagnosis.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <vector>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/process.h"
#include "engine/safe_path.h"

extern char** environ;

namespace hbwatch::tool {
namespace {

constexpr std::size_t kMaxThreads = 256;         // threads written about; the rest are counted
constexpr std::size_t kMaxUserStackBytes = 1 << 20;
constexpr const char* kPrefix = "diagnosis-";  // only files so named are ever removed
constexpr std::size_t kPrefixLength = 10;
constexpr std::size_t kStampLength = 20;       // 20261206T125508.219Z

std::string file_name_part(const std::string& name) {
    std::string part;
    for (char c : name.substr(0, 64)) part += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_') ? c : '_';
    return part.empty() ? "unnamed" : part;
}

std::string utc_stamp() {
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    tm parts{};
    ::gmtime_r(&now.tv_sec, &parts);
    char text[64];
    const std::size_t length = std::strftime(text, sizeof text, "%Y%m%dT%H%M%S", &parts);
    std::snprintf(text + length, sizeof text - length, ".%03dZ", static_cast<int>(now.tv_nsec / 1'000'000) % 1000);
    return text;
}

std::string trimmed(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
}

// eu-stack -p PID (Debian's, by its path, with a bare environment: no PATH lookup and no
// debuginfod fetches as root), killed at `bound`. It stops the process while it reads its
// stacks; once it is gone, a process it was cut short on is sent SIGCONT through its pidfd, in
// case the attach left it stopped, unless it was stopped before (by someone else: never ours to
// resume). A killed eu-stack that does not die within kUserStackReapWait is left behind.
std::string user_stacks(const Pidfd& target, std::chrono::milliseconds bound) {
    constexpr const char* kEuStack = "/usr/bin/eu-stack";
    const auto before = read_proc_stat(target.pid());
    const bool stopped_before = before && (before->state == 'T' || before->state == 't');
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return "(eu-stack not run: no pipe)\n";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    const std::string pid_text = std::to_string(target.pid());
    char arg0[] = "eu-stack", arg1[] = "-p";
    std::vector<char> arg2(pid_text.begin(), pid_text.end());
    arg2.push_back('\0');
    char* argv[] = {arg0, arg1, arg2.data(), nullptr};
    char env_path[] = "PATH=/usr/bin:/bin", env_lang[] = "LC_ALL=C";
    char* envp[] = {env_path, env_lang, nullptr};
    pid_t child = 0;
    const int spawned = ::posix_spawn(&child, kEuStack, &actions, nullptr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (spawned != 0) {
        ::close(out[0]);
        return std::string("(eu-stack not run: ") + std::strerror(spawned) + "; install elfutils)\n";
    }
    const int child_fd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
    std::string text;
    const std::uint64_t deadline = monotonic_now_ns() + static_cast<std::uint64_t>(bound.count()) * 1'000'000ull;
    bool cut = false;
    for (;;) {
        const std::uint64_t now = monotonic_now_ns();
        if (now >= deadline) {
            cut = true;
            break;
        }
        pollfd p{out[0], POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>((deadline - now) / 1'000'000 + 1));
        if (ready <= 0) continue;
        char buffer[8192];
        const ssize_t n = ::read(out[0], buffer, sizeof buffer);
        if (n <= 0) break;
        if (text.size() < kMaxUserStackBytes) text.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    if (cut) {
        ::kill(child, SIGKILL);  // our unreaped child: its pid is its own
        text += "\n(eu-stack cut short after " + std::to_string(bound.count()) + " ms)\n";
    }
    pollfd gone{child_fd, POLLIN, 0};
    const bool ended = child_fd < 0 || ::poll(&gone, 1, static_cast<int>(kUserStackReapWait.count())) == 1;
    if (child_fd >= 0) ::close(child_fd);
    int status = 0;
    if (ended) {
        while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
    } else {
        text += "(eu-stack did not end within " + std::to_string(kUserStackReapWait.count()) + " ms of SIGKILL: left behind)\n";
    }
    if (cut && !stopped_before) (void)target.send(SIGCONT);
    return text;
}

void remove_oldest(int dir_fd, std::size_t keep) {
    const int copy = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // dir_fd is O_PATH: not listable
    if (copy < 0) return;
    DIR* dir = ::fdopendir(copy);
    if (dir == nullptr) {
        ::close(copy);
        return;
    }
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name.rfind(kPrefix, 0) == 0 && name.size() > kPrefixLength + kStampLength && name.compare(name.size() - 4, 4, ".txt") == 0)
            names.push_back(name);
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());  // named by UTC time first: oldest first
    for (std::size_t i = 0; i + keep < names.size(); ++i) ::unlinkat(dir_fd, names[i].c_str(), 0);
}

// mkdir -p: the parents 0755, the directory itself 0700 (what a hung process had in its
// memory may be in its stacks). Each directory is made inside its parent as opened by
// open_safe_directory, so nothing is ever made through a link or a directory another user
// could swap (a root checkproc or procctl given a path under another user's directory);
// what exists is left as it is, and open_safe_directory judges it after.
void make_directories(const std::string& path) {
    for (std::size_t at = 1; at <= path.size(); ++at) {
        if (at < path.size() && path[at] != '/') continue;
        const std::string prefix = path.substr(0, at);
        if (prefix.back() == '/') continue;  // a doubled slash
        const SafeDirectory parent = open_safe_directory(prefix);
        if (::mkdirat(parent.fd, parent.name.c_str(), at == path.size() ? 0700 : 0755) != 0 && errno != EEXIST)
            throw Error(errno, "cannot make the diagnosis directory " + prefix + ": " + std::strerror(errno) + "; give --diagnoses DIR");
    }
}

}  // namespace

std::string kept_text(const Diagnosis& diagnosis) {
    if (!diagnosis.path.empty()) return "; diagnosis in " + diagnosis.path;
    return diagnosis.error.empty() ? "" : "; no diagnosis kept: " + diagnosis.error;
}

std::optional<DiagnoseLevel> parse_diagnose_level(const std::string& text) {
    if (text == "none") return DiagnoseLevel::none;
    if (text == "kernel") return DiagnoseLevel::kernel;
    if (text == "user") return DiagnoseLevel::user;
    return std::nullopt;
}

std::string default_diagnosis_directory() {
    if (const char* chosen = std::getenv("HBWATCH_DIAGNOSES"); chosen != nullptr && chosen[0] == '/') return chosen;
    if (::geteuid() == 0) return "/var/lib/hbwatch/diagnoses";
    if (const char* state = std::getenv("XDG_STATE_HOME"); state != nullptr && state[0] == '/') return std::string(state) + "/hbwatch/diagnoses";
    const char* home = std::getenv("HOME");
    if (home == nullptr || home[0] != '/') {
        const passwd* pw = ::getpwuid(::geteuid());
        home = pw != nullptr ? pw->pw_dir : "/tmp";
    }
    return std::string(home) + "/.local/state/hbwatch/diagnoses";
}

Diagnosis write_diagnosis(const DiagnosisOptions& options, const Pidfd& target, const std::string& name, const std::string& why) {
    const pid_t pid = target.pid();
    Diagnosis result;
    if (options.level == DiagnoseLevel::none) return result;
    if (options.directory.empty() || options.directory.front() != '/') {
        result.error = "no diagnosis directory given (an absolute --diagnoses DIR)";
        return result;
    }
    const std::uint64_t began = monotonic_now_ns();
    // The report, read before anything is written: /proc first, while the process is as it was.
    std::string text = "hbwatch diagnosis of pid " + std::to_string(pid) + " '" + name + "' at " + utc_stamp() + "\nwhy: " + why + "\n";
    const std::string base = "/proc/" + std::to_string(pid);
    if (const auto stat = read_proc_stat(pid)) text += "command: " + stat->comm + "\n";
    // Not its cmdline: that read takes the process's mmap lock, which a hung process may hold.
    std::vector<pid_t> tids;
    if (DIR* tasks = ::opendir((base + "/task").c_str())) {
        while (const dirent* entry = ::readdir(tasks)) {
            pid_t tid = 0;
            const char* end = entry->d_name + std::strlen(entry->d_name);
            if (std::from_chars(entry->d_name, end, tid).ec == std::errc() && tid > 0) tids.push_back(tid);
        }
        ::closedir(tasks);
    }
    std::sort(tids.begin(), tids.end());
    text += "threads: " + std::to_string(tids.size()) + "\n";
    for (std::size_t i = 0; i < tids.size() && i < kMaxThreads; ++i) {
        const std::string task = base + "/task/" + std::to_string(tids[i]);
        const auto stat = read_task_stat(pid, tids[i]);
        text += "\n--- thread " + std::to_string(tids[i]) + (stat ? " (" + stat->comm + ") state " + std::string(1, stat->state) : std::string(" (gone)")) + "\n";
        text += "wchan: " + trimmed(read_proc_file(task + "/wchan").value_or("?")) + "\n";
        text += "syscall: " + trimmed(read_proc_file(task + "/syscall").value_or("? (not readable)")) + "\n";
        const auto stack = read_proc_file(task + "/stack");
        text += "kernel stack:\n" + (stack && !stack->empty() ? *stack : std::string("  (not readable: needs root)\n"));
    }
    if (tids.size() > kMaxThreads) text += "\n(" + std::to_string(tids.size() - kMaxThreads) + " more threads not shown)\n";
    if (options.level == DiagnoseLevel::user) text += "\n--- user-space stacks (eu-stack)\n" + user_stacks(target, options.user_bound);
    try {
        make_directories(options.directory);
        const SafeDirectory dir = open_safe_directory(options.directory + "/.");
        std::string file = kPrefix;  // built in steps: g++ 12 warns falsely on "-" + std::to_string
        file.append(utc_stamp()).append(1, '-').append(file_name_part(name)).append(1, '-').append(std::to_string(pid)).append(".txt");
        const int fd = ::openat(dir.fd, file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
        if (fd < 0) throw Error(errno, "cannot create " + options.directory + "/" + file + ": " + std::strerror(errno));
        const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
        const int error = errno;
        ::close(fd);
        if (!written) ::unlinkat(dir.fd, file.c_str(), 0);  // no half a diagnosis (a full disk)
        if (!written) throw Error(error, "cannot write " + options.directory + "/" + file + ": " + std::strerror(error));
        result.path = options.directory + "/" + file;
        if (options.keep > 0) remove_oldest(dir.fd, options.keep);
    } catch (const std::exception& e) {
        result.error = e.what();
    }
    result.took = std::chrono::microseconds((monotonic_now_ns() - began) / 1000);
    return result;
}

std::optional<std::string> last_diagnosis(const std::string& directory, const std::string& name) {
    // diagnosis-STAMP-NAME-PID.txt: NAME exactly (a name may hold '-' itself).
    const std::string wanted = file_name_part(name);
    std::string newest;
    if (DIR* dir = ::opendir(directory.c_str())) {
        while (const dirent* entry = ::readdir(dir)) {
            const std::string file = entry->d_name;
            if (file.rfind(kPrefix, 0) != 0 || file.size() <= kPrefixLength + kStampLength + 1 + 4 ||
                file.compare(file.size() - 4, 4, ".txt") != 0)
                continue;
            const std::string rest = file.substr(kPrefixLength + kStampLength + 1, file.size() - kPrefixLength - kStampLength - 1 - 4);
            const auto dash = rest.rfind('-');
            if (dash == std::string::npos || rest.substr(0, dash) != wanted) continue;
            if (file > newest) newest = file;
        }
        ::closedir(dir);
    }
    if (newest.empty()) return std::nullopt;
    return directory + "/" + newest;
}

}  // namespace hbwatch::tool
