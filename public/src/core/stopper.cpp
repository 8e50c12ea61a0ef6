#include "core/stopper.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>

#include "core/clock.h"

namespace hbwatch {
Stopper::Stopper(std::chrono::milliseconds grace, Observer observer, std::chrono::milliseconds kill_wait)
    : grace_(grace), kill_wait_(kill_wait), observer_(std::move(observer)) {}

bool Stopper::start(std::uint64_t id, Pidfd target, std::string* why) {
    return start(id, std::move(target), monotonic_now_ns() + to_ns(grace_), why);
}

bool Stopper::start(std::uint64_t id, Pidfd target, std::uint64_t kill_at_ns, std::string* why,
                    std::function<bool()> may_kill) {
    std::string error;
    if (!target.send(SIGTERM, &error)) {
        if (why) *why = "SIGTERM failed: " + error;
        return false;
    }
    stops_.push_back(Stop{id, std::move(target), monotonic_now_ns(), kill_at_ns, false, std::move(may_kill)});
    return true;
}

bool Stopper::stopping(pid_t pid) const noexcept {
    return std::any_of(stops_.begin(), stops_.end(), [pid](const Stop& stop) { return stop.target.pid() == pid; });
}

void Stopper::add_pollfds(std::vector<pollfd>& out) const {
    for (const Stop& stop : stops_) out.push_back(pollfd{stop.target.fd(), POLLIN, 0});
}

void Stopper::advance(std::uint64_t now_ns) {
    for (auto it = stops_.begin(); it != stops_.end();) {
        StopEvent event{it->id, StopEvent::Kind::exited, it->killed, ms_between(it->term_sent_ns, now_ns), {}};
        if (it->target.has_exited()) {
            observer_(event);
            it = stops_.erase(it);
            continue;
        }
        if (now_ns < it->deadline_ns) {
            ++it;
            continue;
        }
        if (!it->killed) {
            // The pidfd still names the process that was judged; the check says whether it still
            // runs the same program (it may have exec'd on SIGTERM).
            if (it->may_kill && !it->may_kill()) {
                event.kind = StopEvent::Kind::kill_skipped;
                observer_(event);
                it = stops_.erase(it);
                continue;
            }
            std::string error;
            if (it->target.send(SIGKILL, &error)) {
                it->killed = true;
                it->deadline_ns = now_ns + to_ns(kill_wait_);
                event.kind = StopEvent::Kind::kill_sent;
                event.killed = true;
                observer_(event);
                ++it;
                continue;
            }
            event.detail = "SIGKILL failed: " + error;
        } else {
            event.detail = "still running " + std::to_string(kill_wait_.count()) +
                           "ms after SIGKILL: likely in uninterruptible sleep (D state)";
        }
        event.kind = StopEvent::Kind::kill_failed;
        observer_(event);
        it = stops_.erase(it);
    }
}

std::optional<std::uint64_t> Stopper::next_deadline_ns() const {
    std::optional<std::uint64_t> next;
    for (const Stop& stop : stops_)
        if (!next || stop.deadline_ns < *next) next = stop.deadline_ns;
    return next;
}

void Stopper::run_until_idle() {
    std::vector<pollfd> fds;
    while (!idle()) {
        fds.clear();
        add_pollfds(fds);
        const int timeout_ms = poll_timeout_ms(*next_deadline_ns(), monotonic_now_ns());
        if (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) break;
        advance(monotonic_now_ns());
    }
}

StopTally stop_all(std::vector<Pidfd> targets, std::chrono::milliseconds grace) {
    StopTally tally;
    Stopper stopper(grace, [&](const StopEvent& event) {
        const auto pid = std::to_string(event.id);
        switch (event.kind) {
            case StopEvent::Kind::exited:
                ++tally.stopped;
                tally.killed += event.killed;
                if (event.killed) tally.notes.push_back("pid " + pid + " needed SIGKILL");
                break;
            case StopEvent::Kind::kill_sent:
            case StopEvent::Kind::kill_skipped: break;
            case StopEvent::Kind::kill_failed:
                ++tally.failed;
                tally.notes.push_back("pid " + pid + ": " + event.detail);
                break;
        }
    });
    for (auto& target : targets) {
        const pid_t pid = target.pid();
        std::string why;
        if (!stopper.start(static_cast<std::uint64_t>(pid), std::move(target), &why)) {
            ++tally.failed;
            tally.notes.push_back("pid " + std::to_string(pid) + ": " + why);
        }
    }
    stopper.run_until_idle();
    return tally;
}

}  // namespace hbwatch
