#include "engine/control.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <nlohmann/json.hpp>

#include "engine/control_session.h"

#include <hbwatch/error.h>

namespace hbwatch::tool {

const char* to_string(Role role) noexcept {
    switch (role) {
        case Role::none: return "none";
        case Role::read: return "read";
        case Role::operate: return "operate";
    }
    return "?";
}

namespace control_detail {

std::string chunk(const std::string& data) {
    char size[20];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    return size + data + "\r\n";
}

std::string error_json(const std::string& message) {
    std::string out = "{\"error\": \"";
    for (char c : message) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) >= 0x20) out += c;
    }
    return out + "\"}";
}

void queue_request(ControlServer::State* state, Pending pending) {
    {
        std::lock_guard lock(state->mutex);
        state->pending.push_back(std::move(pending));
    }
    const std::uint64_t one = 1;
    (void)!::write(state->wake, &one, sizeof one);
}

}  // namespace control_detail

namespace {

using namespace control_detail;

constexpr std::size_t kMaxConnections = 64;
constexpr std::size_t kMaxConnectionsPerUser = 16;  // one user's silent clients leave room for the others
constexpr std::size_t kRequestsPerServe = 8;
constexpr auto kServeTime = std::chrono::milliseconds(20);
constexpr std::size_t kMaxJobs = 2;  // unshared `later` replies (port kills) being made at once; more are told to come back

void admit_local(ControlServer::State* state, local::socket socket) {
    ucred peer{};
    socklen_t length = sizeof peer;
    if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0) return;
    const uid_t uid = peer.uid;
    // Made before anything is counted: nothing below can throw with a count taken.
    auto admission = std::make_unique<Admission>();
    std::function<void()> release = [state, uid] {
        --state->connections;
        give_place(state->mutex, state->per_user, uid);
    };
    // Root and procctl's own user always get in (up to their own cap): a flood by a group
    // member never locks the operator out.
    const bool privileged = uid == 0 || uid == ::geteuid();
    const bool admitted = (privileged || state->connections.load() < kMaxConnections) &&
                          take_place(state->mutex, state->per_user, uid, kMaxConnectionsPerUser);
    if (!admitted) {
        ++state->counters.turned_away;
        return;  // too many at once: the newest is turned away (the socket closes as it goes)
    }
    ++state->connections;
    admission->release = std::move(release);
    // The socket's mode and group admitted the caller: it operates, as itself.
    auto authorize = [uid](const http::request<http::empty_body>&, ControlRequest& request, Credential&) -> std::optional<ControlReply> {
        request.role = Role::operate;
        request.uid = uid;
        request.caller = "uid " + std::to_string(uid);
        return std::nullopt;
    };
    std::make_shared<Session<local::socket>>(std::move(socket), state, std::move(admission), authorize)->start();
}

void accept_next(ControlServer::State* state) {
    state->acceptor.async_accept([state](beast::error_code ec, local::socket socket) {
        if (ec == asio::error::operation_aborted) return;
        if (ec) {  // EMFILE: wait, do not spin
            state->retry.expires_after(std::chrono::milliseconds(100));
            state->retry.async_wait([state](beast::error_code wait) {
                if (!wait) accept_next(state);
            });
            return;
        }
        try {
            admit_local(state, std::move(socket));
        } catch (const std::exception&) {  // no memory for it: turned away, counted out by its admission
        }
        accept_next(state);  // always: the server must go on accepting
    });
}

}  // namespace

ControlServer::State::~State() {
    if (wake >= 0) ::close(wake);
    if (cancel >= 0) ::close(cancel);
}

