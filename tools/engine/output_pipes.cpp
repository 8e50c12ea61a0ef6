// The pump from programs' output pipes into their files, polled in a supervisor's loop.
#include "engine/output.h"

#include <poll.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/duration.h"
#include <hbwatch/error.h>

namespace hbwatch::tool {

OutputPipes::~OutputPipes() {
    for (const auto& reader : readers_) ::close(reader.fd);
}

bool OutputPipes::feeds(const OutputFile* file) const noexcept {
    return std::any_of(readers_.begin(), readers_.end(), [&](const Reader& r) { return r.file == file; });
}

void OutputPipes::add(int fd, OutputFile* file) {
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
    readers_.push_back(Reader{fd, file});
}

OutputPipes::ChildEnds OutputPipes::open_for(OutputFile* out, OutputFile* err) {
    ChildEnds ends;
    auto open_pipe = [&](OutputFile* file) {
        int fds[2];
        if (file == nullptr || ::pipe2(fds, O_CLOEXEC) != 0) return -1;
        add(fds[0], file);
        return fds[1];
    };
    ends.out = open_pipe(out);
    ends.err = err == out && ends.out >= 0 ? ::fcntl(ends.out, F_DUPFD_CLOEXEC, 0) : open_pipe(err);
    return ends;
}

void OutputPipes::ChildEnds::close() noexcept {
    for (int* fd : {&out, &err}) {
        if (*fd >= 0) ::close(*fd);
        *fd = -1;
    }
}

void OutputPipes::add_pollfds(std::vector<pollfd>& fds) const {
    for (const auto& reader : readers_) fds.push_back(pollfd{reader.fd, POLLIN, 0});
}

void OutputPipes::drain(const std::vector<pollfd>& fds) {
    char buffer[65536];
    for (const auto& p : fds) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto it = std::find_if(readers_.begin(), readers_.end(), [&](const Reader& r) { return r.fd == p.fd; });
        if (it == readers_.end()) continue;
        bool at_end = false;
        for (int round = 0; round < 16; ++round) {
            const ssize_t n = ::read(it->fd, buffer, sizeof buffer);
            if (n > 0) {
                it->file->write(std::string_view(buffer, static_cast<std::size_t>(n)));
                continue;
            }
            at_end = n == 0 || (errno != EAGAIN && errno != EINTR);
            break;
        }
        if (at_end) {
            ::close(it->fd);
            readers_.erase(it);
        }
    }
}

void OutputPipes::drain_to_end(std::chrono::milliseconds limit) {
    const std::uint64_t deadline = monotonic_now_ns() + to_ns(limit);
    while (!readers_.empty() && monotonic_now_ns() < deadline) {
        std::vector<pollfd> fds;
        add_pollfds(fds);
        ::poll(fds.data(), fds.size(), poll_timeout_ms(deadline, monotonic_now_ns()));
        drain(fds);
    }
}

}  // namespace hbwatch::tool
