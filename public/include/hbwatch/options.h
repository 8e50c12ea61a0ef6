#pragma once
// Where a service's heartbeat goes: the table's key and, when registering creates the table,
// its shape.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace hbwatch {

/// "HBWT". Not 0x5095: the classic course framework uses that key with another layout.
inline constexpr key_t kDefaultKey = 0x48425754;
inline constexpr std::uint32_t kDefaultSlots = 4096;
inline constexpr std::uint32_t kMaxSlots = 1u << 20;
/// A name is 1 to 47 bytes of letters, digits and . _ - : @ + /
inline constexpr std::size_t kMaxNameLength = 47;
inline constexpr std::chrono::milliseconds kMinTimeout{100};
inline constexpr std::chrono::milliseconds kMaxTimeout{std::chrono::hours(24 * 7)};

struct TableOptions {
    std::optional<key_t> key;             // unset: HBWATCH_KEY, else kDefaultKey
    std::uint32_t slots = kDefaultSlots;  // used only when creating
    /// Used only when creating. Unset: 0660 when the creator's group is its own, but 0600 when
    /// other users share that group (they could forge entries); give 0660 and a group to share.
    std::optional<mode_t> mode;
    std::optional<gid_t> group;           // used only when creating; unset: the caller's group
};

}  // namespace hbwatch
