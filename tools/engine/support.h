#pragma once
// What every hbwatch tool does the same way: logging through spdlog, argument validation with
// CLI11, signals through a signalfd. Not part of libhbwatch: services need none of it.

#include <poll.h>

#include <csignal>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "engine/checker.h"

namespace hbwatch::tool {

/// Exit codes shared by the tools.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the work could not be done (table unreadable, ...)
inline constexpr int kExitUsage = 2;    // bad arguments

/// The tool's logger: a rotating file (10 MiB x 5) when `file` is set, else syslog when
/// `syslog` (a detached daemon), else stderr. Each line: time, tool[pid], level, message.
std::shared_ptr<spdlog::logger> make_logger(const std::string& tool, const std::string& file, bool verbose,
                                            bool syslog = false);

/// A LogSink that writes to `logger`.
LogSink sink_for(std::shared_ptr<spdlog::logger> logger);

/// CLI11 checks that name the bad value and the accepted forms.
CLI::Validator duration_validator();
CLI::Validator key_validator();

/// Parses the command line. nullopt to go on; otherwise the exit code to return at once
/// (0 after --help, kExitUsage after an error, which CLI11 has printed). Also ignores SIGPIPE.
std::optional<int> parse(CLI::App& app, int argc, char** argv);

/// Applies --key (when given) over HBWATCH_KEY and the default.
TableOptions table_options(const std::string& key_text);

/// Blocks `signals` and returns a CLOEXEC signalfd that becomes readable when one arrives.
int signalfd_for(std::initializer_list<int> signals);

/// poll() for a supervision loop: false, after logging it and pausing 100 ms, when poll itself
/// failed (ENOMEM, say), so that the loop retries instead of spinning or dying.
bool poll_events(std::vector<pollfd>& fds, int timeout_ms, spdlog::logger& log);

/// Ignores SIGPIPE: a closed pipe on stdout is an error to report, not a death.
void ignore_sigpipe();

/// One malloc arena for the whole process, called first in main, before any thread. glibc gives
/// a thread that meets contention an arena of its own, each reserving 64 MiB of address space
/// and keeping its own free memory: under a memory limit (RLIMIT_AS, a cgroup) a new arena that
/// cannot be had fails an allocation that the main arena could serve, and a long-running tool
/// with a few mostly idle threads gains nothing from more.
void one_malloc_arena();

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
