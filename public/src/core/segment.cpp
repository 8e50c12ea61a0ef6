// The segment's lifecycle: keys, creation, validation, trust in its owner, removal, and this
// process's shared mapping.
#include "core/segment.h"

#include <pthread.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/interprocess/detail/os_file_functions.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/xsi_shared_memory.hpp>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/process.h"
#include "core/table.h"
#include "core/users.h"

namespace bip = boost::interprocess;

namespace hbwatch {

using detail::Header;
using detail::Segment;
using detail::Slot;

// ---------------------------------------------------------------- keys

std::string format_key(key_t key) {
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "0x%08x", static_cast<unsigned>(key));
    return buffer;
}

key_t parse_key(std::string_view text) {
    std::string_view digits = text;
    int base = 10;
    if (digits.starts_with("0x") || digits.starts_with("0X")) {
        digits.remove_prefix(2);
        base = 16;
    }
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
    const bool whole = ec == std::errc{} && end == digits.data() + digits.size() && !digits.empty();
    if (!whole || value == 0 || value > std::numeric_limits<std::uint32_t>::max())
        throw Error(EINVAL, "bad table key '" + std::string(text) +
                                "': give a non-zero 32-bit number in hex (0x48425754) or decimal (1212307284)");
    return static_cast<key_t>(static_cast<std::uint32_t>(value));
}

key_t key_from_environment() {
    const char* text = std::getenv("HBWATCH_KEY");
    if (text == nullptr || *text == '\0') return kDefaultKey;
    try {
        return parse_key(text);
    } catch (const Error& e) {
        throw Error(EINVAL, std::string("HBWATCH_KEY: ") + e.what());
    }
}

// ---------------------------------------------------------------- the mapping

namespace {
template <class T>
bool read_number(std::string_view text, T& out, int base = 10) {
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out, base);
    return ec == std::errc{} && end == text.data() + text.size();
}
}  // namespace

std::optional<SegmentFacts> segment_facts(key_t key) {
    const auto text = read_proc_file("/proc/sysvipc/shm");
    if (!text) return std::nullopt;
    const auto lines = lines_of(*text);
    for (std::size_t i = 1; i < lines.size(); ++i) {  // after the column titles
        // key shmid perms size cpid lpid nattch uid gid cuid cgid ...
        const auto words = leading_words(lines[i], 11);
        if (words.size() < 11) continue;
        long long file_key = 0;
        if (!read_number(words[0], file_key) || static_cast<key_t>(file_key) != key) continue;
        SegmentFacts facts;
        unsigned mode = 0;
        if (read_number(words[1], facts.shmid) && read_number(words[2], mode, 8) && read_number(words[3], facts.bytes) &&
            read_number(words[4], facts.creator) && read_number(words[7], facts.uid) && read_number(words[8], facts.gid) &&
            read_number(words[9], facts.cuid) && read_number(words[10], facts.cgid)) {
            facts.mode = static_cast<mode_t>(mode & 0777);
            return facts;
        }
    }
    return std::nullopt;
}

std::string untrusted_owner_reason(key_t key, const SegmentFacts& facts, uid_t user) {
    for (const auto& [role, uid] : {std::pair{"owned", facts.uid}, std::pair{"created", facts.cuid}}) {
        if (uid == 0 || uid == user) continue;
        return std::string("the table at key ") + format_key(key) + " is " + role + " by uid " + std::to_string(uid) +
               ", who is neither root nor you (uid " + std::to_string(user) + "), so that user can rewrite every entry and "
               "its permissions at will (creator pid " + std::to_string(facts.creator) +
               "). hbwatch trusts only a table owned by root or by you: if the segment is not meant to be there, "
               "remove it as root (ipcrm -M " + format_key(key) + ") and have root create the table (proctab init), "
               "or use another key (HBWATCH_KEY)";
    }
    return {};
}

