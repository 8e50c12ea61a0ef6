// procctl-loop: procctl's one-program loop, in a process of its own kind. procctl parses and
// checks its command line, then becomes this program (exec, with its own argv, and its settings
// in a memfd), which maps only libc: the process that supervises one program for months stays
// small (issue 25). Not for running by hand (supervise_options.h).
#include <sys/prctl.h>

#include <cstdio>
#include <functional>
#include <string>

#include <hbwatch/error.h>

#include "engine/basics.h"
#include "engine/daemon.h"
#include "engine/line_log.h"
#include "engine/supervise_options.h"
#include "engine/supervisor.h"
#include "engine/terminal_text.h"

namespace tool = hbwatch::tool;

int main() {
    tool::one_malloc_arena();
    ::prctl(PR_SET_NAME, "procctl");  // the command name top, pgrep -x and killall show
    tool::LoopRequest request;
    try {
        request = tool::receive_loop_request();
    } catch (const hbwatch::Error& e) {
        std::fprintf(stderr, "procctl-loop: %s\n", tool::terminal_safe(e.what()).c_str());
        return tool::kExitUsage;
    }
    tool::Launch how;
    how.foreground = request.launch.foreground;
    how.pidfile = request.launch.pidfile;
    how.started = "supervising " + request.options.argv.front();
    return tool::launch(how, [&](int signals, const std::function<void()>& ready) {
        const bool syslog = !request.launch.foreground && request.launch.log_file.empty();
        tool::LineLog log("procctl", request.launch.log_file, request.launch.verbose, syslog);
        return tool::supervise(request.options, log, signals, ready);
    });
}
