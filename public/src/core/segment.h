#pragma once
// The System V segment that holds the table: creating, opening, validating and removing it,
// with the error text for each way that can fail. Internal: tools use it through Table.

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include <boost/interprocess/mapped_region.hpp>

#include <hbwatch/options.h>

#include "core/layout.h"

namespace hbwatch::detail {

/// One attachment of the table, validated: `header` and `slots` point into it.
struct Segment {
    key_t key = 0;
    int shmid = -1;
    bool writable = false;
    std::uint32_t slot_count = 0;
    Header* header = nullptr;
    Journal* journal = nullptr;
    Slot* slots = nullptr;
    uid_t owner = 0, creator = 0;  // as checked when mapped (writable only)
    boost::interprocess::mapped_region region;

    /// Maps the table at `key`; nullptr when no segment is there. Throws Error for a foreign
    /// segment, a layout of another version, no permission, or (writing) an untrusted owner.
    static std::shared_ptr<Segment> open(key_t key, bool writable);
    /// Creates and maps a new table; nullptr when a segment already exists at the key.
    static std::shared_ptr<Segment> create(key_t key, const TableOptions& options);
    /// open(), else create(), racing other creators and destroyers safely.
    static std::shared_ptr<Segment> open_or_create(key_t key, const TableOptions& options);
    /// This process's read-write mapping of the table at the key, shared by all its Heartbeat
    /// handles: mapped on first use, and mapped anew only when the segment at the key has been
    /// removed or replaced (one shmctl to check). Safe across fork(): the child inherits the
    /// mapping, which stays valid; a child after exec starts empty.
    static std::shared_ptr<Segment> shared(const TableOptions& options);
};

}  // namespace hbwatch::detail
