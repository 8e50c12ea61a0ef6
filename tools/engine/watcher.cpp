#include "engine/watcher.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <unordered_map>
#include <vector>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/pidfd.h"

namespace hbwatch::tool {
namespace {

constexpr std::uint64_t kJournalPollNs = to_ns(std::chrono::milliseconds(20));  // new entries seen within this
constexpr std::uint64_t kTableCheckNs = to_ns(std::chrono::seconds(1));         // a replaced table, within this
constexpr std::uint64_t kUnwrittenRecordNs = to_ns(std::chrono::seconds(1));    // then read every slot instead
constexpr std::uint64_t kBatchNs = to_ns(std::chrono::milliseconds(50));  // entries re-read together (never acted on early)
constexpr std::uint64_t kClaimLookNs = to_ns(std::chrono::seconds(1));   // a claim takes microseconds
constexpr std::uint64_t kSweepNs = to_ns(std::chrono::minutes(1));  // the backstop reads every state word once in this
constexpr std::uint64_t kSweepStepNs = to_ns(std::chrono::seconds(1));
// Descriptors kept free of watched processes: for the table, logs, and the pidfds of stops
// (a mass hang stops many at once; each stop also gives its watched pidfd back).
constexpr std::size_t kSpareFds = 1024;

// How many pidfds this process may hold: RLIMIT_NOFILE raised to what `wanted` needs, as far
// as the hard limit (or, with CAP_SYS_RESOURCE, fs.nr_open) allows.
std::size_t raise_fd_limit(std::size_t wanted, const LogSink& log) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    const rlim_t needed = static_cast<rlim_t>(wanted + kSpareFds);
    if (limit.rlim_max < needed) {
        rlim_t nr_open = 0;
        std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
        rlimit raised{std::min(needed, nr_open), std::min(needed, nr_open)};
        if (nr_open > limit.rlim_max && ::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    if (limit.rlim_cur < std::min(needed, limit.rlim_max)) {
        limit.rlim_cur = std::min(needed, limit.rlim_max);
        ::setrlimit(RLIMIT_NOFILE, &limit);
        ::getrlimit(RLIMIT_NOFILE, &limit);
    }
    const std::size_t spare = std::min<std::size_t>(kSpareFds, static_cast<std::size_t>(limit.rlim_cur) / 4);
    const std::size_t budget = static_cast<std::size_t>(limit.rlim_cur) - spare;
    if (budget < wanted)
        log(LogLevel::warn, "RLIMIT_NOFILE allows " + std::to_string(limit.rlim_cur) + " open files, so exits are watched "
                            "through pidfds for at most " + std::to_string(budget) + " processes; the exits of others are "
                            "noticed at their deadlines instead. Raise the limit (ulimit -n, or LimitNOFILE= in a unit) "
                            "to " + std::to_string(wanted + kSpareFds) + " for every exit to be seen at once");
    return budget;
}

// One process behind one or more entries: its exit frees them at once.
struct WatchedProcess {
    Pidfd pidfd;
    ProcessIdentity identity;
    std::vector<std::uint32_t> slots;
};

// When to look at a slot next. Stale ones (the slot changed, or was rescheduled) are skipped.
struct Due {
    std::uint64_t at;
    std::uint32_t index;
    std::uint64_t token;
    bool operator>(const Due& other) const noexcept { return at > other.at; }
};

// The watch of one table: what is known of each slot, the processes behind them, and when to
// look at each next.
class TableWatch {
public:
    TableWatch(Table table, const CheckOptions& options, const LogSink& log, std::size_t fd_budget)
        : table_(std::move(table)),
          log_(log),
          checker_(table_, options, log),
          shmid_(table_.info().shmid),
          epoll_(::epoll_create1(EPOLL_CLOEXEC)),
          tracked_(table_.slot_count()),
          fd_budget_(fd_budget) {
        if (epoll_ < 0) throw Error(errno, std::string("checkproc: epoll_create1 failed: ") + std::strerror(errno));
    }
    ~TableWatch() { ::close(epoll_); }
    TableWatch(const TableWatch&) = delete;
    TableWatch& operator=(const TableWatch&) = delete;

    [[nodiscard]] int shmid() const noexcept { return shmid_; }
    [[nodiscard]] int epoll_fd() const noexcept { return epoll_; }
    [[nodiscard]] Checker& checker() noexcept { return checker_; }
    [[nodiscard]] std::optional<std::uint64_t> next_due() const {
        if (due_.empty()) return std::nullopt;
        return due_.top().at;
    }

    // Reads every slot: at the start, and when the journal cannot say what changed (at most
    // once a second, whatever a hostile writer does to the journal).
    void sync_all(std::uint64_t now) {
        journal_next_ = table_.journal_head();  // changes made during the sweep are replayed
        unwritten_since_.reset();
        last_sync_ = now;
        sync_due_ = false;
        for (std::uint32_t i = 0; i < table_.slot_count(); ++i) refresh(i, now);
    }

    // Re-reads the slots that the journal says changed since the last poll.
    void poll_journal(std::uint64_t now) {
        if (sync_due_ && now - last_sync_ >= kTableCheckNs) sync_all(now);
        changed_.clear();
        const std::uint64_t from = journal_next_;
        const auto result = table_.read_journal(journal_next_, changed_);
        for (std::uint32_t index : changed_) refresh(index, now);
        if (journal_next_ != from) unwritten_since_.reset();
        switch (result) {
            case Table::JournalRead::caught_up: unwritten_since_.reset(); break;
            case Table::JournalRead::pending:
                // Its writer is between reserving and writing the record, or died there.
                if (!unwritten_since_) unwritten_since_ = now;
                else if (now - *unwritten_since_ > kUnwrittenRecordNs) {
                    log_(LogLevel::info, "a journal record was never written (its writer died mid-write?): reading every slot");
                    sync_due_ = true;
                    journal_next_ = table_.journal_head();
                    unwritten_since_.reset();
                }
                break;
            case Table::JournalRead::lost:
                log_(LogLevel::info, "more slot changes than the journal holds since the last look: reading every slot");
                sync_due_ = true;
                break;
        }
        if (sync_due_ && now - last_sync_ >= kTableCheckNs) sync_all(now);
    }

    // The backstop: each call reads the state words of the next share of the slots, so that
    // every slot is looked at once a minute. It finds what the journal cannot tell: a
    // registration whose writer was frozen between publishing it and journaling it, or a
    // claim abandoned mid-way. One load per slot; only a changed slot is read in full.
    void sweep_step(std::uint64_t now) {
        const std::uint32_t count = table_.slot_count();
        const std::uint32_t share = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(
                                                                   std::uint64_t{count} * kSweepStepNs / kSweepNs));
        for (std::uint32_t n = 0; n < share && n < count; ++n) {
            const std::uint32_t index = sweep_next_;
            sweep_next_ = sweep_next_ + 1 < count ? sweep_next_ + 1 : 0;
            if (table_.token_of(index) != tracked_[index].token) refresh(index, now);
        }
    }

    // A replaced table's watch keeps only its stops in flight: its processes, deadlines and
    // descriptors go.
    void retire() {
        processes_.clear();
        due_ = decltype(due_)();
        tracked_.assign(tracked_.size(), Tracked{});
    }

    // Looks at the entries whose time has come; those due within the batch window are read
    // along, and pushed back if they beat meanwhile, so that wake-ups are shared.
    void run_due(std::uint64_t now) {
        later_.clear();
        while (!due_.empty() && due_.top().at <= now + kBatchNs) {
            const Due due = due_.top();
            due_.pop();
            Tracked& t = tracked_[due.index];
            if (t.token != due.token || t.at != due.at) continue;  // stale
            auto slot = table_.read(due.index);
            if (!slot || slot->token != due.token || slot->phase != SlotPhase::live) {
                refresh(due.index, now);
                continue;
            }
            const std::uint64_t deadline = deadline_ns(*slot) + 1;
            if (deadline > due.at && deadline > now) {  // it beat: its deadline moved on
                t.at = deadline;
                later_.push_back(Due{deadline, due.index, due.token});  // not popped again in this call
            } else if (due.at > now) {  // nothing moved, and not due yet: wait for the exact time
                later_.push_back(due);
            } else {
                look(*slot, now);
            }
        }
        for (const Due& due : later_) due_.push(due);
    }

    // Frees the entries of the processes whose pidfds say they exited.
    void on_exits(std::uint64_t now) {
        epoll_event events[256];
        for (;;) {
            const int n = ::epoll_wait(epoll_, events, 256, 0);
            if (n <= 0) return;
            for (int i = 0; i < n; ++i) {
                const auto pid = static_cast<pid_t>(events[i].data.u64);
                auto it = processes_.find(pid);
                if (it == processes_.end()) continue;
                const std::vector<std::uint32_t> slots = std::move(it->second.slots);
                processes_.erase(it);  // closes the pidfd, which leaves the epoll set
                for (std::uint32_t index : slots) {
                    Tracked& t = tracked_[index];
                    t.pid = 0;
                    auto slot = table_.read(index);
                    if (slot && slot->token == t.token) checker_.check(*slot, now, scratch_, /*exited=*/true);
                }
            }
            if (n < 256) return;
        }
    }

private:
    struct Tracked {
        std::uint64_t token = 0;  // the registration seen in the slot; 0 when free
        std::uint64_t at = 0;     // when it is looked at next
        pid_t pid = 0;            // its process's entry in processes_, or 0
    };

    // Reads slot `index` afresh: follows a new registration, drops a released one, and judges it.
    void refresh(std::uint32_t index, std::uint64_t now) {
        auto slot = table_.read(index);
        Tracked& t = tracked_[index];
        if (!slot) {
            if (t.token != 0) untrack(index);
            return;
        }
        if (slot->token != t.token) {
            if (t.token != 0) untrack(index);
            t.token = slot->token;
            if (slot->phase != SlotPhase::claiming) watch_process(index, *slot);
        }
        if (slot->phase == SlotPhase::claiming) {
            checker_.check(*slot, now, scratch_);  // frees a claim whose claimer has died
            schedule(index, slot->token, now + kClaimLookNs);
            return;
        }
        look(*slot, now);
    }

    // The checker's decision, then when to look again: at its deadline while it is healthy,
    // and a while later for one that was acted on or left alone (its slot's next change
    // arrives through the journal or its pidfd before that).
    void look(const SlotSnapshot& slot, std::uint64_t now) {
        checker_.check(slot, now, scratch_);
        if (checker_.stopping(slot.token)) unwatch_process(slot.index);  // its stop holds a pidfd of its own
        const std::uint64_t deadline = deadline_ns(slot) + 1;
        std::uint64_t again = now + std::max(to_ns(slot.timeout), kTableCheckNs);
        if (const auto verdict = checker_.look_again_at(slot.index, slot.token)) again = std::min(again, std::max(*verdict, now + 1));  // its hang verdict's next look
        schedule(slot.index, slot.token, slot.phase == SlotPhase::live && deadline > now ? deadline : again);
    }

    void watch_process(std::uint32_t index, const SlotSnapshot& slot) {
        const pid_t pid = slot.process.pid;
        if (pid <= 1) return;
        if (auto it = processes_.find(pid); it != processes_.end()) {
            // The same process behind another of its entries; an entry naming an earlier holder
            // of the pid is left to its deadline, where its identity is checked.
            if (same_process(slot.process, it->second.identity)) {
                it->second.slots.push_back(index);
                tracked_[index].pid = pid;
            }
            return;
        }
        if (processes_.size() >= fd_budget_) return;  // raise_fd_limit() said so
        auto pidfd = Pidfd::open(slot.process);  // verifies it is the registered process
        if (!pidfd) return;                      // gone, protected, ...: its look decides
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.u64 = static_cast<std::uint64_t>(pid);
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, pidfd->fd(), &event) != 0) return;
        processes_.emplace(pid, WatchedProcess{std::move(*pidfd), slot.process, {index}});
        tracked_[index].pid = pid;
    }

