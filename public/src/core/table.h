#pragma once
// The host-wide heartbeat table: one System V shared-memory segment holding a header and
// fixed-size slots. Every change to a slot is a compare-and-swap on its state word, so a
// process SIGKILLed at any instant can neither block nor corrupt anyone else.

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <hbwatch/options.h>

#include "core/process.h"

namespace hbwatch {

namespace detail {
struct Segment;
struct Slot;
}  // namespace detail

/// Reads a key written in hex ("0x48425754") or decimal. Throws Error(EINVAL) for anything
/// else, for 0 (IPC_PRIVATE) and for values outside key_t.
[[nodiscard]] key_t parse_key(std::string_view text);

/// The key from HBWATCH_KEY when set, kDefaultKey otherwise. Throws Error for a bad value.
[[nodiscard]] key_t key_from_environment();

/// "0x48425754".
[[nodiscard]] std::string format_key(key_t key);

/// Whether a name may hold byte `c`: a letter, a digit, or one of . _ - : @ + /
[[nodiscard]] bool name_char(unsigned char c) noexcept;

/// `text` with every byte that `keep` refuses shown as \xNN: untrusted bytes made safe to print.
[[nodiscard]] std::string escaped(std::string_view text, bool (*keep)(unsigned char));

/// Throws Error(EINVAL) unless `name` is 1-47 bytes of letters, digits and . _ - : @ + /
void validate_name(std::string_view name);

/// Throws Error(EINVAL) unless kMinTimeout <= timeout <= kMaxTimeout.
void validate_timeout(std::chrono::milliseconds timeout);

/// free -> claiming -> live -> free; live -> revoked -> free (see core/slots.cpp).
enum class SlotPhase : std::uint8_t { free = 0, claiming = 1, live = 2, revoked = 3 };

/// Why a slot's fields cannot be a registration that the library made (forged or corrupt).
enum class Garbage { not_a_pid, init, unterminated_name, bad_name, bad_timeout, no_start_time };

/// A consistent copy of one slot: never a torn mix of two registrations.
struct SlotSnapshot {
    std::uint32_t index = 0;
    SlotPhase phase = SlotPhase::free;
    std::uint64_t token = 0;  // the slot's state word: free_slot() frees only this registration
    ProcessIdentity process;
    uid_t uid = 0;
    std::chrono::milliseconds timeout{0};
    std::uint64_t registered_ns = 0;  // CLOCK_MONOTONIC
    std::uint64_t last_beat_ns = 0;   // CLOCK_MONOTONIC (coarse)
    std::uint64_t beats = 0;
    std::array<char, kMaxNameLength + 1> name_bytes{};
    std::uint64_t image = 0;      // self-registered: the nonce of the registrant's image marker
    std::uint64_t exec_mark = 0;  // delegated (image 0): the target's stack start when registered

    /// Registered on the process's behalf (proctab beat), not by the process itself.
    [[nodiscard]] bool delegated() const noexcept { return image == 0; }