ControlServer::ControlServer(const std::string& socket_path, std::optional<gid_t> group) : state_(std::make_shared<State>()) {
    State& s = *state_;
    s.path = socket_path;
    struct stat existing {};
    if (::lstat(socket_path.c_str(), &existing) == 0) {
        // procctl holds run_dir's lock, so a socket here is a dead procctl's: replace it.
        if (!S_ISSOCK(existing.st_mode))
            throw Error(EEXIST, socket_path + " exists and is not a socket: remove it, or choose another run_dir");
        ::unlink(socket_path.c_str());
    }
    s.wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s.cancel = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s.wake < 0 || s.cancel < 0) throw Error(errno, std::string("eventfd failed: ") + std::strerror(errno));
    if (socket_path.size() >= sizeof(sockaddr_un{}.sun_path))
        throw Error(ENAMETOOLONG, "the control socket path " + socket_path + " is too long for a unix socket: use a shorter run_dir");
    beast::error_code ec;
    s.acceptor.open(local(), ec);
    const mode_t umask_before = ::umask(0117);  // born 0660: never wider, not even until the chmod below
    if (!ec) s.acceptor.bind(local::endpoint(socket_path), ec);
    ::umask(umask_before);
    if (!ec) s.acceptor.listen(16, ec);
    if (ec) throw Error(EINVAL, "cannot listen on the control socket " + socket_path + ": " + ec.message());
    ::fcntl(s.acceptor.native_handle(), F_SETFD, FD_CLOEXEC);
    if (::chmod(socket_path.c_str(), 0660) != 0 || (group && ::chown(socket_path.c_str(), static_cast<uid_t>(-1), *group) != 0))
        throw Error(errno, "cannot set the mode or group of " + socket_path + ": " + std::strerror(errno));
    accept_next(&s);
    s.work.emplace(s.io.get_executor());  // run() returns only when the server stops, never when idle
    s.thread = std::thread([state = state_.get()] {
        for (;;) {
            try {
                state->io.run();
                return;
            } catch (const std::exception&) {
                // A handler failed (std::bad_alloc, under a memory limit): its connection is
                // lost, and the server goes on serving the others. It must never take procctl down.
            }
        }
    });
}

ControlServer::~ControlServer() {
    State& s = *state_;
    s.io.stop();
    if (s.thread.joinable()) s.thread.join();
    {
        // Jobs that wait (a port kill's grace) end now; a reply is posted to the stopped
        // server and dropped with it.
        const std::uint64_t one = 1;
        (void)!::write(s.cancel, &one, sizeof one);
        // Joined outside the lock: a finishing shared job takes it to hand out its answer.
        std::list<State::Job> jobs;
        {
            std::lock_guard lock(s.jobs_mutex);
            jobs.swap(s.jobs);
        }
        for (auto& job : jobs) job.thread.join();
    }
    // What still waits for an answer holds its session: let go outside the locks (a session's
    // end takes `mutex` to count itself out), and before the io_context goes.
    std::deque<Pending> pending;
    std::map<std::string, State::Shared> shared;
    {
        std::lock_guard lock(s.mutex);
        pending.swap(s.pending);
    }
    {
        std::lock_guard lock(s.jobs_mutex);
        shared.swap(s.shared);
    }
    pending.clear();
    shared.clear();
    beast::error_code ignored;
    s.acceptor.close(ignored);
    // Before the io_context goes (State's destructor): an I/O object never outlives it.
    s.tcp_acceptors.clear();
    s.retired_acceptors.clear();
    ::unlink(s.path.c_str());
}

int ControlServer::wake_fd() const noexcept { return state_->wake; }

ControlServer::Counters ControlServer::counters() const {
    const auto& c = state_->counters;
    return Counters{c.auth_failures.load(), c.rate_limited.load(), c.turned_away.load()};
}

void ControlServer::broadcast(std::string lines) {
    // On the server's thread, after every reply posted before it: a follower registered by an
    // earlier reply sees every later event, and none twice.
    asio::post(state_->io, [state = state_.get(), lines = std::move(lines)] {
        auto& followers = state->followers;
        for (auto it = followers.begin(); it != followers.end();) {
            if (auto session = it->lock()) {
                session->push(lines);
                ++it;
            } else {
                it = followers.erase(it);
            }
        }
    });
}

