// The stack's config file, read with yaml-cpp and checked whole before anything runs: every
// key's type and range, names, paths and dependency order; the shape of the YAML itself (keys
// given twice, aliases that multiply the file) is config_reader's. Errors name FILE:LINE:COLUMN
// and the key.
#include "engine/stack_config.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include <hbwatch/error.h>

#include "core/duration.h"
#include "core/table.h"
#include "engine/config_reader.h"
#include "engine/hang_diagnosis.h"
#include "engine/http_url.h"
#include "engine/output.h"
#include "engine/safe_path.h"

namespace hbwatch::tool {
namespace {

constexpr std::pair<const char*, int> kSignals[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},  {"QUIT", SIGQUIT},
                                                    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"KILL", SIGKILL}};
constexpr unsigned kMaxInstances = 64;

ReadyCheck read_ready(const ConfigReader& reader, const YAML::Node& node) {
    const std::string value = reader.text(node, "ready");
    ReadyCheck ready;
    if (value == "started") return ready;
    if (value == "notify") {
        ready.kind = ReadyCheck::Kind::notify;
        return ready;
    }
    if (value == "beat") {
        ready.kind = ReadyCheck::Kind::beat;
        return ready;
    }
    if (value.rfind("tcp:", 0) == 0) {
        const auto colon = value.rfind(':');
        ready.kind = ReadyCheck::Kind::tcp;
        ready.host = value.substr(4, colon > 4 ? colon - 4 : 0);
        const auto port = whole_number(value.substr(colon + 1));
        if (ready.host.empty() || !port || *port == 0 || *port > 65535)
            reader.fail(node, "ready: '" + value + "' is not tcp:HOST:PORT (for example tcp:127.0.0.1:8080)");
        ready.port = static_cast<std::uint16_t>(*port);
        return ready;
    }
    if (value.rfind("exec:", 0) == 0) {
        ready.kind = ReadyCheck::Kind::exec;
        std::istringstream split(value.substr(5));
        for (std::string word; split >> word;) ready.command.push_back(word);
        if (ready.command.empty()) reader.fail(node, "ready: exec: give a command, such as exec:/opt/app/check --quick");
        return ready;
    }
    reader.fail(node, "ready: '" + value + "' is not one of started, beat, notify, tcp:HOST:PORT, exec:COMMAND");
}

const std::vector<std::string> kProgramKeys = {
    "command",      "ready",       "ready_timeout", "after",     "directory", "environment", "user",
    "restart",      "restart_delay", "max_restarts", "stop_signal", "stop_grace", "stdout",     "stderr",
    "log_max_size", "log_files",   "instances",     "max_rss",   "autostart", "inherit_environment", "notify", "watchdog"};

