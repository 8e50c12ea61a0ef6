// The sd_notify server's figures (run by `make bench`), with the libsystemd client of the
// tests (tests/helpers/sd_client.c): READY=1 to the dependent's fork; a missed WATCHDOG=1's
// deadline to procctl's stop; procctl's CPU while a program sends 10,000 messages a second.
// Times come from procctl's own events (CLOCK_MONOTONIC) and the client's lines.
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench_support.h"
#include "engine/control.h"

using namespace hbbench;

namespace {

nlohmann::json events_of(const fs::path& run_dir) {
    const auto reply = hbwatch::tool::control_request((run_dir / "control.sock").string(), "GET", "/v1/events?since=0&limit=1000");
    return nlohmann::json::parse(reply.body)["events"];
}

fs::path scratch() {
    char name[] = "/tmp/hbwatch-bench-notify-XXXXXX";
    return ::mkdtemp(name);
}

void write_config(const fs::path& dir, const std::string& programs) {
    std::ofstream(dir / "stack.yaml") << "run_dir: " << (dir / "run").string() << "\nlog_dir: " << dir.string()
                                      << "\ndiagnoses: " << (dir / "diagnoses").string() << "\nprograms:\n" << programs;
}

}  // namespace

int main() {
    const std::string client = kBin + "/sd_client";
    std::printf("sd_notify server (libsystemd's sd_notify as the client)\n");

    {  // READY=1 to the dependent's fork, over fresh stacks.
        std::vector<double> samples;
        for (int i = 0; i < 15; ++i) {
            const fs::path dir = scratch();
            write_config(dir, "  svc: {command: ['" + client + "', '0'], ready: notify}\n  dep: {command: [sleep, '1000'], after: [svc]}\n");
            Stack stack(dir / "stack.yaml");
            if (!stack.await("dep is ready")) return 1;
            double ready = 0, forked = 0;
            for (const auto& event : events_of(dir / "run")) {
                const double ms = event["monotonic_ns"].get<double>() / 1e6;
                if (event["kind"] == "ready" && event["instance"] == "svc") ready = ms;
                if (event["kind"] == "started" && event["instance"] == "dep")
                    forked = ms - event["details"]["exec_seconds"].get<double>() * 1000.0;
            }
            samples.push_back(forked - ready);
            stack.stop();
            fs::remove_all(dir);
        }
        report("READY=1 (svc ready) to its dependent's fork", samples);
    }

    {  // A missed WATCHDOG=1: its deadline to procctl's hang event, and to the SIGTERM the client
       // says it got (same clock); 3 pings, then none (a stack each time: the restart after a
       // short run backs off). n=40, so that p99 is not merely the worst.
        std::vector<double> late, to_term;
        for (int i = 0; i < 40; ++i) {
            const fs::path dir = scratch();
            write_config(dir, "  daemon: {command: ['" + client + "', '3'], ready: notify, watchdog: 500ms, stdout: d.log}\n");
            Stack stack(dir / "stack.yaml");
            if (!stack.await("missed its watchdog")) return 1;
            double last_ping = 0, hang = 0, term = 0;
            // The client's "term" line passes through procctl's output pipe: read until it is there.
            for (const auto until = Clock::now() + std::chrono::seconds(10); term == 0 && Clock::now() < until;) {
                std::ifstream log(dir / "d.log");
                for (std::string line; std::getline(log, line);) {
                    if (line.rfind("last ping ", 0) == 0 && last_ping == 0) last_ping = std::stod(line.substr(10)) / 1e6;
                    if (line.rfind("term ", 0) == 0 && term == 0) term = std::stod(line.substr(5)) / 1e6;
                }
                if (term == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            for (const auto& event : events_of(dir / "run"))
                if (event["kind"] == "heartbeat_hung" && hang == 0) hang = event["monotonic_ns"].get<double>() / 1e6;
            if (term == 0) return 1;
            late.push_back(hang - (last_ping + 500.0));
            to_term.push_back(term - (last_ping + 500.0));
            stack.stop();
            fs::remove_all(dir);
        }
        for (auto* samples : {&late, &to_term}) {
            std::sort(samples->begin(), samples->end());
            std::printf("%-58s p50 %6.2f ms   p99 %6.2f   earliest %6.2f   (n=%zu; never negative: never early)\n",
                        samples == &late ? "missed WATCHDOG=1: deadline to the hang (watchdog 500ms)"
                                         : "missed WATCHDOG=1: deadline to SIGTERM received",
                        (*samples)[samples->size() / 2], (*samples)[std::min(samples->size() - 1, samples->size() * 99 / 100)],
                        samples->front(), samples->size());
        }
    }

    {  // procctl's CPU while a program sends 10,000 STATUS= messages a second, against none.
        const fs::path dir = scratch();
        write_config(dir, "  talker: {command: ['" + client + "', rate, '10000'], notify: true}\n  quiet: {command: [sleep, '1000'], notify: true}\n");
        Stack stack(dir / "stack.yaml");
        if (!stack.await("talker is ready")) return 1;
        std::this_thread::sleep_for(std::chrono::seconds(1));  // under way
        const auto before = cpu_ms(stack.pid);
        const auto start = Clock::now();
        std::this_thread::sleep_for(std::chrono::seconds(5));
        const double busy = static_cast<double>(cpu_ms(stack.pid) - before) / ms_since(start) * 100.0;
        const auto reply = hbwatch::tool::control_request((dir / "run" / "control.sock").string(), "GET", "/v1/programs/talker");
        const auto talker = nlohmann::json::parse(reply.body)[0];
        (void)hbwatch::tool::control_request((dir / "run" / "control.sock").string(), "POST", "/v1/programs/talker/stop");
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const auto idle_before = cpu_ms(stack.pid);
        const auto idle_start = Clock::now();
        std::this_thread::sleep_for(std::chrono::seconds(5));
        const double idle = static_cast<double>(cpu_ms(stack.pid) - idle_before) / ms_since(idle_start) * 100.0;
        std::printf("%-58s %6.1f %% of a core (%.1f %% with none; last status '%s', %s dropped)\n",
                    "procctl, a program sending 10,000 notify messages a second", busy, idle,
                    talker["status"].is_string() ? talker["status"].get<std::string>().c_str() : "-",
                    talker["notify"]["dropped"].dump().c_str());
        stack.stop();
        fs::remove_all(dir);
    }
    return 0;
}
