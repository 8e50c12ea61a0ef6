#pragma once
// What a hung process was doing, kept before checkproc signals it: without it, the stack
// that explained the hang dies with the process (systemd#26090).

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include "core/duration.h"
#include "core/pidfd.h"

namespace hbwatch::tool {

enum class DiagnoseLevel {
    none,    // nothing kept
    kernel,  // every thread's state, wchan, system call and kernel stack (/proc; the stacks need root)
    user,    // and every thread's user-space backtrace, from eu-stack (elfutils), within a bound
};

/// --diagnose-bound: eu-stack's time. A diagnosis holds up its stop by at most this plus
/// kUserStackReapWait (eu-stack's end after its SIGKILL; in practice under a millisecond).
inline constexpr DurationRange kDiagnoseBoundRange{std::chrono::milliseconds(10), std::chrono::seconds(10)};
inline constexpr std::chrono::milliseconds kUserStackReapWait{1000};

struct DiagnosisOptions {
    DiagnoseLevel level = DiagnoseLevel::none;  // checkproc's own default is kernel (--diagnose)
    std::string directory;  // made 0700 if missing; must be safe (safe_path.h) from / down
    // The newest kept, older diagnosis-* files in the directory removed; 0 removes none (the
    // stack, which shares checkproc's directory, removes only what it wrote itself).
    std::size_t keep = 50;
    std::chrono::milliseconds user_bound{200};  // eu-stack's time, after which it is killed (--diagnose-bound)
};

/// The default directory: $HBWATCH_DIAGNOSES, else /var/lib/hbwatch/diagnoses as root, else
/// $XDG_STATE_HOME (or ~/.local/state)/hbwatch/diagnoses.
[[nodiscard]] std::string default_diagnosis_directory();

struct Diagnosis {
    std::string path;   // the file written, empty when none was
    std::string error;  // why none was, for the log
    std::chrono::microseconds took{0};
};

/// The words a stop's log line ends with: "; diagnosis in PATH", "; no diagnosis kept: WHY", or
/// nothing when none was asked for.
[[nodiscard]] std::string kept_text(const Diagnosis& diagnosis);

/// Writes what `target` (registered as `name`) is doing to a new file named
/// diagnosis-TIME-NAME-PID.txt. Never throws: a diagnosis never stands in the way of the stop it
/// comes before, and never takes longer than its bounds.
[[nodiscard]] Diagnosis write_diagnosis(const DiagnosisOptions& options, const Pidfd& target, const std::string& name, const std::string& why);

/// The newest diagnosis of `name` in `directory`, if any.
[[nodiscard]] std::optional<std::string> last_diagnosis(const std::string& directory, const std::string& name);

[[nodiscard]] std::optional<DiagnoseLevel> parse_diagnose_level(const std::string& text);

}  // namespace hbwatch::tool
