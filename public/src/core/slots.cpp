// The slots: registering, releasing, revoking, beating on another's behalf, reading a
// consistent snapshot, and the right to stop an entry.
//
// Each slot's state word (layout.h) is the only thing writers change with a CAS:
//
//     free(g) --claim--> claiming(g+1, pid) --publish--> live(g+1, pid) --release--> free(g+1)
//                                                            |                          ^
//                                                            +--revoke--> revoked ------+
//
// - claim: CAS free -> claiming (acquire: the fields written after it are ours), then a
//   release fence, so that a reader that sees any field we write also sees the word change
//   and retries (the seqlock writer's pattern). Fields are relaxed stores.
// - publish: CAS claiming -> live with release: a reader that acquires `live` sees every field.
// - release: CAS live|revoked -> free (release), by the registrant itself, or by anyone once
//   the registrant is dead or has exec'd. Never while it might still run beat(): beat()
//   checks the word, then stores, and a slot that changed hands in between would take a
//   stale beat. That is why an operator revokes instead: a revoked slot cannot be claimed
//   while its registrant lives, so a stale store lands in its own (revoked) slot.
// - a claimer reclaims a claiming, live or revoked slot whose owner is dead: CAS to free.
// - readers: load the word (acquire), copy the fields (relaxed), acquire fence, load the word
//   again (relaxed): equal words mean the copy is one registration's. last_beat_ns and beats
//   change without the word (beats), and a reader takes whatever value it sees of them.
// A process SIGKILLed between any two steps leaves a slot that a later claim or checkproc
// takes back once it sees the owner dead: nothing waits on anyone.
#include "core/table.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/segment.h"

namespace hbwatch {

using detail::Header;
using detail::Slot;
using detail::generation_of;
using detail::make_state;
using detail::phase_of;
using detail::pid_of;

bool name_char(unsigned char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && std::strchr("._-:@+/", c) != nullptr);  // strchr finds the terminator too
}

std::string escaped(std::string_view text, bool (*keep)(unsigned char)) {
    std::string out;
    for (unsigned char c : text) {
        if (keep(c)) {
            out += static_cast<char>(c);
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        }
    }
    return out;
}

namespace {
// Untrusted bytes in a message: printable ASCII as is, the rest as \xNN.
std::string printable(std::string_view bytes) {
    return escaped(bytes, [](unsigned char c) { return c >= 0x20 && c < 0x7f && c != '\\'; });
}
}  // namespace

void validate_name(std::string_view name) {
    constexpr const char* kRule = "use 1 to 47 letters, digits or . _ - : @ + /";
    if (name.empty()) throw Error(EINVAL, std::string("heartbeat name is empty: ") + kRule);
    if (name.size() > kMaxNameLength)
        throw Error(EINVAL, "heartbeat name '" + printable(name.substr(0, 20)) + "...' is " +
                                std::to_string(name.size()) + " bytes long: " + kRule);
    for (std::size_t i = 0; i < name.size(); ++i) {
        if (!name_char(static_cast<unsigned char>(name[i])))
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

std::optional<Garbage> SlotSnapshot::garbage() const noexcept {
    if (process.pid <= 0) return Garbage::not_a_pid;
    if (process.pid == 1) return Garbage::init;
    if (phase == SlotPhase::claiming) return std::nullopt;
    if (std::find(name_bytes.begin(), name_bytes.end(), '\0') == name_bytes.end()) return Garbage::unterminated_name;
    const std::string_view text = name();
    if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return name_char(static_cast<unsigned char>(c)); }))
        return Garbage::bad_name;
    if (timeout < kMinTimeout || timeout > kMaxTimeout) return Garbage::bad_timeout;
    if (process.start_time == 0) return Garbage::no_start_time;
    return std::nullopt;
}

std::string SlotSnapshot::describe(Garbage garbage) const {
    switch (garbage) {
        case Garbage::not_a_pid: return "pid " + std::to_string(process.pid) + " is not a process";
        case Garbage::init: return "pid 1 is init, never a registered service";
        case Garbage::unterminated_name: return "name is not NUL-terminated";
        case Garbage::bad_name:
        case Garbage::bad_timeout:
            try {  // the registration rule's own words
                if (garbage == Garbage::bad_name) validate_name(name());
                else validate_timeout(timeout);
            } catch (const Error& e) {
                return e.what();
            }
            return "bad name or timeout";
        case Garbage::no_start_time: return "start time 0 is not a process start time";
    }
    return "unknown";
}

