#include <hbwatch/checker.h>

#include <poll.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include <hbwatch/clock.h>
#include <hbwatch/duration.h>
#include <hbwatch/error.h>
#include <hbwatch/pidfd.h>

namespace hbwatch {
namespace {

std::uint64_t deadline_ns(const SlotSnapshot& s) {
    return s.last_beat_ns + to_ns(s.timeout);
}

std::string describe(const SlotSnapshot& s) {
    return "slot " + std::to_string(s.index) + " pid " + std::to_string(s.process.pid) + " '" +
           std::string(s.name()) + "'";
}

}  // namespace

Health health_of(const SlotSnapshot& slot, std::uint64_t now_ns) noexcept {
    const std::uint64_t since = now_ns > slot.last_beat_ns ? now_ns - slot.last_beat_ns : 0;
    const std::uint64_t timeout = to_ns(slot.timeout);
    if (since > timeout) return Health::hung;
    if (since > timeout / 2) return Health::late;
    return Health::ok;
}

const char* to_string(Health health) noexcept {
    switch (health) {
        case Health::ok: return "ok";
        case Health::late: return "late";
        case Health::hung: return "hung";
    }
    return "unknown";
}

Checker::Checker(Table& table, CheckOptions options, LogSink log)
    : table_(table),
      options_(options),
      log_(std::move(log)),
      self_(self_identity()),
      stopper_(options.grace, [this](const StopEvent& event) { on_stop_event(event); }, options.kill_wait) {}

ScanSummary Checker::scan(std::uint64_t now_ns) {
    ScanSummary summary;
    table_.for_each([&](const SlotSnapshot& slot) { handle(slot, now_ns, summary); });
    return summary;
}

void Checker::free_unsignalled(const SlotSnapshot& slot, LogLevel level, const std::string& message,
                               ScanSummary& summary) {
    if (options_.dry_run) {
        log_(level, message + "; dry run: would free the slot, nothing signalled");
        return;
    }
    const bool freed = table_.free_slot(slot.index, slot.token);
    summary.freed += freed;
    log_(level, message + (freed ? ": slot freed, nothing signalled" : ": slot changed meanwhile, left as it is"));
}

void Checker::handle(const SlotSnapshot& slot, std::uint64_t now_ns, ScanSummary& summary) {
    ++summary.entries;
    const std::string who = describe(slot);
    if (pending_.count(slot.token) || given_up_.count(slot.token)) return;  // being, or given up being, stopped

    if (slot.phase == SlotPhase::claiming) {
        // A claim takes microseconds; one whose claimer has died will never complete.
        if (slot.process.pid > 1 && !is_running(slot.process.pid))
            free_unsignalled(slot, LogLevel::info,
                             "slot " + std::to_string(slot.index) + ": registration abandoned mid-claim by pid " +
                                 std::to_string(slot.process.pid) + ", which is gone",
                             summary);
        return;
    }

    std::string garbage = slot.garbage_reason();
    if (garbage.empty() && slot.process.pid == self_.pid)
        garbage = "pid " + std::to_string(self_.pid) + " is this checkproc, which never registers";
    if (garbage.empty() && slot.last_beat_ns > now_ns + to_ns(std::chrono::seconds(1)))
        garbage = "its last beat is " + human_duration(ms_between(now_ns, slot.last_beat_ns)) +
                  " in the future";
    if (!garbage.empty()) {
        free_unsignalled(slot, LogLevel::warn, "slot " + std::to_string(slot.index) + ": garbage entry (" + garbage + ")",
                         summary);
        return;
    }

    const auto stat = read_proc_stat(slot.process.pid);  // one read serves every case below
    switch (liveness(slot.process, stat)) {
        case Liveness::alive: break;
        case Liveness::gone:
            free_unsignalled(slot, LogLevel::info, who + ": the process is gone", summary);
            return;
        case Liveness::reused:
            free_unsignalled(slot, LogLevel::info, who + ": the pid now belongs to another process (its start time differs)",
                             summary);
            return;
        case Liveness::zombie: {
            std::string parent = "pid " + std::to_string(stat->ppid);
            if (auto p = read_proc_stat(stat->ppid)) parent += " (" + p->comm + ")";
            free_unsignalled(slot, LogLevel::info, who + ": the process is a zombie; " + parent + " must reap it", summary);
            return;
        }
    }

    if (now_ns <= deadline_ns(slot)) {
        ++summary.healthy;
        if (!summary.next_deadline_ns || deadline_ns(slot) + 1 < *summary.next_deadline_ns)
            summary.next_deadline_ns = deadline_ns(slot) + 1;
        log_(LogLevel::debug, who + ": healthy, last beat " + human_duration(slot.since_beat(now_ns)) + " ago, timeout " +
                                  human_duration(slot.timeout));
        return;
    }
    ++summary.hung;
    const auto since = slot.since_beat(now_ns);
    const std::string hung = "hung: last beat " + human_duration(since) + " ago, timeout " +
                             human_duration(slot.timeout) + ", " + human_duration(since - slot.timeout) + " late";
    stop_hung(slot, who, hung, summary);
}

void Checker::stop_hung(const SlotSnapshot& slot, const std::string& who, const std::string& hung,
                        ScanSummary& summary) {
    if (auto reason = protected_reason(slot.process.pid); !reason.empty()) {
        if (reported_.insert(slot.token).second) log_(LogLevel::warn, who + ": " + hung + "; not signalled: " + reason);
        return;
    }
    if (options_.dry_run) {
        if (reported_.insert(slot.token).second)
            log_(LogLevel::warn, who + ": " + hung + "; dry run: would send SIGTERM, then SIGKILL after " +
                                     human_duration(options_.grace));
        return;
    }
    const StopClaim claim = table_.take_stop(slot.index, slot.token, self_);
    if (claim.result == StopClaim::Result::changed) return;  // released or re-registered meanwhile
    if (claim.result == StopClaim::Result::held) {
        log_(LogLevel::info, who + ": " + hung + "; already being stopped by checkproc pid " +
                                 std::to_string(claim.holder) + ", skipped");
        return;
    }
    // A last look right before the signal: it may have beaten since the snapshot.
    auto fresh = table_.read(slot.index);
    if (!fresh || fresh->token != slot.token || fresh->last_beat_ns != slot.last_beat_ns) {
        table_.drop_stop(slot.index, self_);
        log_(LogLevel::info, who + ": beat again before it was signalled, left alone");
        return;
    }
    std::string why;
    auto target = Pidfd::open(slot.process, &why);
    if (!target) {
        table_.drop_stop(slot.index, self_);
        if (why.starts_with("protected")) {
            log_(LogLevel::warn, who + ": " + hung + "; not signalled: " + why);
        } else {
            free_unsignalled(slot, LogLevel::info, who + ": " + hung + ", but the process is " + why + " now", summary);
        }
        return;
    }
    // The token names this registration alone, so it serves as the stop's id.
    if (!stopper_.start(slot.token, std::move(*target), &why)) {
        table_.drop_stop(slot.index, self_);
        log_(LogLevel::error, who + ": " + hung + "; " + why + "; slot kept");
        return;
    }
    pending_.emplace(slot.token, Pending{slot.index, who});
    ++summary.stopping;
    log_(LogLevel::warn, who + ": " + hung + ": SIGTERM sent, SIGKILL in " + human_duration(options_.grace) +
                             " unless it exits");
}

void Checker::on_stop_event(const StopEvent& event) {
    auto it = pending_.find(event.id);
    if (it == pending_.end()) return;
    const Pending& pending = it->second;
    switch (event.kind) {
        case StopEvent::Kind::kill_sent:
            log_(LogLevel::warn, pending.who + ": did not exit within the " + human_duration(options_.grace) +
                                     " grace after SIGTERM: SIGKILL sent");
            return;
        case StopEvent::Kind::exited: {
            table_.count_kill();
            const bool freed = table_.free_slot(pending.index, event.id);
            log_(LogLevel::info, pending.who + ": exited " + human_duration(event.elapsed) + " after SIGTERM" +
                                     (event.killed ? " (SIGKILL was needed)" : "") +
                                     (freed ? "; slot freed" : "; it had released its slot itself"));
            break;
        }
        case StopEvent::Kind::kill_failed:
            given_up_.insert(event.id);
            table_.count_kill();
            log_(LogLevel::error, pending.who + ": " + event.detail + "; slot kept, see to it by hand");
            break;
    }
    pending_.erase(it);
}

ScanSummary check_once(const TableOptions& table_options, const CheckOptions& options, const LogSink& log) {
    const key_t key = table_options.key.value_or(key_from_environment());
    auto table = Table::open_existing(table_options, options.dry_run ? Table::Access::read_only : Table::Access::read_write);
    if (!table) {
        log(LogLevel::info, "no table at key " + format_key(key) + ": nothing registered, nothing to watch");
        return {};
    }
    Checker checker(*table, options, log);
    ScanSummary summary = checker.scan(monotonic_now_ns());
    checker.finish();
    log(LogLevel::info, "scanned " + std::to_string(table->slot_count()) + " slots at key " + format_key(key) + ": " +
                            std::to_string(summary.entries) + " entries, " + std::to_string(summary.healthy) +
                            " healthy, " + std::to_string(summary.hung) + " hung, " + std::to_string(summary.stopping) +
                            " stopped, " + std::to_string(summary.freed) + " freed without a signal");
    return summary;
}

void watch(const TableOptions& table_options, const CheckOptions& options, const LogSink& log, int stop_fd) {
    const key_t key = table_options.key.value_or(key_from_environment());
    // A full scan reads /proc for every entry, so it runs only when something is due: an
    // entry's deadline, a new registration (one atomic load, checked every 100 ms), a stop's
    // escalation, or once a second to free the slots of processes that died.
    constexpr std::uint64_t kFullScanNs = to_ns(std::chrono::seconds(1));
    constexpr std::uint64_t kRegistrationCheckNs = to_ns(std::chrono::milliseconds(100));
    const auto access = options.dry_run ? Table::Access::read_only : Table::Access::read_write;
    std::optional<Table> table;
    std::optional<Checker> checker;
    bool said_missing = false, stopping = false;
    std::uint64_t next_full_scan = 0, next_deadline = 0, seen_registrations = 0;
    std::vector<pollfd> fds;
    for (;;) {
        const std::uint64_t now = monotonic_now_ns();
        if (!stopping && now >= next_full_scan) {
            // The table may appear, or be destroyed and made anew: follow the key.
            if (table && checker->idle() && ::shmget(key, 0, 0) != table->info().shmid) {
                log(LogLevel::info, "the table at key " + format_key(key) + " was removed; looking for a new one");
                checker.reset();
                table.reset();
            }
            if (!table && (table = Table::open_existing(table_options, access))) {
                log(LogLevel::info, "watching the table at key " + format_key(key) + " (" +
                                        std::to_string(table->slot_count()) + " slots)");
                checker.emplace(*table, options, log);
                said_missing = false;
            }
            if (!table && !said_missing) {
                log(LogLevel::info, "no table at key " + format_key(key) + " yet: waiting for the first registration");
                said_missing = true;
            }
        }
        if (!stopping && checker &&
            (now >= next_full_scan || now >= next_deadline || table->registration_count() != seen_registrations)) {
            seen_registrations = table->registration_count();
            const auto summary = checker->scan(now);
            next_full_scan = now + kFullScanNs;
            next_deadline = summary.next_deadline_ns.value_or(next_full_scan);
        } else if (!checker && now >= next_full_scan) {
            next_full_scan = now + kFullScanNs;
        }

        std::uint64_t wake = std::min(next_full_scan, checker ? next_deadline : next_full_scan);
        if (checker) {
            wake = std::min(wake, now + kRegistrationCheckNs);
            if (auto escalation = checker->stopper().next_deadline_ns()) wake = std::min(wake, *escalation);
        }
        fds.clear();
        fds.push_back(pollfd{stop_fd, POLLIN, 0});
        if (checker) checker->stopper().add_pollfds(fds);
        const std::uint64_t after = monotonic_now_ns();
        const std::uint64_t wait_ns = wake > after ? wake - after : 0;
        const timespec timeout{static_cast<time_t>(wait_ns / 1'000'000'000u), static_cast<long>(wait_ns % 1'000'000'000u)};
        if (::ppoll(fds.data(), fds.size(), &timeout, nullptr) < 0 && errno != EINTR)
            throw Error(errno, std::string("checkproc: poll failed: ") + std::strerror(errno));
        if (!stopping && (fds[0].revents & POLLIN)) {
            stopping = true;
            log(LogLevel::info, "stop requested: finishing the stops in flight, then exiting");
        }
        if (checker) checker->advance(monotonic_now_ns());
        if (stopping && (!checker || checker->idle())) return;
    }
}

}  // namespace hbwatch
