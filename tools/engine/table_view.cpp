// What proctab shows: the heartbeat table as text (fitted to 80 columns, coloured on a
// terminal), as JSON and in the Prometheus text format; the host's processes as text and JSON.
// Every name and path a process or a table writer chose is escaped on the way out.
#include "engine/table_view.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ostream>

#include "core/clock.h"
#include "core/duration.h"
#include "core/table.h"
#include "engine/prometheus_text.h"
#include "engine/terminal_text.h"

namespace hbwatch::tool {

using json = nlohmann::json;



// Text a process chose (its command name, its executable's path), for a terminal: control
// bytes are escaped, so none reaches the terminal as an escape sequence.
static std::string printable(std::string_view text) {
    return hbwatch::escaped(text, [](unsigned char c) { return c >= 0x20 && c != 0x7f && c != '\\'; });
}

// The Prometheus text format's label value escapes: backslash, quote, newline.

static bool colour() {
    static const bool on = ::isatty(1) && std::getenv("NO_COLOR") == nullptr;
    return on;
}

static std::string paint(const std::string& text, EntryState state) {
    if (!colour()) return text;
    const char* code = state == EntryState::ok ? "32" : state == EntryState::late ? "33"
                       : state == EntryState::hung ? "31" : "35";
    return std::string("\033[") + code + "m" + text + "\033[0m";
}

static std::string fit(std::string_view text, std::size_t width) {
    if (text.size() <= width) return std::string(text);
    return std::string(text.substr(0, width - 1)) + "~";
}

static std::string user_name(uid_t uid) {
    const passwd* pw = ::getpwuid(uid);
    return pw ? pw->pw_name : std::to_string(uid);
}

static std::string group_name(gid_t gid) {
    const group* gr = ::getgrgid(gid);
    return gr ? gr->gr_name : std::to_string(gid);
}

std::string header_line(const hbwatch::TableInfo& info, std::size_t used) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(info.mode));
    // Fits 80 columns whatever the owner's names: they are cut to 20 bytes together.
    return "table " + hbwatch::format_key(info.key) + ": " + std::to_string(used) + "/" + std::to_string(info.slot_count) +
           " slots, mode " + mode + " " + fit(user_name(info.owner_uid) + ":" + group_name(info.owner_gid), 20) + ", " +
           std::to_string(info.registrations) + " regs, " + std::to_string(info.kills) + " kills";
}

void print_table(const hbwatch::Table& table, std::ostream& out) {
    const auto entries = inspect(table, hbwatch::monotonic_now_ns());
    out << header_line(table.info(), entries.size()) << "\n";
    char line[256];
    std::snprintf(line, sizeof line, "%5s %7s %-14s %-5s %7s %7s %7s %7s %7s %5s\n", "SLOT", "PID", "NAME", "STATE",
                  "TIMEOUT", "BEAT", "BEATS", "UPTIME", "RSS", "CPU%");
    out << line;
    for (const auto& e : entries) {
        const std::string state = tool::to_string(e.state);
        std::snprintf(line, sizeof line, "%5u %7d %-14s %s%*s %7s %7s %7s %7s %7s %5s\n", e.slot.index, e.slot.process.pid,
                      fit(shown_name(e.slot.name()), 14).c_str(), paint(state, e.state).c_str(), static_cast<int>(5 - state.size()), "",
                      hbwatch::human_duration(e.slot.timeout).c_str(), hbwatch::human_duration(e.since_beat).c_str(),
                      e.slot.beats > 9'999'999 ? (std::to_string(e.slot.beats / 1'000'000) + "M").c_str()
                                               : std::to_string(e.slot.beats).c_str(),
                      e.usage ? hbwatch::human_duration(e.usage->uptime).c_str() : "-",
                      e.usage ? hbwatch::human_size(e.usage->rss_bytes).c_str() : "-",
                      e.usage ? (std::to_string(static_cast<int>(std::lround(e.usage->cpu_percent)))).c_str() : "-");
        out << line;
        if (!e.verdict.empty()) out << "              ^ " << terminal_safe(e.verdict) << ": checkproc spares it (unless --stopped kill; a frozen cgroup always)\n";  // a tracer's name is its own choice
    }
}

json entries_json(const hbwatch::Table& table) {
    json array = json::array();
    for (const auto& e : inspect(table, hbwatch::monotonic_now_ns())) {
        json o{{"slot", e.slot.index},
               {"pid", e.slot.process.pid},
               {"name", shown_name(e.slot.name())},
               {"state", tool::to_string(e.state)},
               {"uid", e.slot.uid},
               {"start_time_ticks", e.slot.process.start_time},
               {"timeout_ms", e.slot.timeout.count()},
               {"since_beat_ms", e.since_beat.count()},
               {"beats", e.slot.beats},
               {"uptime_ms", e.usage ? json(e.usage->uptime.count()) : json(nullptr)},
               {"rss_bytes", e.usage ? json(e.usage->rss_bytes) : json(nullptr)},
               {"cpu_percent", e.usage ? json(std::round(e.usage->cpu_percent * 10) / 10) : json(nullptr)}};
        if (e.state == EntryState::dead) o["dead_reason"] = e.dead_reason;
        if (!e.verdict.empty()) o["verdict"] = e.verdict;
        array.push_back(std::move(o));
    }
    return array;
}

