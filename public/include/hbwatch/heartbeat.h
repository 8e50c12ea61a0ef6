#pragma once
// The service author's side: register once, beat in the main loop.
//
//     #include <hbwatch/heartbeat.h>
//     hbwatch::Heartbeat hb{"order-svc", std::chrono::seconds(30)};
//     for (;;) { serve_one(); hb.beat(); }

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>

#include <hbwatch/error.h>
#include <hbwatch/export.h>
#include <hbwatch/options.h>

namespace hbwatch {

enum class BeatStatus {
    ok,        // the beat is stamped
    inactive,  // the handle was moved from
    forked,    // called in a fork()ed child: the parent's slot is left alone
    lost,      // the registration has ended: an operator removed it (proctab remove); register anew
};

[[nodiscard]] HBWATCH_API const char* to_string(BeatStatus status) noexcept;

namespace detail {
/// This process's fork epoch: a word in a page that the kernel zeroes in every fork()ed child
/// (MADV_WIPEONFORK), however the child was made, so that beat() knows it runs in a copy
/// without calling getpid(), which is a syscall. Set by the first registration.
extern HBWATCH_API const std::atomic<std::uint64_t>* fork_epoch;
struct Segment;    // this process's mapping of the table, shared by its handles
struct BeatProbe;  // the tests' access to the two halves of beat()
}  // namespace detail

/// One registration of the calling process in the table.
///
/// The constructor claims a slot (creating the table on first use) and throws hbwatch::Error
/// when it cannot: a bad name or timeout, a full table, no permission, a foreign segment at
/// the key. The destructor frees the slot. beat() is the hot path: a few relaxed atomic
/// loads and stores and a vDSO clock read, with no syscall, lock or allocation; it may be
/// called from any thread (concurrent calls may undercount `beats`, never corrupt the slot),
/// but not while another thread destroys or moves the handle.
///
/// A process maps the table once, on its first registration, and keeps that mapping for all
/// its handles until it exits; a registration costs a few microseconds.
///
/// After fork() the child does not own the parent's registration: in the child, beat()
/// returns BeatStatus::forked and stamps nothing, and the destructor leaves the parent's slot
/// alone. A child that wants watching constructs a Heartbeat of its own.
class HBWATCH_API Heartbeat {
public:
    Heartbeat(std::string_view name, std::chrono::milliseconds timeout);
    Heartbeat(std::string_view name, std::chrono::milliseconds timeout, const TableOptions& options);
    ~Heartbeat();

    Heartbeat(Heartbeat&& other) noexcept;
    Heartbeat& operator=(Heartbeat&& other) noexcept;
    Heartbeat(const Heartbeat&) = delete;
    Heartbeat& operator=(const Heartbeat&) = delete;

    /// Stamps "alive now". Returns what happened; ignoring the result is fine in a loop.
    /// Inline, so that the hot path is the clock read and a few relaxed atomic accesses.
    BeatStatus beat() noexcept {
        const BeatStatus status = owned();
        if (status == BeatStatus::ok) stamp();
        return status;
    }

    [[nodiscard]] std::uint32_t slot() const noexcept { return slot_; }
    [[nodiscard]] key_t key() const noexcept { return key_; }

private:
    friend struct detail::BeatProbe;

    // Whether this handle may stamp its slot. Between this check and the stores, the slot can
    // only be revoked, never given to another registration: a slot changes hands only once
    // its owner has released it (this handle's destructor) or has died (see core/slots.cpp).
    BeatStatus owned() const noexcept {
        constexpr auto relaxed = std::memory_order_relaxed;
        if (state_ == nullptr) return BeatStatus::inactive;
        if (fork_epoch_ != detail::fork_epoch->load(relaxed)) return BeatStatus::forked;
        if (state_->load(relaxed) != token_) return BeatStatus::lost;
        return BeatStatus::ok;
    }
    void stamp() noexcept {
        constexpr auto relaxed = std::memory_order_relaxed;
        timespec now;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now);  // vDSO: no syscall
        last_beat_ns_->store(static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(now.tv_nsec),
                             relaxed);
        beats_->store(beats_->load(relaxed) + 1, relaxed);  // one writer: no read-modify-write needed
    }

    std::shared_ptr<detail::Segment> segment_;
    // Into the claimed slot in shared memory; null when the handle is inactive.
    std::atomic<std::uint64_t>* state_ = nullptr;
    std::atomic<std::uint64_t>* last_beat_ns_ = nullptr;
    std::atomic<std::uint64_t>* beats_ = nullptr;
    std::uint64_t token_ = 0;
    std::uint32_t slot_ = 0;
    key_t key_ = 0;
    std::uint64_t fork_epoch_ = 0;
};

}  // namespace hbwatch