ProgramConfig read_program(const ConfigReader& reader, const YAML::Node& key, const YAML::Node& node) {
    ProgramConfig p;
    p.name = reader.text(key, "program name");
    try {
        validate_name(p.name);
    } catch (const Error& e) {
        reader.fail(key, std::string("program name: ") + e.what());
    }
    if (p.name.find('@') != std::string::npos)
        reader.fail(key, "program name '" + p.name + "': '@' is kept for instances (NAME@1, NAME@2, ...)");
    if (p.name.find('/') != std::string::npos)
        reader.fail(key, "program name '" + p.name + "': '/' cannot stand in a name the control API addresses (/v1/programs/NAME)");
    if (p.name == "all") reader.fail(key, "program name 'all' is kept for every program (proctab stop all): choose another");
    const std::string where = "program '" + p.name + "': ";
    if (!node.IsMap()) reader.fail(node, where + "give its keys, at least command: [program, args...]");
    reader.only_keys(node, where, kProgramKeys);
    if (!node["command"]) reader.fail(node, where + "command is missing: give command: [program, args...]");
    p.command = reader.words(node["command"], where + "command");
    if (auto n = node["ready"]) p.ready = read_ready(reader, n);
    if (auto n = node["ready_timeout"]) p.ready_timeout = reader.duration(n, where + "ready_timeout", kReadyTimeoutRange);
    if (auto n = node["after"]) p.after = reader.words(n, where + "after", true);
    if (auto n = node["directory"]) p.directory = reader.text(n, where + "directory");
    if (auto n = node["environment"]) {
        if (!n.IsMap()) reader.fail(n, where + "environment: give a map, such as {APP_ENV: prod}");
        for (auto it = n.begin(); it != n.end(); ++it) {
            const std::string name = reader.text(it->first, where + "environment name");
            if (name.empty() || name.find('=') != std::string::npos)
                reader.fail(it->first, where + "environment: '" + name + "' is not a variable name");
            p.environment[name] = reader.text(it->second, where + "environment." + name);
            if (name == "HBWATCH_KEY") {  // the table its heartbeats go to, and `ready: beat` reads
                try {
                    (void)parse_key(p.environment[name]);
                } catch (const Error& e) {
                    reader.fail(it->second, where + "environment.HBWATCH_KEY: " + e.what());
                }
            }
        }
    }
    if (auto n = node["inherit_environment"]) {
        if (n.IsSequence()) {
            for (const auto& name : reader.words(n, where + "inherit_environment", true)) {
                if (name.empty() || name.find('=') != std::string::npos)
                    reader.fail(n, where + "inherit_environment: '" + name + "' is not a variable name");
                p.inherit_environment.push_back(name);
            }
        } else {
            p.inherit_all_environment = reader.flag(n, where + "inherit_environment");
        }
    }
    if (auto n = node["user"]) p.user = reader.text(n, where + "user");
    if (auto n = node["restart"]) {
        const std::string mode = reader.text(n, where + "restart");
        if (mode == "always") p.restart = RestartMode::always;
        else if (mode == "on-failure") p.restart = RestartMode::on_failure;
        else if (mode == "never") p.restart = RestartMode::never;
        else reader.fail(n, where + "restart: '" + mode + "' is not one of always, on-failure, never");
    }
    if (auto n = node["restart_delay"]) p.restart_delay = reader.duration(n, where + "restart_delay", kRestartDelayRange);
    if (auto n = node["max_restarts"]) {
        if (!n.IsMap()) reader.fail(n, where + "max_restarts: give {count: N, window: DURATION}");
        reader.only_keys(n, where + "max_restarts: ", {"count", "window"});
        if (!n["count"]) reader.fail(n, where + "max_restarts: count is missing");
        p.max_restarts = reader.number(n["count"], where + "max_restarts.count", 1, 1'000'000);
        if (auto w = n["window"]) p.max_restarts_window = reader.duration(w, where + "max_restarts.window", kRestartWindowRange);
    }
    if (auto n = node["stop_signal"]) {
        const std::string name = reader.text(n, where + "stop_signal");
        const auto signal = signal_by_name(name);
        if (!signal) reader.fail(n, where + "stop_signal: '" + name + "' is not one of TERM, INT, HUP, QUIT, USR1, USR2, KILL");
        p.stop_signal = *signal;
    }
    if (auto n = node["stop_grace"]) p.stop_grace = reader.duration(n, where + "stop_grace", kStopGraceRange);
    for (const char* stream : {"stdout", "stderr"}) {
        if (auto n = node[stream]) {
            const std::string file = reader.text(n, where + stream);
            // Under log_dir only: an absolute path could name any file procctl's user may write
            // (rotation renames it), and the control API serves what is there to the socket group.
            if (file.empty() || file.front() == '/' || file.find("..") != std::string::npos)
                reader.fail(n, where + stream + ": give a file name under log_dir (set log_dir to choose the directory), not an "
                                   "absolute path, and without '..'");
            (std::string_view(stream) == "stdout" ? p.stdout_path : p.stderr_path) = file;
        }
    }
    if (auto n = node["log_max_size"]) {
        p.log_max_size = reader.size(n, where + "log_max_size");
        try {  // the command line's range: 0, or a few bytes, would rotate at every line
            tool::check_output_file_size(p.log_max_size, "log_max_size: '" + n.Scalar() + "'");
        } catch (const Error& e) {
            reader.fail(n, where + e.what());
        }
    }
    if (auto n = node["log_files"]) p.log_files = reader.number(n, where + "log_files", 1, 100);
    if (auto n = node["instances"]) p.instances = reader.number(n, where + "instances", 1, kMaxInstances);
    if (auto n = node["max_rss"]) p.max_rss = reader.size(n, where + "max_rss");
    if (auto n = node["autostart"]) p.autostart = reader.flag(n, where + "autostart");
    if (auto n = node["notify"]) p.notify = reader.flag(n, where + "notify");
    if (auto n = node["watchdog"]) p.watchdog = reader.duration(n, where + "watchdog", kWatchdogRange);
    if (p.ready.kind == ReadyCheck::Kind::notify || p.watchdog.count() > 0) {
        if (node["notify"] && !p.notify)
            reader.fail(node["notify"], where + "notify: false, but " + (p.watchdog.count() > 0 ? "watchdog" : "ready: notify") +
                                            " needs its NOTIFY_SOCKET: remove notify: false");
        p.notify = true;
    }
    return p;
}

