#pragma once
// procctl as a client of its own supervisor's sd_notify(3) socket, for `Type=notify` units:
// READY=1, STATUS=, STOPPING=1, RELOADING=1 and, with WatchdogSec=, WATCHDOG=1. A few lines
// of our own rather than libsystemd: the protocol is one datagram per message.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace hbwatch::tool {

class NotifyClient {
public:
    /// From NOTIFY_SOCKET (a path, or "@name" for an abstract socket), WATCHDOG_USEC and
    /// WATCHDOG_PID, which it then removes from this process's environment, so that no program
    /// procctl starts can speak for procctl. nullopt when NOTIFY_SOCKET is not set or not usable.
    static std::optional<NotifyClient> from_environment();

    NotifyClient(NotifyClient&& other) noexcept;
    NotifyClient& operator=(NotifyClient&&) = delete;
    NotifyClient(const NotifyClient&) = delete;
    ~NotifyClient();

    /// Sends one message ("READY=1\nSTATUS=..."): one datagram, never blocking. False when it
    /// could not be sent (the supervisor went away): sd_notify's callers go on regardless.
    bool send(std::string_view message) const;

    /// How often to send WATCHDOG=1 (half of WATCHDOG_USEC), when a watchdog is set for us.
    [[nodiscard]] std::optional<std::chrono::microseconds> watchdog_every() const noexcept { return watchdog_every_; }
    [[nodiscard]] const std::string& address() const noexcept { return shown_; }

private:
    NotifyClient(int fd, std::string address, std::string shown, std::optional<std::chrono::microseconds> every)
        : fd_(fd), address_(std::move(address)), shown_(std::move(shown)), watchdog_every_(every) {}
    int fd_ = -1;
    std::string address_;  // sun_path bytes (a leading NUL for an abstract socket)
    std::string shown_;
    std::optional<std::chrono::microseconds> watchdog_every_;
};

}  // namespace hbwatch::tool