    /// The name up to its NUL (or all 48 bytes when a forged slot has none).
    [[nodiscard]] std::string_view name() const noexcept;
    /// Why the fields cannot be a registration the library made, or nullopt when sound. A
    /// claiming slot is only judged on its pid.
    [[nodiscard]] std::optional<Garbage> garbage() const noexcept;
    /// `garbage` in words, with the offending value.
    [[nodiscard]] std::string describe(Garbage garbage) const;
    /// describe(*garbage()), or empty when sound.
    [[nodiscard]] std::string garbage_reason() const;
    /// Milliseconds since the last beat at `now_ns`; 0 for a beat stamped in the future.
    [[nodiscard]] std::chrono::milliseconds since_beat(std::uint64_t now_ns) const noexcept;
};

/// The header's facts plus what the kernel says of the segment.
struct TableInfo {
    key_t key = 0;
    int shmid = -1;
    std::uint32_t version = 0;
    std::uint32_t slot_count = 0;
    std::uint64_t bytes = 0;
    mode_t mode = 0;
    uid_t owner_uid = 0;
    gid_t owner_gid = 0;
    uid_t creator_uid = 0;
    pid_t creator_pid = 0;
    std::uint64_t created_realtime_ns = 0;
    std::uint64_t created_monotonic_ns = 0;
    std::uint64_t registrations = 0;
    std::uint64_t releases = 0;
    std::uint64_t reclaims = 0;
    std::uint64_t kills = 0;
};

/// Whom a registration is for, and how checkproc later tells that it is still the same
/// program (an exec ends a registration).
struct Registrant {
    ProcessIdentity process;
    uid_t uid = 0;
    /// Self-registration: the nonce of the marker mapping that the library keeps in the
    /// process (see image_marker()); exec drops it. 0 for a delegated registration.
    std::uint64_t image = 0;
    /// Delegated registration: the target's stack start (stat field 28), which exec changes.
    std::uint64_t exec_mark = 0;
};

/// What the kernel says of the segment at a key (from /proc/sysvipc/shm, which anyone may
/// read, so it works exactly where IPC_STAT is refused).
struct SegmentFacts {
    int shmid = -1;
    mode_t mode = 0;
    uid_t uid = 0, cuid = 0;  // owner and creator: both may change the mode and owner
    gid_t gid = 0, cgid = 0;
    std::uint64_t bytes = 0;
    pid_t creator = 0;
};
[[nodiscard]] std::optional<SegmentFacts> segment_facts(key_t key);

/// Why `user` must not trust the table at `key`, or empty: a table owned or created by a user
/// who is neither root nor `user` is that user's to rewrite at will (a squatter's table).
[[nodiscard]] std::string untrusted_owner_reason(key_t key, const SegmentFacts& facts, uid_t user);

/// A slot this process has claimed: `token` proves the claim still holds.
struct Claim {
    std::uint32_t index = 0;
    std::uint64_t token = 0;
};

/// The answer to "may I stop this registration?" (Table::take_stop).
struct StopClaim {
    enum class Result { taken, held, changed } result;
    pid_t holder = 0;  // with `held`: the live checkproc that is stopping it
};

/// A mapping of the table. Copies share one mapping, unmapped when the last goes.
class Table {
public:
    enum class Access { read_only, read_write };

    /// Opens and creates refuse, with Error(EPERM), a table owned or created by a user who is
    /// neither root nor the caller (untrusted_owner_reason), except read-only opens.
    /// Opens the table, creating it when there is none (the library's first use).
    static Table open_or_create(const TableOptions& options = {});
    /// Opens an existing table; nullopt when no segment exists at the key.
    static std::optional<Table> open_existing(const TableOptions& options = {},
                                              Access access = Access::read_write);
    /// Creates a new table; throws Error(EEXIST) when a segment already exists at the key.
    static Table create(const TableOptions& options);
    /// Marks the segment at `key` for removal; false when there is none. Mappings stay valid
    /// until they are unmapped, as with any System V segment.
    static bool destroy(key_t key);

    explicit Table(std::shared_ptr<detail::Segment> segment) noexcept;

    [[nodiscard]] key_t key() const noexcept;
    [[nodiscard]] std::uint32_t slot_count() const noexcept;
    [[nodiscard]] TableInfo info() const;
    /// The header's registration counter alone: one atomic load, to notice new entries cheaply.
    [[nodiscard]] std::uint64_t registration_count() const noexcept;

    /// Slot `index`'s state word (its registration's token), or 0 when it is free: one load.
    [[nodiscard]] std::uint64_t token_of(std::uint32_t index) const noexcept;

    /// A consistent snapshot of slot `index`, or nullopt when it is free.
    [[nodiscard]] std::optional<SlotSnapshot> read(std::uint32_t index) const;

    /// Calls fn(const SlotSnapshot&) for every slot that is not free, in index order.
    template <class Fn>
    void for_each(Fn&& fn) const {
        for (std::uint32_t i = 0; i < slot_count(); ++i) {
            if (auto snapshot = read(i)) fn(*snapshot);
        }
    }

    /// Claims a free slot for `who` and publishes it live with a fresh beat. When no slot is
    /// free, frees the slots of dead owners first. Throws Error: EINVAL for a bad name or
    /// timeout, ENOSPC when every slot holds a live process.
    Claim claim(std::string_view name, std::chrono::milliseconds timeout, const Registrant& who);
    /// A delegated claim for `who`, its exec mark read from /proc (tests and tools).
    Claim claim(std::string_view name, std::chrono::milliseconds timeout, const ProcessIdentity& who,
                uid_t uid);