EventFilter read_filter(const ConfigReader& reader, const YAML::Node& node, const std::string& where) {
    EventFilter filter;
    if (auto n = node["kinds"]) {
        for (const auto& name : reader.words(n, where + "kinds")) {
            const auto kind = event_kind_named(name);
            if (!kind) reader.fail(n, where + "kinds: '" + name + "' is not an event kind: the kinds are " + event_kind_names());
            filter.kinds.insert(*kind);
        }
    }
    if (auto n = node["programs"])
        for (const auto& name : reader.words(n, where + "programs")) filter.programs.insert(name);
    return filter;
}

// The `events:` section: where events go (hooks, webhooks, Alertmanager) and the storm rule.
EventsConfig read_events(const ConfigReader& reader, const YAML::Node& node) {
    EventsConfig events;
    if (!node.IsMap()) reader.fail(node, "events: give a map with hooks, webhooks, alertmanager, keep and restart_storm");
    reader.only_keys(node, "events: ", {"keep", "restart_storm", "hooks", "webhooks", "alertmanager"});
    if (auto n = node["keep"]) events.keep = reader.number(n, "events.keep", 10, 100'000);
    if (auto n = node["restart_storm"]) {
        if (!n.IsMap()) reader.fail(n, "events.restart_storm: give {restarts: N, window: DURATION}");
        reader.only_keys(n, "events.restart_storm: ", {"restarts", "window"});
        if (auto r = n["restarts"]) events.storm_restarts = reader.number(r, "events.restart_storm.restarts", 2, 1'000'000);
        if (auto w = n["window"]) events.storm_window = reader.duration(w, "events.restart_storm.window", kRestartWindowRange);
    }
    if (auto list = node["hooks"]) {
        if (!list.IsSequence()) reader.fail(list, "events.hooks: give a list of {command: [...], kinds: [...], programs: [...]}");
        for (std::size_t i = 0; i < list.size(); ++i) {
            const YAML::Node h = list[i];
            const std::string where = "events.hooks[" + std::to_string(i) + "]: ";
            if (!h.IsMap()) reader.fail(h, where + "give a map with at least command: [program, args...]");
            reader.only_keys(h, where, {"command", "kinds", "programs", "timeout", "max_running", "user"});
            if (!h["command"]) reader.fail(h, where + "command is missing: give command: [program, args...] (run without a shell)");
            HookConfig hook;
            hook.command = reader.words(h["command"], where + "command");
            hook.filter = read_filter(reader, h, where);
            if (auto n = h["timeout"]) hook.timeout = reader.duration(n, where + "timeout", kHookTimeoutRange);
            if (auto n = h["max_running"]) hook.max_running = reader.number(n, where + "max_running", 1, 64);
            if (auto n = h["user"]) hook.user = reader.text(n, where + "user");
            events.hooks.push_back(std::move(hook));
        }
    }
    auto read_url = [&](const YAML::Node& n, const std::string& key) {
        const std::string url = reader.text(n, key);
        try {
            (void)parse_http_url(url, key);
        } catch (const Error& e) {
            reader.fail(n, e.what());
        }
        return url;
    };
    if (auto list = node["webhooks"]) {
        if (!list.IsSequence()) reader.fail(list, "events.webhooks: give a list of {url: http://..., kinds: [...]}");
        for (std::size_t i = 0; i < list.size(); ++i) {
            const YAML::Node w = list[i];
            const std::string where = "events.webhooks[" + std::to_string(i) + "]: ";
            if (!w.IsMap()) reader.fail(w, where + "give a map with at least url: http://HOST:PORT/PATH");
            reader.only_keys(w, where, {"url", "kinds", "programs", "queue", "retries", "timeout"});
            if (!w["url"]) reader.fail(w, where + "url is missing");
            WebhookConfig hook;
            hook.url = read_url(w["url"], where + "url");
            hook.filter = read_filter(reader, w, where);
            if (auto n = w["queue"]) hook.queue = reader.number(n, where + "queue", 1, 100'000);
            if (auto n = w["retries"]) hook.retries = reader.number(n, where + "retries", 0, 20);
            if (auto n = w["timeout"]) hook.timeout = reader.duration(n, where + "timeout", kHttpTimeoutRange);
            events.webhooks.push_back(std::move(hook));
        }
    }
    if (auto a = node["alertmanager"]) {
        const std::string where = "events.alertmanager: ";
        if (!a.IsMap()) reader.fail(a, where + "give a map with at least url: http://HOST:9093");
        reader.only_keys(a, where, {"url", "resend", "timeout"});
        if (!a["url"]) reader.fail(a, where + "url is missing");
        AlertmanagerConfig am;
        am.url = read_url(a["url"], where + "url");
        if (auto n = a["resend"]) am.resend = reader.duration(n, where + "resend", kAlertResendRange);
        if (auto n = a["timeout"]) am.timeout = reader.duration(n, where + "timeout", kHttpTimeoutRange);
        events.alertmanager = am;
    }
    return events;
}

// The `http:` section: the control API over TCP (README, "The network view").
HttpConfig read_http(const ConfigReader& reader, const YAML::Node& node) {
    HttpConfig http;
    const std::string where = "http: ";
    if (!node.IsMap()) reader.fail(node, "http: give a map with listen: 127.0.0.1:9500 and tokens_file: /etc/hbwatch/tokens");
    reader.only_keys(node, where, {"listen", "tokens_file", "cert", "key", "anonymous_metrics"});
    const YAML::Node listen = node["listen"];
    if (!listen) reader.fail(node, where + "listen is missing: give ADDRESS:PORT, or a list of them");
    auto add = [&](const YAML::Node& item) {
        const std::string text = reader.text(item, "http.listen");
        if (!parse_listen_address(text))
            reader.fail(item, "http.listen: '" + text + "' is not ADDRESS:PORT with a literal address: 127.0.0.1:9500, [::1]:9500, "
                              "or 0.0.0.0:9500 for every interface");
        http.listen.push_back(text);
    };
    if (listen.IsSequence()) {
        if (listen.size() == 0) reader.fail(listen, "http.listen: the list is empty (leave out the http section to turn it off)");
        for (const auto& item : listen) add(item);
    } else {
        add(listen);
    }
    auto absolute = [&](const char* key) {
        const YAML::Node n = node[key];
        if (!n) return std::string();
        std::string value = reader.text(n, std::string("http.") + key);
        if (value.empty() || value.front() != '/') reader.fail(n, std::string("http.") + key + ": '" + value + "' is not an absolute path");
        return value;
    };
    http.tokens_file = absolute("tokens_file");
    if (http.tokens_file.empty())
        reader.fail(node, where + "tokens_file is missing: every request but the page needs a token (README, \"Tokens\")");
    http.cert = absolute("cert");
    http.key = absolute("key");
    if (http.cert.empty() != http.key.empty()) reader.fail(node, where + "give both cert and key for TLS, or neither");
    if (auto n = node["anonymous_metrics"]) http.anonymous_metrics = reader.flag(n, "http.anonymous_metrics");
    return http;
}

// The programs in start order: each after those it names in `after`, otherwise in file order.
// A cycle is an error that names it whole.
std::vector<ProgramConfig> in_start_order(std::vector<ProgramConfig> programs, const ConfigReader& reader,
                                          const std::map<std::string, YAML::Node>& after_nodes) {
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < programs.size(); ++i) index[programs[i].name] = i;
    for (const auto& p : programs)
        for (const auto& dependency : p.after) {
            if (!index.count(dependency)) {
                std::vector<std::string> names;
                for (const auto& q : programs) names.push_back(q.name);
                reader.fail(after_nodes.at(p.name), "program '" + p.name + "': after: there is no program '" + dependency +
                                                        "' (the programs are " + join(names) + ")");
            }
            if (dependency == p.name) reader.fail(after_nodes.at(p.name), "program '" + p.name + "': after: names itself");
        }
    enum class Mark { unseen, visiting, done };
    std::vector<Mark> marks(programs.size(), Mark::unseen);
    std::vector<std::size_t> order, path;
    std::function<void(std::size_t)> visit = [&](std::size_t i) {
        if (marks[i] == Mark::done) return;
        if (marks[i] == Mark::visiting) {
            std::vector<std::string> cycle;
            auto from = std::find(path.begin(), path.end(), i);
            for (auto it = from; it != path.end(); ++it) cycle.push_back(programs[*it].name);
            cycle.push_back(programs[i].name);
            reader.fail(after_nodes.at(programs[i].name), "after: the programs " + join(cycle, " -> ") +
                                                                " wait for each other in a cycle; remove one of these 'after' entries");
        }
        marks[i] = Mark::visiting;
        path.push_back(i);
        for (const auto& dependency : programs[i].after) visit(index.at(dependency));
        path.pop_back();
        marks[i] = Mark::done;
        order.push_back(i);
    };
    for (std::size_t i = 0; i < programs.size(); ++i) visit(i);
    std::vector<ProgramConfig> sorted;
    for (std::size_t i : order) sorted.push_back(std::move(programs[i]));
    return sorted;
}

}  // namespace

