// The stack's events: every change of a unit's phase and every exit reaches on_transition (the
// units' one observer), which says it as typed events (event.h); emit() keeps each in the ring
// the control API pages through, streams it to /v1/events followers, and hands it to the
// sinks. Heartbeat health is looked at here too, at the instants it can change.
#include <malloc.h>
#include <signal.h>
#include <sys/shm.h>
#include <sys/wait.h>

#include <cstring>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include "engine/stack_internal.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {
namespace {

using json = nlohmann::json;

double seconds(std::chrono::milliseconds d) { return static_cast<double>(d.count()) / 1000.0; }

// Why a unit's stop began, from the event that began it.
const char* stop_reason(const UnitEvent& cause, Phase from) {
    using Kind = UnitEvent::Kind;
    switch (cause.kind) {
        case Kind::stop: return "an operator's stop";
        case Kind::restart: return "an operator's restart";
        case Kind::retire: return "a reload that removed or replaced it";
        case Kind::stop_all: return "procctl stopping every program";
        case Kind::rss: return "its max_rss";
        case Kind::hung: return cause.what == kWatchdogTriggered ? "its WATCHDOG=trigger" : "its missed sd_notify watchdog";
        case Kind::tick: return from == Phase::starting ? "its ready timeout" : "a stop";
        default: return "a stop";
    }
}

}  // namespace

Member* Stack::member_of(const Unit& unit) const {
    for (const auto& member : members_)
        if (&member->unit == &unit) return member.get();
    return nullptr;
}

