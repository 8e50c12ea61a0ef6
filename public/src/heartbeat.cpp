#include <hbwatch/heartbeat.h>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <new>
#include <utility>

#include "core/clock.h"
#include "core/process.h"
#include "core/segment.h"
#include "core/table.h"
#include "core/trust.h"

namespace hbwatch {

const std::atomic<std::uint64_t>* detail::fork_epoch = nullptr;

namespace {

std::once_flag warned_once;

// Where the fork epoch lives: a page the kernel zeroes in every child (MADV_WIPEONFORK, Linux
// 4.14+); without it, a word that a pthread_atfork handler zeroes (which _Fork() and a raw
// clone() skip).
std::atomic<std::uint64_t> epoch_without_wipe{0};
std::atomic<std::uint64_t>* epoch_word() {
    static std::atomic<std::uint64_t>* word = [] {
        const long page = ::sysconf(_SC_PAGESIZE);
        void* at = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        std::atomic<std::uint64_t>* chosen = nullptr;
        if (at != MAP_FAILED && ::madvise(at, static_cast<std::size_t>(page), MADV_WIPEONFORK) == 0) {
            chosen = new (at) std::atomic<std::uint64_t>{0};
        } else {
            if (at != MAP_FAILED) ::munmap(at, static_cast<std::size_t>(page));
            ::pthread_atfork(nullptr, nullptr, [] { epoch_without_wipe.store(0, std::memory_order_relaxed); });
            chosen = &epoch_without_wipe;
        }
        detail::fork_epoch = chosen;  // once, inside the thread-safe initialization of this static
        return chosen;
    }();
    return word;
}

// This process's epoch: chosen by its first registration, and anew in a child (whose word
// reads 0), so that it differs from the epoch of every handle inherited from the parent.
std::uint64_t current_epoch() {
    std::atomic<std::uint64_t>* word = epoch_word();
    std::uint64_t epoch = word->load(std::memory_order_relaxed);
    if (epoch != 0) return epoch;
    std::uint64_t fresh = 0;
    if (::getrandom(&fresh, sizeof fresh, 0) != static_cast<ssize_t>(sizeof fresh))
        fresh = (static_cast<std::uint64_t>(::getpid()) << 32) ^ monotonic_now_ns();
    fresh |= 1;  // never 0
    word->compare_exchange_strong(epoch, fresh, std::memory_order_relaxed);  // a racing thread's value is as good
    return word->load(std::memory_order_relaxed);
}

// This process as a registrant: its identity and its image marker, which proves to checkproc
// that this image registered itself (see trust.h). Read once per fork epoch, so a child,
// however it was made, reads its own. No mutex (one held at fork() would stay locked in the
// child): racing threads store equally valid values.
Registrant this_process(std::uint64_t epoch) {
    static std::atomic<std::uint64_t> filled_for{0};
    static std::atomic<pid_t> pid{0};
    static std::atomic<std::uint64_t> start_time{0}, pidfs_inode{0}, image{0}, exec_mark{0};
    constexpr auto relaxed = std::memory_order_relaxed;
    if (filled_for.load(std::memory_order_acquire) != epoch) {
        const ProcessIdentity identity = self_identity();
        const std::uint64_t marker = image_marker();
        std::uint64_t mark = 0;
        if (marker == 0) {  // no memfd: checkproc falls back to the delegated rule, with the exec mark
            if (auto stat = read_proc_stat(identity.pid)) mark = stat->start_stack;
        }
        pid.store(identity.pid, relaxed);
        start_time.store(identity.start_time, relaxed);
        pidfs_inode.store(identity.pidfs_inode, relaxed);
        image.store(marker, relaxed);
        exec_mark.store(mark, relaxed);
        filled_for.store(epoch, std::memory_order_release);
    }
    return Registrant{{pid.load(relaxed), start_time.load(relaxed), pidfs_inode.load(relaxed)}, 0, image.load(relaxed),
                      exec_mark.load(relaxed)};
}

}  // namespace

Error::~Error() = default;

const char* to_string(BeatStatus status) noexcept {
    switch (status) {
        case BeatStatus::ok: return "ok";
        case BeatStatus::inactive: return "inactive";
        case BeatStatus::forked: return "forked";
        case BeatStatus::lost: return "lost";
    }
    return "unknown";
}

Heartbeat::Heartbeat(std::string_view name, std::chrono::milliseconds timeout)
    : Heartbeat(name, timeout, TableOptions{}) {}

Heartbeat::Heartbeat(std::string_view name, std::chrono::milliseconds timeout, const TableOptions& options) {
    validate_name(name);  // before touching the table: a bad argument must not create one
    validate_timeout(timeout);
    // The process's one mapping of the table, and its identity and marker: each made once.
    segment_ = detail::Segment::shared(options);
    Table table(segment_);
    const std::uint64_t epoch = current_epoch();
    Registrant self = this_process(epoch);
    self.uid = ::getuid();  // not cached: a process may change it between registrations
    const Claim claim = table.claim(name, timeout, self);
    std::call_once(warned_once, [&] {
        if (auto warning = shared_table_warning(table.key(), ::geteuid()); !warning.empty())
            std::fprintf(stderr, "hbwatch: warning: %s\n", warning.c_str());
    });
    detail::Slot* slot = table.slot_at(claim.index);
    state_ = &slot->state;
    last_beat_ns_ = &slot->last_beat_ns;
    beats_ = &slot->beats;
    token_ = claim.token;
    slot_ = claim.index;
    key_ = table.key();
    fork_epoch_ = epoch;
}

namespace {
// Frees the handle's slot, unless this is a fork()ed child's copy of the parent's handle.
void release(const std::shared_ptr<detail::Segment>& segment, std::uint32_t slot, std::uint64_t token,
             std::uint64_t fork_epoch) noexcept {
    if (segment && fork_epoch == detail::fork_epoch->load(std::memory_order_relaxed))
        Table(segment).free_slot(slot, token);
}
}  // namespace

Heartbeat::~Heartbeat() { release(segment_, slot_, token_, fork_epoch_); }

Heartbeat::Heartbeat(Heartbeat&& other) noexcept { *this = std::move(other); }

Heartbeat& Heartbeat::operator=(Heartbeat&& other) noexcept {
    if (this != &other) {
        release(segment_, slot_, token_, fork_epoch_);
        segment_ = std::move(other.segment_);
        state_ = std::exchange(other.state_, nullptr);
        last_beat_ns_ = std::exchange(other.last_beat_ns_, nullptr);
        beats_ = std::exchange(other.beats_, nullptr);
        token_ = other.token_;
        slot_ = other.slot_;
        key_ = other.key_;
        fork_epoch_ = other.fork_epoch_;
    }
    return *this;
}

}  // namespace hbwatch

