#pragma once
// The shared-memory layout. Not API: tools read it through hbwatch::Table.
// Plain data only: fixed sizes, no pointers, every field a lock-free std::atomic, because
// several processes map it at different addresses and any of them may die mid-write.

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/table.h"

namespace hbwatch::detail {

inline constexpr std::uint64_t kMagic = 0x4842574154434831ull;  // "HBWATCH1"
inline constexpr std::uint32_t kLayoutVersion = 3;  // 2: pidfs inode, image, exec mark; 3: revoked, free hint
inline constexpr std::size_t kNameWords = (kMaxNameLength + 1) / 8;

struct Header {
    std::atomic<std::uint64_t> magic;  // stored last, with release: a reader seeing it sees the rest
    std::atomic<std::uint32_t> version;
    std::atomic<std::uint32_t> header_size;
    std::atomic<std::uint32_t> slot_size;
    std::atomic<std::uint32_t> slot_count;
    std::atomic<std::uint64_t> created_realtime_ns;
    std::atomic<std::uint64_t> created_monotonic_ns;
    std::atomic<std::uint64_t> registrations;
    std::atomic<std::uint64_t> releases;
    std::atomic<std::uint64_t> reclaims;
    std::atomic<std::uint64_t> kills;
    std::atomic<std::uint64_t> free_hint;  // where claim() looks first; any value is safe
    std::atomic<std::uint64_t> journal_head;  // journal records reserved so far
    std::atomic<std::uint64_t> reserved[5];
};

// The journal, right after the header: a ring of the last kJournalRecords slot changes (a
// claim published, a release, a revoke), so that a watcher learns which slots changed without
// reading them all. A record is (sequence + 1) << kJournalIndexBits | slot index: the
// sequence tells a reader whether the record is the one it expects, one not yet written (the
// writer is between reserving and writing it, or died there), or a later lap's.
inline constexpr std::uint64_t kJournalRecords = 4096;
inline constexpr unsigned kJournalIndexBits = 21;
static_assert((std::uint64_t{1} << kJournalIndexBits) > kMaxSlots);
struct Journal {
    std::atomic<std::uint64_t> records[kJournalRecords];
};

/// Where the slots start: after the header and the journal.
inline constexpr std::size_t kSlotsOffset = sizeof(Header) + sizeof(Journal);

// The state word: generation (30 bits) | pid (32 bits) | phase (2 bits).
// Claiming bumps the generation, so a token (the whole word) names one registration: a CAS
// against it can never free or beat a later registration of the same slot.
struct alignas(64) Slot {
    std::atomic<std::uint64_t> state;
    std::atomic<std::uint64_t> last_beat_ns;
    std::atomic<std::uint64_t> beats;
    std::atomic<std::uint64_t> start_time;
    std::atomic<std::uint64_t> registered_ns;
    std::atomic<std::uint32_t> uid;
    std::atomic<std::uint32_t> timeout_ms;
    std::atomic<std::uint64_t> name[kNameWords];  // kMaxNameLength bytes and a NUL
    // Which checkproc is stopping this registration: pid (low 32 bits) | start time (high 32,
    // truncated). 0 when none. Cleared by each claim; taken over when its holder is dead.
    std::atomic<std::uint64_t> stopper;
    std::atomic<std::uint64_t> pidfs_inode;  // the registrant's pidfs inode, 0 without pidfs
    std::atomic<std::uint64_t> image;        // Registrant::image
    std::atomic<std::uint64_t> exec_mark;    // Registrant::exec_mark
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);
static_assert(sizeof(Header) == 128);
static_assert(kSlotsOffset % 64 == 0, "slots stay aligned to cache lines");
static_assert(sizeof(Slot) == 128 && alignof(Slot) == 64);
static_assert(offsetof(Slot, name) == 48 && kNameWords * 8 == kMaxNameLength + 1);
static_assert(offsetof(Slot, stopper) == 96);

inline constexpr std::uint64_t kPhaseBits = 2;
inline constexpr std::uint64_t kPidBits = 32;
inline constexpr std::uint64_t kPhaseMask = (1ull << kPhaseBits) - 1;
inline constexpr std::uint64_t kPidMask = ((1ull << kPidBits) - 1) << kPhaseBits;

constexpr SlotPhase phase_of(std::uint64_t state) noexcept {
    return static_cast<SlotPhase>(state & kPhaseMask);
}
constexpr std::int32_t pid_of(std::uint64_t state) noexcept {
    return static_cast<std::int32_t>(static_cast<std::uint32_t>((state & kPidMask) >> kPhaseBits));
}
constexpr std::uint64_t generation_of(std::uint64_t state) noexcept {
    return state >> (kPhaseBits + kPidBits);
}
constexpr std::uint64_t make_state(std::uint64_t generation, std::int32_t pid, SlotPhase phase) noexcept {
    return (generation << (kPhaseBits + kPidBits)) |
           (static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << kPhaseBits) |
           static_cast<std::uint64_t>(phase);
}

// The memory orderings the slot protocol relies on (slots.cpp), named once, each pairing
// checked at compile time: weakening one fails the build. There is no weakly ordered CPU
// here to test them on (x86-64 orders more than they ask), so this is where they are proven.
namespace order {
inline constexpr auto claim = std::memory_order_acquire;          // CAS free -> claiming
inline constexpr auto after_claim = std::memory_order_release;    // the fence right after it
inline constexpr auto publish = std::memory_order_release;        // CAS claiming -> live
inline constexpr auto release = std::memory_order_release;        // CAS live|revoked -> free, live -> revoked
inline constexpr auto read_word = std::memory_order_acquire;      // a reader's first load of the word
inline constexpr auto read_fence = std::memory_order_acquire;     // between its copy and its second load
inline constexpr auto journal_write = std::memory_order_release;  // a record, after the change it names
inline constexpr auto journal_read = std::memory_order_acquire;   // a reader's load of a record

constexpr bool acquires(std::memory_order o) {
    return o == std::memory_order_acquire || o == std::memory_order_acq_rel || o == std::memory_order_seq_cst;
}
constexpr bool releases(std::memory_order o) {
    return o == std::memory_order_release || o == std::memory_order_acq_rel || o == std::memory_order_seq_cst;
}
static_assert(acquires(claim), "a claimer sees the previous registration's release before it writes the fields");
static_assert(releases(after_claim) && acquires(read_fence),
              "seqlock: a reader that copied any field written after a claim sees the claim's word on its second load");
static_assert(releases(publish) && acquires(read_word), "a reader that loads `live` sees every field of that registration");
static_assert(releases(release) && acquires(claim), "the next claimer of a freed slot sees everything before the release");
static_assert(releases(journal_write) && acquires(journal_read) && acquires(read_word),
              "a watcher that reads a journal record sees the slot change it names");
}  // namespace order

static_assert(pid_of(make_state(5, -7, SlotPhase::live)) == -7);
static_assert(generation_of(make_state((1ull << 30) - 1, 42, SlotPhase::claiming)) == (1ull << 30) - 1);

}  // namespace hbwatch::detail
