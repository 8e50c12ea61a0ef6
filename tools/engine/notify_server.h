#pragma once
// The server side of sd_notify(3): a program's NOTIFY_SOCKET, as systemd's clients expect it
// (libsystemd's sd_notify, systemd-notify, daemons that speak the protocol themselves). One
// datagram is one message of KEY=VALUE lines; the kernel says who sent it.

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hbwatch::tool {

/// An fd that closes itself.
class OwnedFd {
public:
    explicit OwnedFd(int fd = -1) noexcept : fd_(fd) {}
    OwnedFd(OwnedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    OwnedFd& operator=(OwnedFd&& other) noexcept;
    OwnedFd(const OwnedFd&) = delete;
    OwnedFd& operator=(const OwnedFd&) = delete;
    ~OwnedFd();
    [[nodiscard]] int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_;
};

/// Closes the fds a program sent (SCM_RIGHTS) without ever blocking its caller. Pipes and
/// sockets close at once (a socket's SO_LINGER turned off first: a lingering last close waits
/// as long as its sender chose); any other kind (a file on FUSE or NFS flushes, a tty drains)
/// is closed on a thread of its own, started at the first such fd. One per program: a close
/// that never returns holds up that program's fds alone, and its backlog tells the loop when
/// to stop reading that program's socket.
class FdCloser {
public:
    FdCloser();
    ~FdCloser();  // the thread finishes what is queued on its own
    FdCloser(FdCloser&&) noexcept = default;
    FdCloser& operator=(FdCloser&&) noexcept = default;
    FdCloser(const FdCloser&) = delete;
    FdCloser& operator=(const FdCloser&) = delete;
    /// Takes every fd of `fds` (left empty), in order: a BARRIER's fd closes after the ones
    /// before it.
    void close_later(std::vector<OwnedFd>& fds);
    /// Fds queued and not yet closed.
    [[nodiscard]] std::size_t backlog() const;

private:
    struct Queue;
    void queue(int fd);
    std::shared_ptr<Queue> queue_;  // shared with the thread, which may outlive this
};

/// One datagram, with the sender's credentials as the kernel gave them.
struct NotifyMessage {
    pid_t pid = 0;
    uid_t uid = 0;
    OwnedFd sender;            // SCM_PIDFD (Linux 6.5+): the sender itself, whatever happens to its pid
    bool sender_lost = false;  // SCM_PIDFD came, but the kernel could not make it (the sender reaped)
    std::vector<std::pair<std::string, std::string>> fields;  // in order; lines without '=' left out
    std::vector<OwnedFd> fds;  // SCM_RIGHTS: closed with the message unless taken
    [[nodiscard]] const std::string* find(const std::string& key) const;
};

/// Why datagrams were dropped before anyone looked at what they said.
struct NotifyDrops {
    std::uint64_t truncated = 0;  // MSG_TRUNC (over 4096 bytes) or MSG_CTRUNC
    std::uint64_t malformed = 0;  // empty, a NUL byte, or no credentials
};

/// A NOTIFY_SOCKET: AF_UNIX SOCK_DGRAM at a path (not abstract: a program in a network
/// namespace of its own still reaches it). One per program, so unlike systemd's shared socket
/// it is the program's user's alone (mode 0600): no other user can send it anything, fds
/// included. Who in that user's processes may speak for the program is decided by credentials.
class NotifySocket {
public:
    static constexpr std::size_t kMaxMessage = 4096;

    /// Binds `path` with SO_PASSCRED, SO_PASSPIDFD where the kernel has it, and an 8 MiB
    /// receive buffer, owned by `owner` (nullopt: procctl's user). Bound under a name of its
    /// own, then renamed over `path`: a socket there (a dead procctl's, or the one of the unit a
    /// reload replaces) is replaced at once, never left missing. Throws hbwatch::Error.
    NotifySocket(std::string path, std::optional<uid_t> owner, gid_t group);
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;
    ~NotifySocket();  // closes and unlinks

    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    /// What the kernel gave: the receive buffer's bytes (8 MiB with CAP_NET_ADMIN; the host's
    /// rmem_max cap otherwise), and whether each message brings its sender's pidfd (Linux 6.5 on).
    [[nodiscard]] int receive_buffer() const noexcept { return receive_buffer_; }
    [[nodiscard]] bool sender_pidfds() const noexcept { return pidfds_; }
    /// The next datagram, or nullopt when none waits. `taken` is set when one was read, even one
    /// dropped (cut short, empty, with a NUL byte or no credentials; counted in `drops`, and
    /// then nullopt too): every datagram counts against a turn's budget. A dropped one's fds go
    /// to `closer`; a message's are the caller's to give it.
    std::optional<NotifyMessage> receive(NotifyDrops& drops, bool& taken, FdCloser& closer);

private:
    std::string path_;
    int fd_ = -1;
    ino_t inode_ = 0;      // of the path as bound
    bool pidfds_ = false;  // SO_PASSPIDFD is on: every message should bring its sender's pidfd
    int receive_buffer_ = 0;
};

/// KEY=VALUE lines of one message, in order (systemd's reading: split at '\n', a line without
/// '=' ignored).
[[nodiscard]] std::vector<std::pair<std::string, std::string>> parse_notify_fields(const std::string& text);

}  // namespace hbwatch::tool
