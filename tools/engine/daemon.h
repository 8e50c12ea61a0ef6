#pragma once
// How procctl starts, in either mode: detached (unless in the foreground) with its launcher told
// the outcome, its pidfile taken, its signals on a signalfd, then its body (which opens its log).

#include <functional>
#include <string>

namespace hbwatch::tool {

struct Launch {
    bool foreground = false;
    std::string pidfile;  // empty: none
    std::string started;            // "supervising X": said to the launcher once the body is ready
    std::function<void()> prepare;  // in the process that will run, before the pidfile is taken
};

/// Detaches (unless in the foreground), takes the pidfile, opens the signalfd, then runs `body`
/// (given the signalfd), which opens its log and calls `ready` once everything it needs is open: only then does the
/// launcher print "ok ..." and exit 0. An Error before that reaches the launcher (or stderr in
/// the foreground), and procctl exits 1; otherwise its exit code is `body`'s. The pidfile is
/// unlinked and unlocked as the very last act, once `body` has returned.
int launch(const Launch& how, const std::function<int(int, const std::function<void()>&)>& body);

}  // namespace hbwatch::tool
