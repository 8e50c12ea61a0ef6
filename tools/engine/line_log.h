#pragma once
// procctl-loop's logger: a few lines in place of spdlog and fmt, so that the process that
// supervises one program for months maps libc alone and stays small (issue 25). Its lines
// read as the other tools' do: "2026-12-06 18:00:00.123 procctl[42] info: ...".

#include <charconv>
#include <concepts>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "engine/log_sink.h"

namespace hbwatch::tool {

class OutputFile;

/// A message with "{}" where each argument goes, in order; the count is checked when compiling.
template <class... Args>
struct LineFormat {
    template <class Text>
        requires std::convertible_to<const Text&, std::string_view>
    consteval LineFormat(const Text& format) : text(format) {
        std::size_t holes = 0;
        for (std::size_t i = 0; i + 1 < text.size(); ++i)
            if (text[i] == '{' && text[i + 1] == '}') ++holes, ++i;
        if (holes != sizeof...(Args)) throw "a log line's {} do not match its arguments";  // fails to compile
    }
    std::string_view text;
};

namespace line_log_detail {
inline void append(std::string& out, std::string_view text) { out.append(text); }
inline void append(std::string& out, const char* text) { out.append(text != nullptr ? text : "(null)"); }
inline void append(std::string& out, std::integral auto number) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, number).ptr;
    out.append(digits, end);
}

inline std::string format(std::string_view format) { return std::string(format); }

template <class First, class... Rest>
std::string format(std::string_view format, const First& first, const Rest&... rest) {
    std::string out;
    out.reserve(format.size() + 32 * (1 + sizeof...(Rest)));
    auto next = [&](const auto& arg) {
        const std::size_t hole = format.find("{}");
        out.append(format.substr(0, hole));
        append(out, arg);
        format.remove_prefix(hole + 2);
    };
    next(first);
    (next(rest), ...);
    out.append(format);
    return out;
}
}  // namespace line_log_detail

class LineLog {
public:
    /// A rotated file (10 MiB x 5) when `file` is set, else syslog when `syslog` (a detached
    /// daemon), else stderr. Throws hbwatch::Error when the file cannot be opened.
    LineLog(std::string tool, const std::string& file, bool verbose, bool syslog);
    ~LineLog();
    LineLog(const LineLog&) = delete;
    LineLog& operator=(const LineLog&) = delete;

    template <class... Args>
    void log(LogLevel level, LineFormat<std::type_identity_t<Args>...> format, const Args&... args) {
        if (level == LogLevel::debug && !verbose_) return;
        write(level, line_log_detail::format(format.text, args...));
    }
    template <class... Args>
    void debug(LineFormat<std::type_identity_t<Args>...> format, const Args&... args) { log(LogLevel::debug, format, args...); }
    template <class... Args>
    void info(LineFormat<std::type_identity_t<Args>...> format, const Args&... args) { log(LogLevel::info, format, args...); }
    template <class... Args>
    void warn(LineFormat<std::type_identity_t<Args>...> format, const Args&... args) { log(LogLevel::warn, format, args...); }
    template <class... Args>
    void error(LineFormat<std::type_identity_t<Args>...> format, const Args&... args) { log(LogLevel::error, format, args...); }

    /// One line, made terminal-safe (it may carry names and paths others chose), written whole.
    void write(LogLevel level, std::string_view message) noexcept;
    /// A LogSink that writes here (valid while this LineLog lives).
    [[nodiscard]] LogSink sink();

private:
    std::string tool_;
    bool verbose_;
    bool syslog_;
    std::unique_ptr<OutputFile> file_;
};

}  // namespace hbwatch::tool
