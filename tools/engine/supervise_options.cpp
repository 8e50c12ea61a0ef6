#include "engine/supervise_options.h"

#include <getopt.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <charconv>
#include <limits>
#include <string_view>

#include <hbwatch/error.h>

#include "core/duration.h"
#include "engine/output.h"
#include "engine/restart_policy.h"
#include "engine/safe_path.h"

extern char** environ;

namespace hbwatch::tool {
namespace {

// One name per setting: loop_arguments() writes them, parse_loop_arguments() reads them.
enum Key : int {
    kInterval = 256, kGrace, kMaxBackoff, kWindow, kMaxRestarts, kOutputMaxSize, kOutputFiles, kChdir, kStdout,
    kStderr, kInheritOutput, kEnv, kCgroup, kForeground, kPidfile, kLog, kVerbose
};
constexpr option kOptions[] = {
    {"interval", required_argument, nullptr, kInterval},
    {"grace", required_argument, nullptr, kGrace},
    {"max-backoff", required_argument, nullptr, kMaxBackoff},
    {"window", required_argument, nullptr, kWindow},
    {"max-restarts", required_argument, nullptr, kMaxRestarts},
    {"output-max-size", required_argument, nullptr, kOutputMaxSize},
    {"output-files", required_argument, nullptr, kOutputFiles},
    {"chdir", required_argument, nullptr, kChdir},
    {"stdout", required_argument, nullptr, kStdout},
    {"stderr", required_argument, nullptr, kStderr},
    {"inherit-output", no_argument, nullptr, kInheritOutput},
    {"env", required_argument, nullptr, kEnv},
    {"cgroup", required_argument, nullptr, kCgroup},
    {"foreground", no_argument, nullptr, kForeground},
    {"pidfile", required_argument, nullptr, kPidfile},
    {"log", required_argument, nullptr, kLog},
    {"verbose", no_argument, nullptr, kVerbose},
    {nullptr, 0, nullptr, 0},
};

std::string name_of(int key) {
    for (const auto& o : kOptions)
        if (o.val == key) return std::string("--") + o.name;
    return "?";
}

unsigned long long whole_number(std::string_view text, int key, unsigned long long low, unsigned long long high) {
    unsigned long long value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value < low || value > high)
        throw Error(EINVAL, name_of(key) + " " + std::string(text) + ": give a whole number from " + std::to_string(low) +
                                " to " + std::to_string(high));
    return value;
}

}  // namespace

std::vector<std::string> loop_arguments(const LoopRequest& request) {
    const auto& o = request.options;
    std::vector<std::string> args;
    auto add = [&](int key, const std::string& value) {
        args.push_back(name_of(key));
        args.push_back(value);
    };
    add(kInterval, format_duration(o.interval));
    add(kGrace, format_duration(o.grace));
    add(kMaxBackoff, format_duration(o.max_backoff));
    add(kWindow, format_duration(o.window));
    if (o.max_restarts) add(kMaxRestarts, std::to_string(*o.max_restarts));
    add(kOutputMaxSize, std::to_string(o.output_max_size));
    add(kOutputFiles, std::to_string(o.output_files));
    if (!o.chdir.empty()) add(kChdir, o.chdir);
    if (!o.stdout_file.empty()) add(kStdout, o.stdout_file);
    if (!o.stderr_file.empty()) add(kStderr, o.stderr_file);
    if (o.inherit_output) args.push_back(name_of(kInheritOutput));
    for (const auto& entry : o.env) add(kEnv, entry);
    if (!o.cgroup_name.empty()) add(kCgroup, o.cgroup_name);
    const auto& l = request.launch;
    if (l.foreground) args.push_back(name_of(kForeground));
    if (!l.pidfile.empty()) add(kPidfile, l.pidfile);
    if (!l.log_file.empty()) add(kLog, l.log_file);
    if (l.verbose) args.push_back(name_of(kVerbose));
    args.emplace_back("--");
    args.insert(args.end(), o.argv.begin(), o.argv.end());
    return args;
}

