#pragma once
// The host's listening TCP sockets and the processes that hold them: /proc/net/tcp{,6} for
// the sockets (of procctl's network namespace), each process's fds for their holders. And the
// stop of whatever holds a port: TERM, grace, KILL through pidfds pinned before the fds that
// matched them were read, so a pid that changed hands is never reached.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/pidfd.h"

namespace hbwatch::tool {

/// A process holding a listening socket.
struct PortHolder {
    pid_t pid = 0;
    uid_t uid = 0;
    std::string comm;
    std::string exe;
    std::string part_of;  // the stack program (or "procctl") it descends from; empty: not the stack's
    std::shared_ptr<const Pidfd> pidfd;  // pinned before its fds were read
};

/// One listening TCP socket.
struct ListeningSocket {
    std::string address;  // "127.0.0.1", "::", ...
    std::uint16_t port = 0;
    bool ipv6 = false;
    std::uint64_t inode = 0;
    uid_t uid = 0;
    std::vector<PortHolder> holders;  // empty when no process of ours can see its fds
};

/// Who a holder belongs to: the name of the stack program among its ancestors, else empty.
using StackMembership = std::function<std::string(pid_t pid, const std::vector<pid_t>& ancestors)>;

/// Every listening socket, sorted by port then address; `only_port` narrows it to one port.
/// `membership` (may be empty) marks holders that are part of a stack.
[[nodiscard]] std::vector<ListeningSocket> listening_sockets(const StackMembership& membership = {},
                                                             std::optional<std::uint16_t> only_port = std::nullopt);

[[nodiscard]] nlohmann::json ports_json(const std::vector<ListeningSocket>& sockets);

/// Who may be stopped for holding a port.
struct PortKillRules {
    bool any = false;                 // false: only holders that are part of the stack
    std::optional<uid_t> caller_uid;  // a local caller's uid: only processes it could signal itself
    std::chrono::milliseconds grace{std::chrono::seconds(10)};
    int cancel_fd = -1;  // readable: stop waiting (procctl is stopping); SIGKILL is then not sent
};

inline constexpr std::size_t kMaxPortHolders = 128;  // pidfds one port kill may hold at once (two may run)

/// What happened to each holder of `port`: {"port", "holders": [{pid, comm, exe, uid, part_of,
/// outcome, detail}], "stopped", "refused"}. outcome is one of exited_on_term, killed,
/// already_gone, refused, kill_failed, abandoned (cancelled). Blocks for up to the grace (and
/// 5 s more after SIGKILL), or until `cancel_fd` is readable.
[[nodiscard]] nlohmann::json kill_port_holders(std::uint16_t port, const PortKillRules& rules,
                                               const StackMembership& membership = {});

/// The ancestors of `pid` (parent first, up to pid 1), read from /proc.
[[nodiscard]] std::vector<pid_t> ancestors_of(pid_t pid);

}  // namespace hbwatch::tool