void Stack::emit(Event event) {
    ++event_counts_[static_cast<std::size_t>(event.kind)];
    events_.push(event);
    if (sinks_) sinks_->publish(event);
    if (control_ != nullptr) control_->broadcast(to_json(event).dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
}

void Stack::emit_for(const Member& member, EventKind kind, std::string message, json details) {
    // What the program last said of itself (sd_notify STATUS=) goes with every event about it.
    if (!member.said_status.empty() && details.is_object()) details["program_status"] = member.said_status;
    emit(make_event(kind, member.name(), member.unit.pid(), std::move(message), std::move(details)));
}

void Stack::on_transition(const Unit& unit, const Change& change) {
    using Kind = UnitEvent::Kind;
    log_.debug("{}: {} -> {}", unit.name(), to_string(change.from), to_string(change.to));
    Member* found = member_of(unit);
    if (found == nullptr) return;  // a unit being built by a reload: it has not started anything
    Member& member = *found;
    const UnitEvent& cause = change.cause;
    if (change.from == change.to) {  // the main process exited; what follows comes as changes
        if (cause.kind == Kind::exited) exited_event(member, cause);
        return;
    }
    auto stopping_phase = [](Phase p) { return p == Phase::stop_queued || p == Phase::stopping || p == Phase::killing; };
    switch (change.to) {
        case Phase::starting:
            if (cause.kind == Kind::spawned) started_event(member);
            break;
        case Phase::ready:
            if (cause.kind == Kind::spawned) started_event(member);
            emit_for(member, EventKind::ready,
                     unit.name() + " is ready (" + (cause.kind == Kind::spawned ? std::string("started") : cause.what) + ") " +
                         human_duration(ms_between(unit.started_ns(), monotonic_now_ns())) + " after its start",
                     {{"how", cause.kind == Kind::spawned ? std::string("started") : cause.what},
                      {"after_seconds", seconds(ms_between(unit.started_ns(), monotonic_now_ns()))}});
            break;
        case Phase::stop_queued:
        case Phase::stopping:
            if (stopping_phase(change.from) || cause.kind == Kind::exited) break;
            member.stop_for = stop_reason(cause, change.from);
            if (cause.kind == Kind::rss)
                emit_for(member, EventKind::max_rss_exceeded,
                         unit.name() + " uses " + human_size(cause.bytes) + ", above its max_rss of " + human_size(unit.program().max_rss) +
                             (unit.program().restart == RestartMode::never ? ": stopping it (restart: never)" : ": restarting it"),
                         {{"rss_bytes", cause.bytes}, {"max_rss_bytes", unit.program().max_rss}});
            emit_for(member, EventKind::stopping,
                     "stopping " + unit.name() + (unit.running() ? " (pid " + std::to_string(unit.pid()) + ")" : std::string()) + " for " +
                         stop_reason(cause, change.from),
                     {{"reason", stop_reason(cause, change.from)},
                      {"signal", signal_name(unit.program().stop_signal)},
                      {"grace_seconds", seconds(unit.program().stop_grace)}});
            break;
        case Phase::backoff: {
            if (cause.kind == Kind::spawn_failed)
                emit_for(member, EventKind::start_failed, "cannot start " + unit.name() + ": " + unit.last_exit(),
                         {{"stage", cause.what}, {"error", std::strerror(cause.error)}});
            const auto now = monotonic_now_ns();
            const auto delay = ms_between(now, std::max(unit.due_ns(), now));
            emit_for(member, EventKind::backoff, unit.name() + ": next start in " + human_duration(delay),
                     {{"delay_seconds", seconds(delay)}, {"last_exit", member.last_exit()}});
            break;
        }
        case Phase::stopped:
            member.beat_health = member.said_health = Health::ok;  // stopped: nothing to watch
            emit_for(member, EventKind::stopped, unit.name() + " stopped", {{"last_exit", member.last_exit()}});
            break;
        case Phase::gave_up:
            emit_for(member, EventKind::gave_up,
                     "giving up on " + unit.name() + ": started " + std::to_string(unit.recent_starts()) + " times within " +
                         human_duration(unit.program().max_restarts_window) + "; proctab start " + unit.name() + " tries again",
                     {{"starts", unit.recent_starts()}, {"window_seconds", seconds(unit.program().max_restarts_window)}});
            break;
        default: break;  // waiting, killing (the log says SIGKILL), exited (the exit was said)
    }
}

void Stack::started_event(Member& member) {
    const Unit& unit = member.unit;
    const std::uint64_t now = monotonic_now_ns();
    // From the fork to the exec seen: long on a starved host, or a slow filesystem.
    emit_for(member, EventKind::started, "started " + unit.name() + " as pid " + std::to_string(unit.pid()),
             {{"start", unit.starts()}, {"exec_seconds", seconds(ms_between(unit.started_ns(), now))}});
    const std::uint64_t window = to_ns(config_.events.storm_window);
    member.recent_starts.push_back(now);
    while (!member.recent_starts.empty() && member.recent_starts.front() + window < now) member.recent_starts.pop_front();
    if (member.recent_starts.size() < config_.events.storm_restarts) {
        member.storming = false;
    } else if (!member.storming) {
        member.storming = true;
        emit_for(member, EventKind::restart_storm,
                 unit.name() + " started " + std::to_string(member.recent_starts.size()) + " times within " +
                     human_duration(config_.events.storm_window) + ": it is crash-looping",
                 {{"starts", member.recent_starts.size()}, {"window_seconds", seconds(config_.events.storm_window)}});
    }
}

// The exit, with its cause: a checkproc's hang stop (read from the table), procctl's own stop
// and why it began, or the program's own doing.
void Stack::exited_event(Member& member, const UnitEvent& cause) {
    const Unit& unit = member.unit;
    const int status = cause.status;
    const auto runtime = ms_between(unit.started_ns(), monotonic_now_ns());
    json details{{"runtime_seconds", seconds(runtime)}};
    if (!cause.status_known) details["status_known"] = false;
    else if (WIFEXITED(status)) details["code"] = WEXITSTATUS(status);
    if (cause.status_known && WIFSIGNALED(status)) {
        details["signal"] = signal_name(WTERMSIG(status));
        details["core_dumped"] = static_cast<bool>(WCOREDUMP(status));
    }
    std::string why;
    if (member.hang_stop) {
        const auto& stop = *member.hang_stop;
        const auto beat_age = ms_between(stop.last_beat_ns, monotonic_now_ns());
        if (member.beat_health != Health::hung)  // checkproc saw it before procctl's next look: said now, in order
            set_beat_health(member, Health::hung,
                            "checkproc judged its heartbeat '" + stop.name + "' hung (timeout " + human_duration(stop.timeout) + ")");
        why = "stopped by checkproc (pid " + std::to_string(stop.stopper_pid) + "): hung, last beat " + human_duration(beat_age) +
              " before it exited, timeout " + human_duration(stop.timeout);
        details["reason"] = "checkproc_hang_stop";
        details["checkproc_pid"] = stop.stopper_pid;
        details["heartbeat"] = stop.name;
        details["last_beat_seconds"] = seconds(beat_age);
        details["timeout_seconds"] = seconds(stop.timeout);
    } else if (unit.is_stopping()) {
        why = "stopped by procctl for " + member.stop_for;
        details["reason"] = "procctl_stop";
        details["stop_for"] = member.stop_for;
    } else {
        details["reason"] = cause.status_known && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "exited" : "failed";
    }
    member.hang_stop.reset();
    if (member.exit_errno != 0) {  // what it said of its failure (sd_notify ERRNO=)
        details["errno"] = member.exit_errno;
        why += std::string(why.empty() ? "" : "; ") + "it said ERRNO=" + std::to_string(member.exit_errno) + " (" +
               std::strerror(member.exit_errno) + ")";
    }
    emit_for(member, EventKind::exited, unit.name() + " " + describe_exit(cause) + " after " + human_duration(runtime) +
                                            (why.empty() ? std::string() : ": " + why),
             std::move(details));
}

// Reads what the table says of a checkproc's hang stop of the member's main process: before
// procctl frees its slots, while the record is surely there.
void Stack::read_hang_stop(Member& member) {
    member.hang_stop.reset();
    try {
        TableOptions options;
        options.key = table_key(member.program());
        if (auto table = Table::open_existing(options, Table::Access::read_only)) member.hang_stop = table->stop_record(member.identity);
    } catch (const Error&) {  // no table, or not ours to read: the exit is said without it
    }
}

void Stack::set_beat_health(Member& member, Health health, const std::string& how) {
    member.beat_health = health;
    member.beat_how = how;
    say_beat_health(member);
}

// Says the heartbeat's health when it differs from what was said last. A heartbeat that flaps
// (or a table writer who makes it flap) is said at most 20 times a minute, so the ring and the
// sinks' queues keep room for everything else; what was held back is said once the minute is
// over (check_heartbeats calls this again), so a hang that came while held back is never lost.
void Stack::say_beat_health(Member& member) {
    const Health before = member.said_health, health = member.beat_health;
    if (health == before) return;
    const std::uint64_t now = monotonic_now_ns();
    if (now >= member.beat_events_window_ns + to_ns(std::chrono::minutes(1))) {
        if (member.beat_events_suppressed > 0)
            log_.warn("{}: {} heartbeat changes were held back in the last minute (more than 20 said)", member.name(),
                      member.beat_events_suppressed);
        member.beat_events_window_ns = now;
        member.beat_events = member.beat_events_suppressed = 0;
    }
    if (member.beat_events >= 20) {
        ++member.beat_events_suppressed;
        return;
    }
    ++member.beat_events;
    member.said_health = health;
    const std::string& name = member.name();
    const std::string& how = member.beat_how;
    if (health == Health::ok) {
        emit_for(member, EventKind::heartbeat_recovered, name + "'s heartbeat is back: " + how, {{"was", to_string(before)}});
        return;
    }
    if (health == Health::hung && before == Health::ok)  // late comes first, even when it was missed
        emit_for(member, EventKind::heartbeat_late, name + "'s heartbeat is late: " + how, {});
    if (health == Health::late && before == Health::hung) return;  // a beat after a hang shows as ok at once
    emit_for(member, health == Health::hung ? EventKind::heartbeat_hung : EventKind::heartbeat_late,
             name + (health == Health::hung ? "'s heartbeat is hung: " : "'s heartbeat is late: ") + how, {});
}

// The table at `key`, kept mapped from one look to the next: opening one reads
// /proc/sysvipc/shm and checks its owner, where a look is a few loads. Opened anew when the
// segment at the key is no longer the one mapped (destroyed, or made again).
const Table* Stack::beat_table(key_t key) {
    if (auto it = beat_tables_.find(key); it != beat_tables_.end()) {
        if (::shmget(key, 0, 0) == it->second.shmid) return &it->second.table;
        beat_tables_.erase(it);  // unmapped: a destroyed segment is not kept alive
    }
    std::optional<Table> table;
    try {
        TableOptions options;
        options.key = key;
        table = Table::open_existing(options, Table::Access::read_only);
    } catch (const Error&) {
    }
    if (!table) return nullptr;
    const int shmid = table->info().shmid;
    return &beat_tables_.insert_or_assign(key, MappedTable{std::move(*table), shmid}).first->second.table;
}

// Each running unit's registrations (its main process's slots): their worst health, said as an
// event when it changes. Looked at every second, and at the instant the next one can change.
void Stack::check_heartbeats(std::uint64_t now) {
    if (now < next_beat_check_ns_) return;
    next_beat_check_ns_ = now + to_ns(std::chrono::seconds(1));
    // Never sooner than this: the table's writers choose the beats and timeouts the next look
    // is timed by, and must not make procctl spin on it.
    const std::uint64_t soonest = now + to_ns(std::chrono::milliseconds(250));
    std::map<key_t, std::vector<Member*>> by_table;
    for (auto& member : members_) {
        const Phase phase = member->unit.phase();
        // Only a ready unit's heartbeat is judged: a starting one is judged by its readiness check.
        if (!member->unit.running() || phase != Phase::ready) continue;
        try {
            by_table[table_key(member->program())].push_back(member.get());
        } catch (const Error&) {
        }
    }
    for (auto& entry : by_table) {  // not a structured binding: clang 14 cannot capture one in the lambda below
        const key_t key = entry.first;
        const std::vector<Member*>& members = entry.second;
        const Table* table = beat_table(key);
        if (table == nullptr) continue;
        struct Worst {
            bool seen = false;
            Health health = Health::ok;
            std::string how;
        };
        std::vector<Worst> worst(members.size());
        table->for_each([&](const SlotSnapshot& slot) {
            if (slot.phase != SlotPhase::live) return;
            for (std::size_t i = 0; i < members.size(); ++i) {
                if (!same_process(members[i]->identity, slot.process)) continue;
                const Health health = health_of(slot, now);
                const std::uint64_t next = health == Health::ok ? slot.last_beat_ns + to_ns(slot.timeout) / 2 : deadline_ns(slot) + 1;
                if (health != Health::hung) next_beat_check_ns_ = std::max(soonest, std::min(next_beat_check_ns_, next));
                Worst& w = worst[i];
                if (!w.seen || health > w.health) {
                    w.health = health;
                    w.how = escaped(slot.name(), name_char);  // in steps: g++ 12 warns falsely (-Wrestrict) on "'" + ...
                    w.how.insert(0, 1, '\'');
                    w.how += "' last beat " + human_duration(slot.since_beat(now)) + " ago, timeout " + human_duration(slot.timeout);
                }
                w.seen = true;
            }
        });
        for (std::size_t i = 0; i < members.size(); ++i)
            if (worst[i].seen) set_beat_health(*members[i], worst[i].health, worst[i].how);
    }
    std::erase_if(beat_tables_, [&](const auto& entry) { return !by_table.count(entry.first); });  // no ready program's any more
    for (auto& member : members_) say_beat_health(*member);  // what a full minute held back
}

void Stack::output_dropped(const std::string& path, const std::string& problem) {
    emit(make_event(EventKind::output_dropped, "", 0, problem, {{"file", path}}));
}

json Stack::reload() {
    // systemd's Type=notify-reload protocol: RELOADING=1 with the time, then READY=1 when done.
    tell_supervisor_now("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_now_ns() / 1000) + "\n");
    struct Done {
        Stack& stack;
        ~Done() {
            stack.told_status_ = stack.supervisor_status();
            stack.tell_supervisor_now("READY=1\nSTATUS=" + stack.told_status_ + "\n");
        }
    } done{*this};
    std::optional<Error> refused;
    try {
        json report = reload_config();
        emit(make_event(EventKind::reload_applied, "", 0, "reloaded " + config_.path, report));
        return report;
    } catch (const Error& e) {
        refused.emplace(e.code(), e.what());
    } catch (const std::exception& e) {
        refused.emplace(EINVAL, e.what());
    }
    // A config that ran procctl out of memory left its heap at its peak. Given back here, once
    // the exception (allocated last, at the heap's top) is gone: under a memory limit the next
    // request would otherwise find no room, though nothing is held.
    ::malloc_trim(0);
    emit(make_event(EventKind::reload_refused, "", 0, std::string("reload refused, the running config is kept: ") + refused->what(),
                    {{"error", refused->what()}}));
    throw Error(*refused);
}

// GET /v1/events?since=CURSOR[&limit=N][&follow=1]: a page of the ring, with the cursor for
// the next; with follow, the page as NDJSON and then every new event as it happens.
ControlReply Stack::events_reply(const ControlCommand& command) const {
    if (!command.follow) {
        const auto page = events_.since(command.since, command.limit);
        json list = json::array();
        for (const auto& event : page.events) list.push_back(to_json(event));
        return ControlReply{200, json{{"events", std::move(list)}, {"next", page.next}, {"missed", page.missed}}.dump(
                                     -1, ' ', false, json::error_handler_t::replace)};
    }
    // Following: the newest `limit` events after the cursor, then every new one.
    auto first = events_.since(command.since, config_.events.keep);
    if (first.events.size() > command.limit) {
        first.missed += first.events.size() - command.limit;
        first.events.erase(first.events.begin(), first.events.end() - static_cast<std::ptrdiff_t>(command.limit));
    }
    std::string lines;
    if (first.missed > 0) lines += json{{"missed", first.missed}}.dump() + "\n";
    for (const auto& event : first.events) lines += to_json(event).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    return ControlReply{200, std::move(lines), true};
}

void Stack::finish_sinks() {
    if (!sinks_) return;
    log_.info("delivering the events still queued (2 s at most)");
    const std::uint64_t lost = sinks_->finish(monotonic_now_ns() + to_ns(std::chrono::seconds(2)), log_);
    if (lost > 0) log_.warn("{} event(s) were not delivered by the sinks", lost);
    else log_.info("every event was delivered");
    sinks_.reset();
}

}  // namespace hbwatch::tool