LoopRequest parse_loop_arguments(int argc, char** argv) {
    LoopRequest request;
    auto& o = request.options;
    auto& l = request.launch;
    ::optind = 0;  // glibc: start over, also after an earlier parse
    ::opterr = 0;  // the errors below name the argument
    for (;;) {
        const int key = ::getopt_long(argc, argv, "+", kOptions, nullptr);
        if (key == -1) break;
        const std::string value = ::optarg != nullptr ? ::optarg : "";
        const std::string what = name_of(key) + " " + value;
        switch (key) {
            case kInterval: o.interval = parse_duration_in(value, "--interval", kRestartDelayRange); break;
            case kGrace: o.grace = parse_duration_in(value, "--grace", kStopGraceRange); break;
            case kMaxBackoff: o.max_backoff = parse_duration_in(value, "--max-backoff", kMaxBackoffRange); break;
            case kWindow: o.window = parse_duration_in(value, "--window", kRestartWindowRange); break;
            case kMaxRestarts: o.max_restarts = static_cast<unsigned>(whole_number(value, key, 1, std::numeric_limits<unsigned>::max())); break;
            case kOutputMaxSize:
                o.output_max_size = whole_number(value, key, kMinOutputFileSize, kMaxOutputFileSize);
                break;
            case kOutputFiles: o.output_files = whole_number(value, key, 1, 100); break;
            case kChdir: {
                struct stat st {};
                if (::stat(value.c_str(), &st) != 0) {
                    const int error = errno;
                    throw Error(error, what + ": " + std::strerror(error));
                }
                if (!S_ISDIR(st.st_mode)) throw Error(ENOTDIR, what + ": not a directory");
                o.chdir = value;
                break;
            }
            case kStdout: o.stdout_file = value; break;
            case kStderr: o.stderr_file = value; break;
            case kInheritOutput: o.inherit_output = true; break;
            case kEnv:
                if (value.empty() || value.front() == '=' || value.find('=') == std::string::npos)
                    throw Error(EINVAL, what + ": write it as KEY=VALUE");
                o.env.push_back(value);
                break;
            case kCgroup:
                // As procctl names it (procctl-LABEL-HASH): one plain name under hbwatch/, never a path.
                if (!value.starts_with("procctl-") || value.size() > 64 ||
                    value.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != std::string::npos)
                    throw Error(EINVAL, what + ": not a cgroup name procctl gives (procctl-NAME-HASH: letters, digits, _ and -)");
                o.cgroup_name = value;
                break;
            case kForeground: l.foreground = true; break;
            case kPidfile: l.pidfile = value; break;
            case kLog: l.log_file = value; break;
            case kVerbose: l.verbose = true; break;
            default: {
                const int at = ::optind - 1;
                throw Error(EINVAL, "unknown or incomplete option " +
                                        std::string(at > 0 && at < argc ? argv[at] : "?") +
                                        ": procctl-loop takes what procctl hands it; run procctl instead");
            }
        }
    }
    if (::optind >= argc) throw Error(EINVAL, "no PROGRAM after the options: run procctl instead");
    o.argv.assign(argv + ::optind, argv + argc);
    return request;
}

namespace {
constexpr const char* kRequestFdVariable = "HBWATCH_LOOP_REQUEST_FD";
// The first word of a request: procctl and procctl-loop of two builds must not misread each other.
constexpr std::string_view kRequestHeader = "hbwatch-loop-request 1";
constexpr std::size_t kMaxRequest = 64u << 20;  // far beyond ARG_MAX: a bound, not a limit met
}  // namespace