std::string SlotSnapshot::garbage_reason() const {
    const auto found = garbage();
    return found ? describe(*found) : std::string();
}

std::chrono::milliseconds SlotSnapshot::since_beat(std::uint64_t now_ns) const noexcept {
    if (now_ns <= last_beat_ns) return std::chrono::milliseconds(0);
    return std::chrono::milliseconds((now_ns - last_beat_ns) / 1'000'000);
}

std::uint64_t Table::token_of(std::uint32_t index) const noexcept {
    if (index >= segment_->slot_count) return 0;
    const std::uint64_t state = segment_->slots[index].state.load(std::memory_order_acquire);
    return phase_of(state) == SlotPhase::free ? 0 : state;
}

std::optional<SlotSnapshot> Table::read(std::uint32_t index) const {
    if (index >= segment_->slot_count) return std::nullopt;
    const Slot& slot = segment_->slots[index];
    constexpr auto relaxed = std::memory_order_relaxed;
    // Honest writers change a word a few times a second at most; one that flips it endlessly
    // is hostile, and must not hold the reader: after that many tries the slot reads as a claim
    // in progress, which is judged on its pid alone.
    constexpr int kTries = 1000;
    for (int attempt = 0;; ++attempt) {
        const std::uint64_t before = slot.state.load(detail::order::read_word);
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
        std::atomic_thread_fence(detail::order::read_fence);
        const bool consistent = slot.state.load(relaxed) == before;
        if (consistent || attempt == kTries) {
            if (!consistent || s.phase == SlotPhase::claiming) {  // a claim in progress: only the pid is meaningful yet
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

// Records that slot `index` changed, after the CAS that changed it: a watcher that reads the
// record (acquire) sees the change.
void journal_change(detail::Segment& segment, std::uint32_t index) noexcept {
    const std::uint64_t sequence = segment.header->journal_head.fetch_add(1, std::memory_order_relaxed);
    segment.journal->records[sequence % detail::kJournalRecords].store(
        ((sequence + 1) << detail::kJournalIndexBits) | index, detail::order::journal_write);
}

bool try_claim(Slot& slot, std::uint64_t& token, pid_t pid) {
    std::uint64_t expected = slot.state.load(std::memory_order_relaxed);
    if (phase_of(expected) != SlotPhase::free) return false;
    const std::uint64_t generation = (generation_of(expected) + 1) & ((1ull << 30) - 1);
    const std::uint64_t claiming = make_state(generation, pid, SlotPhase::claiming);
    if (!slot.state.compare_exchange_strong(expected, claiming, detail::order::claim, std::memory_order_relaxed))
        return false;
    // The seqlock writer's fence: the field stores below cannot be seen before the new word.
    std::atomic_thread_fence(detail::order::after_claim);
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
    if (!segment_->writable) throw Error(EBADF, "the table at key " + format_key(key()) + " is mapped read-only");
    const std::uint32_t count = segment_->slot_count;
    Header& header = *segment_->header;
    constexpr auto relaxed = std::memory_order_relaxed;

    // Each pass claims a slot; one voided by a reclaimer (this process was stopped mid-claim
    // and taken for dead) starts over. Only a hostile writer could void pass after pass.
    for (int attempt = 0; attempt < 16; ++attempt) {
        // Start at the hint: the slot released last, or the one after the slot claimed last. Any
        // value is safe (a process may die having written any), and a stale one costs probes.
        const auto start = static_cast<std::uint32_t>(header.free_hint.load(relaxed) % count);
        std::uint64_t token = 0;
        std::optional<std::uint32_t> index;
        for (std::uint32_t i = 0; i < count && !index; ++i) {
            const std::uint32_t candidate = start + i < count ? start + i : start + i - count;
            if (try_claim(segment_->slots[candidate], token, who.pid)) index = candidate;
        }
        if (!index) {
            // Full: take back the slots of owners that died without releasing them.
            for (std::uint32_t i = 0; i < count && !index; ++i) {
                auto s = read(i);
                if (!s || !owner_is_dead(*s) || !free_slot(i, s->token)) continue;
                header.reclaims.fetch_add(1, relaxed);
                if (try_claim(segment_->slots[i], token, who.pid)) index = i;
            }
        }
        if (!index)
            throw Error(ENOSPC, "the hbwatch table at key " + format_key(key()) + " is full: all " + std::to_string(count) +
                                    " slots hold live processes, so '" + std::string(name) +
                                    "' cannot register. Remove entries that are not needed (proctab remove), or "
                                    "recreate the table with more slots (proctab init --slots " +
                                    std::to_string(std::min<std::uint64_t>(std::uint64_t{count} * 2, kMaxSlots)) +
                                    ") once the services are stopped");
        header.free_hint.store(*index + 1 < count ? *index + 1 : 0, relaxed);

        Slot& slot = segment_->slots[*index];
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
        if (!slot.state.compare_exchange_strong(expected, live, detail::order::publish, relaxed)) continue;
        header.registrations.fetch_add(1, relaxed);
        journal_change(*segment_, *index);
        return Claim{*index, live};
    }
    throw Error(EAGAIN, "registering '" + std::string(name) + "' in the table at key " + format_key(key()) +
                            " failed 16 times: another process keeps taking the slots it claims. Check who can write "
                            "the table (proctab)");
}

bool Table::free_slot(std::uint32_t index, std::uint64_t token) noexcept {
    if (index >= segment_->slot_count || !segment_->writable || phase_of(token) == SlotPhase::free) return false;
    Slot& slot = segment_->slots[index];
    const std::uint64_t freed = make_state(generation_of(token), 0, SlotPhase::free);
    std::uint64_t expected = token;
    bool done = slot.state.compare_exchange_strong(expected, freed, detail::order::release, std::memory_order_relaxed);
    if (!done && phase_of(token) == SlotPhase::live) {  // revoked meanwhile: still this registration
        expected = make_state(generation_of(token), pid_of(token), SlotPhase::revoked);
        done = slot.state.compare_exchange_strong(expected, freed, detail::order::release, std::memory_order_relaxed);
    }
    if (!done) return false;
    segment_->header->releases.fetch_add(1, std::memory_order_relaxed);
    segment_->header->free_hint.store(index, std::memory_order_relaxed);
    journal_change(*segment_, index);
    return true;
}

Table::Revoked Table::revoke(std::uint32_t index, std::uint64_t token) noexcept {
    auto s = read(index);
    if (!s || s->token != token) return Revoked::changed;
    if (owner_is_dead(*s)) return free_slot(index, token) ? Revoked::freed : Revoked::changed;
    if (s->phase == SlotPhase::revoked) return Revoked::revoked;
    if (s->phase != SlotPhase::live) return Revoked::changed;  // a live claimer's claim in progress
    std::uint64_t expected = token;
    const std::uint64_t revoked = make_state(generation_of(token), pid_of(token), SlotPhase::revoked);
    if (!segment_->slots[index].state.compare_exchange_strong(expected, revoked, detail::order::release,
                                                              std::memory_order_relaxed))
        return Revoked::changed;
    journal_change(*segment_, index);
    return Revoked::revoked;
}

Table::JournalRead Table::read_journal(std::uint64_t& next, std::vector<std::uint32_t>& changed) const {
    const std::uint64_t head = segment_->header->journal_head.load(std::memory_order_acquire);
    if (head - next > detail::kJournalRecords) {  // also a `next` from the future (a forged head)
        next = head;
        return JournalRead::lost;
    }
    constexpr std::uint64_t kIndexMask = (std::uint64_t{1} << detail::kJournalIndexBits) - 1;
    for (; next != head; ++next) {
        const std::uint64_t record =
            segment_->journal->records[next % detail::kJournalRecords].load(detail::order::journal_read);
        const std::uint64_t sequence = record >> detail::kJournalIndexBits;
        if (sequence < next + 1) return JournalRead::pending;
        if (sequence > next + 1) {
            next = head;
            return JournalRead::lost;
        }
        const auto index = static_cast<std::uint32_t>(record & kIndexMask);
        if (index < segment_->slot_count) changed.push_back(index);
    }
    return JournalRead::caught_up;
}

std::uint64_t Table::journal_head() const noexcept {
    return segment_->header->journal_head.load(std::memory_order_acquire);
}

std::optional<Table::PendingBeat> Table::prepare_beat(std::uint32_t index, std::uint64_t token) const noexcept {
    if (index >= segment_->slot_count || !segment_->writable || phase_of(token) != SlotPhase::live) return std::nullopt;
    const Slot& slot = segment_->slots[index];
    PendingBeat pending{index, token, 0, 0, coarse_monotonic_now_ns()};
    pending.last_beat_ns = slot.last_beat_ns.load(std::memory_order_acquire);
    pending.beats = slot.beats.load(std::memory_order_relaxed);
    if (slot.state.load(std::memory_order_acquire) != token) return std::nullopt;
    return pending;
}

bool Table::commit_beat(const PendingBeat& pending) noexcept {
    if (pending.index >= segment_->slot_count || !segment_->writable) return false;
    Slot& slot = segment_->slots[pending.index];
    // A later registration of the slot wrote its own registration time, which is no earlier
    // than pending.now_ns: the CAS then fails, or (same coarse tick) stores the same value.
    std::uint64_t expected = pending.last_beat_ns;
    if (!slot.last_beat_ns.compare_exchange_strong(expected, std::max(pending.now_ns, pending.last_beat_ns),
                                                   std::memory_order_acq_rel, std::memory_order_relaxed))
        return false;
    if (slot.state.load(std::memory_order_acquire) != pending.token) return false;
    std::uint64_t beats = pending.beats;
    slot.beats.compare_exchange_strong(beats, beats + 1, std::memory_order_relaxed);
    return true;
}

bool Table::beat(std::uint32_t index, std::uint64_t token) noexcept {
    // A concurrent beat of the same entry (another proctab beat) may win the CAS: try again.
    for (int attempt = 0; attempt < 8; ++attempt) {
        auto pending = prepare_beat(index, token);
        if (!pending) return false;
        if (commit_beat(*pending)) return true;
    }
    return false;
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
    if (index >= segment_->slot_count || !segment_->writable) return {StopClaim::Result::changed, 0};
    Slot& slot = segment_->slots[index];
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

std::optional<Table::StopRecord> Table::stop_record(const ProcessIdentity& who) const {
    constexpr auto relaxed = std::memory_order_relaxed;
    for (std::uint32_t index = 0; index < segment_->slot_count; ++index) {
        const Slot& slot = segment_->slots[index];
        const std::uint64_t before = slot.state.load(detail::order::read_word);
        // A released slot keeps its fields but not its pid; a claim in progress is another registration.
        if (phase_of(before) == SlotPhase::claiming || (phase_of(before) != SlotPhase::free && pid_of(before) != who.pid)) continue;
        const std::uint64_t stopper = slot.stopper.load(relaxed);
        if (stopper == 0 || slot.start_time.load(relaxed) != who.start_time) continue;
        // With pidfs the inode names one process for the boot: a released slot's start time alone
        // could be another's that started in the same tick.
        const std::uint64_t inode = slot.pidfs_inode.load(relaxed);
        if (who.pidfs_inode != 0 ? inode != who.pidfs_inode : inode != 0) continue;
        StopRecord record;
        record.stopper_pid = static_cast<pid_t>(static_cast<std::uint32_t>(stopper));
        record.timeout = std::chrono::milliseconds(slot.timeout_ms.load(relaxed));
        record.last_beat_ns = slot.last_beat_ns.load(relaxed);
        std::array<char, kMaxNameLength + 1> name{};
        for (std::size_t w = 0; w < detail::kNameWords; ++w) {
            const std::uint64_t word = slot.name[w].load(relaxed);
            std::memcpy(name.data() + w * 8, &word, 8);
        }
        std::atomic_thread_fence(detail::order::read_fence);
        if (slot.state.load(relaxed) != before) continue;  // claimed meanwhile: no longer about `who`
        record.name = escaped(std::string_view(name.data(), ::strnlen(name.data(), name.size())), name_char);
        return record;
    }
    return std::nullopt;
}

void Table::drop_stop(std::uint32_t index, const ProcessIdentity& stopper) noexcept {
    if (index >= segment_->slot_count || !segment_->writable) return;
    std::uint64_t expected = stopper_word(stopper);
    segment_->slots[index].stopper.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

void Table::count_kill() noexcept {
    if (segment_->writable) segment_->header->kills.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace hbwatch