    void untrack(std::uint32_t index) {
        Tracked& t = tracked_[index];
        checker_.forget(t.token);
        unwatch_process(index);
        t = Tracked{};
    }

    // Drops slot `index` from its process's watch; the pidfd goes with the process's last slot.
    void unwatch_process(std::uint32_t index) {
        Tracked& t = tracked_[index];
        if (t.pid != 0) {
            if (auto it = processes_.find(t.pid); it != processes_.end()) {
                auto& slots = it->second.slots;
                if (auto at = std::find(slots.begin(), slots.end(), index); at != slots.end()) {
                    *at = slots.back();
                    slots.pop_back();
                }
                if (slots.empty()) processes_.erase(it);
            }
        }
        t.pid = 0;
    }

    void schedule(std::uint32_t index, std::uint64_t token, std::uint64_t at) {
        tracked_[index].at = at;
        due_.push(Due{at, index, token});
        // Each reschedule leaves the old item behind until it is popped: keep the heap within
        // twice the table, so its memory stays flat whatever the churn.
        if (due_.size() > 2 * tracked_.size() + 1024) {
            std::vector<Due> live;
            for (std::uint32_t i = 0; i < tracked_.size(); ++i)
                if (tracked_[i].token != 0) live.push_back(Due{tracked_[i].at, i, tracked_[i].token});
            due_ = decltype(due_)(std::greater<>(), std::move(live));
        }
    }

