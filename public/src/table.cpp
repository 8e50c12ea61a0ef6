#include <hbwatch/table.h>

#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include <boost/interprocess/detail/os_file_functions.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/xsi_shared_memory.hpp>

#include <hbwatch/clock.h>
#include <hbwatch/duration.h>
#include <hbwatch/error.h>

#include "internal/layout.h"

namespace bip = boost::interprocess;

namespace hbwatch {

using detail::Header;
using detail::Slot;
using detail::generation_of;
using detail::make_state;
using detail::phase_of;
using detail::pid_of;

// ---------------------------------------------------------------- keys, names, timeouts

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

namespace {

bool allowed_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::strchr("._-:@+/", c) != nullptr;
}

// Shows untrusted bytes safely in a message: printable ASCII as is, the rest as \xNN.
std::string printable(std::string_view bytes) {
    std::string out;
    for (unsigned char c : bytes) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            char buffer[8];
            std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
            out += buffer;
        }
    }
    return out;
}

}  // namespace

void validate_name(std::string_view name) {
    constexpr const char* kRule = "use 1 to 47 letters, digits or . _ - : @ + /";
    if (name.empty()) throw Error(EINVAL, std::string("heartbeat name is empty: ") + kRule);
    if (name.size() > kMaxNameLength)
        throw Error(EINVAL, "heartbeat name '" + printable(name.substr(0, 20)) + "...' is " +
                                std::to_string(name.size()) + " bytes long: " + kRule);
    for (std::size_t i = 0; i < name.size(); ++i) {
        if (!allowed_name_char(name[i]))
            throw Error(EINVAL, "heartbeat name '" + printable(name) + "' has a bad character at byte " +
                                    std::to_string(i) + ": " + kRule);
    }
}

void validate_timeout(std::chrono::milliseconds timeout) {
    if (timeout < kMinTimeout || timeout > kMaxTimeout)
        throw Error(EINVAL, "heartbeat timeout " + format_duration(timeout) + " is out of range: give " +
                                format_duration(kMinTimeout) + " to " + format_duration(kMaxTimeout));
}

// ---------------------------------------------------------------- snapshots

std::string_view SlotSnapshot::name() const noexcept {
    const auto* end = std::find(name_bytes.begin(), name_bytes.end(), '\0');
    return {name_bytes.data(), static_cast<std::size_t>(end - name_bytes.begin())};
}

std::string SlotSnapshot::garbage_reason() const {
    const pid_t pid = process.pid;
    if (pid <= 0) return "pid " + std::to_string(pid) + " is not a process";
    if (pid == 1) return "pid 1 is init, never a registered service";
    if (phase != SlotPhase::live) return {};
    if (std::find(name_bytes.begin(), name_bytes.end(), '\0') == name_bytes.end())
        return "name is not NUL-terminated";
    try {
        validate_name(name());
        validate_timeout(timeout);
    } catch (const Error& e) {
        return e.what();
    }
    if (process.start_time == 0) return "start time 0 is not a process start time";
    return {};
}

std::chrono::milliseconds SlotSnapshot::since_beat(std::uint64_t now_ns) const noexcept {
    if (now_ns <= last_beat_ns) return std::chrono::milliseconds(0);
    return std::chrono::milliseconds((now_ns - last_beat_ns) / 1'000'000);
}

// ---------------------------------------------------------------- the mapping