namespace {

constexpr std::size_t table_bytes(std::uint32_t slots) {
    return detail::kSlotsOffset + std::size_t{slots} * sizeof(Slot);
}

std::string user_label(uid_t uid) {
    // No getpwuid here: the library must not pull NSS into every service's registration.
    return "uid " + std::to_string(uid);
}

// 0660 lets the creator's group share the table. When other users have that group (Debian's
// nogroup holds sync and _apt beside nobody; many hosts give every user `users`), they could
// forge entries, and checkproc would then rightly refuse the creator's delegated ones
// (proctab beat): keep such a table private unless its creator asks to share it.
mode_t default_mode(key_t key, const std::optional<gid_t>& group) {
    if (group) return 0660;  // a group named on purpose
    const uid_t self = ::geteuid();
    const gid_t gid = ::getegid();
    std::vector<uid_t> others = group_members(gid);
    std::erase(others, self);
    std::erase(others, uid_t{0});
    if (others.empty()) return 0660;
    std::sort(others.begin(), others.end());
    others.erase(std::unique(others.begin(), others.end()), others.end());
    std::string names;
    for (std::size_t i = 0; i < others.size() && i < 3; ++i) names += (i ? ", " : "") + user_name(others[i]);
    if (others.size() > 3) names += " and " + std::to_string(others.size() - 3) + " more";
    std::fprintf(stderr,
                 "hbwatch: creating the table at key %s with mode 0600, not 0660: its group %s is shared with %s, "
                 "who could forge its entries. To share it on purpose: proctab init --mode 0660 --group GROUP\n",
                 format_key(key).c_str(), group_label(gid).c_str(), names.c_str());
    return 0600;
}

std::string describe_owner(key_t key) {
    auto facts = segment_facts(key);
    if (!facts) return "owner unknown";
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(facts->mode));
    std::string text = std::string("mode ") + mode + ", owner " + user_label(facts->uid) + " gid " + std::to_string(facts->gid);
    if (facts->cuid != facts->uid) text += ", creator " + user_label(facts->cuid);
    text += ", created by pid " + std::to_string(facts->creator) + (is_running(facts->creator) ? " (running)" : " (gone)");
    return text;
}

[[noreturn]] void throw_permission(key_t key, bool writing) {
    throw Error(EACCES, "no permission to open the hbwatch table at key " + format_key(key) + " for " +
                            (writing ? "reading and writing" : "reading") + " (" + describe_owner(key) + "; you are uid " +
                            std::to_string(::geteuid()) + " gid " + std::to_string(::getegid()) +
                            "): run as the owner or in its group, or have root recreate the table with a wider "
                            "--mode or --group (proctab init). If you do not know that owner, the key may be squatted: "
                            "remove the segment as root (ipcrm -M " + format_key(key) +
                            ") or use another key (HBWATCH_KEY)");
}

[[noreturn]] void throw_system(key_t key, const char* doing, int err) {
    if (err == EACCES || err == EPERM) throw_permission(key, std::string_view(doing) != "read");
    throw Error(err, std::string("cannot ") + doing + " the hbwatch table at key " + format_key(key) + ": " +
                         std::strerror(err));
}

[[noreturn]] void throw_foreign(key_t key, std::uint64_t bytes, const std::string& found) {
    throw Error(EPROTO, "the shared-memory segment at key " + format_key(key) + " (" + std::to_string(bytes) +
                            " bytes) is not an hbwatch table: " + found +
                            ". It was left untouched. Point hbwatch elsewhere with HBWATCH_KEY, or, if "
                            "nothing uses the segment, remove it with: ipcrm -M " + format_key(key));
}

std::string hex(std::uint64_t value) {
    char buffer[24];
    std::snprintf(buffer, sizeof buffer, "0x%016llx", static_cast<unsigned long long>(value));
    return buffer;
}

