// The stack's units made from the config (their environment, user, output files and
// readiness address worked out before any fork), and reload: what changed is stopped and
// started anew, what did not keeps running untouched.
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <hbwatch/error.h>

#include "core/clock.h"
#include "engine/stack_internal.h"

extern char** environ;

namespace hbwatch::tool {
namespace {

// The environment a program starts with, by systemd's rule rather than inheritance: from
// procctl's own only PATH (or a default), LANG, LC_*, TZ and HBWATCH_KEY, and the names the
// config passes through (or everything, with inherit_environment: true); HOME, USER, LOGNAME
// and SHELL of the user it runs as; then its `environment:`; then HBWATCH_PROGRAM and
// HBWATCH_INSTANCE. An operator's tokens in procctl's environment reach no program unasked.
std::vector<std::string> program_environment(const ProgramConfig& p, const passwd& user, const std::string& unit_name,
                                             unsigned instance) {
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const std::string name(entry.substr(0, entry.find('=')));
        const bool passed = p.inherit_all_environment || name == "PATH" || name == "LANG" || name.starts_with("LC_") ||
                            name == "TZ" || name == "HBWATCH_KEY" ||
                            std::find(p.inherit_environment.begin(), p.inherit_environment.end(), name) != p.inherit_environment.end();
        if (passed) env[name] = entry;
    }
    if (!env.count("PATH")) env["PATH"] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    env["HOME"] = std::string("HOME=") + (user.pw_dir ? user.pw_dir : "/");
    env["USER"] = std::string("USER=") + user.pw_name;
    env["LOGNAME"] = std::string("LOGNAME=") + user.pw_name;
    env["SHELL"] = std::string("SHELL=") + (user.pw_shell && *user.pw_shell ? user.pw_shell : "/bin/sh");
    for (const auto& [name, value] : p.environment) env[name] = name + "=" + value;
    env["HBWATCH_PROGRAM"] = "HBWATCH_PROGRAM=" + unit_name;
    if (instance > 0) env["HBWATCH_INSTANCE"] = "HBWATCH_INSTANCE=" + std::to_string(instance);
    std::vector<std::string> out;
    for (auto& [name, entry] : env) out.push_back(std::move(entry));
    return out;
}

}  // namespace

// The units of one program: the program itself, or its instances NAME@1..N; wanted as its
// autostart says, or as an operator left the units a reload replaces.
std::vector<std::unique_ptr<Member>> Stack::make_members(const std::shared_ptr<const ProgramConfig>& program, const std::string& log_dir,
                                                         std::optional<bool> wanted) {
    std::vector<std::unique_ptr<Member>> members;
    const unsigned copies = program->instances;
    for (unsigned i = 1; i <= copies; ++i) {
        const std::string name = copies > 1 ? program->name + "@" + std::to_string(i) : program->name;
        auto member = std::make_unique<Member>(Unit(program, name, wanted.value_or(program->autostart) ? Goal::up : Goal::down));
        if (wanted) member->unit.keep_operator_choice();
        member->unit.set_observer([this](const Unit& unit, const Change& change) { on_transition(unit, change); });
        prepare(*member, copies > 1 ? i : 0, log_dir);
        members.push_back(std::move(member));
    }
    return members;
}