std::string exec_procctl_loop(const LoopRequest& request, char** original_argv) {
    // The request travels in a memfd, so that procctl-loop runs with procctl's own argv: ps,
    // pgrep -f and pidof see the command the operator typed.
    std::string text(kRequestHeader);
    for (const auto& arg : loop_arguments(request)) text.append(1, '\0').append(arg);
    const int request_fd = ::memfd_create("procctl-loop-request", 0);  // inherited: the loop reads it
    if (request_fd < 0) return std::string("cannot hand the loop its settings: memfd_create: ") + std::strerror(errno);
    for (std::string_view rest = text; !rest.empty();) {
        const ssize_t n = ::write(request_fd, rest.data(), rest.size());
        if (n <= 0) {
            ::close(request_fd);
            return std::string("cannot hand the loop its settings: write: ") + std::strerror(errno);
        }
        rest.remove_prefix(static_cast<std::size_t>(n));
    }
    ::lseek(request_fd, 0, SEEK_SET);
    ::setenv(kRequestFdVariable, std::to_string(request_fd).c_str(), 1);

    std::vector<std::string> candidates;
    char self[4096];
    const ssize_t length = ::readlink("/proc/self/exe", self, sizeof self);
    if (length > 0 && static_cast<std::size_t>(length) < sizeof self) {
        const std::string_view path(self, static_cast<std::size_t>(length));
        const std::string dir(path.substr(0, path.rfind('/') + 1));
        candidates.push_back(dir + "procctl-loop");                    // a build tree
        candidates.push_back(dir + "../libexec/hbwatch/procctl-loop");  // an install, moved whole
    }
    candidates.emplace_back(HBWATCH_LIBEXEC_DIR "/procctl-loop");      // where it was installed
    std::string tried;
    for (const auto& candidate : candidates) {
        if (!tried.empty()) tried += "; ";
        try {
            // Only a binary that no other user could have placed or changed: a root procctl
            // copied beside someone else's procctl-loop must not run it.
            const int exe = open_trusted_file(candidate, "procctl-loop");
            ::fexecve(exe, original_argv, environ);
            tried.append(candidate).append(": ").append(std::strerror(errno));
            ::close(exe);
        } catch (const Error& e) {
            tried.append(e.what());
        }
    }
    ::unsetenv(kRequestFdVariable);
    ::close(request_fd);
    return "cannot run procctl-loop, which runs the one-program loop (" + tried +
           "): reinstall hbwatch, or build it (make) when running from a build tree";
}

LoopRequest receive_loop_request() {
    const char* named = std::getenv(kRequestFdVariable);
    if (named == nullptr)
        throw Error(EINVAL, "procctl-loop runs the loop that procctl hands it (in " + std::string(kRequestFdVariable) +
                                "): run procctl instead");
    int fd = -1;
    const std::string_view digits(named);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
    ::unsetenv(kRequestFdVariable);  // not the program's to see
    if (ec != std::errc{} || end != digits.data() + digits.size() || fd < 3)
        throw Error(EINVAL, std::string(kRequestFdVariable) + " is not a descriptor: run procctl instead");
    std::string text;
    char buffer[8192];
    ssize_t n;
    while (text.size() <= kMaxRequest && (n = ::read(fd, buffer, sizeof buffer)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            throw Error(error, std::string("cannot read what procctl handed over: ") + std::strerror(error));
        }
        text.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    const auto words = [&] {
        std::vector<std::string> out;
        for (std::size_t at = 0; at <= text.size();) {
            const std::size_t stop = std::min(text.find('\0', at), text.size());
            out.emplace_back(text, at, stop - at);
            at = stop + 1;
        }
        return out;
    }();
    if (text.size() > kMaxRequest || words.empty() || words.front() != kRequestHeader)
        throw Error(EINVAL, "what procctl handed over is not a request this procctl-loop reads (it expects \"" +
                                std::string(kRequestHeader) + "\"): procctl and procctl-loop come from two different "
                                "builds; reinstall hbwatch, or rebuild it (make)");
    std::vector<std::string> args = words;
    args.front() = "procctl-loop";
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    return parse_loop_arguments(static_cast<int>(args.size()), argv.data());
}

}  // namespace hbwatch::tool
