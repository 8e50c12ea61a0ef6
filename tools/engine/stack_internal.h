#pragma once
// The stack supervisor's insides, shared by its three files: stack.cpp (the loop, dependency
// order, carrying out what units ask for), stack_api.cpp (the control requests and the views
// they answer with), stack_reload.cpp (units made from the config, and reload). Not for other
// engines: they use stack.h.

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/pidfd.h"
#include "core/process.h"
#include "engine/cgroup.h"
#include "engine/checker.h"
#include "engine/control.h"
#include "engine/control_command.h"
#include "engine/event.h"
#include "engine/event_sinks.h"
#include "engine/hang_verdict.h"
#include "engine/notify_server.h"
#include "engine/output.h"
#include "engine/ports.h"
#include "engine/sd_notify.h"
#include "engine/spawn.h"
#include "engine/stack_config.h"
#include "engine/support.h"
#include "engine/unit.h"

namespace hbwatch::tool {

/// One unit of the stack (a program, or one instance NAME@I): its state table, and what the
/// stack holds for it to carry out the table's effects.
inline constexpr std::chrono::seconds kLaunchKillWait{5};  // a start in flight after SIGKILL, before it is let go

/// What a unit's hung event says when the program asked for its own hang (sd_notify WATCHDOG=trigger).
inline constexpr const char* kWatchdogTriggered = "asked for its watchdog to fire (WATCHDOG=trigger)";

struct Member {
    explicit Member(Unit model) : unit(std::move(model)) {}
    Unit unit;
    // Built before any fork: the child between fork and exec only makes system calls.
    std::vector<std::string> env_storage;
    std::vector<char*> argv, envp;
    std::optional<uid_t> uid;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    std::optional<Cgroup> cgroup;
    bool cgroup_taken = false;  // take_cgroup() has run (at start-up, or before its first start)
    OutputFile* out = nullptr;
    OutputFile* err = nullptr;
    std::optional<Pidfd> pidfd;  // of unit.pid(): opened while it was our unreaped child, or pinned when it was handed over
    // Its main process was handed over (sd_notify MAINPID=): maybe not our child, so its exit
    // is known by its pidfd, and reaped only through it (never by a pid another may hold by then).
    bool main_handed_over = false;
    // The main process that handed over, while it is still our unreaped child: without a
    // cgroup nothing else would stop it with the program.
    std::optional<Pidfd> former_main;
    ProcessIdentity identity;
    // A start in flight: forked, its exec not yet reported. The unit hears of it once the
    // report comes (spawned, or spawn_failed), so the loop never waits on a child's first steps.
    struct Launching {
        Launching(StartedChild started, std::optional<Pinned> held) : child(std::move(started)), pinned(std::move(held)) {}
        StartedChild child;
        std::optional<Pinned> pinned;    // its pidfd and identity, taken while it was surely ours
        std::optional<int> exit_status;  // reaped before its report was read
        std::uint64_t forked_ns = monotonic_now_ns();
        bool killed = false;  // SIGKILLed: its unit stopped meanwhile, or it never reached its exec
        std::uint64_t killed_ns = 0;
    };
    std::optional<Launching> launching;
    // sd_notify (notify_server.h): its NOTIFY_SOCKET, and what it said there since its start.
    std::unique_ptr<NotifySocket> notify;
    FdCloser closer;                  // the fds its messages brought
    bool said_closer_backlog = false;
    char* watchdog_pid = nullptr;  // the digits of WATCHDOG_PID= in env_storage: the child writes them
    bool said_ready = false;       // READY=1
    std::string said_status;       // STATUS=, as shown
    std::string said_state;        // "reloading" or "stopping" (RELOADING=1, STOPPING=1) until READY=1
    int said_errno = 0;            // ERRNO=
    std::chrono::milliseconds watchdog{0};  // WATCHDOG_USEC: its watchdog's, or what it said since
    std::uint64_t watchdog_due_ns = 0;      // a WATCHDOG=1 is due by then; 0: not watched now
    std::uint64_t last_ping_ns = 0;         // the last WATCHDOG=1
    // A missed watchdog's verdict (hang_verdict.h), as checkproc's: a first look that asked for a
    // second, whether its one extension (starved) was given, whether its sparing was said.
    std::optional<ProcessLook> watchdog_look;
    bool watchdog_extended = false;
    bool watchdog_spared_said = false;
    std::uint64_t notify_refused = 0;       // messages from processes that may not speak for it
    NotifyDrops notify_drops;
    std::vector<pid_t> refusals_said;       // senders whose refusal was logged (a few)
    bool said_unsupported = false;          // FDSTORE= logged once
    bool said_bad_barrier = false;          // a BARRIER=1 with other fields, or without exactly one fd, logged once
    unsigned main_pid_refusals = 0;         // MAINPID= refused (the first few are logged)
    bool said_bad_watchdog = false;         // a WATCHDOG_USEC= out of range logged once
    int exit_errno = 0;                     // the ERRNO= its last run said before it exited
    std::string said_waiting;  // the last "waits for" said about it, not to repeat it
    sockaddr_storage probe_address{};  // tcp readiness: HOST:PORT, resolved when the config was read
    socklen_t probe_address_length = 0;
    int probe_fd = -1;         // tcp readiness: a connect in progress
    pid_t probe_pid = 0;       // exec readiness: the check command, an unreaped child of ours
    unsigned probe_start = 0;  // the start it checks: a late answer about an earlier start is ignored
    std::vector<char*> probe_argv;
    // What its events need (stack_events.cpp).
    Health beat_health = Health::ok;  // the worst of its registrations when last looked at
    Health said_health = Health::ok;  // what its last heartbeat event said
    std::string beat_how;             // the words for beat_health
    std::uint64_t beat_events_window_ns = 0;  // heartbeat events said in the minute from here
    unsigned beat_events = 0, beat_events_suppressed = 0;
    std::deque<std::uint64_t> recent_starts;  // within the restart-storm window
    bool storming = false;
    std::optional<Table::StopRecord> hang_stop;  // a checkproc's hang stop, read from the table when it was reaped
    std::string stop_for;  // why the stop in progress began: "an operator's stop", ...

