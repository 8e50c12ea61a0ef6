#include "engine/notify_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <hbwatch/error.h>

// Linux 6.5's; Debian 12's headers predate them.
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

namespace hbwatch::tool {

OwnedFd& OwnedFd::operator=(OwnedFd&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

OwnedFd::~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
}

const std::string* NotifyMessage::find(const std::string& key) const {
    const std::string* last = nullptr;  // a key said twice: the last word counts
    for (const auto& [name, value] : fields)
        if (name == key) last = &value;
    return last;
}

std::vector<std::pair<std::string, std::string>> parse_notify_fields(const std::string& text) {
    std::vector<std::pair<std::string, std::string>> fields;
    std::size_t at = 0;
    while (at < text.size()) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        const std::string_view line(text.data() + at, end - at);
        if (const auto equals = line.find('='); equals != std::string_view::npos && equals > 0)
            fields.emplace_back(std::string(line.substr(0, equals)), std::string(line.substr(equals + 1)));
        at = end + 1;
    }
    return fields;
}

NotifySocket::NotifySocket(std::string path) : path_(std::move(path)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path_.size() >= sizeof address.sun_path)
        throw Error(ENAMETOOLONG, "the notify socket " + path_ + " is too long for a unix socket: use a shorter run_dir or name");
    std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
    struct stat existing {};
    if (::lstat(path_.c_str(), &existing) == 0) {
        // procctl holds run_dir's lock, so a socket here is a dead procctl's: replace it.
        if (!S_ISSOCK(existing.st_mode)) throw Error(EEXIST, path_ + " exists and is not a socket: remove it");
        ::unlink(path_.c_str());
    }
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) throw Error(errno, std::string("cannot make a notify socket: ") + std::strerror(errno));
    const int on = 1;
    const int buffer = 8 << 20;  // systemd's: a burst of messages waits rather than being lost
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 ||
        ::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0 || ::chmod(path_.c_str(), 0666) != 0) {
        const int error = errno;
        ::close(fd_);
        fd_ = -1;
        throw Error(error, "cannot listen on the notify socket " + path_ + ": " + std::strerror(error));
    }
    struct stat bound {};
    if (::lstat(path_.c_str(), &bound) == 0) inode_ = bound.st_ino;
    // Best effort: SO_RCVBUFFORCE as root, else the system's cap; SO_PASSPIDFD from Linux 6.5.
    if (::setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer) != 0)
        (void)::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    (void)::setsockopt(fd_, SOL_SOCKET, SO_PASSPIDFD, &on, sizeof on);
}

NotifySocket::~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
    // Only its own: a reload that replaced its unit has bound a new socket at the same path.
    struct stat now {};
    if (inode_ != 0 && ::lstat(path_.c_str(), &now) == 0 && now.st_ino == inode_) ::unlink(path_.c_str());
}

std::optional<NotifyMessage> NotifySocket::receive(NotifyDrops& drops) {
    // Room for the credentials, a pidfd and systemd's 768 fds: a BARRIER's one fd must never
    // come with MSG_CTRUNC (systemd#17795).
    constexpr std::size_t kMaxFds = 768;
    alignas(cmsghdr) static char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(int) * kMaxFds)];
    static char data[kMaxMessage + 1];
    for (;;) {
        iovec iov{data, kMaxMessage};
        msghdr header{};
        header.msg_iov = &iov;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(fd_, &header, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
        if (n < 0) return std::nullopt;  // EAGAIN: none waits
        NotifyMessage message;
        bool credentials = false;
        for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
            if (c->cmsg_level != SOL_SOCKET) continue;
            if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(ucred))) {
                ucred who{};
                std::memcpy(&who, CMSG_DATA(c), sizeof who);
                message.pid = who.pid;
                message.uid = who.uid;
                credentials = who.pid > 0;
            } else if (c->cmsg_type == SCM_PIDFD && c->cmsg_len == CMSG_LEN(sizeof(int))) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
                message.sender = OwnedFd(fd);
            } else if (c->cmsg_type == SCM_RIGHTS) {
                const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (std::size_t i = 0; i < count; ++i) {
                    int fd;
                    std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                    message.fds.emplace_back(fd);
                }
            }
        }
        // Dropped as systemd drops them, the fds that came closed with `message`.
        if ((header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<std::size_t>(n) > kMaxMessage) {
            ++drops.truncated;
            continue;
        }
        const std::string text(data, static_cast<std::size_t>(n));
        if (!credentials || text.empty() || text.find('\0') != std::string::npos) {
            ++drops.malformed;
            continue;
        }
        message.fields = parse_notify_fields(text);
        return message;
    }
}

}  // namespace hbwatch::tool