std::optional<SegmentFacts> segment_facts(key_t key) {
    std::ifstream in("/proc/sysvipc/shm");
    std::string line;
    std::getline(in, line);  // column titles
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        long long file_key = 0;
        SegmentFacts facts;
        std::string mode_text;
        pid_t last_pid = 0;
        long attached = 0;
        if (!(fields >> file_key >> facts.shmid >> mode_text >> facts.bytes >> facts.creator >> last_pid >>
              attached >> facts.uid >> facts.gid >> facts.cuid >> facts.cgid))
            continue;
        if (static_cast<key_t>(file_key) != key) continue;
        facts.mode = static_cast<mode_t>(std::strtoul(mode_text.c_str(), nullptr, 8) & 0777);
        return facts;
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

struct Table::Mapping {
    key_t key = 0;
    int shmid = -1;
    bip::mapped_region region;
    Header* header = nullptr;
    Slot* slots = nullptr;
    std::uint32_t slot_count = 0;
    bool writable = false;
};

namespace {

constexpr std::size_t table_bytes(std::uint32_t slots) {
    return sizeof(Header) + std::size_t{slots} * sizeof(Slot);
}

std::string user_label(uid_t uid) {
    // No getpwuid here: the library must not pull NSS into every service's registration.
    return "uid " + std::to_string(uid);
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
    header.header_size.store(sizeof(Header), std::memory_order_relaxed);
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
    if (bytes < table_bytes(1) || (bytes - sizeof(Header)) % sizeof(Slot) != 0) return false;
    const auto slots = (bytes - sizeof(Header)) / sizeof(Slot);
    if (slots > kMaxSlots) return false;
    const auto& header = *static_cast<const Header*>(base);
    auto zero_or = [](std::uint64_t value, std::uint64_t expected) { return value == 0 || value == expected; };
    if (!zero_or(header.version.load(), detail::kLayoutVersion) || !zero_or(header.header_size.load(), sizeof(Header)) ||
        !zero_or(header.slot_size.load(), sizeof(Slot)) || !zero_or(header.slot_count.load(), slots))
        return false;
    if (header.registrations.load() != 0 || header.releases.load() != 0 || header.reclaims.load() != 0 ||
        header.kills.load() != 0)
        return false;
    const auto* slot_bytes = static_cast<const unsigned char*>(base) + sizeof(Header);
    return std::all_of(slot_bytes, slot_bytes + slots * sizeof(Slot), [](unsigned char b) { return b == 0; });
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
            write_header(header, static_cast<std::uint32_t>((bytes - sizeof(Header)) / sizeof(Slot)));
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
    if (header.header_size.load() != sizeof(Header) || header.slot_size.load() != sizeof(Slot) || slots == 0 ||
        slots > kMaxSlots || bytes != table_bytes(slots))
        throw_foreign(key, bytes,
                      "its header says " + std::to_string(slots) + " slots of " +
                          std::to_string(header.slot_size.load()) + " bytes after a " +
                          std::to_string(header.header_size.load()) + "-byte header, which does not match its size");
    return slots;
}

}  // namespace

Table::Table(std::unique_ptr<Mapping> mapping) noexcept : mapping_(std::move(mapping)) {}
Table::Table(Table&&) noexcept = default;
Table& Table::operator=(Table&&) noexcept = default;
Table::~Table() = default;

// An existing segment by id, for mapped_region. Boost's own open_only asks shmget for
// read-write access, which would refuse a reader that may only read.
struct ExistingSegment {
    int shmid;
    bip::mapping_handle_t get_mapping_handle() const noexcept { return {shmid, true}; }
};

// Maps an existing segment; nullptr when there is none.
static std::unique_ptr<Table::Mapping> map_existing(key_t key, bool writable) {
    const int shmid = ::shmget(key, 0, 0);  // asks for no access: shmat checks it
    if (shmid < 0) {
        if (errno == ENOENT) return nullptr;
        throw_system(key, "read", errno);
    }
    auto mapping = std::make_unique<Table::Mapping>();
    try {
        mapping->region = bip::mapped_region(ExistingSegment{shmid}, writable ? bip::read_write : bip::read_only);
    } catch (const bip::interprocess_exception& e) {
        if (e.get_native_error() == EINVAL || e.get_native_error() == EIDRM) return nullptr;  // removed meanwhile
        throw_system(key, writable ? "write" : "read", e.get_native_error());
    }
    if (writable) {
        // A squatter's table would let its owner steer what this process writes and what the
        // tools do: only root's or the caller's own is used for writing.
        shmid_ds ds{};
        if (::shmctl(shmid, IPC_STAT, &ds) != 0) throw_system(key, "inspect", errno);
        SegmentFacts facts;
        facts.shmid = shmid;
        facts.uid = ds.shm_perm.uid;
        facts.cuid = ds.shm_perm.cuid;
        facts.creator = ds.shm_cpid;
        if (auto reason = untrusted_owner_reason(key, facts, ::geteuid()); !reason.empty()) throw Error(EPERM, reason);
    }
    mapping->key = key;
    mapping->shmid = shmid;
    mapping->writable = writable;
    mapping->slot_count = validate_layout(key, shmid, mapping->region.get_address(), mapping->region.get_size(), writable);
    mapping->header = static_cast<Header*>(mapping->region.get_address());
    mapping->slots = reinterpret_cast<Slot*>(static_cast<char*>(mapping->region.get_address()) + sizeof(Header));
    return mapping;
}

// Creates and initializes a segment; nullptr when one already exists at the key.
static std::unique_ptr<Table::Mapping> create_segment(key_t key, const TableOptions& options) {
    if (options.slots == 0 || options.slots > kMaxSlots)
        throw Error(EINVAL, "cannot create a table of " + std::to_string(options.slots) + " slots at key " +
                                format_key(key) + ": give 1 to " + std::to_string(kMaxSlots) + " slots");
    if ((options.mode & ~mode_t{0777}) != 0)
        throw Error(EINVAL, "bad table mode 0" + std::to_string(options.mode) + ": give permission bits such as 0660");
    const std::size_t bytes = table_bytes(options.slots);
    std::unique_ptr<bip::xsi_shared_memory> shm;
    try {
        shm = std::make_unique<bip::xsi_shared_memory>(bip::create_only, bip::xsi_key(key), bytes,
                                                       bip::permissions(static_cast<unsigned>(options.mode)));
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
    auto mapping = std::make_unique<Table::Mapping>();
    mapping->region = bip::mapped_region(*shm, bip::read_write);
    mapping->key = key;
    mapping->shmid = shm->get_shmid();
    mapping->writable = true;
    mapping->slot_count = options.slots;
    mapping->header = static_cast<Header*>(mapping->region.get_address());
    mapping->slots = reinterpret_cast<Slot*>(static_cast<char*>(mapping->region.get_address()) + sizeof(Header));
    write_header(*mapping->header, options.slots);  // the segment is zero-filled: every slot is free
    return mapping;
}

Table Table::open_or_create(const TableOptions& options) {
    const key_t key = options.key.value_or(key_from_environment());
    // Two loops at most: a racing creator wins (EEXIST) or a racing destroyer removes (ENOENT).
    for (int attempt = 0; attempt < 8; ++attempt) {
        if (auto mapping = map_existing(key, true)) return Table(std::move(mapping));
        if (auto mapping = create_segment(key, options)) return Table(std::move(mapping));
    }
    throw Error(EAGAIN, "the hbwatch table at key " + format_key(key) +
                            " keeps appearing and disappearing: is something destroying it in a loop?");
}

std::optional<Table> Table::open_existing(const TableOptions& options, Access access) {
    const key_t key = options.key.value_or(key_from_environment());
    auto mapping = map_existing(key, access == Access::read_write);
    if (!mapping) return std::nullopt;
    return Table(std::move(mapping));
}

Table Table::create(const TableOptions& options) {
    const key_t key = options.key.value_or(key_from_environment());
    auto mapping = create_segment(key, options);
    if (!mapping)
        throw Error(EEXIST, "a shared-memory segment already exists at key " + format_key(key) +
                                ": remove it first (proctab destroy, or ipcrm -M " + format_key(key) + ")");
    return Table(std::move(mapping));
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

key_t Table::key() const noexcept { return mapping_->key; }
std::uint32_t Table::slot_count() const noexcept { return mapping_->slot_count; }
detail::Slot* Table::slot_at(std::uint32_t index) const noexcept { return &mapping_->slots[index]; }

std::uint64_t Table::registration_count() const noexcept {
    return mapping_->header->registrations.load(std::memory_order_acquire);
}

TableInfo Table::info() const {
    const Header& header = *mapping_->header;
    TableInfo info;
    info.key = mapping_->key;
    info.shmid = mapping_->shmid;
    info.version = header.version.load();
    info.slot_count = mapping_->slot_count;
    info.bytes = mapping_->region.get_size();
    info.created_realtime_ns = header.created_realtime_ns.load();
    info.created_monotonic_ns = header.created_monotonic_ns.load();
    info.registrations = header.registrations.load();
    info.releases = header.releases.load();
    info.reclaims = header.reclaims.load();
    info.kills = header.kills.load();
    shmid_ds ds{};
    if (::shmctl(mapping_->shmid, IPC_STAT, &ds) == 0) {
        info.mode = ds.shm_perm.mode & 0777;
        info.owner_uid = ds.shm_perm.uid;
        info.owner_gid = ds.shm_perm.gid;
        info.creator_uid = ds.shm_perm.cuid;
        info.creator_pid = ds.shm_cpid;
    }
    return info;
}

// A seqlock-style read: copy the fields between two loads of the state word. Fields change
// only while the state word changes (claim, release), so equal words mean a consistent copy.
std::optional<SlotSnapshot> Table::read(std::uint32_t index) const {
    if (index >= mapping_->slot_count) return std::nullopt;
    const Slot& slot = mapping_->slots[index];
    constexpr auto relaxed = std::memory_order_relaxed;
    for (;;) {
        const std::uint64_t before = slot.state.load(std::memory_order_acquire);
        if (phase_of(before) == SlotPhase::free) return std::nullopt;
        SlotSnapshot s;
        s.index = index;
        s.token = before;
        s.phase = phase_of(before);
        s.process.pid = pid_of(before);
        s.process.start_time = slot.start_time.load(relaxed);
        s.uid = slot.uid.load(relaxed);
        s.timeout = std::chrono::milliseconds(slot.timeout_ms.load(relaxed));
        s.registered_ns = slot.registered_ns.load(relaxed);
        s.last_beat_ns = slot.last_beat_ns.load(relaxed);
        s.beats = slot.beats.load(relaxed);
        s.process.pidfs_inode = slot.pidfs_inode.load(relaxed);
        s.image = slot.image.load(relaxed);
        s.exec_mark = slot.exec_mark.load(relaxed);
        for (std::size_t w = 0; w < detail::kNameWords; ++w) {
            const std::uint64_t word = slot.name[w].load(relaxed);
            std::memcpy(s.name_bytes.data() + w * 8, &word, 8);
        }
        std::atomic_thread_fence(std::memory_order_acquire);
        if (slot.state.load(relaxed) == before) {
            if (s.phase != SlotPhase::live) {  // a claim in progress: only the pid is meaningful yet
                const pid_t pid = s.process.pid;
                s = SlotSnapshot{};
                s.index = index, s.token = before, s.phase = SlotPhase::claiming, s.process.pid = pid;
            }
            return s;
        }
    }
}

namespace {

// Whether a slot's owner can never beat again, so the slot may be taken back.
bool owner_is_dead(const SlotSnapshot& s) {
    if (s.process.pid <= 0) return true;
    if (s.phase == SlotPhase::claiming) {
        // No start time is recorded yet; only a pid with no live process proves the claimer died.
        return !is_running(s.process.pid);
    }
    return liveness(s.process) != Liveness::alive;
}

bool try_claim(Slot& slot, std::uint64_t& token, pid_t pid) {
    std::uint64_t expected = slot.state.load(std::memory_order_relaxed);
    if (phase_of(expected) != SlotPhase::free) return false;
    const std::uint64_t generation = (generation_of(expected) + 1) & ((1ull << 30) - 1);
    const std::uint64_t claiming = make_state(generation, pid, SlotPhase::claiming);
    if (!slot.state.compare_exchange_strong(expected, claiming, std::memory_order_acquire, std::memory_order_relaxed))
        return false;
    token = claiming;
    return true;
}

}  // namespace

Claim Table::claim(std::string_view name, std::chrono::milliseconds timeout, const ProcessIdentity& who, uid_t uid) {
    Registrant registrant{who, uid, 0, 0};
    if (auto stat = read_proc_stat(who.pid); stat && stat->start_time == who.start_time)
        registrant.exec_mark = stat->start_stack;
    return claim(name, timeout, registrant);
}

Claim Table::claim(std::string_view name, std::chrono::milliseconds timeout, const Registrant& registrant) {
    const ProcessIdentity& who = registrant.process;
    const uid_t uid = registrant.uid;
    validate_name(name);
    validate_timeout(timeout);
    if (who.pid <= 1) throw Error(EINVAL, "cannot register pid " + std::to_string(who.pid) + " as '" + std::string(name) + "'");
    if (!mapping_->writable) throw Error(EBADF, "the table at key " + format_key(key()) + " is mapped read-only");
    const std::uint32_t count = mapping_->slot_count;
    Header& header = *mapping_->header;

    // Start at a pid-derived slot so that many processes registering at once rarely collide.
    const std::uint32_t start = static_cast<std::uint32_t>(who.pid) % count;
    std::uint64_t token = 0;
    std::optional<std::uint32_t> index;
    for (std::uint32_t i = 0; i < count && !index; ++i) {
        const std::uint32_t candidate = (start + i) % count;
        if (try_claim(mapping_->slots[candidate], token, who.pid)) index = candidate;
    }
    if (!index) {
        // Full: take back the slots of owners that died without releasing them.
        for (std::uint32_t i = 0; i < count && !index; ++i) {
            auto s = read(i);
            if (!s || !owner_is_dead(*s) || !free_slot(i, s->token)) continue;
            header.reclaims.fetch_add(1, std::memory_order_relaxed);
            if (try_claim(mapping_->slots[i], token, who.pid)) index = i;
        }
    }
    if (!index)
        throw Error(ENOSPC, "the hbwatch table at key " + format_key(key()) + " is full: all " + std::to_string(count) +
                                " slots hold live processes, so '" + std::string(name) +
                                "' cannot register. Remove entries that are not needed (proctab remove), or "
                                "recreate the table with more slots (proctab init --slots " +
                                std::to_string(std::min<std::uint64_t>(std::uint64_t{count} * 2, kMaxSlots)) +
                                ") once the services are stopped");

    Slot& slot = mapping_->slots[*index];
    constexpr auto relaxed = std::memory_order_relaxed;
    const std::uint64_t now = coarse_monotonic_now_ns();
    slot.start_time.store(who.start_time, relaxed);
    slot.uid.store(uid, relaxed);
    slot.timeout_ms.store(static_cast<std::uint32_t>(timeout.count()), relaxed);
    slot.registered_ns.store(now, relaxed);
    slot.last_beat_ns.store(now, relaxed);
    slot.beats.store(0, relaxed);
    slot.stopper.store(0, relaxed);
    slot.pidfs_inode.store(who.pidfs_inode, relaxed);
    slot.image.store(registrant.image, relaxed);
    slot.exec_mark.store(registrant.exec_mark, relaxed);
    char padded[detail::kNameWords * 8] = {};
    std::memcpy(padded, name.data(), name.size());
    for (std::size_t w = 0; w < detail::kNameWords; ++w) {
        std::uint64_t word;
        std::memcpy(&word, padded + w * 8, 8);
        slot.name[w].store(word, relaxed);
    }
    // Publish with a CAS: if a reclaimer took the slot while this process was stopped
    // mid-claim, the claim is void and the fields written above belong to nobody.
    std::uint64_t expected = token;
    const std::uint64_t live = make_state(generation_of(token), who.pid, SlotPhase::live);
    if (!slot.state.compare_exchange_strong(expected, live, std::memory_order_release, std::memory_order_relaxed))
        return claim(name, timeout, registrant);
    header.registrations.fetch_add(1, std::memory_order_relaxed);
    return Claim{*index, live};
}

bool Table::free_slot(std::uint32_t index, std::uint64_t token) noexcept {
    if (index >= mapping_->slot_count || !mapping_->writable || phase_of(token) == SlotPhase::free) return false;
    std::uint64_t expected = token;
    const std::uint64_t freed = make_state(generation_of(token), 0, SlotPhase::free);
    if (!mapping_->slots[index].state.compare_exchange_strong(expected, freed, std::memory_order_release,
                                                              std::memory_order_relaxed))
        return false;
    mapping_->header->releases.fetch_add(1, std::memory_order_relaxed);
    return true;
}

bool Table::beat(std::uint32_t index, std::uint64_t token) noexcept {
    if (index >= mapping_->slot_count || !mapping_->writable) return false;
    Slot& slot = mapping_->slots[index];
    if (slot.state.load(std::memory_order_relaxed) != token) return false;
    slot.last_beat_ns.store(coarse_monotonic_now_ns(), std::memory_order_relaxed);
    slot.beats.store(slot.beats.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return true;
}

namespace {
std::uint64_t stopper_word(const ProcessIdentity& who) {
    return (who.start_time << 32) | static_cast<std::uint32_t>(who.pid);
}
// Whether the checkproc that wrote `word` is still running.
bool stopper_alive(std::uint64_t word) {
    const auto pid = static_cast<pid_t>(static_cast<std::uint32_t>(word));
    auto stat = read_proc_stat(pid);
    return stat && (stat->start_time & 0xFFFFFFFFu) == (word >> 32) && !has_exited(*stat);
}
}  // namespace

StopClaim Table::take_stop(std::uint32_t index, std::uint64_t token, const ProcessIdentity& stopper) noexcept {
    if (index >= mapping_->slot_count || !mapping_->writable) return {StopClaim::Result::changed, 0};
    Slot& slot = mapping_->slots[index];
    const std::uint64_t mine = stopper_word(stopper);
    std::uint64_t held = slot.stopper.load(std::memory_order_acquire);
    for (;;) {
        if (slot.state.load(std::memory_order_acquire) != token) return {StopClaim::Result::changed, 0};
        if (held == mine) return {StopClaim::Result::taken, 0};
        if (held != 0 && stopper_alive(held))
            return {StopClaim::Result::held, static_cast<pid_t>(static_cast<std::uint32_t>(held))};
        if (slot.stopper.compare_exchange_weak(held, mine, std::memory_order_acq_rel, std::memory_order_acquire)) break;
    }
    // The slot may have been released and claimed again between the two words: undo.
    if (slot.state.load(std::memory_order_acquire) != token) {
        std::uint64_t expected = mine;
        slot.stopper.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
        return {StopClaim::Result::changed, 0};
    }
    return {StopClaim::Result::taken, 0};
}

void Table::drop_stop(std::uint32_t index, const ProcessIdentity& stopper) noexcept {
    if (index >= mapping_->slot_count || !mapping_->writable) return;
    std::uint64_t expected = stopper_word(stopper);
    mapping_->slots[index].stopper.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

void Table::count_kill() noexcept {
    if (mapping_->writable) mapping_->header->kills.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace hbwatch