void write_header(Header& header, std::uint32_t slots) {
    header.version.store(detail::kLayoutVersion, std::memory_order_relaxed);
    header.header_size.store(detail::kSlotsOffset, std::memory_order_relaxed);
    header.slot_size.store(sizeof(Slot), std::memory_order_relaxed);
    header.slot_count.store(slots, std::memory_order_relaxed);
    std::uint64_t unset = 0;
    header.created_realtime_ns.compare_exchange_strong(unset, realtime_now_ns(), std::memory_order_relaxed);
    unset = 0;
    header.created_monotonic_ns.compare_exchange_strong(unset, monotonic_now_ns(), std::memory_order_relaxed);
    std::uint64_t no_magic = 0;
    header.magic.compare_exchange_strong(no_magic, detail::kMagic, std::memory_order_release,
                                         std::memory_order_relaxed);
}

// A segment whose creator was killed between shmget and storing the magic is all zeros but
// for header fields that can only hold our own values. Finishing its initialization is safe:
// the values are the same whoever writes them. Anything else is refused, untouched.
bool is_unfinished_table(const void* base, std::size_t bytes) {
    if (bytes < table_bytes(1) || (bytes - detail::kSlotsOffset) % sizeof(Slot) != 0) return false;
    const auto slots = (bytes - detail::kSlotsOffset) / sizeof(Slot);
    if (slots > kMaxSlots) return false;
    const auto& header = *static_cast<const Header*>(base);
    auto zero_or = [](std::uint64_t value, std::uint64_t expected) { return value == 0 || value == expected; };
    if (!zero_or(header.version.load(), detail::kLayoutVersion) || !zero_or(header.header_size.load(), detail::kSlotsOffset) ||
        !zero_or(header.slot_size.load(), sizeof(Slot)) || !zero_or(header.slot_count.load(), slots))
        return false;
    if (header.registrations.load() != 0 || header.releases.load() != 0 || header.reclaims.load() != 0 ||
        header.kills.load() != 0 || header.journal_head.load() != 0)
        return false;
    const auto* rest = static_cast<const unsigned char*>(base) + sizeof(Header);  // the journal, then the slots
    return std::all_of(rest, static_cast<const unsigned char*>(base) + bytes, [](unsigned char b) { return b == 0; });
}

// The pid that created segment `shmid`, if it still runs.
std::optional<pid_t> live_creator(int shmid) {
    shmid_ds ds{};
    if (::shmctl(shmid, IPC_STAT, &ds) != 0) return std::nullopt;
    if (!is_running(ds.shm_cpid)) return std::nullopt;
    return ds.shm_cpid;
}

// Checks that the mapped segment is an hbwatch table of this layout; returns its slot count.
std::uint32_t validate_layout(key_t key, int shmid, void* base, std::size_t bytes, bool writable) {
    if (bytes < sizeof(Header))
        throw_foreign(key, bytes, "it is smaller than the " + std::to_string(sizeof(Header)) + "-byte header");
    auto& header = *static_cast<Header*>(base);
    std::uint64_t magic = header.magic.load(std::memory_order_acquire);
    if (magic == 0) {
        // An hbwatch creator publishes the magic microseconds after shmget: give a live one a
        // moment (there is no event to wait on in a System V segment).
        for (int i = 0; i < 200 && magic == 0 && live_creator(shmid); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            magic = header.magic.load(std::memory_order_acquire);
        }
        if (magic == 0) {
            if (auto creator = live_creator(shmid))
                throw_foreign(key, bytes, "its magic is 0 and its creator, pid " + std::to_string(*creator) +
                                              ", is running but has not made it a table");
            if (!is_unfinished_table(base, bytes)) throw_foreign(key, bytes, "its magic is 0 and it holds data");
            if (!writable)
                throw Error(EAGAIN, "the hbwatch table at key " + format_key(key) +
                                        " was never finished by its creator; open it read-write to finish it");
            write_header(header, static_cast<std::uint32_t>((bytes - detail::kSlotsOffset) / sizeof(Slot)));
            magic = header.magic.load(std::memory_order_acquire);
        }
    }
    if (magic != detail::kMagic)
        throw_foreign(key, bytes, "found magic " + hex(magic) + ", expected " + hex(detail::kMagic));
    const auto version = header.version.load();
    if (version != detail::kLayoutVersion)
        throw Error(EPROTO, "the hbwatch table at key " + format_key(key) + " has layout version " +
                                std::to_string(version) + " but this build reads version " +
                                std::to_string(detail::kLayoutVersion) +
                                ": stop the services that use it, then remove and recreate it (ipcrm -M " +
                                format_key(key) + ")");
    const auto slots = header.slot_count.load();
    if (header.header_size.load() != detail::kSlotsOffset || header.slot_size.load() != sizeof(Slot) || slots == 0 ||
        slots > kMaxSlots || bytes != table_bytes(slots))
        throw_foreign(key, bytes,
                      "its header says " + std::to_string(slots) + " slots of " +
                          std::to_string(header.slot_size.load()) + " bytes after a " +
                          std::to_string(header.header_size.load()) + "-byte header, which does not match its size");
    return slots;
}