    Table table_;
    LogSink log_;
    Checker checker_;
    int shmid_;
    int epoll_;
    std::vector<Tracked> tracked_;
    std::unordered_map<pid_t, WatchedProcess> processes_;
    std::priority_queue<Due, std::vector<Due>, std::greater<>> due_;
    std::size_t fd_budget_;
    std::uint64_t journal_next_ = 0;
    std::optional<std::uint64_t> unwritten_since_;
    std::uint64_t last_sync_ = 0;
    bool sync_due_ = false;
    std::uint32_t sweep_next_ = 0;
    std::vector<std::uint32_t> changed_;
    std::vector<Due> later_;
    ScanSummary scratch_;  // the checker's tallies, unused here
};

}  // namespace

void watch(const TableOptions& table_options, const CheckOptions& options, const LogSink& log, int stop_fd) {
    const key_t key = table_options.key.value_or(key_from_environment());
    const auto access = options.dry_run ? Table::Access::read_only : Table::Access::read_write;
    std::unique_ptr<TableWatch> current;
    std::vector<std::unique_ptr<TableWatch>> draining;  // replaced tables' watches, until their stops finish
    bool said_missing = false, stopping = false;
    std::uint64_t next_table_check = 0, next_journal_poll = 0, next_sweep = 0;
    std::vector<pollfd> fds;
    for (;;) {
        std::uint64_t now = monotonic_now_ns();
        if (!stopping && now >= next_table_check) {
            next_table_check = now + kTableCheckNs;
            // Follow the key: the table may appear, or be removed and made anew.
            const int shmid = ::shmget(key, 0, 0);
            if (current && shmid != current->shmid()) {
                log(LogLevel::info, "the table at key " + format_key(key) + " was " + (shmid < 0 ? "removed" : "replaced") +
                                        (shmid < 0 ? ": waiting for a new one" : ": switching to the new one"));
                if (!current->checker().idle()) {
                    current->retire();
                    draining.push_back(std::move(current));
                }
                current.reset();
            }
            if (!current && shmid >= 0) {
                if (auto table = Table::open_existing(table_options, access)) {
                    require_trusted(*table);
                    const std::size_t fd_budget = raise_fd_limit(table->slot_count(), log);
                    log(LogLevel::info, "watching the table at key " + format_key(key) + " (" +
                                            std::to_string(table->slot_count()) + " slots)");
                    current = std::make_unique<TableWatch>(std::move(*table), options, log, fd_budget);
                    current->sync_all(now);
                    said_missing = false;
                }
            }
            if (!current && !said_missing) {
                log(LogLevel::info, "no table at key " + format_key(key) + " yet: waiting for the first registration");
                said_missing = true;
            }
        }
        if (current && !stopping) {
            if (now >= next_journal_poll) {
                current->poll_journal(now);
                next_journal_poll = now + kJournalPollNs;
            }
            if (now >= next_sweep) {
                current->sweep_step(now);
                next_sweep = now + kSweepStepNs;
            }
            current->run_due(now);
        }

        std::uint64_t wake = next_table_check;
        fds.clear();
        fds.push_back(pollfd{stop_fd, POLLIN, 0});
        fds.push_back(pollfd{options.event_log_fd, POLLIN, 0});  // -1: poll skips it
        auto each_watch = [&](const auto& fn) {
            if (current) fn(*current);
            for (auto& watch : draining) fn(*watch);
        };
        each_watch([&](TableWatch& watch) {
            watch.checker().stopper().add_pollfds(fds);
            if (auto escalation = watch.checker().stopper().next_deadline_ns()) wake = std::min(wake, *escalation);
        });
        const std::size_t epoll_at = fds.size();
        if (current && !stopping) {
            fds.push_back(pollfd{current->epoll_fd(), POLLIN, 0});
            wake = std::min({wake, next_journal_poll, next_sweep});
            if (auto due = current->next_due()) wake = std::min(wake, *due);
        }
        now = monotonic_now_ns();
        const std::uint64_t wait_ns = wake > now ? wake - now : 0;
        const timespec timeout{static_cast<time_t>(wait_ns / 1'000'000'000u), static_cast<long>(wait_ns % 1'000'000'000u)};
        if (::ppoll(fds.data(), fds.size(), &timeout, nullptr) < 0 && errno != EINTR)
            throw Error(errno, std::string("checkproc: poll failed: ") + std::strerror(errno));
        if (!stopping && (fds[0].revents & POLLIN)) {
            stopping = true;
            log(LogLevel::info, "stop requested: finishing the stops in flight, then exiting");
        }
        if ((fds[1].revents & POLLIN) && options.on_event_log) options.on_event_log();
        now = monotonic_now_ns();
        if (current && epoll_at < fds.size() && (fds[epoll_at].revents & POLLIN)) current->on_exits(now);
        each_watch([&](TableWatch& watch) { watch.checker().advance(now); });
        std::erase_if(draining, [](const auto& watch) { return watch->checker().idle(); });
        if (stopping && (!current || current->checker().idle()) && draining.empty()) return;
    }
}

}  // namespace hbwatch::tool
