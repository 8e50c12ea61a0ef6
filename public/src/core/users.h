#pragma once
// The user database, for the table's writers and its default mode.

#include <sys/types.h>

#include <string>
#include <vector>

namespace hbwatch {

/// The members of group `gid`: those the group database lists, and those whose primary group
/// it is. May hold duplicates.
[[nodiscard]] std::vector<uid_t> group_members(gid_t gid);

/// "nogroup (gid 65534)", or "gid 65534" when the group has no name.
[[nodiscard]] std::string group_label(gid_t gid);

/// "sync", or "uid 4" when the user has no name.
[[nodiscard]] std::string user_name(uid_t uid);

}  // namespace hbwatch
