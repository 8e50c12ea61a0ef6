#pragma once
// What a process that missed its heartbeat deadline is doing, decided before anyone signals
// it: stopped or traced (an engineer in gdb), frozen with its cgroup, starved of CPU or I/O
// (runnable, but not run), or hung. Measured from /proc (thread states, the scheduler's run
// delay, the tracer, cgroup.events), never guessed.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hbwatch::tool {

/// One look at a process: its threads as the kernel reports them at `at_ns`.
struct ProcessLook {
    struct Thread {
        pid_t tid = 0;
        char state = '?';                // R, S, D, T, t, ...
        std::uint64_t cpu_ns = 0;        // /proc/.../schedstat: time on a CPU
        std::uint64_t run_delay_ns = 0;  // and time waited for one (counted when the wait ends)
        std::uint64_t blkio_ns = 0;      // time waiting for block I/O (only with delay accounting on)
    };
    std::uint64_t at_ns = 0;  // CLOCK_MONOTONIC
    std::vector<Thread> threads;  // empty: the process could not be read (gone, or not ours to read)
    pid_t tracer = 0;             // TracerPid: who ptraces it
    std::string tracer_name;
    bool frozen = false;  // its cgroup v2 is frozen (cgroup.events: frozen 1)
};

/// Looks at `pid` now (at most kMaxThreadsLooked threads).
[[nodiscard]] ProcessLook look_at(pid_t pid, std::uint64_t now_ns);
inline constexpr std::size_t kMaxThreadsLooked = 4096;

struct HangVerdict {
    enum class Kind {
        hung,        // none of the below: it is stopped as hung
        stopped,     // every thread stopped by a signal (state T): spared, unless --stopped kill
        traced,      // a debugger holds it (TracerPid, or a thread in state t): spared, unless --stopped kill
        frozen,      // its cgroup is frozen: spared
        starved,     // it waited to run (or for I/O) for most of the time looked at: a bounded extension
        look_again,  // runnable or in I/O at the first look: decided by a second look a window later
    };
    Kind kind = Kind::hung;
    std::string words;  // for logs and events: "stopped by a signal (state T)", "CPU-starved, 0.9s of 1.0s runnable"
};

[[nodiscard]] const char* to_string(HangVerdict::Kind kind) noexcept;

/// The verdict from the first look past the deadline (`later` null), or from it and a look a
/// window later. A process sleeping with no run delay (a deadlock on a futex) is hung at once.
[[nodiscard]] HangVerdict judge_hang(const ProcessLook& first, const ProcessLook* later);

/// How long to watch a process that looked runnable before deciding: a quarter of its
/// timeout, within 50 ms and 1 s. The delay a verdict may add to a real hang's stop.
[[nodiscard]] std::uint64_t look_window_ns(std::uint64_t timeout_ns) noexcept;

}  // namespace hbwatch::tool
