#include <hbwatch/heartbeat.h>

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <utility>


#include <cstdio>

#include <hbwatch/trust.h>

#include "internal/layout.h"

namespace hbwatch {
namespace {

std::once_flag atfork_once;
std::once_flag warned_once;
void on_fork_child() noexcept { detail::fork_generation.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

std::atomic<std::uint64_t> detail::fork_generation{0};

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
    table_ = std::make_unique<Table>(Table::open_or_create(options));
    // The marker proves to checkproc that this image registered itself (see trust.h).
    const std::uint64_t image = image_marker();
    Registrant self{self_identity(), ::getuid(), image, 0};
    if (image == 0) {  // no memfd: fall back to the delegated rule, with the exec mark
        if (auto stat = read_proc_stat(self.process.pid)) self.exec_mark = stat->start_stack;
    }
    claim_ = table_->claim(name, timeout, self);
    std::call_once(warned_once, [&] {
        if (auto warning = shared_table_warning(table_->key(), ::geteuid()); !warning.empty())
            std::fprintf(stderr, "hbwatch: warning: %s\n", warning.c_str());
    });
    detail::Slot* slot = table_->slot_at(claim_.index);
    state_ = &slot->state;
    last_beat_ns_ = &slot->last_beat_ns;
    beats_ = &slot->beats;
    fork_generation_ = detail::fork_generation.load(std::memory_order_relaxed);
}

Heartbeat::~Heartbeat() { release(); }

Heartbeat::Heartbeat(Heartbeat&& other) noexcept { *this = std::move(other); }

Heartbeat& Heartbeat::operator=(Heartbeat&& other) noexcept {
    if (this != &other) {
        release();
        table_ = std::move(other.table_);
        state_ = std::exchange(other.state_, nullptr);
        last_beat_ns_ = std::exchange(other.last_beat_ns_, nullptr);
        beats_ = std::exchange(other.beats_, nullptr);
        claim_ = other.claim_;
        fork_generation_ = other.fork_generation_;
    }
    return *this;
}

void Heartbeat::release() noexcept {
    // A forked child unmaps its copy but never frees the parent's registration.
    if (state_ != nullptr && fork_generation_ == detail::fork_generation.load(std::memory_order_relaxed))
        table_->free_slot(claim_.index, claim_.token);
    state_ = last_beat_ns_ = beats_ = nullptr;
    table_.reset();
}

}  // namespace hbwatch
