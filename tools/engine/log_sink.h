#pragma once
// A log line handed to whichever logger the tool has: spdlog's in checkproc, proctab and the
// stack, LineLog's in procctl's one-program loop.

#include <functional>
#include <string>

namespace hbwatch::tool {

enum class LogLevel { debug, info, warn, error };
/// Receives one line per decision or event.
using LogSink = std::function<void(LogLevel, const std::string&)>;

}  // namespace hbwatch::tool
