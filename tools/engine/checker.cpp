#include "engine/checker.h"

#include <poll.h>
#include <signal.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/duration.h"
#include <hbwatch/error.h>
#include "core/pidfd.h"
#include "core/trust.h"

namespace hbwatch::tool {
namespace {

std::string describe(const SlotSnapshot& s) {
    return "slot " + std::to_string(s.index) + " pid " + std::to_string(s.process.pid) + " '" +
           std::string(s.name()) + "'";
}

// Whether the process of `slot` is still the program that made the entry: for a
// self-registration, it holds that marker; for a delegated one, it has not exec'd. nullopt
// when that cannot be read (not our process to inspect): then it must be neither signalled
// nor freed, since it may be a live registrant that is only paused.
std::optional<bool> still_registered(const SlotSnapshot& slot) {
    const pid_t pid = slot.process.pid;
    if (!slot.delegated()) {
        const auto uids = read_uids(pid);
        if (!uids) return std::nullopt;
        return image_marker_held(pid, slot.image, *uids);
    }
    if (slot.exec_mark == 0) return false;  // nothing to compare: never acted on
    const auto stat = read_proc_stat(pid);
    if (!stat || stat->start_stack == 0) return std::nullopt;  // 0: the kernel hides it from us
    return stat->start_stack == slot.exec_mark;
}

}  // namespace

void require_trusted(const Table& table) {
    const auto info = table.info();
    SegmentFacts facts;
    facts.uid = info.owner_uid;
    facts.cuid = info.creator_uid;
    facts.creator = info.creator_pid;
    if (auto reason = untrusted_owner_reason(table.key(), facts, ::geteuid()); !reason.empty()) throw Error(EPERM, reason);
}


std::uint64_t deadline_ns(const SlotSnapshot& slot) noexcept {
    return slot.last_beat_ns + to_ns(slot.timeout) + beat_lag_bound_ns();
}

Health health_of(const SlotSnapshot& slot, std::uint64_t now_ns) noexcept {
    const std::uint64_t since = now_ns > slot.last_beat_ns ? now_ns - slot.last_beat_ns : 0;
    if (now_ns > deadline_ns(slot)) return Health::hung;  // exactly when checkproc acts
    if (since > to_ns(slot.timeout) / 2) return Health::late;
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
    table_.for_each([&](const SlotSnapshot& slot) { check(slot, now_ns, summary); });
    return summary;
}

void Checker::free_unsignalled(const SlotSnapshot& slot, LogLevel level, const std::string& message,
                               ScanSummary& summary) {
    if (options_.dry_run) {  // said once per entry, not at every scan of --watch
        if (reported_.insert(slot.token).second) log_(level, message + "; dry run: would free the slot, nothing signalled");
        return;
    }
    // Each caller has found the registrant dead, exec'd or not a registrant at all (garbage,
    // another process): none of these can be inside Heartbeat::beat() on this slot.
    stalls_.erase({slot.index, slot.token});
    const bool freed = table_.free_slot(slot.index, slot.token);
    summary.freed += freed;
    log_(level, message + (freed ? ": slot freed, nothing signalled" : ": slot changed meanwhile, left as it is"));
}

void Checker::forget(std::uint64_t token) {
    reported_.erase(token);
    given_up_.erase(token);
    std::erase_if(stalls_, [&](const auto& entry) { return entry.first.second == token; });
}

void Checker::note_healthy(const SlotSnapshot& slot, std::uint64_t now_ns, ScanSummary& summary) {
    ++summary.healthy;
    stalls_.erase({slot.index, slot.token});  // it beat: whatever was judged of it is over
    reported_.erase(slot.token);               // and a later hang is reported again
    const std::uint64_t due = deadline_ns(slot) + 1;
    if (!summary.next_deadline_ns || due < *summary.next_deadline_ns) summary.next_deadline_ns = due;
    if (options_.log_healthy)
        log_(LogLevel::debug, describe(slot) + ": healthy, last beat " + human_duration(slot.since_beat(now_ns)) +
                                  " ago, timeout " + human_duration(slot.timeout));
}

void Checker::check(const SlotSnapshot& slot, std::uint64_t now_ns, ScanSummary& summary, bool exited) {
    ++summary.entries;
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

    std::string garbage;
    if (const auto found = slot.garbage()) garbage = slot.describe(*found);
    else if (slot.process.pid == self_.pid)
        garbage = "pid " + std::to_string(self_.pid) + " is this checkproc, which never registers";
    else if (slot.last_beat_ns > monotonic_now_ns() + to_ns(std::chrono::seconds(1)))  // not now_ns: a scan takes time
        garbage = "its last beat is " + human_duration(ms_between(now_ns, slot.last_beat_ns)) +
                  " in the future";
    if (!garbage.empty()) {
        free_unsignalled(slot, LogLevel::warn, "slot " + std::to_string(slot.index) + ": garbage entry (" + garbage + ")",
                         summary);
        return;
    }

    // Not due (or revoked, which is never due): a cheap look is enough. Signal 0 sends nothing;
    // only "no such process" sends the entry on to the full check, which frees it.
    if (!exited && (now_ns <= deadline_ns(slot) || slot.phase == SlotPhase::revoked) &&
        (::kill(slot.process.pid, 0) == 0 || errno != ESRCH)) {
        if (slot.phase == SlotPhase::live) note_healthy(slot, now_ns, summary);
        return;
    }

    const std::string who = describe(slot);
    const auto stat = read_proc_stat(slot.process.pid);  // one read serves every case below
    if (stat && is_kernel_thread(*stat)) {
        free_unsignalled(slot, LogLevel::warn,
                         "slot " + std::to_string(slot.index) + ": garbage entry (pid " + std::to_string(slot.process.pid) +
                             " is a kernel thread, never a service)",
                         summary);
        return;
    }
    switch (liveness(slot.process, stat)) {
        case Liveness::alive:
            if (slot.phase == SlotPhase::revoked) return;  // an operator ended it: not watched, freed once it exits
            break;
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
        note_healthy(slot, now_ns, summary);
        return;
    }
    ++summary.hung;
    const auto since = slot.since_beat(now_ns);
    const std::string hung = "hung: last beat " + human_duration(since) + " ago, timeout " +
                             human_duration(slot.timeout) + ", " + human_duration(since - slot.timeout) + " late";
    if (!protected_pid(slot.process.pid)) {
        // Who it is before what it is doing: a forged entry naming a stopped process is freed,
        // never spared. A dry run judges too (it only reads): what it says it would do is what
        // a real run does.
        Refusal refusal{};
        auto target = Pidfd::pin(slot.process.pid, &refusal);
        const Verdict verdict = judge(slot, target ? &*target : nullptr, refusal);
        if (verdict.action == Verdict::Action::free_unsignalled) {
            free_unsignalled(slot, LogLevel::warn, who + ": " + hung + ", but " + verdict.why, summary);
            return;
        }
        if (verdict.action == Verdict::Action::signal && spare_for_now(slot, who, hung, now_ns)) return;
    }
    stop_hung(slot, who, hung, summary);
}

// Whether the process `target` (pinned on `slot`'s pid, or null with `refusal`) may be
// signalled for `slot`, and why not. Everything it reads is read after the pidfd was opened,
// and confirmed on it before the signal: the process judged is the one signalled.
Checker::Verdict Checker::judge(const SlotSnapshot& slot, const Pinned* target, Refusal refusal) const {
    using Action = Verdict::Action;
    const std::string pid = std::to_string(slot.process.pid);
    if (target == nullptr) {
        if (means_exited(refusal)) return {Action::free_unsignalled, "the process is " + std::string(to_string(refusal)) + " now"};
        if (refusal == Refusal::kernel_thread) return {Action::free_unsignalled, "garbage entry: pid " + pid + " is a kernel thread"};
        return {Action::keep_unsignalled, "pid " + pid + " is " + to_string(refusal)};
    }
    if (!same_process(slot.process, target->identity)) return {Action::free_unsignalled, "the pid now belongs to another process"};
    const auto registered = still_registered(slot);
    if (!registered)
        return {Action::keep_unsignalled, "this checkproc may not read pid " + pid +
                                              "'s memory map to verify it is still the program that registered; run checkproc as root"};
    if (!slot.delegated() && !*registered)  // it registered itself: it must still hold the marker of the image that did
        return {Action::free_unsignalled, "pid " + pid +
                                              " does not hold the marker of the program image that registered: it has exec'd since, or "
                                              "the entry is forged"};
    if (slot.delegated() && !*registered)
        return {Action::free_unsignalled, "pid " + pid + " has exec'd since it was registered on its behalf" +
                                              (slot.exec_mark == 0 ? " (or the entry carries no exec mark)" : "")};
    if (slot.delegated()) {
        // Registered on its behalf (proctab beat, or forged): act only if every user who can
        // write the table could have signalled it anyway.
        const auto uids = read_uids(slot.process.pid);
        const auto writers = table_writers(table_.key());
        if (!uids || !writers) return {Action::keep_unsignalled, "its owner or the table's writers cannot be read"};
        if (auto outsider = writer_who_could_not_signal(*writers, *uids))
            return {Action::keep_unsignalled, "it was registered on its behalf (proctab beat, or a forged entry), and uid " +
                                                  std::to_string(*outsider) + ", who can write the table, could not signal pid " + pid +
                                                  " (uid " + std::to_string(uids->real) +
                                                  ") itself. Use proctab run, or a table only trusted users can write"};
    }
    if (!target->pidfd.still_running()) return {Action::free_unsignalled, "the process is gone now"};
    return {Action::signal, {}};
}

void Checker::stop_hung(const SlotSnapshot& slot, const std::string& who, const std::string& hung,
                        ScanSummary& summary) {
    auto report_once = [&](LogLevel level, const std::string& message) {
        if (reported_.insert(slot.token).second) log_(level, message);
    };
    if (auto refusal = protected_pid(slot.process.pid)) {
        report_once(LogLevel::warn, who + ": " + hung + "; not signalled: pid " + std::to_string(slot.process.pid) + " is " +
                                        to_string(*refusal));
        return;
    }
    const auto stall = stalls_.find({slot.index, slot.token});
    const std::string verdict_words = stall != stalls_.end() ? stall->second.words : std::string();
    const std::string words = verdict_words.empty() ? "" : " (" + verdict_words + ")";
    if (options_.dry_run) {
        report_once(LogLevel::warn, who + ": " + hung + words + "; dry run: would send SIGTERM, then SIGKILL after " +
                                        human_duration(options_.grace));
        return;
    }
    if (options_.report_only) {
        // Judged and diagnosed as for a stop, once per hang; nothing signalled, the table untouched.
        if (reported_.count(slot.token)) return;
        Refusal refusal{};
        auto target = Pidfd::pin(slot.process.pid, &refusal);
        const Verdict verdict = judge(slot, target ? &*target : nullptr, refusal);
        if (verdict.action != Verdict::Action::signal) {
            report_once(LogLevel::warn, who + ": " + hung + "; report only, and it could not be signalled anyway: " + verdict.why);
            return;
        }
        const Diagnosis diagnosis = diagnose(target->pidfd, slot, hung + words);
        report_once(LogLevel::warn, who + ": " + hung + words + "; report only: not signalled" + kept_text(diagnosis));
        nlohmann::json facts = hang_facts(slot, monotonic_now_ns());
        facts["report_only"] = true;
        if (!diagnosis.path.empty()) facts["diagnosis"] = diagnosis.path;
        tell(EventKind::heartbeat_hung, slot, who + ": " + hung + words + "; report only: not signalled", facts);
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
    // Everything below is read after the pidfd was opened and confirmed on it before the signal:
    // the process that is judged is the one that is signalled.
    Refusal refusal{};
    auto target = Pidfd::pin(slot.process.pid, &refusal);
    const Verdict verdict = judge(slot, target ? &*target : nullptr, refusal);
    if (verdict.action != Verdict::Action::signal) {
        table_.drop_stop(slot.index, self_);
        if (verdict.action == Verdict::Action::free_unsignalled)
            free_unsignalled(slot, LogLevel::warn, who + ": " + hung + ", but " + verdict.why, summary);
        else
            report_once(LogLevel::warn, who + ": " + hung + "; not signalled: " + verdict.why);
        return;
    }
    // What it was doing, kept before the signal changes it (hang_diagnosis.h); bounded.
    const Diagnosis diagnosis = diagnose(target->pidfd, slot, hung + words);
    const std::string kept = kept_text(diagnosis);
    if (diagnosis.took > std::chrono::microseconds(0)) {  // it may have beaten while it was diagnosed
        auto again = table_.read(slot.index);
        if (!again || again->token != slot.token || again->last_beat_ns != slot.last_beat_ns) {
            table_.drop_stop(slot.index, self_);
            log_(LogLevel::info, who + ": beat again while it was diagnosed, left alone" + kept);
            return;
        }
    }
    // The token names this registration alone, so it serves as the stop's id. SIGKILL, a grace
    // later, goes only to the same program: one that exec'd on SIGTERM is left to finish.
    std::string why;
    auto same_program = [slot] { return still_registered(slot).value_or(false); };
    if (!stopper_.start(slot.token, std::move(target->pidfd), monotonic_now_ns() + to_ns(options_.grace), &why,
                        same_program)) {
        table_.drop_stop(slot.index, self_);
        log_(LogLevel::error, who + ": " + hung + "; " + why + "; slot kept");
        return;
    }
    pending_.emplace(slot.token, Pending{slot.index, who, slot});
    stalls_.erase({slot.index, slot.token});
    ++summary.stopping;
    const std::uint64_t stopped_ns = monotonic_now_ns();
    const auto age = slot.since_beat(stopped_ns);
    nlohmann::json facts = hang_facts(slot, stopped_ns);
    if (!verdict_words.empty()) facts["verdict_words"] = verdict_words;
    if (!diagnosis.path.empty()) facts["diagnosis"] = diagnosis.path;
    tell(EventKind::heartbeat_hung, slot, who + ": " + hung + words, facts);
    nlohmann::json term = facts;
    term["signal"] = "SIGTERM";
    term["grace_seconds"] = static_cast<double>(options_.grace.count()) / 1000.0;
    tell(EventKind::hang_stopped, slot,
          "stopped " + who + ": hung, last beat " + human_duration(age) + " ago, timeout " + human_duration(slot.timeout) +
              ": SIGTERM sent, SIGKILL in " + human_duration(options_.grace) + " unless it exits",
          term);
    log_(LogLevel::warn, who + ": " + hung + words + ": SIGTERM sent, SIGKILL in " + human_duration(options_.grace) +
                             " unless it exits" + kept);
}

nlohmann::json Checker::hang_facts(const SlotSnapshot& slot, std::uint64_t now_ns) {
    return {{"slot", slot.index},
            {"last_beat_seconds", static_cast<double>(slot.since_beat(now_ns).count()) / 1000.0},
            {"timeout_seconds", static_cast<double>(slot.timeout.count()) / 1000.0}};
}

void Checker::tell(EventKind kind, const SlotSnapshot& slot, std::string message, nlohmann::json details) const {
    if (!options_.on_event || options_.dry_run) return;  // a dry run says what it would do in its log alone: no hook runs
    options_.on_event(make_event(kind, escaped(slot.name(), name_char), slot.process.pid, std::move(message), std::move(details)));
}

void Checker::on_stop_event(const StopEvent& event) {
    auto it = pending_.find(event.id);
    if (it == pending_.end()) return;
    const Pending& pending = it->second;
    switch (event.kind) {
        case StopEvent::Kind::kill_sent:
            log_(LogLevel::warn, pending.who + ": did not exit within the " + human_duration(options_.grace) +
                                     " grace after SIGTERM: SIGKILL sent");
            tell(EventKind::hang_stopped, pending.slot,
                        "stopped " + pending.who + ": still running " + human_duration(options_.grace) + " after SIGTERM: SIGKILL sent",
                        {{"slot", pending.index}, {"signal", "SIGKILL"}, {"timeout_seconds", static_cast<double>(pending.slot.timeout.count()) / 1000.0}});
            return;
        case StopEvent::Kind::exited: {
            table_.count_kill();
            const bool freed = table_.free_slot(pending.index, event.id);
            log_(LogLevel::info, pending.who + ": exited " + human_duration(event.elapsed) + " after SIGTERM" +
                                     (event.killed ? " (SIGKILL was needed)" : "") +
                                     (freed ? "; slot freed" : "; slot already freed (by the process itself or its supervisor)"));
            tell(EventKind::exited, pending.slot,
                        pending.who + ": exited " + human_duration(event.elapsed) + " after checkproc's SIGTERM" +
                            (event.killed ? " (SIGKILL was needed)" : ""),
                        {{"reason", "checkproc_hang_stop"},
                         {"after_term_seconds", static_cast<double>(event.elapsed.count()) / 1000.0},
                         {"killed", event.killed}});
            break;
        }
        case StopEvent::Kind::kill_skipped:
            log_(LogLevel::warn, pending.who + ": still running " + human_duration(options_.grace) +
                                     " after SIGTERM, but no longer the program that registered (it exec'd): SIGKILL "
                                     "not sent; its slot is freed");
            table_.free_slot(pending.index, event.id);
            break;
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
    require_trusted(*table);
    Checker checker(*table, options, log);
    ScanSummary summary = checker.scan(monotonic_now_ns());
    // Verdicts that asked for a second look (a runnable process, a window later: at most a
    // second) get it; spared and extended ones are left to the next run. Counted once.
    for (int round = 0; round < 8; ++round) {
        std::optional<std::uint64_t> next;
        (void)checker.due_second_looks(monotonic_now_ns(), next);
        if (!next) break;
        ::poll(nullptr, 0, static_cast<int>((*next - std::min(*next, monotonic_now_ns())) / 1'000'000 + 1));
        ScanSummary again;
        for (const std::uint32_t index : checker.due_second_looks(monotonic_now_ns(), next))
            if (auto slot = table->read(index)) checker.check(*slot, monotonic_now_ns(), again);
        summary.stopping += again.stopping;
        summary.freed += again.freed;
    }
    checker.finish();
    log(LogLevel::info, "scanned " + std::to_string(table->slot_count()) + " slots at key " + format_key(key) + ": " +
                            std::to_string(summary.entries) + " entries, " + std::to_string(summary.healthy) +
                            " healthy, " + std::to_string(summary.hung) + " hung, " + std::to_string(summary.stopping) +
                            " stopped, " + std::to_string(summary.freed) + " freed without a signal");
    return summary;
}

}  // namespace hbwatch::tool