// A reply's long work, on a thread of its own. Replies that say `share_as` are made once for
// everyone who asks while they are made, and reused for a second after: a flood of scrapes
// costs one scrape a second. The others (a port's holders stopped) run at most kMaxJobs at
// once. So a client can never make procctl start threads without end. Finished threads are
// joined here, on the loop's turn.
void ControlServer::start_job(std::function<ControlReply()> work, std::function<void(ControlReply)> answer, const std::string& share_as) {
    State& s = *state_;
    std::unique_lock lock(s.jobs_mutex);
    for (auto it = s.jobs.begin(); it != s.jobs.end();) {
        if (it->done->load()) {
            it->thread.join();
            it = s.jobs.erase(it);
        } else {
            ++it;
        }
    }
    const auto now = std::chrono::steady_clock::now();
    if (!share_as.empty()) {
        auto& shared = s.shared[share_as];
        if (shared.fresh(now)) {
            ControlReply copy = *shared.answer;  // the body is shared, not copied
            lock.unlock();
            return answer(std::move(copy));
        }
        shared.answer.reset();
        shared.waiting.push_back(std::move(answer));
        if (shared.running) return;  // answered with the one being made
        shared.running = true;
    } else if (std::count_if(s.jobs.begin(), s.jobs.end(), [](const State::Job& j) { return !j.shared; }) >= static_cast<long>(kMaxJobs)) {
        lock.unlock();
        return answer(ControlReply{503, error_json("procctl is already stopping the holders of " + std::to_string(kMaxJobs) +
                                                   " ports: ask again when one is done")});
    }
    auto finish = [state = &s, share_as, answer = share_as.empty() ? std::move(answer) : nullptr](ControlReply reply) {
        if (share_as.empty()) return answer(std::move(reply));
        // One body for every waiter and for the next second's askers: handed out, never copied.
        if (!reply.body.empty()) reply.shared_body = std::make_shared<const std::string>(std::move(reply.body));
        reply.body.clear();
        std::vector<std::function<void(ControlReply)>> waiting;
        {
            std::lock_guard guard(state->jobs_mutex);
            auto& shared = state->shared[share_as];
            waiting.swap(shared.waiting);
            shared.running = false;
            if (reply.status == 200) {
                shared.answer = reply;
                shared.made = std::chrono::steady_clock::now();
            }
        }
        for (auto& waiter : waiting) waiter(reply);
    };
    // The job's place is made first: once its thread runs, nothing here may throw.
    s.jobs.emplace_back();
    State::Job& job = s.jobs.back();
    job.done = std::make_shared<std::atomic<bool>>(false);
    job.shared = !share_as.empty();
    try {
        job.thread = std::thread([work = std::move(work), finish, done = job.done] {
            ControlReply reply;
            try {
                reply = work();
            } catch (const std::exception& e) {
                reply = ControlReply{500, error_json(std::string("internal error: ") + e.what())};
            }
            finish(std::move(reply));
            done->store(true);
        });
    } catch (const std::exception& e) {  // no thread to be had (EAGAIN): said, not thrown into the loop
        s.jobs.pop_back();
        lock.unlock();
        finish(ControlReply{503, error_json(std::string("procctl cannot start a thread for this request: ") + e.what())});
    }
}

std::optional<ControlReply> ControlServer::State::fresh_answer(const std::string& share_as) {
    std::lock_guard lock(jobs_mutex);
    const auto found = shared.find(share_as);
    if (found == shared.end() || !found->second.fresh(std::chrono::steady_clock::now())) return std::nullopt;
    return *found->second.answer;
}

// Shared answers older than kShareFor are let go (a scrape of a large table is tens of MiB).
void ControlServer::forget_old_answers() {
    State& s = *state_;
    std::vector<ControlReply> old;  // let go outside the lock
    {
        std::lock_guard lock(s.jobs_mutex);
        const auto now = std::chrono::steady_clock::now();
        for (auto& [key, shared] : s.shared)
            if (shared.answer && !shared.fresh(now)) {
                old.push_back(std::move(*shared.answer));
                shared.answer.reset();
            }
    }
    bool large = false;
    for (auto& reply : old) large = large || (reply.shared_body && reply.shared_body.use_count() == 1 && reply.shared_body->size() > kLargeReply);
    old.clear();
    if (large) ::malloc_trim(0);  // a scrape of a large table is tens of MiB: given back, not kept
}

int ControlServer::cancel_fd() const noexcept { return state_->cancel; }

