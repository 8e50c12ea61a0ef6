#include "engine/notify_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

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

struct FdCloser::Queue {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<int> fds;
    std::size_t closing = 0;  // taken by the thread, not yet closed
    bool thread = false;      // started
    bool done = false;        // its owner is gone: finish the queue, then end
};

FdCloser::FdCloser() : queue_(std::make_shared<Queue>()) {}

FdCloser::~FdCloser() {
    if (!queue_) return;  // moved from
    const std::lock_guard lock(queue_->mutex);
    queue_->done = true;
    queue_->wake.notify_one();
}

void FdCloser::close_later(std::vector<OwnedFd>& fds) {
    for (auto& owned : fds) {
        const int fd = owned.release();
        struct stat st {};
        if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
            const linger off{0, 0};
            (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
            ::close(fd);
        } else if (::fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
            ::close(fd);
        } else {
            queue(fd);
        }
    }
    fds.clear();
}

void FdCloser::queue(int fd) {
    std::unique_lock lock(queue_->mutex);
    queue_->fds.push_back(fd);
    if (!queue_->thread) {
        try {
            // Detached, holding the queue: a close that lingers never delays procctl's own exit.
            std::thread([queue = queue_] {
                std::unique_lock held(queue->mutex);
                for (;;) {
                    queue->wake.wait(held, [&] { return queue->done || !queue->fds.empty(); });
                    if (queue->fds.empty()) return;
                    const int next = queue->fds.front();
                    queue->fds.pop_front();
                    queue->closing = 1;
                    held.unlock();
                    ::close(next);
                    held.lock();
                    queue->closing = 0;
                }
            }).detach();
            queue_->thread = true;
        } catch (const std::system_error&) {  // no thread to be had (RLIMIT_NPROC): close here
            queue_->fds.pop_back();
            lock.unlock();
            ::close(fd);
            return;
        }
    }
    queue_->wake.notify_one();
}

std::size_t FdCloser::backlog() const {
    const std::lock_guard lock(queue_->mutex);
    return queue_->fds.size() + queue_->closing;
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

NotifySocket::NotifySocket(std::string path, std::optional<uid_t> owner, gid_t group) : path_(std::move(path)) {
    const std::string fresh = path_ + ".new";
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (fresh.size() >= sizeof address.sun_path)
        throw Error(ENAMETOOLONG, "the notify socket " + path_ + " is too long for a unix socket: use a shorter run_dir or name");
    std::memcpy(address.sun_path, fresh.c_str(), fresh.size() + 1);
    struct stat existing {};
    if (::lstat(path_.c_str(), &existing) == 0 && !S_ISSOCK(existing.st_mode))
        throw Error(EEXIST, path_ + " exists and is not a socket: remove it");
    ::unlink(fresh.c_str());  // a dead procctl's, half made
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) throw Error(errno, std::string("cannot make a notify socket: ") + std::strerror(errno));
    const int on = 1;
    const int buffer = 8 << 20;  // systemd's: a burst of messages waits rather than being lost
    const mode_t umask_before = ::umask(0177);  // born 0600: never wider, not even for a moment
    const bool bound = ::bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
    int error = errno;
    ::umask(umask_before);
    // On the socket's own inode, before it has its name: no path to race.
    if (bound && owner && ::fchownat(AT_FDCWD, fresh.c_str(), *owner, group, AT_SYMLINK_NOFOLLOW) != 0) error = errno;
    else if (bound && ::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) error = errno;
    else if (bound && ::rename(fresh.c_str(), path_.c_str()) != 0) error = errno;
    else error = bound ? 0 : error;
    if (error != 0) {
        if (bound) ::unlink(fresh.c_str());
        ::close(fd_);
        fd_ = -1;
        throw Error(error, "cannot listen on the notify socket " + path_ + ": " + std::strerror(error));
    }
    struct stat named {};
    if (::lstat(path_.c_str(), &named) == 0) inode_ = named.st_ino;
    // Best effort: SO_RCVBUFFORCE with CAP_NET_ADMIN, else the system's cap; SO_PASSPIDFD from Linux 6.5.
    if (::setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer) != 0)
        (void)::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    pidfds_ = ::setsockopt(fd_, SOL_SOCKET, SO_PASSPIDFD, &on, sizeof on) == 0;
    int doubled = 0;  // the kernel reports twice what it grants, its bookkeeping included
    socklen_t length = sizeof doubled;
    if (::getsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &doubled, &length) == 0) receive_buffer_ = doubled / 2;
}

NotifySocket::~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
    // Only its own: a reload that replaced its unit has bound a new socket at the same path.
    struct stat now {};
    if (inode_ != 0 && ::lstat(path_.c_str(), &now) == 0 && now.st_ino == inode_) ::unlink(path_.c_str());
}

std::optional<NotifyMessage> NotifySocket::receive(NotifyDrops& drops, bool& taken, FdCloser& closer) {
    // Room for the credentials, a pidfd and systemd's 768 fds: a BARRIER's one fd must never
    // come with MSG_CTRUNC (systemd#17795).
    constexpr std::size_t kMaxFds = 768;
    // Static: only the supervision loop's thread reads notify sockets.
    alignas(cmsghdr) static char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(int) * kMaxFds)];
    static char data[kMaxMessage + 1];
    taken = false;
    {
        iovec iov{data, kMaxMessage};
        msghdr header{};
        header.msg_iov = &iov;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(fd_, &header, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
        if (n < 0) return std::nullopt;  // EAGAIN: none waits
        taken = true;
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
                if (fd >= 0) message.sender = OwnedFd(fd);
                else message.sender_lost = true;  // a negative errno: the sender was reaped (before Linux 6.16)
            } else if (c->cmsg_type == SCM_RIGHTS) {
                const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (std::size_t i = 0; i < count; ++i) {
                    int fd;
                    std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                    message.fds.emplace_back(fd);
                }
            }
        }
        // Dropped as systemd drops them, the fds that came closed by `closer`.
        if ((header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<std::size_t>(n) > kMaxMessage) {
            ++drops.truncated;
            closer.close_later(message.fds);
            return std::nullopt;
        }
        const std::string text(data, static_cast<std::size_t>(n));
        if (!credentials || text.empty() || text.find('\0') != std::string::npos) {
            ++drops.malformed;
            closer.close_later(message.fds);
            return std::nullopt;
        }
        message.fields = parse_notify_fields(text);
        // With SO_PASSPIDFD on, a message without its sender's pidfd cannot be tied to a process.
        if (pidfds_ && message.sender.get() < 0) message.sender_lost = true;
        return message;
    }
}

}  // namespace hbwatch::tool
