// The stack's config file, read with yaml-cpp and checked whole before anything runs: every
// key's type and range, names, paths, dependency order, and the shape of the YAML itself
// (keys given twice, aliases that multiply the file). Errors name FILE:LINE:COLUMN and the key.
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
#include <set>
#include <sstream>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <hbwatch/error.h>

#include "core/duration.h"
#include "core/table.h"
#include "engine/hang_diagnosis.h"
#include "engine/http_url.h"
#include "engine/output.h"
#include "engine/safe_path.h"

namespace hbwatch::tool {
namespace {

constexpr std::pair<const char*, int> kSignals[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},  {"QUIT", SIGQUIT},
                                                    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"KILL", SIGKILL}};
constexpr unsigned kMaxInstances = 64;

// A whole, non-negative number written in decimal and nothing else.
std::optional<unsigned long> whole_number(const std::string& text) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 9) return std::nullopt;
    return std::stoul(text);
}

std::string join(const std::vector<std::string>& words, const char* separator = ", ") {
    std::string out;
    for (const auto& word : words) out += (out.empty() ? "" : separator) + word;
    return out;
}

// What a config may expand to, counting each node once per place it appears (an alias counts
// the whole of what it names) and each scalar's bytes: a 1 MiB file can hold billions of
// nodes through aliases of aliases, and yaml-cpp would have them walked.
constexpr std::size_t kMaxExpandedWeight = std::size_t{4} << 20;

// A pass over the parser's events before the file is loaded: refuses a key given twice in one
// map (yaml-cpp keeps both, and its lookups take the first) and a document whose aliases
// expand past kMaxExpandedWeight, each at its line and column.
class ShapeCheck final : public YAML::EventHandler {
public:
    explicit ShapeCheck(const std::string& path) : path_(path) {}

    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override { node(mark, anchor, 1, nullptr); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        // yaml-cpp and other readers disagree on which of two keys wins once one is an alias.
        if (!stack_.empty() && stack_.back().map && stack_.back().next_is_key)
            fail(mark, "an alias cannot stand as a key: write the key itself");
        const std::size_t weight = anchor < weights_.size() ? weights_[anchor] : 1;
        if (weight > kMaxExpandedWeight - total_)
            fail(mark, "this alias makes the config expand past " + std::to_string(kMaxExpandedWeight >> 20) +
                           " MiB of nodes and text; an alias may repeat a part of the file, not multiply it");
        node(mark, 0, weight, nullptr);
    }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, const std::string& value) override {
        node(mark, anchor, 1 + value.size(), &value);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, YAML::EmitterStyle::value) override {
        open(mark, anchor, false);
    }
    void OnSequenceEnd() override { close(); }
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, YAML::EmitterStyle::value) override {
        open(mark, anchor, true);
    }
    void OnMapEnd() override { close(); }

private:
    struct Open {
        YAML::anchor_t anchor;
        std::size_t weight = 1;
        bool map;
        bool next_is_key = true;
        std::map<std::string, YAML::Mark> keys;
    };

    [[noreturn]] void fail(const YAML::Mark& mark, const std::string& what) const {
        throw Error(EINVAL, path_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + what);
    }
    void remember(YAML::anchor_t anchor, std::size_t weight) {
        if (anchor == 0) return;
        if (weights_.size() <= anchor) weights_.resize(anchor + 1, 1);
        weights_[anchor] = weight;
    }
    // A finished node of `weight`: counted, and checked as a key when its map expects one.
    void node(const YAML::Mark& mark, YAML::anchor_t anchor, std::size_t weight, const std::string* scalar) {
        total_ += weight;
        if (total_ > kMaxExpandedWeight)
            fail(mark, "the config expands past " + std::to_string(kMaxExpandedWeight >> 20) + " MiB of nodes and text");
        remember(anchor, weight);
        if (stack_.empty()) return;
        Open& parent = stack_.back();
        parent.weight += weight;
        if (!parent.map) return;
        if (parent.next_is_key && scalar != nullptr) {
            const auto [at, fresh] = parent.keys.emplace(*scalar, mark);
            if (!fresh)
                fail(mark, "the key '" + *scalar + "' is given twice in one map, first at line " +
                               std::to_string(at->second.line + 1) + ": give each key once");
        }
        parent.next_is_key = !parent.next_is_key;
    }
    void open(const YAML::Mark& mark, YAML::anchor_t anchor, bool map) {
        total_ += 1;
        if (total_ > kMaxExpandedWeight)
            fail(mark, "the config expands past " + std::to_string(kMaxExpandedWeight >> 20) + " MiB of nodes and text");
        stack_.push_back(Open{anchor, 1, map, true, {}});
        marks_.push_back(mark);
    }
    void close() {
        Open done = std::move(stack_.back());
        const YAML::Mark mark = marks_.back();
        stack_.pop_back();
        marks_.pop_back();
        total_ -= done.weight;  // counted as it came; node() counts it again, whole
        node(mark, done.anchor, done.weight, nullptr);
    }

    const std::string& path_;
    std::vector<Open> stack_;
    std::vector<YAML::Mark> marks_;
    std::vector<std::size_t> weights_;  // by anchor: what an alias of it weighs
    std::size_t total_ = 0;
};

