#pragma once
// checkproc --watch: event-driven, so that its cost grows with events, not with the table.
//   - exits: a pidfd per registered process, in an epoll set; an exit frees its slots at once;
//   - deadlines: a heap of when each entry turns hung; a slot is re-read only when its
//     deadline comes (and pushed back if it beat meanwhile);
//   - registrations and releases: the table's journal names the slots that changed;
//   - the table itself: the key is looked up once a second, and a removed or replaced table
//     is left for the new one.

#include <cstdint>

#include "engine/checker.h"

namespace hbwatch::tool {

/// The --watch mode: stays resident until `stop_fd` becomes readable, then finishes the stops
/// in flight and returns. Waits for the table when there is none yet. Raises RLIMIT_NOFILE as
/// far as it may to hold a pidfd per process, and says what it does without one.
void watch(const TableOptions& table_options, const CheckOptions& options, const LogSink& log, int stop_fd);

}  // namespace hbwatch::tool
