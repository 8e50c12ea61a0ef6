#include "engine/line_log.h"

#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "engine/output.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {
namespace {

// spdlog's level names, which the other tools' lines carry.
const char* name_of(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::debug: return "debug";
        case LogLevel::info: return "info";
        case LogLevel::warn: return "warning";
        case LogLevel::error: return "error";
    }
    return "info";
}

int priority_of(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::debug: return LOG_DEBUG;
        case LogLevel::info: return LOG_INFO;
        case LogLevel::warn: return LOG_WARNING;
        case LogLevel::error: return LOG_ERR;
    }
    return LOG_INFO;
}

}  // namespace

LineLog::LineLog(std::string tool, const std::string& file, bool verbose, bool syslog)
    : tool_(std::move(tool)), verbose_(verbose), syslog_(file.empty() && syslog) {
    if (!file.empty())
        // Problems with the log file itself go to syslog, once each (as the other tools do).
        file_ = std::make_unique<OutputFile>(file, 10u << 20, 5, [](const std::string& problem, bool) {
            ::syslog(LOG_ERR, "%s", problem.c_str());
        });
    if (syslog_) ::openlog(tool_.c_str(), LOG_PID, LOG_DAEMON);
}

LineLog::~LineLog() {
    if (file_) file_->finish();
    if (syslog_) ::closelog();
}

void LineLog::write(LogLevel level, std::string_view message) noexcept {
    try {
        const std::string safe = terminal_safe(message);
        if (syslog_) {
            ::syslog(priority_of(level), "%s", safe.c_str());  // syslog adds time, name and pid itself
            return;
        }
        timespec now{};
        ::clock_gettime(CLOCK_REALTIME, &now);
        tm local{};
        ::localtime_r(&now.tv_sec, &local);
        char stamp[64];
        const std::size_t length = std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &local);
        std::string line(stamp, length);
        char millis[24];
        std::snprintf(millis, sizeof millis, ".%03d ", static_cast<int>(now.tv_nsec / 1000000));
        line.append(millis).append(tool_).append("[").append(std::to_string(::getpid())).append("] ");
        line.append(name_of(level)).append(": ");
        line.append(safe).push_back('\n');
        if (file_) {
            file_->write(line);
            return;
        }
        // One write, so that lines of processes sharing the stream never interleave.
        for (std::string_view rest = line; !rest.empty();) {
            const ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
            if (n <= 0) break;
            rest.remove_prefix(static_cast<std::size_t>(n));
        }
    } catch (...) {
        // Out of memory for a log line: the supervision goes on without it.
    }
}

LogSink LineLog::sink() {
    return [this](LogLevel level, const std::string& line) { write(level, line); };
}

}  // namespace hbwatch::tool