    /// Frees slot `index` only if it still holds the registration `token`, live or revoked
    /// (a CAS). Only for a caller that knows the registrant can no longer beat: the registrant
    /// itself, or anyone once it has died or exec'd. Otherwise revoke().
    bool free_slot(std::uint32_t index, std::uint64_t token) noexcept;

    enum class Revoked { freed, revoked, changed };
    /// Ends registration `token` on behalf of an operator. A registrant that is still running
    /// may be between its check and its store in beat(), so its slot is only marked revoked:
    /// its next beat() reports `lost`, and the slot is freed when it unregisters or dies.
    /// A registrant that is gone has its slot freed at once. `changed`: the slot no longer
    /// holds `token`.
    Revoked revoke(std::uint32_t index, std::uint64_t token) noexcept;

    /// A beat on another process's behalf, in two halves so that the tests can interleave
    /// them with a release and a new claim: prepare reads what the slot holds, commit stores
    /// the beat with a CAS against it, so a beat never lands in a later registration.
    struct PendingBeat {
        std::uint32_t index = 0;
        std::uint64_t token = 0;
        std::uint64_t last_beat_ns = 0;  // as read when prepared
        std::uint64_t beats = 0;
        std::uint64_t now_ns = 0;  // read before checking the token: older than any later claim
    };
    [[nodiscard]] std::optional<PendingBeat> prepare_beat(std::uint32_t index, std::uint64_t token) const noexcept;
    bool commit_beat(const PendingBeat& pending) noexcept;
    /// Stamps a beat into slot `index` if it still holds `token`. Returns whether it did.
    /// (The hot path is Heartbeat::beat(); this is for tools beating on another's behalf.)
    bool beat(std::uint32_t index, std::uint64_t token) noexcept;

    /// Takes the right to stop registration `token` for the process `stopper`, so that two
    /// checkprocs never act on one entry. `held` when another live checkproc has it (a dead
    /// holder's right is taken over); `changed` when the slot no longer holds `token`.
    StopClaim take_stop(std::uint32_t index, std::uint64_t token, const ProcessIdentity& stopper) noexcept;
    /// Gives the right back (after a stop that did not happen).
    void drop_stop(std::uint32_t index, const ProcessIdentity& stopper) noexcept;

    /// What a slot still says of a checkproc's hang stop of process `who`: the stopper word
    /// and the registration's fields outlive the release of the slot until its next claim, so
    /// a supervisor that reaps `who` learns why it died from the table itself. Anyone who can
    /// write the table can forge one: it explains an exit, it never causes a signal.
    struct StopRecord {
        pid_t stopper_pid = 0;
        std::string name;
        std::chrono::milliseconds timeout{0};
        std::uint64_t last_beat_ns = 0;  // CLOCK_MONOTONIC
    };
    [[nodiscard]] std::optional<StopRecord> stop_record(const ProcessIdentity& who) const;

    /// What read_journal() found.
    enum class JournalRead {
        caught_up,  // every record up to the head was read
        pending,    // the record at `next` is not written yet: its writer is between reserving and
                    // writing it (or died there); try again later
        lost,       // records were overwritten before they were read: `next` is moved to the head,
                    // and every slot must be read again
    };
    /// The slots changed (claimed, released, revoked) by the journal's records from `next` on,
    /// appended to `changed`; `next` moves past the records read. See layout.h.
    JournalRead read_journal(std::uint64_t& next, std::vector<std::uint32_t>& changed) const;
    /// How many journal records have been reserved: a watcher's starting point.
    [[nodiscard]] std::uint64_t journal_head() const noexcept;

    /// Counts a kill in the header (checkproc calls it after a SIGKILL or SIGTERM it sent).
    void count_kill() noexcept;

    /// The slot's shared memory, for Heartbeat's hot path.
    [[nodiscard]] detail::Slot* slot_at(std::uint32_t index) const noexcept;

private:
    std::shared_ptr<detail::Segment> segment_;
};

}  // namespace hbwatch