void Stack::prepare(Member& member, unsigned instance, const std::string& log_dir) {
    const ProgramConfig& p = member.program();
    const passwd* pw = p.user.empty() ? ::getpwuid(::geteuid()) : ::getpwnam(p.user.c_str());
    if (pw == nullptr && !p.user.empty())
        throw Error(EINVAL, config_.path + ": program '" + p.name + "': user '" + p.user + "' does not exist");
    if (!p.user.empty()) {
        if (::geteuid() != 0 && pw->pw_uid != ::geteuid())
            throw Error(EPERM, config_.path + ": program '" + p.name + "': user '" + p.user +
                                   "': only root may run a program as another user");
        member.uid = pw->pw_uid;
        member.gid = pw->pw_gid;
        int count = 64;
        member.groups.resize(64);
        if (::getgrouplist(p.user.c_str(), pw->pw_gid, member.groups.data(), &count) < 0) count = 0;
        member.groups.resize(static_cast<std::size_t>(std::max(count, 0)));
    }
    passwd nameless{};  // procctl's uid has no name in the user database
    std::string uid_text = std::to_string(::geteuid());
    nameless.pw_name = uid_text.data();
    member.env_storage = program_environment(p, pw != nullptr ? *pw : nameless, member.name(), instance);
    if (p.notify) {  // procctl's word over anything its environment or the config said
        std::erase_if(member.env_storage, [](const std::string& entry) {
            return entry.starts_with("NOTIFY_SOCKET=") || entry.starts_with("WATCHDOG_USEC=") || entry.starts_with("WATCHDOG_PID=");
        });
        member.env_storage.push_back("NOTIFY_SOCKET=" + notify_socket_path(config_.run_dir, member.name()));
        if (p.watchdog.count() > 0) {
            member.env_storage.push_back("WATCHDOG_USEC=" + std::to_string(p.watchdog.count() * 1000));
            member.env_storage.push_back("WATCHDOG_PID=" + std::string(kPidDigits, '0'));
            // The entry the child fills in: ours, last, at its full width.
            member.watchdog_pid = member.env_storage.back().data() + std::strlen("WATCHDOG_PID=");
        }
    }
    for (auto& entry : member.env_storage) member.envp.push_back(entry.data());
    member.envp.push_back(nullptr);
    for (const auto& word : p.command) member.argv.push_back(const_cast<char*>(word.c_str()));
    member.argv.push_back(nullptr);
    for (const auto& word : p.ready.command) member.probe_argv.push_back(const_cast<char*>(word.c_str()));
    member.probe_argv.push_back(nullptr);
    if (p.ready.kind == ReadyCheck::Kind::tcp) {  // resolved once, here: a DNS wait never stalls the loop
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        addrinfo* found = nullptr;
        const int rc = ::getaddrinfo(p.ready.host.c_str(), std::to_string(p.ready.port).c_str(), &hints, &found);
        if (rc != 0 || found == nullptr)
            throw Error(EINVAL, config_.path + ": program '" + p.name + "': ready: cannot resolve '" + p.ready.host +
                                    "': " + ::gai_strerror(rc) + "; give an address, or a name this host can resolve");
        std::memcpy(&member.probe_address, found->ai_addr, found->ai_addrlen);
        member.probe_address_length = found->ai_addrlen;
        ::freeaddrinfo(found);
    }
    auto open_output = [&](const std::string& relative) -> OutputFile* {
        if (relative.empty()) return nullptr;
        std::string path = log_dir + "/" + relative;  // relative: the config refuses absolute paths and ..
        if (instance > 0) {  // each instance its own file: main.log -> main@2.log
            const auto dot = path.rfind('.');
            const auto slash = path.rfind('/');
            const auto at = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? path.size() : dot;
            std::string suffix(1, '@');  // built in steps: g++ 12 warns falsely (-Wrestrict) on "@" + ...
            suffix += std::to_string(instance);
            path.insert(at, suffix);
        }
        auto& file = outputs_[path];
        if (!file)
            file = std::make_unique<OutputFile>(path, p.log_max_size, p.log_files,
                                                [this, path](const std::string& problem, bool dropping) {
                                                    log_.error("{}", problem);
                                                    if (dropping) output_dropped(path, problem);
                                                });
        return file.get();
    };
    member.out = open_output(p.stdout_path);
    member.err = open_output(p.stderr_path);
}

// Reads the config file again and applies what changed: programs added are started,
// removed ones stopped, changed ones (any key) stopped and started anew; the others keep
// running untouched. A config that does not load, or changes what a running procctl cannot
// (run_dir, socket_group), throws hbwatch::Error, and nothing changes.
nlohmann::json Stack::reload_config() {
    StackConfig next;
    spare_.take();
    try {
        next = load_stack_config(config_.path);
    } catch (const Error&) {
        throw;
    } catch (const std::bad_alloc&) {  // a config too large for the memory procctl may use
        spare_.give_back();            // room for the requests that follow, whatever the heap kept
        throw Error(ENOMEM, config_.path + ": not enough memory to read it (std::bad_alloc)");
    } catch (const std::exception& e) {
        throw Error(EINVAL, config_.path + ": cannot be read: " + e.what());
    }
    auto refuse = [&](const char* key, const std::string& was, const std::string& is) {
        throw Error(EINVAL, config_.path + ": " + key + " changed from '" + was + "' to '" + is +
                                "': a reload cannot apply that; restart procctl");
    };
    if (next.run_dir != config_.run_dir) refuse("run_dir", config_.run_dir, next.run_dir);
    if (next.socket_group != config_.socket_group) refuse("socket_group", config_.socket_group, next.socket_group);
    nlohmann::json report{{"added", nlohmann::json::array()},
                          {"removed", nlohmann::json::array()},
                          {"changed", nlohmann::json::array()},
                          {"unchanged", nlohmann::json::array()}};
    std::vector<std::shared_ptr<const ProgramConfig>> programs;
    std::vector<std::unique_ptr<Member>> fresh;
    try {
        build_reload(next, report, programs, fresh);
    } catch (const std::exception& e) {
        fresh.clear();
        drop_unused_outputs();  // what the refused config opened
        if (dynamic_cast<const Error*>(&e) != nullptr) throw;
        throw Error(ENOMEM, config_.path + ": the reload failed while building its programs (" + e.what() + ")");
    }
    if (control_ != nullptr) {
        // Always: the tokens file is read again too, so a reload rotates tokens.
        try {
            control_->listen_http(next.http);
        } catch (const std::exception&) {
            fresh.clear();
            drop_unused_outputs();
            throw;
        }
        if (!(next.http == config_.http)) {
            report["http"] = next.http.enabled() ? "listening on " + nlohmann::json(next.http.listen).dump() : "off";
            for (const auto& warning : http_warnings(next.http)) log_.warn("{}", warning);
        }
    }
    if (!(next.events == config_.events)) {
        // Sinks hold threads, hooks in flight and queues: swapping them mid-run could lose
        // events, and finishing them would stall the loop. Said, not silently ignored.
        report["events"] = "unchanged: the events section changed, which takes effect when procctl starts again";
        log_.warn("{}: the events section changed; it takes effect when procctl starts again (the sinks it started with go on)",
                  config_.path);
        next.events = config_.events;
    }
    finish_reload(next, report, std::move(programs), std::move(fresh));
    return report;
}