// An existing segment by id, for mapped_region. Boost's own open_only asks shmget for
// read-write access, which would refuse a reader that may only read.
struct ExistingSegment {
    int shmid;
    bip::mapping_handle_t get_mapping_handle() const noexcept { return {shmid, true}; }
};

// Refuses a table whose owner or creator is a user other than root and `user`: that user
// could steer what this process writes and what the tools do.
void check_owner(key_t key, const shmid_ds& ds) {
    SegmentFacts facts;
    facts.shmid = -1;
    facts.uid = ds.shm_perm.uid;
    facts.cuid = ds.shm_perm.cuid;
    facts.creator = ds.shm_cpid;
    if (auto reason = untrusted_owner_reason(key, facts, ::geteuid()); !reason.empty()) throw Error(EPERM, reason);
}

}  // namespace

std::shared_ptr<Segment> Segment::open(key_t key, bool writable) {
    const int shmid = ::shmget(key, 0, 0);  // asks for no access: shmat checks it
    if (shmid < 0) {
        if (errno == ENOENT) return nullptr;
        throw_system(key, "read", errno);
    }
    auto segment = std::make_shared<Segment>();
    try {
        segment->region = bip::mapped_region(ExistingSegment{shmid}, writable ? bip::read_write : bip::read_only);
    } catch (const bip::interprocess_exception& e) {
        if (e.get_native_error() == EINVAL || e.get_native_error() == EIDRM) return nullptr;  // removed meanwhile
        throw_system(key, writable ? "write" : "read", e.get_native_error());
    }
    if (writable) {
        shmid_ds ds{};
        if (::shmctl(shmid, IPC_STAT, &ds) != 0) throw_system(key, "inspect", errno);
        check_owner(key, ds);
        segment->owner = ds.shm_perm.uid;
        segment->creator = ds.shm_perm.cuid;
    }
    segment->key = key;
    segment->shmid = shmid;
    segment->writable = writable;
    segment->slot_count = validate_layout(key, shmid, segment->region.get_address(), segment->region.get_size(), writable);
    segment->header = static_cast<Header*>(segment->region.get_address());
    segment->journal = reinterpret_cast<detail::Journal*>(static_cast<char*>(segment->region.get_address()) + sizeof(Header));
    segment->slots = reinterpret_cast<Slot*>(static_cast<char*>(segment->region.get_address()) + detail::kSlotsOffset);
    return segment;
}

