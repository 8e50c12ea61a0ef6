#include "engine/support.h"

#include "engine/output.h"
#include "engine/terminal_text.h"

#include <malloc.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <syslog.h>

#include <mutex>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>

#include "core/duration.h"
#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

// spdlog's own file sinks throw on a full disk and create missing directories; this one does
// neither: problems with the log file itself go to syslog, once each.
class SafeFileSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
public:
    explicit SafeFileSink(const std::string& path)
        : file_(path, 10u << 20, 5, [](const std::string& problem, bool) { ::syslog(LOG_ERR, "%s", problem.c_str()); }) {}

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t formatted;
        formatter_->format(msg, formatted);
        file_.write(std::string_view(formatted.data(), formatted.size()));
    }
    void flush_() override {}

private:
    OutputFile file_;
};

// %* in a pattern: the message with terminal_safe applied. Log lines carry config values,
// paths, program names and output that others wrote: none may forge a line or drive the
// terminal of an operator who tails the log.
class SafeMessage final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        const std::string safe = terminal_safe(std::string_view(msg.payload.data(), msg.payload.size()));
        dest.append(safe.data(), safe.data() + safe.size());
    }
    [[nodiscard]] std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SafeMessage>(); }
};

void set_safe_pattern(spdlog::logger& logger, const std::string& pattern) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<SafeMessage>('*').set_pattern(pattern);
    logger.set_formatter(std::move(formatter));
}

}  // namespace

std::shared_ptr<spdlog::logger> make_logger(const std::string& tool, const std::string& file, bool verbose,
                                            bool syslog) {
    std::shared_ptr<spdlog::logger> logger;
    if (file.empty() && syslog) {
        logger = spdlog::syslog_logger_st(tool, tool, LOG_PID, LOG_DAEMON);
        set_safe_pattern(*logger, "%*");  // syslog adds time, name and pid itself
        logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
        return logger;
    }
    if (file.empty()) {
        logger = spdlog::stderr_color_st(tool);
    } else {
        logger = std::make_shared<spdlog::logger>(tool, std::make_shared<SafeFileSink>(file));  // throws Error
    }
    set_safe_pattern(*logger, "%Y-%m-%d %H:%M:%S.%e " + tool + "[%P] %^%l%$: %*");
    logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    logger->flush_on(spdlog::level::debug);  // an operator tails the file: no buffering
    return logger;
}

LogSink sink_for(spdlog::logger& logger) {
    return [&logger](LogLevel level, const std::string& line) {
        switch (level) {
            case LogLevel::debug: logger.debug(line); break;
            case LogLevel::info: logger.info(line); break;
            case LogLevel::warn: logger.warn(line); break;
            case LogLevel::error: logger.error(line); break;
        }
    };
}

LogSink sink_for(std::shared_ptr<spdlog::logger> logger) {
    LogSink sink = sink_for(*logger);  // before the pointer moves into the lambda that keeps it alive
    return [logger = std::move(logger), sink = std::move(sink)](LogLevel level, const std::string& line) { sink(level, line); };
}

namespace {
template <class Parse>
CLI::Validator validator(const char* description, Parse parse) {
    return CLI::Validator(
        [parse](std::string& text) -> std::string {
            try {
                (void)parse(text);
                return {};
            } catch (const Error& e) {
                return e.what();
            }
        },
        description);
}
}  // namespace

CLI::Validator duration_validator() {
    return validator("DURATION", [](const std::string& text) { return parse_duration(text); });
}

CLI::Validator key_validator() {
    return validator("KEY", [](const std::string& text) { return parse_key(text); });
}

std::optional<int> parse(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? kExitOk : kExitUsage;
    }
    ignore_sigpipe();
    return std::nullopt;
}

TableOptions table_options(const std::string& key_text) {
    TableOptions options;
    options.key = key_text.empty() ? key_from_environment() : parse_key(key_text);
    return options;
}

namespace {
constexpr std::size_t kSpareAddressSpace = 8u << 20;
}

void SpareAddressSpace::take() noexcept {
    if (at_ != nullptr) return;
    void* at = ::mmap(nullptr, kSpareAddressSpace, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    at_ = at == MAP_FAILED ? nullptr : at;
}

void SpareAddressSpace::give_back() noexcept {
    if (at_ != nullptr) ::munmap(at_, kSpareAddressSpace);
    at_ = nullptr;
}

}  // namespace hbwatch::tool