std::optional<int> signal_by_name(std::string_view name) {
    if (name.rfind("SIG", 0) == 0) name.remove_prefix(3);
    for (const auto& [text, number] : kSignals)
        if (name == text) return number;
    return std::nullopt;
}

std::string signal_name(int signal) {
    for (const auto& [text, number] : kSignals)
        if (number == signal) return std::string("SIG") + text;
    return "signal " + std::to_string(signal);
}

StackConfig parse_stack_config(const std::string& text, const std::string& path) {
    const YAML::Node root = load_checked_yaml(text, path);
    const ConfigReader reader(path);
    if (!root.IsMap()) reader.fail(root, "give a map with run_dir, log_dir and programs");
    reader.only_keys(root, "", {"run_dir", "log_dir", "socket_group", "diagnoses", "events", "http", "programs"});
    StackConfig config;
    config.path = path;
    config.diagnoses = default_diagnosis_directory();
    if (auto n = root["run_dir"]) {
        config.run_dir = reader.text(n, "run_dir");
        // The control socket's path must fit a unix socket address (108 bytes with its NUL).
        if (config.run_dir.empty() || config.run_dir.front() != '/')
            reader.fail(n, "run_dir: '" + config.run_dir + "' is not an absolute path: give the directory, such as /run/hbwatch");
        if (config.run_dir.size() + std::strlen("/control.sock") >= 108)
            reader.fail(n, "run_dir: '" + config.run_dir + "' is empty or too long: run_dir/control.sock must be under 108 bytes");
    }
    if (auto n = root["log_dir"]) {
        config.log_dir = reader.text(n, "log_dir");
        // Output file names are relative to it: an empty or relative log_dir would put them anywhere.
        if (config.log_dir.empty() || config.log_dir.front() != '/')
            reader.fail(n, "log_dir: '" + config.log_dir + "' is not an absolute path: give the directory, such as /var/log/hbwatch");
    }
    if (auto n = root["diagnoses"]) {
        config.diagnoses = reader.text(n, "diagnoses");
        if (config.diagnoses == "none") config.diagnoses.clear();
        else if (config.diagnoses.empty() || config.diagnoses.front() != '/')
            reader.fail(n, "diagnoses: '" + config.diagnoses + "' is not an absolute path: give a directory, or none");
    }
    if (auto n = root["socket_group"]) {
        config.socket_group = reader.text(n, "socket_group");
        if (::getgrnam(config.socket_group.c_str()) == nullptr)
            reader.fail(n, "socket_group: '" + config.socket_group + "' is not a group on this host");
    }
    if (auto n = root["events"]) config.events = read_events(reader, n);
    if (auto n = root["http"]) config.http = read_http(reader, n);
    const YAML::Node programs = root["programs"];
    if (!programs) reader.fail(root, "programs is missing: give at least one program with its command");
    if (!programs.IsMap() || programs.size() == 0) reader.fail(programs, "programs: give a map of NAME: {command: [...]}");
    std::vector<ProgramConfig> read;
    std::map<std::string, YAML::Node> after_nodes;
    std::set<std::string> seen;
    for (auto it = programs.begin(); it != programs.end(); ++it) {
        ProgramConfig p = read_program(reader, it->first, it->second);
        if (!seen.insert(p.name).second) reader.fail(it->first, "program '" + p.name + "' is defined twice");
        std::string instance = p.name;  // built in steps: g++ 12 warns falsely (-Wrestrict) on "@" + ...
        if (p.instances > 1) instance.append(1, '@').append(std::to_string(p.instances));
        const std::string longest = notify_socket_path(config.run_dir, instance);
        if (p.notify && longest.size() >= 108)
            reader.fail(it->first, "program '" + p.name + "': its NOTIFY_SOCKET " + longest +
                                       " is too long for a unix socket (108 bytes): use a shorter run_dir or name");
        after_nodes[p.name] = it->second["after"] ? it->second["after"] : it->first;
        read.push_back(std::move(p));
    }
    config.programs = in_start_order(std::move(read), reader, after_nodes);
    return config;
}

std::string notify_socket_path(const std::string& run_dir, const std::string& instance) {
    return run_dir + "/notify/" + instance + ".sock";
}

StackConfig load_stack_config(const std::string& path) {
    // The config names commands and users, so it is trusted only when nobody but root and
    // procctl's user could have written it, through any part of its path. Only a regular file
    // (a FIFO or a device put there must not hang a reload, which runs in the loop).
    const int fd = tool::open_trusted_file(path, "the config file");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_size > (1 << 20)) {
        ::close(fd);
        throw Error(EINVAL, path + ": the config file is larger than 1 MiB");
    }
    std::string text;
    char buffer[65536];
    for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0 && text.size() <= (1u << 20);)
        text.append(buffer, static_cast<std::size_t>(n));
    ::close(fd);
    return parse_stack_config(text, path);
}

}  // namespace hbwatch::tool
