#include "engine/supervise_options.h"

#include <getopt.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <charconv>
#include <limits>
#include <string_view>

#include <hbwatch/error.h>

#include "core/duration.h"
#include "engine/output.h"
#include "engine/restart_policy.h"

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
            case kChdir: o.chdir = value; break;
            case kStdout: o.stdout_file = value; break;
            case kStderr: o.stderr_file = value; break;
            case kInheritOutput: o.inherit_output = true; break;
            case kEnv:
                if (value.empty() || value.front() == '=' || value.find('=') == std::string::npos)
                    throw Error(EINVAL, what + ": write it as KEY=VALUE");
                o.env.push_back(value);
                break;
            case kCgroup: o.cgroup_name = value; break;
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

std::string exec_procctl_loop(const LoopRequest& request, const char* argv0) {
    std::vector<std::string> args = loop_arguments(request);
    std::vector<char*> argv{const_cast<char*>(argv0)};  // as ps and pgrep -f see it: still procctl
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
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
        ::execv(candidate.c_str(), argv.data());
        if (!tried.empty()) tried += "; ";
        tried.append(candidate).append(": ").append(std::strerror(errno));
    }
    return "cannot run procctl-loop, which runs the one-program loop (" + tried +
           "): reinstall hbwatch, or build it (make) when running from a build tree";
}

}  // namespace hbwatch::tool
