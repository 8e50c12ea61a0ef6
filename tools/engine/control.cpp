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
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;

constexpr auto kReadDeadline = std::chrono::seconds(5);   // a client that sends too slowly is dropped
constexpr auto kWriteDeadline = std::chrono::seconds(5);  // and one that does not read its reply
constexpr std::size_t kMaxConnections = 64;
constexpr std::size_t kMaxConnectionsPerUser = 16;  // one user's silent clients leave room for the others
constexpr std::size_t kRequestsPerServe = 8;
constexpr auto kServeTime = std::chrono::milliseconds(20);
constexpr std::uint32_t kHeaderLimit = 8 * 1024;
constexpr std::uint64_t kBodyLimit = 64 * 1024;
constexpr std::size_t kStreamBacklog = 1 << 20;  // unread bytes a following client may owe: then it is dropped

// One HTTP/1.1 chunk.
std::string chunk(const std::string& data) {
    char size[20];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    return size + data + "\r\n";
}

struct Pending {
    ControlRequest request;
    std::function<void(ControlReply)> answer;  // posts the reply back to the server's thread
};

}  // namespace

namespace {
class Session;
}  // namespace

struct ControlServer::State {
    // Before `io`: the sessions destroyed with it count down and lock.
    std::atomic<std::size_t> connections{0};
    std::map<uid_t, std::size_t> per_user;  // open connections by peer uid, under `mutex`: a session
                                            // may end on either thread
    std::mutex mutex;
    std::deque<Pending> pending;
    std::vector<std::weak_ptr<Session>> followers;  // on the server's thread only
    asio::io_context io;
    local::acceptor acceptor{io};
    asio::steady_timer retry{io};  // after a failed accept (EMFILE): wait, do not spin
    std::string path;
    int wake = -1;
    std::thread thread;
};

namespace {

std::string error_json(const std::string& message) {
    std::string out = "{\"error\": \"";
    for (char c : message) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) >= 0x20) out += c;
    }
    return out + "\"}";
}

// One connection: one request, one reply, then closed. Every wait has a deadline.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(local::socket socket, ControlServer::State* state, uid_t uid)
        : socket_(std::move(socket)), timer_(socket_.get_executor()), state_(state), uid_(uid) {}
    ~Session() {
        --state_->connections;
        std::lock_guard lock(state_->mutex);
        if (--state_->per_user[uid_] == 0) state_->per_user.erase(uid_);
    }

    void start() {
        parser_.header_limit(kHeaderLimit);
        parser_.body_limit(kBodyLimit);
        arm(kReadDeadline);
        http::async_read(socket_, buffer_, parser_,
                         [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void reply(const ControlReply& reply) {
        if (reply.stream && reply.status == 200) return stream(reply.body);
        response_.result(static_cast<unsigned>(reply.status));
        response_.set(http::field::content_type, "application/json");
        response_.keep_alive(false);
        response_.body() = reply.body + "\n";
        response_.prepare_payload();
        arm(kWriteDeadline);
        http::async_write(socket_, response_, [self = shared_from_this()](beast::error_code, std::size_t) {
            beast::error_code ignored;
            self->timer_.cancel();
            self->socket_.shutdown(local::socket::shutdown_both, ignored);
            self->socket_.close(ignored);
        });
    }

    // Follows with what broadcast() sends: queued, written one chunk at a time, each write
    // with its deadline; a client that falls 1 MiB behind is dropped.
    void push(const std::string& lines) {
        if (!following_) return;
        backlog_ += lines.size();
        if (backlog_ > kStreamBacklog) return close();
        outbox_.push_back(chunk(lines));
        if (outbox_.size() == 1) write_next();
    }

private:
    void stream(const std::string& first) {
        following_ = true;
        auto& followers = state_->followers;  // those that left are dropped here too: a quiet stack never broadcasts
        std::erase_if(followers, [](const std::weak_ptr<Session>& f) { return f.expired(); });
        followers.push_back(weak_from_this());
        outbox_.push_back("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
                          "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
        if (!first.empty()) outbox_.push_back(chunk(first));
        backlog_ = first.size();
        write_next();
        watch_for_leaving();
    }
    void write_next() {
        if (outbox_.empty()) return;
        arm(kWriteDeadline);
        asio::async_write(socket_, asio::buffer(outbox_.front()), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
            self->timer_.cancel();
            if (ec) return self->close();
            self->backlog_ -= std::min(self->backlog_, n);
            self->outbox_.pop_front();
            self->write_next();
        });
    }
    // A following client says nothing more: any read that ends (EOF, reset) means it left.
    void watch_for_leaving() {
        socket_.async_read_some(asio::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
            if (ec) return self->close();
            self->watch_for_leaving();
        });
    }
    void close() {
        following_ = false;
        beast::error_code ignored;
        timer_.cancel();
        socket_.close(ignored);
    }

    void arm(std::chrono::seconds deadline) {
        timer_.expires_after(deadline);
        timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
            if (ec) return;  // cancelled: the read or write finished
            if (auto self = weak.lock()) {
                beast::error_code ignored;
                self->socket_.close(ignored);
            }
        });
    }

    void on_read(beast::error_code ec) {
        if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor)
            return;  // gone, or dropped at its deadline
        timer_.cancel();
        if (ec) {
            reply(ControlReply{400, error_json("bad request: " + ec.message())});
            return;
        }
        const auto& request = parser_.get();
        Pending pending{ControlRequest{std::string(request.method_string()), std::string(request.target())},
                        [self = shared_from_this()](ControlReply answer) {
                            asio::post(self->socket_.get_executor(),
                                       [self, answer = std::move(answer)] { self->reply(answer); });
                        }};
        {
            std::lock_guard lock(state_->mutex);
            state_->pending.push_back(std::move(pending));
        }
        const std::uint64_t one = 1;
        (void)!::write(state_->wake, &one, sizeof one);
    }

    local::socket socket_;
    asio::steady_timer timer_;
    beast::flat_buffer buffer_;
    http::request_parser<http::empty_body> parser_;
    http::response<http::string_body> response_;
    bool following_ = false;
    std::deque<std::string> outbox_;  // a stream's chunks, the front one being written
    std::size_t backlog_ = 0;
    char discard_[64];
    ControlServer::State* state_;  // outlives every session: they run on its thread, joined first
    uid_t uid_;
};