std::shared_ptr<Segment> Segment::create(key_t key, const TableOptions& options) {
    if (options.slots == 0 || options.slots > kMaxSlots)
        throw Error(EINVAL, "cannot create a table of " + std::to_string(options.slots) + " slots at key " +
                                format_key(key) + ": give 1 to " + std::to_string(kMaxSlots) + " slots");
    const mode_t permissions = options.mode ? *options.mode : default_mode(key, options.group);
    if ((permissions & ~mode_t{0777}) != 0 || (permissions & 0600) != 0600) {
        char mode[16];
        std::snprintf(mode, sizeof mode, "0%o", static_cast<unsigned>(permissions));
        throw Error(EINVAL, std::string("bad table mode ") + mode +
                                ": give permission bits that let the owner read and write, such as 0660 or 0600");
    }
    const std::size_t bytes = table_bytes(options.slots);
    std::unique_ptr<bip::xsi_shared_memory> shm;
    try {
        shm = std::make_unique<bip::xsi_shared_memory>(bip::create_only, bip::xsi_key(key), bytes,
                                                       bip::permissions(static_cast<unsigned>(permissions)));
    } catch (const bip::interprocess_exception& e) {
        const int err = e.get_native_error();
        if (err == EEXIST) return nullptr;
        if (err == EINVAL || err == ENOMEM || err == ENOSPC)
            throw Error(err, "cannot create a table of " + std::to_string(options.slots) + " slots (" +
                                 std::to_string(bytes) + " bytes) at key " + format_key(key) + ": " +
                                 std::strerror(err) + "; check kernel.shmmax, kernel.shmall and kernel.shmmni");
        throw_system(key, "create", err);
    }
    if (options.group) {
        shmid_ds ds{};
        if (::shmctl(shm->get_shmid(), IPC_STAT, &ds) == 0) {
            ds.shm_perm.gid = *options.group;
            if (::shmctl(shm->get_shmid(), IPC_SET, &ds) != 0) {
                const int err = errno;
                bip::xsi_shared_memory::remove(shm->get_shmid());
                throw Error(err, "cannot give the new table at key " + format_key(key) + " to group " +
                                     std::to_string(*options.group) + ": " + std::strerror(err));
            }
        }
    }
    auto segment = std::make_shared<Segment>();
    try {
        segment->region = bip::mapped_region(*shm, bip::read_write);
    } catch (const bip::interprocess_exception& e) {
        // Never leave an unfinished segment at the key for everyone else to trip over.
        bip::xsi_shared_memory::remove(shm->get_shmid());
        throw_system(key, "map", e.get_native_error());
    }
    segment->key = key;
    segment->shmid = shm->get_shmid();
    segment->writable = true;
    segment->owner = segment->creator = ::geteuid();
    segment->slot_count = options.slots;
    segment->header = static_cast<Header*>(segment->region.get_address());
    segment->journal = reinterpret_cast<detail::Journal*>(static_cast<char*>(segment->region.get_address()) + sizeof(Header));
    segment->slots = reinterpret_cast<Slot*>(static_cast<char*>(segment->region.get_address()) + detail::kSlotsOffset);
    write_header(*segment->header, options.slots);  // the segment is zero-filled: every slot is free
    return segment;
}

std::shared_ptr<Segment> Segment::open_or_create(key_t key, const TableOptions& options) {
    // Two loops at most: a racing creator wins (EEXIST) or a racing destroyer removes (ENOENT).
    for (int attempt = 0; attempt < 8; ++attempt) {
        if (auto segment = open(key, true)) return segment;
        if (auto segment = create(key, options)) return segment;
    }
    throw Error(EAGAIN, "the hbwatch table at key " + format_key(key) +
                            " keeps appearing and disappearing: is something destroying it in a loop?");
}

