#include "engine/ports.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/clock.h"
#include "core/process.h"
#include "core/stopper.h"
#include "engine/inspect.h"

namespace hbwatch::tool {
namespace {

constexpr int kListen = 0x0A;  // TCP_LISTEN in /proc/net/tcp's `st` column
constexpr std::size_t kMaxAncestors = 64;

std::string ipv4_text(const std::string& hex) {
    in_addr address{};
    address.s_addr = static_cast<in_addr_t>(std::stoul(hex, nullptr, 16));  // the kernel prints the word in host order
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &address, text, sizeof text);
    return text;
}

std::string ipv6_text(const std::string& hex) {
    in6_addr address{};
    for (int word = 0; word < 4; ++word) {
        const std::uint32_t value = static_cast<std::uint32_t>(std::stoul(hex.substr(static_cast<std::size_t>(word) * 8, 8), nullptr, 16));
        std::memcpy(&address.s6_addr[word * 4], &value, 4);
    }
    char text[INET6_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET6, &address, text, sizeof text);
    return text;
}

// The listening sockets of one /proc/net file.
void read_table(const char* path, bool ipv6, std::optional<std::uint16_t> only_port, std::vector<ListeningSocket>& out) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string slot, local, remote, state, queues, timer, retransmits;
        unsigned long uid = 0;
        std::string timeout;
        std::uint64_t inode = 0;
        if (!(words >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode)) continue;
        const auto colon = local.find(':');
        if (colon == std::string::npos || local.size() - colon - 1 != 4) continue;
        try {
            if (std::stoi(state, nullptr, 16) != kListen) continue;
            const auto port = static_cast<std::uint16_t>(std::stoul(local.substr(colon + 1), nullptr, 16));
            if (only_port && port != *only_port) continue;
            const std::string hex = local.substr(0, colon);
            if (hex.size() != (ipv6 ? 32u : 8u)) continue;
            out.push_back(ListeningSocket{ipv6 ? ipv6_text(hex) : ipv4_text(hex), port, ipv6, inode, static_cast<uid_t>(uid), {}});
        } catch (const std::exception&) {  // a line this kernel writes otherwise: skipped
        }
    }
}

// The socket inodes among `wanted` that process `pid` holds open.
std::set<std::uint64_t> held_sockets(pid_t pid, const std::set<std::uint64_t>& wanted) {
    std::set<std::uint64_t> held;
    const std::string dir_path = "/proc/" + std::to_string(pid) + "/fd";
    DIR* dir = ::opendir(dir_path.c_str());
    if (dir == nullptr) return held;  // gone, or not ours to read
    const int dir_fd = ::dirfd(dir);
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] == '.') continue;
        char target[64];
        const ssize_t n = ::readlinkat(dir_fd, entry->d_name, target, sizeof target - 1);
        if (n <= 8 || std::strncmp(target, "socket:[", 8) != 0) continue;
        target[n] = '\0';
        const std::uint64_t inode = std::strtoull(target + 8, nullptr, 10);
        if (wanted.count(inode)) held.insert(inode);
    }
    ::closedir(dir);
    return held;
}

std::string exe_of(pid_t pid) {
    char path[4096];
    const std::string link = "/proc/" + std::to_string(pid) + "/exe";
    const ssize_t n = ::readlink(link.c_str(), path, sizeof path - 1);
    if (n <= 0) return "";
    return std::string(path, static_cast<std::size_t>(n));
}

PortHolder describe_holder(pid_t pid, const ProcStat& stat, const StackMembership& membership) {
    PortHolder holder;
    holder.pid = pid;
    holder.comm = stat.comm;
    holder.exe = exe_of(pid);
    if (const auto uids = read_uids(pid)) holder.uid = uids->real;
    if (membership) holder.part_of = membership(pid, ancestors_of(pid));
    return holder;
}

nlohmann::json holder_json(const PortHolder& holder) {
    return nlohmann::json{{"pid", holder.pid},
                          {"uid", holder.uid},
                          {"comm", holder.comm},
                          {"exe", holder.exe},
                          {"part_of", holder.part_of.empty() ? nlohmann::json(nullptr) : nlohmann::json(holder.part_of)}};
}

// The listening sockets, without their holders.
std::vector<ListeningSocket> sockets_only(std::optional<std::uint16_t> only_port) {
    std::vector<ListeningSocket> sockets;
    read_table("/proc/net/tcp", false, only_port, sockets);
    read_table("/proc/net/tcp6", true, only_port, sockets);
    std::sort(sockets.begin(), sockets.end(), [](const ListeningSocket& a, const ListeningSocket& b) {
        return std::tie(a.port, a.ipv6, a.address) < std::tie(b.port, b.ipv6, b.address);
    });
    return sockets;
}

}  // namespace

