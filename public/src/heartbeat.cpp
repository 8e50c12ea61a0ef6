#include <hbwatch/heartbeat.h>

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <utility>

#include "core/process.h"
#include "core/segment.h"
#include "core/table.h"
#include "core/trust.h"

namespace hbwatch {
namespace {

std::once_flag atfork_once;
std::once_flag warned_once;
void on_fork_child() noexcept { detail::fork_generation.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

std::atomic<std::uint64_t> detail::fork_generation{0};

namespace {

// This process as a registrant: its identity and its image marker, which proves to checkproc
// that this image registered itself (see trust.h). Read once per process, without a syscall
// after that: a fork()ed child is a new fork generation and reads its own. No mutex (one held
// at fork() would stay locked in the child): racing threads store equally valid values.
Registrant this_process() {
    static std::atomic<std::uint64_t> filled_for{0};  // the fork generation + 1, once filled
    static std::atomic<pid_t> pid{0};
    static std::atomic<std::uint64_t> start_time{0}, pidfs_inode{0}, image{0}, exec_mark{0};
    constexpr auto relaxed = std::memory_order_relaxed;
    const std::uint64_t generation = detail::fork_generation.load(relaxed) + 1;
    if (filled_for.load(std::memory_order_acquire) != generation) {
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
        filled_for.store(generation, std::memory_order_release);
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
    std::call_once(atfork_once, [] { ::pthread_atfork(nullptr, nullptr, on_fork_child); });
    // The process's one mapping of the table, and its identity and marker: each made once.
    segment_ = detail::Segment::shared(options);
    Table table(segment_);
    Registrant self = this_process();
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
    fork_generation_ = detail::fork_generation.load(std::memory_order_relaxed);
}

namespace {
// Frees the handle's slot, unless this is a fork()ed child's copy of the parent's handle.
void release(const std::shared_ptr<detail::Segment>& segment, std::uint32_t slot, std::uint64_t token,
             std::uint64_t fork_generation) noexcept {
    if (segment && fork_generation == detail::fork_generation.load(std::memory_order_relaxed))
        Table(segment).free_slot(slot, token);
}
}  // namespace

Heartbeat::~Heartbeat() { release(segment_, slot_, token_, fork_generation_); }

Heartbeat::Heartbeat(Heartbeat&& other) noexcept { *this = std::move(other); }

Heartbeat& Heartbeat::operator=(Heartbeat&& other) noexcept {
    if (this != &other) {
        release(segment_, slot_, token_, fork_generation_);
        segment_ = std::move(other.segment_);
        state_ = std::exchange(other.state_, nullptr);
        last_beat_ns_ = std::exchange(other.last_beat_ns_, nullptr);
        beats_ = std::exchange(other.beats_, nullptr);
        token_ = other.token_;
        slot_ = other.slot_;
        key_ = other.key_;
        fork_generation_ = other.fork_generation_;
    }
    return *this;
}

}  // namespace hbwatch

