#include "tool/support.h"

#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>

#include <hbwatch/duration.h>
#include <hbwatch/error.h>

namespace hbwatch::tool {

std::shared_ptr<spdlog::logger> make_logger(const std::string& tool, const std::string& file, bool verbose,
                                            bool syslog) {
    std::shared_ptr<spdlog::logger> logger;
    if (file.empty() && syslog) {
        logger = spdlog::syslog_logger_st(tool, tool, LOG_PID, LOG_DAEMON);
        logger->set_pattern("%v");  // syslog adds time, name and pid itself
        logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
        return logger;
    }
    if (file.empty()) {
        logger = spdlog::stderr_color_st(tool);
    } else {
        try {
            logger = spdlog::rotating_logger_st(tool, file, 10 * 1024 * 1024, 5);
        } catch (const spdlog::spdlog_ex& e) {
            throw Error(EACCES, "cannot open the log file " + file + ": " + e.what());
        }
    }
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e " + tool + "[%P] %^%l%$: %v");
    logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    logger->flush_on(spdlog::level::debug);  // an operator tails the file: no buffering
    return logger;
}

LogSink sink_for(std::shared_ptr<spdlog::logger> logger) {
    return [logger = std::move(logger)](LogLevel level, const std::string& line) {
        switch (level) {
            case LogLevel::debug: logger->debug(line); break;
            case LogLevel::info: logger->info(line); break;
            case LogLevel::warn: logger->warn(line); break;
            case LogLevel::error: logger->error(line); break;
        }
    };
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

int signalfd_for(std::initializer_list<int> signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals) sigaddset(&set, s);
    if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) throw Error(errno, std::string("sigprocmask: ") + std::strerror(errno));
    const int fd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) throw Error(errno, std::string("signalfd: ") + std::strerror(errno));
    return fd;
}

void ignore_sigpipe() { std::signal(SIGPIPE, SIG_IGN); }

}  // namespace hbwatch::tool