void ControlServer::serve(const std::function<ControlReply(const ControlRequest&)>& handler) {
    std::uint64_t count;
    (void)!::read(state_->wake, &count, sizeof count);
    // A few at a time, for a little while: a flood of requests takes turns with supervision,
    // never holds it. The rest are left for the loop's next turn.
    const auto started = std::chrono::steady_clock::now();
    for (std::size_t served = 0; served < kRequestsPerServe && std::chrono::steady_clock::now() - started < kServeTime; ++served) {
        std::optional<Pending> pending;
        {
            std::lock_guard lock(state_->mutex);
            if (state_->pending.empty()) return;
            pending.emplace(std::move(state_->pending.front()));
            state_->pending.pop_front();
        }
        ControlReply reply;
        try {
            reply = handler(pending->request);
        } catch (const std::exception& e) {  // a bad request must never take supervision down
            reply = ControlReply{500, error_json(std::string("internal error: ") + e.what())};
        }
        if (reply.later) start_job(std::move(reply.later), std::move(pending->answer), reply.share_as);
        else pending->answer(std::move(reply));
    }
    std::lock_guard lock(state_->mutex);
    if (!state_->pending.empty()) {
        const std::uint64_t one = 1;
        (void)!::write(state_->wake, &one, sizeof one);
    }
}

namespace {

// A client's connection to the socket at `socket_path`; throws hbwatch::Error saying what to check.
local::socket connect_control(asio::io_context& io, const std::string& socket_path) {
    if (socket_path.size() >= sizeof(sockaddr_un{}.sun_path))
        throw Error(ENAMETOOLONG, "the control socket path " + socket_path + " is too long for a unix socket");
    local::socket socket(io);
    beast::error_code ec;
    socket.connect(local::endpoint(socket_path), ec);
    if (ec)
        throw Error(ENOENT, "cannot reach the stack's control socket " + socket_path + ": " + ec.message() +
                                ". Is procctl --config running with this run_dir? (--run-dir DIR)");
    return socket;
}

}  // namespace

ControlReply control_request(const std::string& socket_path, const std::string& method, const std::string& target) {
    asio::io_context io;
    local::socket socket = connect_control(io, socket_path);
    beast::error_code ec;
    const timeval patience{30, 0};  // a procctl that does not answer is reported, not waited on forever
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    http::request<http::empty_body> request{http::string_to_verb(method), target, 11};
    request.set(http::field::host, "localhost");
    http::write(socket, request, ec);
    http::response<http::string_body> response;
    beast::flat_buffer buffer;
    if (!ec) http::read(socket, buffer, response, ec);
    if (ec) throw Error(EIO, "the control socket " + socket_path + " did not answer: " + ec.message());
    return ControlReply{static_cast<int>(response.result_int()), response.body()};
}

void control_stream(const std::string& socket_path, const std::string& target, const std::function<bool(const std::string&)>& line) {
    asio::io_context io;
    local::socket socket = connect_control(io, socket_path);
    beast::error_code ec;
    http::request<http::empty_body> request{http::verb::get, target, 11};
    request.set(http::field::host, "localhost");
    http::write(socket, request, ec);
    if (ec) throw Error(EIO, "the control socket " + socket_path + " did not take the request: " + ec.message());
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    std::string pending;
    bool stop = false;
    auto on_chunk = [&](std::uint64_t, beast::string_view body, beast::error_code&) -> std::size_t {
        pending.append(body.data(), body.size());
        std::size_t newline;
        while (!stop && (newline = pending.find('\n')) != std::string::npos) {
            stop = !line(pending.substr(0, newline));
            pending.erase(0, newline + 1);
        }
        return body.size();
    };
    parser.on_chunk_body(on_chunk);
    http::read_header(socket, buffer, parser, ec);
    if (ec) throw Error(EIO, "the control socket " + socket_path + " did not answer: " + ec.message());
    if (parser.get().result_int() != 200 || !parser.chunked()) {
        http::read(socket, buffer, parser, ec);
        const std::string body = parser.get().body();
        const auto parsed = nlohmann::json::parse(body, nullptr, false);
        throw Error(parser.get().result_int() == 404 ? ENOENT : EIO,
                    parsed.is_object() && parsed.contains("error") && parsed["error"].is_string() ? parsed["error"].get<std::string>()
                                                                                                    : body);
    }
    while (!stop && !parser.is_done()) {
        http::read(socket, buffer, parser, ec);
        if (ec == http::error::end_of_chunk) continue;
        if (ec) break;  // procctl went away: the stream is over
    }
}

}  // namespace hbwatch::tool