// Reads nodes of one file, each error placed at its line and column.
class Reader {
public:
    explicit Reader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const YAML::Node& node, const std::string& what) const {
        const YAML::Mark mark = node.Mark();
        if (mark.is_null()) throw Error(EINVAL, path_ + ": " + what);
        throw Error(EINVAL, path_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + what);
    }

    // Every key of `map` must be one of `allowed`.
    void only_keys(const YAML::Node& map, const std::string& where, const std::vector<std::string>& allowed) const {
        for (auto it = map.begin(); it != map.end(); ++it) {
            const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
            if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
                fail(it->first, where + "unknown key '" + key + "': the keys allowed here are " + join(allowed));
        }
    }

    std::string text(const YAML::Node& node, const std::string& key) const {
        if (!node.IsScalar()) fail(node, key + ": give a string");
        return node.Scalar();
    }
    std::chrono::milliseconds duration(const YAML::Node& node, const std::string& key, DurationRange range) const {
        const std::string value = text(node, key);
        try {
            (void)parse_duration(value);
        } catch (const Error& e) {
            fail(node, key + ": " + e.what());
        }
        try {
            return parse_duration_in(value, key + ":", range);
        } catch (const Error& e) {
            fail(node, e.what());
        }
    }
    std::uint64_t size(const YAML::Node& node, const std::string& key) const {
        try {
            return parse_size(text(node, key));
        } catch (const Error& e) {
            fail(node, key + ": " + e.what());
        }
    }
    unsigned number(const YAML::Node& node, const std::string& key, unsigned low, unsigned high) const {
        const std::string value = text(node, key);
        const auto n = whole_number(value);
        if (!n || *n < low || *n > high)
            fail(node, key + ": '" + value + "' is not a whole number from " + std::to_string(low) + " to " + std::to_string(high));
        return static_cast<unsigned>(*n);
    }
    bool flag(const YAML::Node& node, const std::string& key) const {
        const std::string value = text(node, key);
        if (value == "true" || value == "yes") return true;
        if (value == "false" || value == "no") return false;
        fail(node, key + ": '" + value + "' is not true or false");
    }
    std::vector<std::string> words(const YAML::Node& node, const std::string& key, bool allow_empty = false) const {
        if (!node.IsSequence()) fail(node, key + ": give a list, such as [program, --flag, value]");
        std::vector<std::string> out;
        for (const auto& item : node) out.push_back(text(item, key + " item"));
        if (out.empty() && !allow_empty) fail(node, key + ": the list is empty");
        return out;
    }

private:
    std::string path_;
};

ReadyCheck read_ready(const Reader& reader, const YAML::Node& node) {
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

ProgramConfig read_program(const Reader& reader, const YAML::Node& key, const YAML::Node& node) {
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

EventFilter read_filter(const Reader& reader, const YAML::Node& node, const std::string& where) {
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
EventsConfig read_events(const Reader& reader, const YAML::Node& node) {
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
HttpConfig read_http(const Reader& reader, const YAML::Node& node) {
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
std::vector<ProgramConfig> in_start_order(std::vector<ProgramConfig> programs, const Reader& reader,
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
    YAML::Node root;
    try {
        {
            std::istringstream stream(text);
            YAML::Parser parser(stream);
            ShapeCheck shape(path);
            while (parser.HandleNextDocument(shape)) {
            }
        }
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        throw Error(EINVAL, path + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                                ": not valid YAML (or JSON): " + e.msg);
    }
    const Reader reader(path);
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