void accept_next(ControlServer::State* state) {
    state->acceptor.async_accept([state](beast::error_code ec, local::socket socket) {
        if (ec == asio::error::operation_aborted) return;
        if (ec) {
            state->retry.expires_after(std::chrono::milliseconds(100));
            state->retry.async_wait([state](beast::error_code wait) {
                if (!wait) accept_next(state);
            });
            return;
        }
        ucred peer{};
        socklen_t length = sizeof peer;
        const bool known = ::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &length) == 0;
        // Root and procctl's own user always get in (up to their own cap): a flood by a group
        // member never locks the operator out.
        const bool privileged = known && (peer.uid == 0 || peer.uid == ::geteuid());
        bool admitted = false;
        if (known && (privileged || state->connections.load() < kMaxConnections)) {
            std::lock_guard lock(state->mutex);
            auto& mine = state->per_user[peer.uid];
            admitted = mine < kMaxConnectionsPerUser;
            if (admitted) ++mine;
            else if (mine == 0) state->per_user.erase(peer.uid);
        }
        if (!admitted) {
            beast::error_code ignored;
            socket.close(ignored);  // too many at once: the newest is turned away
        } else {
            ++state->connections;
            std::shared_ptr<Session> session;
            try {
                session = std::make_shared<Session>(std::move(socket), state, peer.uid);
            } catch (const std::exception&) {  // no memory for it: turned away, and counted out again
                --state->connections;
                std::lock_guard lock(state->mutex);
                if (--state->per_user[peer.uid] == 0) state->per_user.erase(peer.uid);
            }
            try {
                if (session) session->start();
            } catch (const std::exception&) {  // dropped: its destructor counts it out
            }
        }
        accept_next(state);  // always: the server must go on accepting
    });
}

}  // namespace

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
    if (s.wake < 0) throw Error(errno, std::string("eventfd failed: ") + std::strerror(errno));
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
        std::lock_guard lock(s.mutex);
        s.pending.clear();
    }
    beast::error_code ignored;
    s.acceptor.close(ignored);
    ::unlink(s.path.c_str());
    ::close(s.wake);
}

int ControlServer::wake_fd() const noexcept { return state_->wake; }

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
        pending->answer(std::move(reply));
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