namespace {

// This process's mappings, one per key (a process rarely uses more than one key). A mutex is
// fine here, off the hot path: the atfork handlers keep it from being held in a child.
struct SharedSegments {
    std::mutex mutex;
    std::vector<std::shared_ptr<Segment>> segments;
};
SharedSegments& shared_segments() {
    static auto* registry = [] {
        auto* r = new SharedSegments;  // never destroyed: handles may outlive static destruction
        ::pthread_atfork([] { shared_segments().mutex.lock(); }, [] { shared_segments().mutex.unlock(); },
                         [] { shared_segments().mutex.unlock(); });
        return r;
    }();
    return *registry;
}

// Whether `segment` is still the table at its key: not removed (its key would read as
// IPC_PRIVATE) nor replaced, and still owned by a user this process trusts.
bool still_current(Segment& segment) {
    shmid_ds ds{};
    if (::shmctl(segment.shmid, IPC_STAT, &ds) != 0) return false;
    if (ds.shm_perm.__key != segment.key || (ds.shm_perm.mode & SHM_DEST) != 0) return false;
    if (ds.shm_perm.uid != segment.owner || ds.shm_perm.cuid != segment.creator) {
        check_owner(segment.key, ds);  // given away since it was mapped
        segment.owner = ds.shm_perm.uid;
        segment.creator = ds.shm_perm.cuid;
    }
    return true;
}

}  // namespace

std::shared_ptr<Segment> Segment::shared(const TableOptions& options) {
    const key_t key = options.key.value_or(key_from_environment());
    auto& registry = shared_segments();
    std::lock_guard lock(registry.mutex);
    for (auto& segment : registry.segments) {
        if (segment->key != key) continue;
        if (still_current(*segment)) return segment;
        segment = open_or_create(key, options);  // handles on the old one keep it mapped
        return segment;
    }
    return registry.segments.emplace_back(open_or_create(key, options));
}

// ---------------------------------------------------------------- Table: the segment's side

Table::Table(std::shared_ptr<Segment> segment) noexcept : segment_(std::move(segment)) {}

Table Table::open_or_create(const TableOptions& options) {
    const key_t key = options.key.value_or(key_from_environment());
    return Table(Segment::open_or_create(key, options));
}

std::optional<Table> Table::open_existing(const TableOptions& options, Access access) {
    const key_t key = options.key.value_or(key_from_environment());
    auto segment = Segment::open(key, access == Access::read_write);
    if (!segment) return std::nullopt;
    return Table(std::move(segment));
}

Table Table::create(const TableOptions& options) {
    const key_t key = options.key.value_or(key_from_environment());
    auto segment = Segment::create(key, options);
    if (!segment)
        throw Error(EEXIST, "a shared-memory segment already exists at key " + format_key(key) +
                                ": remove it first (proctab destroy, or ipcrm -M " + format_key(key) + ")");
    return Table(std::move(segment));
}

bool Table::destroy(key_t key) {
    const int shmid = ::shmget(key, 0, 0);
    if (shmid < 0) {
        if (errno == ENOENT) return false;
        throw_system(key, "find", errno);
    }
    if (!bip::xsi_shared_memory::remove(shmid)) throw_system(key, "remove", errno);
    return true;
}

key_t Table::key() const noexcept { return segment_->key; }
std::uint32_t Table::slot_count() const noexcept { return segment_->slot_count; }
detail::Slot* Table::slot_at(std::uint32_t index) const noexcept { return &segment_->slots[index]; }

std::uint64_t Table::registration_count() const noexcept {
    return segment_->header->registrations.load(std::memory_order_acquire);
}

TableInfo Table::info() const {
    const Header& header = *segment_->header;
    TableInfo info;
    info.key = segment_->key;
    info.shmid = segment_->shmid;
    info.version = header.version.load();
    info.slot_count = segment_->slot_count;
    info.bytes = segment_->region.get_size();
    info.created_realtime_ns = header.created_realtime_ns.load();
    info.created_monotonic_ns = header.created_monotonic_ns.load();
    info.registrations = header.registrations.load();
    info.releases = header.releases.load();
    info.reclaims = header.reclaims.load();
    info.kills = header.kills.load();
    shmid_ds ds{};
    if (::shmctl(segment_->shmid, IPC_STAT, &ds) == 0) {
        info.mode = ds.shm_perm.mode & 0777;
        info.owner_uid = ds.shm_perm.uid;
        info.owner_gid = ds.shm_perm.gid;
        info.creator_uid = ds.shm_perm.cuid;
        info.creator_pid = ds.shm_cpid;
    }
    return info;
}

}  // namespace hbwatch