std::vector<pid_t> ancestors_of(pid_t pid) {
    std::vector<pid_t> chain;
    while (chain.size() < kMaxAncestors) {
        const auto stat = read_proc_stat(pid);
        if (!stat || stat->ppid <= 0) break;
        chain.push_back(stat->ppid);
        if (stat->ppid == 1) break;
        pid = stat->ppid;
    }
    return chain;
}

std::vector<ListeningSocket> listening_sockets(const StackMembership& membership, std::optional<std::uint16_t> only_port) {
    auto sockets = sockets_only(only_port);
    if (sockets.empty()) return sockets;
    std::set<std::uint64_t> wanted;
    std::map<std::uint64_t, std::vector<ListeningSocket*>> by_inode;
    for (auto& socket : sockets) {
        wanted.insert(socket.inode);
        by_inode[socket.inode].push_back(&socket);
    }
    for (const pid_t pid : all_pids()) {
        const auto held = held_sockets(pid, wanted);
        if (held.empty()) continue;
        const auto stat = read_proc_stat(pid);
        if (!stat) continue;
        const PortHolder holder = describe_holder(pid, *stat, membership);
        for (const std::uint64_t inode : held)
            for (ListeningSocket* socket : by_inode[inode]) socket->holders.push_back(holder);
    }
    return sockets;
}

nlohmann::json ports_json(const std::vector<ListeningSocket>& sockets) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& socket : sockets) {
        nlohmann::json holders = nlohmann::json::array();
        bool stack = false;
        for (const auto& holder : socket.holders) {
            holders.push_back(holder_json(holder));
            stack = stack || !holder.part_of.empty();
        }
        list.push_back({{"port", socket.port},
                        {"address", socket.address},
                        {"family", socket.ipv6 ? "ipv6" : "ipv4"},
                        {"uid", socket.uid},
                        {"stack", stack},
                        {"holders", std::move(holders)}});
    }
    return list;
}

