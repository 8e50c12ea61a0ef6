#pragma once
// What every hbwatch tool but procctl-loop does the same way: logging through spdlog, argument
// validation with CLI11 (and basics.h). Not part of libhbwatch: services need none of it.

#include <csignal>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "engine/basics.h"
#include "engine/checker.h"

namespace hbwatch::tool {

/// The tool's logger: a rotating file (10 MiB x 5) when `file` is set, else syslog when
/// `syslog` (a detached daemon), else stderr. Each line: time, tool[pid], level, message.
std::shared_ptr<spdlog::logger> make_logger(const std::string& tool, const std::string& file, bool verbose,
                                            bool syslog = false);

/// A LogSink that writes to `logger`.
LogSink sink_for(std::shared_ptr<spdlog::logger> logger);
/// A LogSink that writes to `logger`, which must outlive it.
LogSink sink_for(spdlog::logger& logger);

/// CLI11 checks that name the bad value and the accepted forms.
CLI::Validator duration_validator();
CLI::Validator key_validator();

/// Parses the command line. nullopt to go on; otherwise the exit code to return at once
/// (0 after --help, kExitUsage after an error, which CLI11 has printed). Also ignores SIGPIPE.
std::optional<int> parse(CLI::App& app, int argc, char** argv);

/// Applies --key (when given) over HBWATCH_KEY and the default.
TableOptions table_options(const std::string& key_text);


/// Address space held aside (no memory: PROT_NONE, never touched), so that a config too large
/// for the address space procctl may use (RLIMIT_AS) leaves room to go on serving once its
/// load failed: given back then, taken again before the next load.
class SpareAddressSpace {
public:
    SpareAddressSpace() { take(); }
    SpareAddressSpace(const SpareAddressSpace&) = delete;
    SpareAddressSpace& operator=(const SpareAddressSpace&) = delete;
    ~SpareAddressSpace() { give_back(); }
    void take() noexcept;
    void give_back() noexcept;

private:
    void* at_ = nullptr;
};

}  // namespace hbwatch::tool
