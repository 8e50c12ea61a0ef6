#pragma once
// A standalone tool's events (checkproc's): numbered in order, appended as JSON lines to a
// file opened as procctl opens its output files (no symlinks followed, rotated at 10 MiB),
// and run through an exec hook. procctl has its own ring and sinks (stack_events.cpp).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>

#include "engine/event.h"
#include "engine/event_sinks.h"
#include "engine/output.h"

namespace hbwatch::tool {

class EventOutlet {
public:
    /// `file` and `hook` may be empty (then that part is off). `hook` is a command line split
    /// on spaces and run without a shell. Throws hbwatch::Error when the file cannot be opened
    /// or the hook is empty.
    EventOutlet(const std::string& file, const std::string& hook, spdlog::logger& log);
    ~EventOutlet();

    void publish(Event event);
    /// Readable when the hook's log lines wait (-1 without a hook); write_log() writes them.
    [[nodiscard]] int log_fd() const noexcept { return sinks_ ? sinks_->log_fd() : -1; }
    void write_log() {
        if (sinks_) sinks_->write_log(log_);
    }
    /// Gives hooks in flight and queued 2 s, then says what was not delivered.
    void finish();

private:
    spdlog::logger& log_;
    std::uint64_t next_seq_ = 1;
    std::unique_ptr<OutputFile> file_;
    std::unique_ptr<EventSinks> sinks_;
};

}  // namespace hbwatch::tool