nlohmann::json kill_port_holders(std::uint16_t port, const PortKillRules& rules, const StackMembership& membership) {
    nlohmann::json report{{"port", port}, {"holders", nlohmann::json::array()}, {"stopped", 0}, {"refused", 0}};
    const auto sockets = sockets_only(port);
    std::set<std::uint64_t> wanted;
    for (const auto& socket : sockets) wanted.insert(socket.inode);
    if (wanted.empty()) return report;

    std::vector<nlohmann::json> rows;
    std::vector<std::optional<Pidfd>> targets;
    // A holder that is not stopped: its row, settled now, and no target.
    auto settle = [&](nlohmann::json row, const char* outcome, const std::string& detail) {
        row["outcome"] = outcome;
        row["detail"] = detail;
        rows.push_back(std::move(row));
        targets.emplace_back();
    };
    auto refuse = [&](nlohmann::json row, const std::string& why) { settle(std::move(row), "refused", why); };
    std::size_t pinned_count = 0;
    for (const pid_t pid : all_pids()) {
        if (held_sockets(pid, wanted).empty()) continue;
        if (pinned_count == kMaxPortHolders) {  // each holds a pidfd until the stop ends: bounded
            refuse(nlohmann::json{{"pid", pid}}, "more than " + std::to_string(kMaxPortHolders) +
                                                     " processes hold the port: ask again once these are stopped");
            continue;
        }
        Refusal refusal{};
        auto pinned = Pidfd::pin(pid, &refusal, /*for_signal=*/true);
        if (!pinned) {
            const auto stat = read_proc_stat(pid);
            nlohmann::json row{{"pid", pid}, {"comm", stat ? stat->comm : ""}};
            if (means_exited(refusal)) settle(std::move(row), "already_gone", to_string(refusal));
            else refuse(std::move(row), std::string("never signalled: ") + to_string(refusal));
            continue;
        }
        // Read again after the pin: what is read now, confirmed by still_running() below, is of
        // the pinned process itself.
        const bool holds = !held_sockets(pid, wanted).empty();
        const PortHolder holder = describe_holder(pid, pinned->stat, membership);
        const auto uids = read_uids(pid);
        if (!pinned->pidfd.still_running()) {  // exited meanwhile
            settle(nlohmann::json{{"pid", pid}, {"comm", holder.comm}}, "already_gone", "exited");
            continue;
        }
        if (!holds) continue;  // let go of the port meanwhile: not a holder
        nlohmann::json row = holder_json(holder);
        if (!rules.any && holder.part_of.empty()) {
            refuse(std::move(row), "not part of the stack (neither a program nor one of their descendants): ask with any=1 to stop it anyway");
            continue;
        }
        if (rules.caller_uid && (!uids || !user_may_signal(*rules.caller_uid, *uids))) {
            refuse(std::move(row), "runs as uid " + (uids ? std::to_string(uids->real) : std::string("?")) + ", which uid " +
                                       std::to_string(*rules.caller_uid) + " (the caller) could not signal itself");
            continue;
        }
        if (!pinned->pidfd.may_signal()) {
            refuse(std::move(row), "this process (uid " + std::to_string(::geteuid()) + ") may not signal it");
            continue;
        }
        rows.push_back(std::move(row));
        targets.emplace_back(std::move(pinned->pidfd));
        ++pinned_count;
    }

    Stopper stopper(rules.grace, [&](const StopEvent& event) {
        auto& row = rows[event.id];
        const double seconds = static_cast<double>(event.elapsed.count()) / 1000.0;
        switch (event.kind) {
            case StopEvent::Kind::exited:
                row["outcome"] = event.killed ? "killed" : "exited_on_term";
                row["seconds"] = seconds;
                break;
            case StopEvent::Kind::kill_failed:
                row["outcome"] = "kill_failed";
                row["detail"] = event.detail;
                break;
            case StopEvent::Kind::kill_skipped:
                row["outcome"] = "kill_failed";
                row["detail"] = "not SIGKILLed: it no longer runs as a user the caller could signal";
                break;
            case StopEvent::Kind::kill_sent: row["kill_sent"] = true; break;
        }
    });
    auto cancelled = [&](int timeout_ms) {
        if (rules.cancel_fd < 0) return false;
        pollfd p{rules.cancel_fd, POLLIN, 0};
        return ::poll(&p, 1, timeout_ms) == 1;
    };
    auto abandon = [&](const char* why) {
        for (auto& row : rows)
            if (!row.contains("outcome")) {
                row["outcome"] = "abandoned";
                row["detail"] = why;
            }
    };
    if (cancelled(0)) {  // procctl began to stop while the holders were looked for: nothing is sent
        abandon("procctl is stopping: nothing was sent");
        targets.clear();
    }
    const std::uint64_t kill_at = monotonic_now_ns() + to_ns(rules.grace);
    for (std::size_t i = 0; i < targets.size(); ++i) {
        if (!targets[i]) continue;
        std::string why;
        // A local caller's right is checked again right before SIGKILL: a holder that became
        // another user's since (a setuid program) is not killed for it.
        std::function<bool()> may_kill;
        if (rules.caller_uid)
            may_kill = [pid = targets[i]->pid(), caller = *rules.caller_uid] {
                const auto uids = read_uids(pid);
                return uids && user_may_signal(caller, *uids);
            };
        if (!stopper.start(i, std::move(*targets[i]), kill_at, &why, std::move(may_kill))) {
            rows[i]["outcome"] = "kill_failed";
            rows[i]["detail"] = why;
        }
    }
    std::vector<pollfd> fds;
    while (!stopper.idle()) {
        fds.clear();
        stopper.add_pollfds(fds);
        if (rules.cancel_fd >= 0) fds.push_back(pollfd{rules.cancel_fd, POLLIN, 0});
        const auto next = stopper.next_deadline_ns();
        const int ready = ::poll(fds.data(), fds.size(), next ? poll_timeout_ms(*next, monotonic_now_ns()) : -1);
        if (ready > 0 && rules.cancel_fd >= 0 && (fds.back().revents & POLLIN)) {
            for (auto& row : rows)
                if (!row.contains("outcome") && row.value("kill_sent", false)) {
                    row["outcome"] = "abandoned";
                    row["detail"] = "procctl is stopping: SIGKILL was sent, its end was not waited for";
                }
            abandon("procctl is stopping: SIGTERM was sent, SIGKILL was not");
            break;
        }
        stopper.advance(monotonic_now_ns());
    }
    for (auto& row : rows) {
        row.erase("kill_sent");
        const std::string outcome = row.value("outcome", "");
        if (outcome == "refused") report["refused"] = report["refused"].get<int>() + 1;
        if (outcome == "killed" || outcome == "exited_on_term" || outcome == "already_gone")
            report["stopped"] = report["stopped"].get<int>() + 1;
        report["holders"].push_back(std::move(row));
    }
    return report;
}

}  // namespace hbwatch::tool