    [[nodiscard]] const std::string& name() const noexcept { return unit.name(); }
    [[nodiscard]] const ProgramConfig& program() const noexcept { return unit.program(); }
    /// Its last exit, with the ERRNO= it said before it (as the API, proctab and events show it).
    [[nodiscard]] std::string last_exit() const;
};

class Stack {
public:
    Stack(StackConfig config, spdlog::logger& log, int signal_fd);
    ~Stack();
    Stack(const Stack&) = delete;
    Stack& operator=(const Stack&) = delete;

    [[nodiscard]] std::optional<gid_t> control_group() const;
    /// Under systemd (Type=notify): READY, STATUS, WATCHDOG, RELOADING and STOPPING go there.
    void tell_supervisor_through(NotifyClient client) { notify_.emplace(std::move(client)); }
    int run(ControlServer& control);

private:
    // stack.cpp: the loop, and the units' effects carried out.
    void apply(Member& member, const UnitEvent& event, std::uint64_t now);
    Facts facts_for(Member& member, std::uint64_t now);
    void carry_out(Member& member, const Effect& effect, std::uint64_t now);
    /// Forks the unit's program (see Member::launching): the event to apply at once when it
    /// cannot even fork, else nothing until settle_launch().
    std::optional<UnitEvent> start_process(Member& member);
    void settle_launch(Member& member, std::uint64_t now);
    // sd_notify (stack_notify_server.cpp).
    void open_notify_socket(Member& member);
    void read_notifications(Member& member);
    /// Whether the fds its program sent wait to be closed in such numbers that no more may be read.
    [[nodiscard]] bool notify_paused(Member& member);
    [[nodiscard]] bool may_speak_for(Member& member, const NotifyMessage& message) const;
    [[nodiscard]] bool belongs_to(const Member& member, pid_t pid) const;
    void take_main_pid(Member& member, const NotifyMessage& message, std::uint64_t now);
    void refuse_main_pid(Member& member, const std::string& said, const std::string& why);
    void handed_over_main_exited(Member& member, std::uint64_t now);
    void take_notification(Member& member, const NotifyMessage& message, std::uint64_t now);
    void check_watchdogs(std::uint64_t now);
    bool spare_watchdog(Member& member, std::uint64_t now);
    void keep_diagnosis(Member& member, const std::string& why, nlohmann::json& details);
    void stop_as_hung(Member& member, const std::string& what, nlohmann::json details, std::uint64_t now);
    [[nodiscard]] static bool wants_launch(const Member& member);
    void watch_launch(Member& member, std::uint64_t now);
    /// Its phase as operators see it: starting while its start is in flight.
    [[nodiscard]] static Phase shown_phase(const Member& member);
    void main_exited(Member& member, int status, std::uint64_t now, bool status_known = true);
    static SpawnPlan plan_for(const Member& member, const std::vector<char*>& argv);
    void step(std::uint64_t now);
    [[nodiscard]] bool everything_stopped() const;
    [[nodiscard]] std::vector<const Member*> unready_dependencies(const Member& member) const;
    [[nodiscard]] bool on_its_way_up(const Member& member, std::size_t depth) const;
    [[nodiscard]] bool dependents_stopping(const Member& member) const;
    bool may_start(Member& member);
    void take_cgroup(Member& member);
    void probe(Member& member, std::uint64_t now);
    void finish_tcp_probe(Member& member, std::uint64_t now);
    void close_probe(Member& member);
    [[nodiscard]] bool beat_seen(const Member& member) const;
    void send(const Member& member, int sig);
    void read_signals();
    void reap();
    void drain_to_end();
    [[nodiscard]] std::string start_order() const;
    [[nodiscard]] std::vector<std::tuple<const Member*, Phase>> phases() const;

