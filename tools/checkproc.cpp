// checkproc: scans the heartbeat table and stops hung services, and only them.
#include <unistd.h>

#include <cstdio>
#include <optional>

#include "engine/checker.h"
#include "engine/completion.h"
#include "engine/event_outlet.h"
#include "engine/watcher.h"
#include "core/duration.h"
#include <hbwatch/error.h>

#include "engine/support.h"

int main(int argc, char** argv) {
    namespace tool = hbwatch::tool;
    tool::one_malloc_arena();
    CLI::App app{"checkproc [--key KEY] [--grace DURATION] [--dry-run | --report-only] [--watch] [--log FILE | LOGFILE] [-v]\n\n"
                 "Scans the hbwatch table: frees the slots of processes that are gone, and stops hung services\n"
                 "(SIGTERM, then SIGKILL after the grace period), never any other process. Before a stop it looks at\n"
                 "what the process is doing: stopped (SIGSTOP), traced (a debugger) or in a frozen cgroup, it is spared;\n"
                 "starved of CPU or I/O, it gets one more timeout; and what it was doing is kept in a diagnosis file.",
                 "checkproc"};
    app.footer(
        "Examples:\n"
        "  checkproc                                  scan once, act, wait for the stops, exit\n"
        "  procctl 10 checkproc /var/log/hbwatch/checkproc.log\n"
        "                                             the classic setup: a scan every 10s\n"
        "  checkproc --watch --grace 10s              stay resident: event-driven, acts about 1ms after a deadline\n"
        "  checkproc --dry-run -v                     show every decision, change nothing\n"
        "  checkproc --watch --report-only --diagnose user\n"
        "                                             a soft watchdog: diagnose and report hangs, signal nothing\n"
        "  proctab diagnosis order-svc                the last diagnosis kept of order-svc\n"
        "  checkproc --watch --events /var/log/hbwatch/events.jsonl --on-event '/usr/local/bin/page-oncall'\n"
        "                                             every hang stop as a JSON line, and a hook run for it\n"
        "                                             (HBWATCH_EVENT, HBWATCH_PROGRAM, HBWATCH_PID, HBWATCH_DETAILS...)\n"
        "\n"
        "Durations: 500ms, 5s, 2m, or a number of seconds. The key comes from --key, else HBWATCH_KEY,\n"
        "else 0x48425754. A missing table is not an error: there is nothing to watch.\n"
        "\n"
        "Exit status: 0 done (including no table); 1 the table cannot be read (permission, foreign\n"
        "segment); 2 bad arguments.");
    std::string diagnose_bound = "200ms";
    std::string key, grace = "5s", log_file, log_positional, events_file, on_event, stopped = "spare", diagnose = "kernel",
                diagnoses = tool::default_diagnosis_directory();
    std::size_t keep = 50;
    bool dry_run = false, report_only = false, watch = false, verbose = false;
    app.add_option("--key", key, "table key, hex or decimal")->check(tool::key_validator());
    app.add_option("--grace", grace, "time between SIGTERM and SIGKILL (default 5s)")->check(tool::duration_validator());
    auto* dry = app.add_flag("--dry-run", dry_run, "log what would be done; signal nothing, change nothing");
    app.add_flag("--report-only", report_only, "judge, diagnose and report hangs (log, events), signal nothing; dead slots are still freed")
        ->excludes(dry);
    app.add_option("--stopped", stopped, "a hung process stopped by a signal or a debugger: spare it (default), or kill it")
        ->check(CLI::IsMember({"spare", "kill"}));
    app.add_option("--diagnose", diagnose,
                   "what is kept before a hang stop: none, kernel (threads' states, wchan, syscalls, kernel stacks; default), "
                   "or user (and their user-space stacks, by eu-stack, at most 200ms)")
        ->check(CLI::IsMember({"none", "kernel", "user"}));
    app.add_option("--diagnose-bound", diagnose_bound,
                   "how long eu-stack may take (--diagnose user; 10ms to 10s, default 200ms): the process is stopped meanwhile, "
                   "and its stop waits at most this and 1s more")
        ->check(tool::duration_validator());
    app.add_option("--diagnoses", diagnoses, "the directory of diagnosis files (default " + diagnoses + ")");
    app.add_option("--keep-diagnoses", keep, "how many diagnosis files are kept, the newest (default 50)")->check(CLI::Range(1, 100000));
    app.add_flag("--watch", watch, "stay resident, waking at the earliest deadline");
    auto* log_option = app.add_option("--log", log_file, "log to FILE (rotated) instead of stderr");
    app.add_option("LOGFILE", log_positional, "same as --log FILE")->excludes(log_option);
    app.add_flag("-v,--verbose", verbose, "also log healthy entries");
    app.add_option("--events", events_file, "append each event (heartbeat_hung, hang_stopped, exited) to FILE as a JSON line");
    app.add_option("--on-event", on_event, "run COMMAND (split on spaces, no shell) for each event, the event in its environment");
    if (tool::wants_bash_completion(argc, argv)) {
        std::fputs(tool::bash_completion("checkproc", {{&app, {}}}).c_str(), stdout);
        return tool::kExitOk;
    }
    if (auto done = tool::parse(app, argc, argv)) return *done;
    std::chrono::milliseconds user_bound{};
    try {
        user_bound = hbwatch::parse_duration_in(diagnose_bound, "--diagnose-bound", tool::kDiagnoseBoundRange);
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "checkproc: %s\n", e.what());
        return tool::kExitUsage;
    }
    try {
        // Blocked in both modes: a TERM from procctl must not cut a stop short.
        const int stop_fd = tool::signalfd_for({SIGTERM, SIGINT});
        auto logger = tool::make_logger("checkproc", log_file.empty() ? log_positional : log_file, verbose);
        hbwatch::tool::CheckOptions options;
        options.grace = hbwatch::parse_duration(grace);
        options.dry_run = dry_run;
        options.report_only = report_only;
        options.spare_stopped = stopped == "spare";
        options.diagnosis.level = *tool::parse_diagnose_level(diagnose);
        options.diagnosis.directory = diagnoses;
        options.diagnosis.keep = keep;
        options.diagnosis.user_bound = user_bound;
        options.log_healthy = verbose;
        const auto table = tool::table_options(key);
        std::optional<tool::EventOutlet> events;
        if (!events_file.empty() || !on_event.empty()) {
            events.emplace(events_file, on_event, *logger);
            options.on_event = [&events](hbwatch::tool::Event event) { events->publish(std::move(event)); };
            options.event_log_fd = events->log_fd();
            options.on_event_log = [&events] { events->write_log(); };
        }
        if (watch) {
            hbwatch::tool::watch(table, options, tool::sink_for(logger), stop_fd);
        } else {
            hbwatch::tool::check_once(table, options, tool::sink_for(logger));
        }
        if (events) events->finish();
        return tool::kExitOk;
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "checkproc: %s\n", e.what());
        return tool::kExitFailure;
    }
}
