#pragma once
// The stack supervisor's configuration (procctl --config FILE): YAML, which also reads JSON.
// Every error names the file, the line and column, the key, and what is allowed there.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/duration.h"
#include "engine/event_config.h"
#include "engine/http_config.h"
#include "engine/restart_policy.h"

namespace hbwatch::tool {

// The ranges of the restart and stop durations are in restart_policy.h; a watchdog's and how
// long a program may take to be ready:
inline constexpr DurationRange kWatchdogRange{std::chrono::milliseconds(100), std::chrono::hours(24)};
inline constexpr DurationRange kReadyTimeoutRange{std::chrono::milliseconds(100), std::chrono::hours(24)};
// The events section: how long a hook may run, an HTTP exchange may take, and how often a
// firing alert is sent again (Alertmanager's resolve_timeout is 5 minutes by default).
inline constexpr DurationRange kHookTimeoutRange{std::chrono::milliseconds(100), std::chrono::hours(1)};
inline constexpr DurationRange kHttpTimeoutRange{std::chrono::milliseconds(100), std::chrono::minutes(1)};
// A port kill through the API: its worker thread, and procctl's exit, wait at most this.
inline constexpr DurationRange kPortKillGraceRange{std::chrono::milliseconds(0), std::chrono::minutes(1)};
inline constexpr DurationRange kAlertResendRange{std::chrono::seconds(1), std::chrono::minutes(4)};

/// When a program counts as ready, so that the programs `after` it may start.
struct ReadyCheck {
    enum class Kind {
        started,  // as soon as it runs
        beat,     // its own pid has registered in the heartbeat table
        tcp,      // a TCP connection to host:port is accepted
        exec,     // a command exits 0
        notify,   // it says READY=1 on its NOTIFY_SOCKET (sd_notify)
    };
    Kind kind = Kind::started;
    std::string host;  // tcp
    std::uint16_t port = 0;
    std::vector<std::string> command;  // exec, run as is (no shell)
    bool operator==(const ReadyCheck&) const = default;
};

enum class RestartMode { always, on_failure, never };

struct ProgramConfig {
    std::string name;
    std::vector<std::string> command;
    ReadyCheck ready;
    std::chrono::milliseconds ready_timeout{std::chrono::seconds(30)};
    std::vector<std::string> after;  // names of programs that must be ready first
    std::string directory;           // empty: the supervisor's own
    std::map<std::string, std::string> environment;
    // What else of procctl's own environment the program gets: by default only PATH, LANG,
    // LC_*, TZ and HBWATCH_KEY (the rest, an operator's tokens say, stays with procctl).
    bool inherit_all_environment = false;
    std::vector<std::string> inherit_environment;  // names passed through besides those
    std::string user;  // empty: the supervisor's own (only root may name another)
    RestartMode restart = RestartMode::always;
    std::chrono::milliseconds restart_delay{std::chrono::seconds(1)};  // then doubling, as procctl does
    unsigned max_restarts = 0;                                        // 0: no limit
    std::chrono::milliseconds max_restarts_window{std::chrono::minutes(1)};
    int stop_signal = 15;  // SIGTERM
    std::chrono::milliseconds stop_grace{std::chrono::seconds(10)};
    std::string stdout_path;  // relative to log_dir; empty: the supervisor's own stdout
    std::string stderr_path;
    std::uint64_t log_max_size = 10ull << 20;
    unsigned log_files = 5;
    unsigned instances = 1;     // N copies: NAME@1 .. NAME@N
    std::uint64_t max_rss = 0;  // bytes; 0: no limit
    bool autostart = true;
    // sd_notify: a NOTIFY_SOCKET of its own (also with ready: notify, or a watchdog), and
    // WATCHDOG=1 expected at least this often (0: no watchdog).
    bool notify = false;
    std::chrono::milliseconds watchdog{0};
    bool operator==(const ProgramConfig&) const = default;  // what a reload compares
};

struct StackConfig {
    std::string path;  // the file it was read from
    std::string run_dir = "/run/hbwatch";
    std::string log_dir = "/var/log/hbwatch";
    std::string socket_group;            // empty: the supervisor's group
    EventsConfig events;                  // where events go; a reload keeps the sinks procctl started with
    HttpConfig http;                      // the control API over TCP; a reload applies it
    // Where a watchdog hang's diagnosis goes (hang_diagnosis.h, the kernel level): read as
    // checkproc's default directory unless the file says; empty (`diagnoses: none`) keeps none.
    std::string diagnoses;
    std::vector<ProgramConfig> programs;  // in start order: each after the programs it names in `after`
};

/// Where the sd_notify socket of the unit `instance` ("api", "api@2") is: run_dir/notify/NAME.sock.
[[nodiscard]] std::string notify_socket_path(const std::string& run_dir, const std::string& instance);

/// Reads and checks FILE. Throws hbwatch::Error(EINVAL) with "FILE:LINE:COLUMN: ..." naming
/// the key and what is allowed; a cycle in `after` is named whole ("a -> b -> a").
[[nodiscard]] StackConfig load_stack_config(const std::string& path);
/// The same, from text (for tests and for messages about a file that is not on disk).
[[nodiscard]] StackConfig parse_stack_config(const std::string& text, const std::string& path);

/// "SIGTERM" for 15; the names accepted are TERM, INT, HUP, QUIT, USR1, USR2, KILL, with or
/// without the SIG prefix.
[[nodiscard]] std::optional<int> signal_by_name(std::string_view name);
[[nodiscard]] std::string signal_name(int signal);

}  // namespace hbwatch::tool