// The Prometheus text format, for node_exporter's textfile collector and procctl's /metrics.
std::string prometheus(const hbwatch::Table& table) { return prometheus_tables({&table}); }

std::string prometheus_tables(const std::vector<const hbwatch::Table*>& tables) {
    struct Read {
        std::string key;
        std::vector<Entry> entries;
        TableInfo info;
    };
    std::vector<Read> reads;
    const auto now = hbwatch::monotonic_now_ns();
    for (const Table* table : tables) reads.push_back(Read{hbwatch::format_key(table->key()), inspect(*table, now), table->info()});
    const bool keyed = reads.size() > 1;  // one table (the usual): no key label
    PrometheusText out;
    auto labels = [&](const Read& read, const Entry* e) {
        PrometheusText::Labels list;
        if (e != nullptr) {
            list.emplace_back("name", shown_name(e->slot.name()));
            list.emplace_back("pid", std::to_string(e->slot.process.pid));
            list.emplace_back("slot", std::to_string(e->slot.index));  // a process may hold one name twice
        }
        if (keyed) list.emplace_back("key", read.key);
        return list;
    };
    auto family = [&](const char* name, const char* type, const char* help, auto value_of) {
        out.family(name, type, help);
        for (const auto& read : reads)
            for (const auto& e : read.entries) out.sample(name, labels(read, &e), value_of(e));
    };
    family("hbwatch_entry_timeout_seconds", "gauge", "Heartbeat timeout of the entry.",
           [](const Entry& e) { return static_cast<double>(e.slot.timeout.count()) / 1000.0; });
    family("hbwatch_entry_last_beat_age_seconds", "gauge", "Time since the entry's last beat.",
           [](const Entry& e) { return static_cast<double>(e.since_beat.count()) / 1000.0; });
    family("hbwatch_entry_beats_total", "counter", "Beats since the entry registered.",
           [](const Entry& e) { return static_cast<double>(e.slot.beats); });
    family("hbwatch_entry_hung", "gauge", "1 when the last beat is older than the timeout.",
           [](const Entry& e) { return e.state == EntryState::hung ? 1 : 0; });
    family("hbwatch_entry_dead", "gauge", "1 when the registered process is gone, reused or a zombie.",
           [](const Entry& e) { return e.state == EntryState::dead ? 1 : 0; });
    family("hbwatch_entry_resident_memory_bytes", "gauge", "Resident memory of the entry's process.",
           [](const Entry& e) { return e.usage ? static_cast<double>(e.usage->rss_bytes) : 0.0; });
    family("hbwatch_entry_cpu_ratio", "gauge", "CPU used by the entry's process over its lifetime, 1 = one core.",
           [](const Entry& e) { return e.usage ? e.usage->cpu_percent / 100.0 : 0.0; });
    auto total = [&](const char* name, const char* type, const char* help, auto value_of) {
        out.family(name, type, help);
        for (const auto& read : reads) out.sample(name, labels(read, nullptr), static_cast<double>(value_of(read)));
    };
    total("hbwatch_table_slots", "gauge", "Slots in the table.", [](const Read& r) { return r.info.slot_count; });
    total("hbwatch_table_entries", "gauge", "Slots holding an entry.", [](const Read& r) { return r.entries.size(); });
    total("hbwatch_table_registrations_total", "counter", "Registrations since the table was created.",
          [](const Read& r) { return r.info.registrations; });
    total("hbwatch_table_kills_total", "counter", "Processes checkproc signalled to stop.", [](const Read& r) { return r.info.kills; });
    total("hbwatch_table_reclaims_total", "counter", "Slots of dead owners taken back by registrations.",
          [](const Read& r) { return r.info.reclaims; });
    return out.take();
}

void print_processes(const std::vector<HostProcess>& processes, bool with_parent) {
    std::printf("%7s %-5s %8s %8s %5s  %s%s\n", "PID", "STATE", "UPTIME", "RSS(MB)", "CPU%", with_parent ? "PARENT  " : "",
                "EXECUTABLE");
    for (const auto& p : processes) {
        const std::string parent = with_parent ? std::to_string(p.ppid) + " (" + printable(p.parent_comm) + ")  " : "";
        std::printf("%7d %-5c %8s %8.1f %5ld  %s%s\n", p.pid, p.state, hbwatch::human_duration(p.usage.uptime).c_str(),
                    static_cast<double>(p.usage.rss_bytes) / 1048576.0, std::lround(p.usage.cpu_percent), parent.c_str(),
                    printable(p.exe.empty() ? "(" + p.comm + ")" : p.exe).c_str());
    }
}

json processes_json(const std::vector<HostProcess>& processes) {
    json array = json::array();
    for (const auto& p : processes)
        array.push_back({{"pid", p.pid}, {"ppid", p.ppid}, {"parent", p.parent_comm}, {"state", std::string(1, p.state)},
                         {"comm", p.comm}, {"exe", p.exe}, {"uptime_ms", p.usage.uptime.count()},
                         {"rss_bytes", p.usage.rss_bytes}, {"cpu_percent", std::round(p.usage.cpu_percent * 10) / 10}});
    return array;
}

}  // namespace hbwatch::tool
