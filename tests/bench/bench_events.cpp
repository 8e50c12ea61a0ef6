// The events' figures (run by `make bench`): how long after an event its exec hook starts; how
// long after an event the real Alertmanager holds its alert; and a program restarting at
// restart_delay 0 (a restart as fast as procctl can) with and without a hook that sleeps 10 s
// on every event, thousands of events a second, in the same run.
#include <ctime>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "../support.h"
#include "bench_support.h"
#include "engine/control.h"

using namespace hbbench;

namespace {

std::vector<std::string> lines_of(const fs::path& path) {
    std::ifstream in(path);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

// "2026-12-06T03:05:01.123456789Z" in ns since the epoch.
long long epoch_ns(const std::string& text) {
    std::tm tm{};
    if (!strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
    long long ns = static_cast<long long>(timegm(&tm)) * 1'000'000'000;
    const auto dot = text.find('.');
    if (dot != std::string::npos) {
        std::string digits;
        for (std::size_t i = dot + 1; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) digits += text[i];
        digits.resize(9, '0');
        ns += std::stoll(digits);
    }
    return ns;
}

std::uint64_t events_so_far(const std::string& socket) {
    const auto reply = hbwatch::tool::control_request(socket, "GET", "/v1/events?since=999999999999&limit=1");
    return nlohmann::json::parse(reply.body).value("next", std::uint64_t{0});
}

// From stamp's lines: each run's exit to the next run's start, in ms.
std::vector<double> restart_latencies(const fs::path& file) {
    std::vector<long long> starts, ends;
    for (const auto& line : lines_of(file)) {
        std::istringstream words(line);
        std::string what;
        long long at = 0;
        words >> what >> at;
        (what == "start" ? starts : ends).push_back(at);
    }
    std::vector<double> out;
    for (std::size_t i = 0; i + 1 < starts.size() && i < ends.size(); ++i) out.push_back(static_cast<double>(starts[i + 1] - ends[i]) / 1e6);
    return out;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// One run of `spin` (stamp at restart_delay 0) for `restarts` restarts, with `events` as the
// config's events section; its exit-to-start latencies, and the events a second it made.
std::vector<double> spin(const fs::path& dir, const std::string& events, std::size_t restarts, double& events_per_second) {
    fs::remove(dir / "spin.out");
    const fs::path config = dir / "spin.yaml";
    std::ofstream(config) << "run_dir: " << (dir / "run").string() << "\nlog_dir: " << dir.string() << "\n"
                          << events << "programs:\n  spin:\n    command: [" << kBin << "/stamp]\n    restart_delay: 0ms\n"
                          << "    stdout: spin.out\n";
    Stack stack(config);
    if (!stack.await("started spin")) std::exit(1);
    const std::string socket = (dir / "run" / "control.sock").string();
    const auto start = Clock::now();
    const std::uint64_t first = events_so_far(socket);
    while (lines_of(dir / "spin.out").size() < 2 * restarts) {
        stack.drain();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const std::uint64_t last = events_so_far(socket);
    const double seconds = ms_since(start) / 1000.0;
    events_per_second = static_cast<double>(last - first) / seconds;
    std::fprintf(stderr, "  (%s: %llu events in %.2f s)\n", events.empty() ? "no sinks" : "10 s hook",
                 static_cast<unsigned long long>(last - first), seconds);
    stack.stop();
    auto latencies = restart_latencies(dir / "spin.out");
    if (latencies.size() > restarts) latencies.resize(restarts);
    return latencies;
}

}  // namespace

int main() {
    char buffer[] = "/tmp/hbwatch-bench-events-XXXXXX";
    const fs::path dir = ::mkdtemp(buffer);
    const std::string socket = (dir / "run" / "control.sock").string();

    // 1. From an event to its hook's start: a program restarting every 100 ms, a hook on `started`.
    {
        const fs::path config = dir / "hook.yaml";
        const fs::path samples = dir / "hook-latency.txt";
        std::ofstream(config) << "run_dir: " << (dir / "run").string() << "\nevents:\n  hooks:\n"
                              << "    - {command: [" << kBin << "/hook_latency, " << samples.string() << "], kinds: [started]}\n"
                              << "programs:\n  tick:\n    command: [" << kBin << "/stamp, \"100\"]\n    restart_delay: 0ms\n";
        Stack stack(config);
        while (lines_of(samples).size() < 200) {
            stack.drain();
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        stack.stop();
        std::vector<double> ms;
        for (const auto& line : lines_of(samples)) ms.push_back(std::stod(line) / 1000.0);
        report("event to its exec hook's start", ms);
    }

    // 2. From an event to the real Alertmanager holding its alert (its updatedAt): ten
    // instances that give up at once, each a HbwatchProgramGaveUp alert.
    {
        const int port = hbtest::free_port();
        std::ofstream(dir / "am.yml") << "route: {receiver: nobody}\nreceivers: [{name: nobody}]\n";
        fs::create_directory(dir / "am-data");
        const pid_t am = ::fork();
        if (am == 0) {
            const int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, 1);
            ::dup2(null, 2);
            const std::string config = "--config.file=" + (dir / "am.yml").string(), storage = "--storage.path=" + (dir / "am-data").string(),
                              listen = "--web.listen-address=127.0.0.1:" + std::to_string(port);
            ::execl(HBWATCH_ALERTMANAGER, HBWATCH_ALERTMANAGER, config.c_str(), storage.c_str(), listen.c_str(), "--cluster.listen-address=",
                    nullptr);
            ::_exit(127);
        }
        const std::string base = "http://127.0.0.1:" + std::to_string(port);
        auto curl = [](const std::string& url) {
            std::string out;
            if (FILE* p = ::popen(("curl -sf --max-time 2 '" + url + "'").c_str(), "r")) {
                char b[65536];
                for (std::size_t n; (n = std::fread(b, 1, sizeof b, p)) > 0;) out.append(b, n);
                ::pclose(p);
            }
            return out;
        };
        while (curl(base + "/-/ready").empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const fs::path config = dir / "am-stack.yaml";
        std::ofstream(config) << "run_dir: " << (dir / "run").string() << "\nevents:\n  alertmanager: {url: \"" << base << "\"}\n"
                              << "programs:\n  down:\n    command: [\"false\"]\n    instances: 10\n"
                              << "    max_restarts: {count: 1, window: 1m}\n";
        Stack stack(config);
        nlohmann::json alerts;
        for (;;) {
            alerts = nlohmann::json::parse(curl(base + "/api/v2/alerts"), nullptr, false);
            if (alerts.is_array() && alerts.size() >= 10) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        const auto page = nlohmann::json::parse(hbwatch::tool::control_request(socket, "GET", "/v1/events?since=0").body);
        std::vector<double> ms;
        for (const auto& event : page["events"]) {
            if (event["kind"] != "gave_up") continue;
            for (const auto& alert : alerts)
                if (alert["labels"]["unit"] == event["instance"])
                    ms.push_back(static_cast<double>(epoch_ns(alert["updatedAt"]) - epoch_ns(event["time"])) / 1e6);
        }
        report("event to Alertmanager holding its alert (updatedAt)", ms);
        stack.stop();
        ::kill(am, SIGTERM);
        ::waitpid(am, nullptr, 0);
    }

    // 3. Supervision with and without a hook that sleeps 10 s on every event (4 run at once,
    // the rest queue and the oldest are dropped), alternated, in the same run.
    {
        const std::string sleeping = "events:\n  hooks:\n    - {command: [sleep, \"10\"], max_running: 4}\n";
        std::vector<double> bare, hooked;
        double bare_rate = 0, hooked_rate = 0;
        for (int round = 0; round < 3; ++round) {
            for (double v : spin(dir, "", 2000, bare_rate)) bare.push_back(v);
            for (double v : spin(dir, sleeping, 2000, hooked_rate)) hooked.push_back(v);
        }
        report("restart at restart_delay 0, no sinks: exit to next start", bare);
        report("  the same, a 10 s hook on every event", hooked);
        std::printf("%-58s %.0f events/s with the hook (%.0f without); ratio of medians %.2f\n", "  events flowing", hooked_rate, bare_rate,
                    median(hooked) / median(bare));
    }
    fs::remove_all(dir);
    return 0;
}