// The first half of a reload: the programs of `next`, unchanged ones shared, the units of
// new and changed ones built. Everything that may throw is here, and changes nothing.
void Stack::build_reload(StackConfig& next, nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>>& programs,
                         std::vector<std::unique_ptr<Member>>& fresh) {
    auto has_output_file = [](const ProgramConfig& p) { return !p.stdout_path.empty() || !p.stderr_path.empty(); };
    for (auto& p : next.programs) {
        const auto old = std::find_if(programs_.begin(), programs_.end(), [&](const auto& o) { return o->name == p.name; });
        if (old != programs_.end() && **old == p && (next.log_dir == config_.log_dir || !has_output_file(p))) {
            programs.push_back(*old);
            report["unchanged"].push_back(p.name);
            continue;
        }
        report[old == programs_.end() ? "added" : "changed"].push_back(p.name);
        // A changed program that an operator started or stopped stays as they left it;
        // otherwise its (new) autostart decides.
        std::optional<bool> wanted;
        if (old != programs_.end())
            for (const auto& member : members_)
                if (member->unit.goal() != Goal::retire && member->unit.program_ptr() == *old && member->unit.operator_set())
                    wanted = wanted.value_or(false) || member->unit.goal() == Goal::up;
        programs.push_back(std::make_shared<const ProgramConfig>(std::move(p)));
        for (auto& member : make_members(programs.back(), next.log_dir, wanted)) fresh.push_back(std::move(member));
    }
    for (const auto& old : programs_)
        if (std::none_of(programs.begin(), programs.end(), [&](const auto& p) { return p->name == old->name; }))
            report["removed"].push_back(old->name);
}

// The second half: the units of programs no longer there (as they were) retire, the new
// ones join in the new start order.
void Stack::finish_reload(const StackConfig& next, const nlohmann::json& report, std::vector<std::shared_ptr<const ProgramConfig>> programs,
                          std::vector<std::unique_ptr<Member>> fresh) {
    const std::uint64_t now = monotonic_now_ns();
    for (auto& member : members_)
        if (member->unit.goal() != Goal::retire && std::find(programs.begin(), programs.end(), member->unit.program_ptr()) == programs.end())
            apply(*member, UnitEvent{UnitEvent::Kind::retire}, now);  // stopped (after what waits for it), then dropped
    std::vector<std::unique_ptr<Member>> ordered;  // the new start order, then what retires
    for (const auto& program : programs)
        for (auto* source : {&members_, &fresh})
            for (auto& member : *source)
                if (member && member->unit.goal() != Goal::retire && member->unit.program_ptr() == program) ordered.push_back(std::move(member));
    for (auto& member : members_)
        if (member) ordered.push_back(std::move(member));
    members_ = std::move(ordered);
    programs_ = std::move(programs);
    config_.log_dir = next.log_dir;
    config_.diagnoses = next.diagnoses;
    config_.http = next.http;
    for (const auto& member : members_)  // a file shared with what retires takes the new limits
        for (OutputFile* file : {member->out, member->err})
            if (file != nullptr && member->unit.goal() != Goal::retire) file->set_limits(member->program().log_max_size, member->program().log_files);
    drop_unused_outputs();
    auto names = [](const nlohmann::json& list) {
        std::string text;
        for (const auto& name : list) text.append(text.empty() ? "" : ", ").append(name.get<std::string>());
        return text.empty() ? std::string("none") : text;
    };
    log_.info("reloaded {}: added {}; removed {}; changed (restarted) {}; unchanged {}", config_.path,
              names(report["added"]), names(report["removed"]), names(report["changed"]), names(report["unchanged"]));
}

// Drops the retired units that have stopped, and the output files nothing uses any more.
// True when a unit was dropped.
bool Stack::drop_retired() {
    if (std::erase_if(members_, [](const auto& m) { return m->unit.retired() && !m->launching; }) == 0) return false;
    drop_unused_outputs();
    return true;
}

// Closes the output files that no unit names and no pipe feeds (a reload moved or removed
// them): no descriptor is kept, nor a removed log's disk space.
void Stack::drop_unused_outputs() {
    std::erase_if(outputs_, [&](const auto& entry) {
        const OutputFile* file = entry.second.get();
        const bool named = std::any_of(members_.begin(), members_.end(), [&](const auto& m) { return m->out == file || m->err == file; });
        return !named && !pipes_.feeds(file);
    });
}

}  // namespace hbwatch::tool