    // stack_api.cpp: the control API (README, "The control API").
    ControlReply handle(const ControlRequest& request, std::uint64_t now);
    ControlReply output(const std::vector<Member*>& chosen, const ControlCommand& command);
    void act(Member& member, ControlCommand::Verb verb, const std::string& caller, std::uint64_t now);
    class Heartbeats;
    nlohmann::json describe(const Member& member, std::uint64_t now, Heartbeats& beats) const;

    // stack_views.cpp: what the network view adds: metrics, the table, ports, the page.
    [[nodiscard]] ControlReply metrics_reply(std::uint64_t now) const;
    [[nodiscard]] ControlReply heartbeats_reply() const;
    [[nodiscard]] ControlReply ports_reply() const;
    ControlReply port_kill_reply(const ControlCommand& command, const ControlRequest& request);
    static ControlReply page_reply();
    [[nodiscard]] StackMembership membership() const;
    [[nodiscard]] std::vector<key_t> table_keys() const;

    // stack_events.cpp: the events every change makes, where they go, and the control API's view.
    void on_transition(const Unit& unit, const Change& change);
    void emit(Event event);
    void emit_for(const Member& member, EventKind kind, std::string message, nlohmann::json details = nlohmann::json::object());
    [[nodiscard]] Member* member_of(const Unit& unit) const;
    void exited_event(Member& member, const UnitEvent& cause);
    void started_event(Member& member);
    void check_heartbeats(std::uint64_t now);
    void set_beat_health(Member& member, Health health, const std::string& how);
    void say_beat_health(Member& member);
    void read_hang_stop(Member& member);
    void output_dropped(const std::string& path, const std::string& problem);
    nlohmann::json reload();  // reload_config(), said as an event either way
    ControlReply events_reply(const ControlCommand& command) const;
    void finish_sinks();

    // stack_notify.cpp: procctl telling its own supervisor (systemd's Type=notify) how it is.
    void tell_supervisor(std::uint64_t now);
    void tell_supervisor_now(const std::string& message);
    [[nodiscard]] std::string supervisor_status() const;

    // stack_reload.cpp: units from the config, and reload.
    std::vector<std::unique_ptr<Member>> make_members(const std::shared_ptr<const ProgramConfig>& program, const std::string& log_dir,
                                                      std::optional<bool> wanted);
    void prepare(Member& member, unsigned instance, const std::string& log_dir);
    nlohmann::json reload_config();
    void build_reload(StackConfig& next, nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>>& programs,
                      std::vector<std::unique_ptr<Member>>& fresh);
    void finish_reload(const StackConfig& next, const nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>> programs,
                       std::vector<std::unique_ptr<Member>> fresh);
    bool drop_retired();
    void drop_unused_outputs();

    StackConfig config_;  // its settings; the programs are in programs_
    // The diagnoses this procctl wrote, oldest first: it removes its own beyond a bound, never
    // checkproc's (the directory is shared, and trimming it is checkproc's --keep-diagnoses).
    std::deque<std::string> diagnoses_written_;
    static constexpr std::size_t kDiagnosesKept = 50;
    std::vector<std::shared_ptr<const ProgramConfig>> programs_;  // in start order
    spdlog::logger& log_;
    int signal_fd_;
    std::map<std::string, std::unique_ptr<OutputFile>> outputs_;
    std::vector<std::unique_ptr<Member>> members_;  // in start order
    SpareAddressSpace spare_;                       // for a reload that runs out of memory
    OutputPipes pipes_;
    std::vector<ProcessIdentity> ended_;
    bool stopping_all_ = false;
    bool said_no_cgroup_ = false;
    EventRing events_;
    std::array<std::uint64_t, kEventKinds> event_counts_{};  // every event emitted, by kind (for /metrics)
    std::unique_ptr<EventSinks> sinks_;  // none when the config names no sink
    ControlServer* control_ = nullptr;   // while run() runs: followers of /v1/events
    std::uint64_t next_beat_check_ns_ = 0;
    struct MappedTable {
        Table table;
        int shmid;  // the segment mapped: the key may later name another
    };
    std::map<key_t, MappedTable> beat_tables_;  // the heartbeat tables looked at, by key
    std::optional<NotifyClient> notify_;   // NOTIFY_SOCKET, when procctl runs under systemd (Type=notify)

    bool told_ready_ = false;
    std::string told_status_;
    std::uint64_t next_watchdog_ns_ = 0;  // 0: no watchdog asked for

    const Table* beat_table(key_t key);
};

/// A control reply's JSON: invalid UTF-8 (a name, a path, output) replaced, never thrown on.
inline std::string json_text(const nlohmann::json& value) { return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

/// The heartbeat table a program registers in: its HBWATCH_KEY, else procctl's.
key_t table_key(const ProgramConfig& program);

}  // namespace hbwatch::tool
