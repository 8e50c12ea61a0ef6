#include "engine/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace hbwatch::tool {
namespace {

std::optional<std::uint64_t> whole(const char* text) {
    if (text == nullptr || *text == '\0') return std::nullopt;
    char* end = nullptr;
    errno = 0;
    const unsigned long long value = std::strtoull(text, &end, 10);
    if (*end != '\0' || errno != 0 || text[0] == '-') return std::nullopt;
    return value;
}

}  // namespace

std::optional<NotifyClient> NotifyClient::from_environment() {
    const char* socket_text = std::getenv("NOTIFY_SOCKET");
    const std::string shown = socket_text != nullptr ? socket_text : "";
    std::optional<std::chrono::microseconds> every;
    const auto usec = whole(std::getenv("WATCHDOG_USEC"));
    const auto for_pid = whole(std::getenv("WATCHDOG_PID"));
    // WATCHDOG_PID names the process the watchdog is for: another one's (a parent's) is not ours.
    if (usec && *usec > 0 && (!for_pid || *for_pid == static_cast<std::uint64_t>(::getpid())))
        every = std::chrono::microseconds(static_cast<std::int64_t>(*usec / 2));
    for (const char* name : {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}) ::unsetenv(name);
    if (shown.empty() || (shown[0] != '/' && shown[0] != '@') || shown.size() >= sizeof(sockaddr_un{}.sun_path)) return std::nullopt;
    std::string address = shown;
    if (address[0] == '@') address[0] = '\0';  // abstract: the name follows a NUL, with no NUL after it
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return std::nullopt;
    return NotifyClient(fd, std::move(address), shown, every);
}

NotifyClient::NotifyClient(NotifyClient&& other) noexcept
    : fd_(other.fd_), address_(std::move(other.address_)), shown_(std::move(other.shown_)), watchdog_every_(other.watchdog_every_) {
    other.fd_ = -1;
}

NotifyClient::~NotifyClient() {
    if (fd_ >= 0) ::close(fd_);
}

bool NotifyClient::send(std::string_view message) const {
    sockaddr_un to{};
    to.sun_family = AF_UNIX;
    std::memcpy(to.sun_path, address_.data(), address_.size());
    // A path's length counts its NUL; an abstract name's does not.
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size() + (address_[0] == '\0' ? 0 : 1));
    return ::sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&to), length) ==
           static_cast<ssize_t>(message.size());
}

}  // namespace hbwatch::tool
