#pragma once
// Inside the control server (control.cpp: the unix socket, the queue, the clients;
// http_listener.cpp: TCP and TLS, tokens, limits per address): its state, and one connection,
// whatever stream carries it. Not for other files.

#include <malloc.h>
#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "engine/control.h"
#include "engine/control_command.h"
#include "engine/tokens.h"

namespace hbwatch::tool::control_detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

inline constexpr auto kHandshakeDeadline = std::chrono::seconds(5);
inline constexpr auto kReadDeadline = std::chrono::seconds(5);   // a client that sends too slowly is dropped
inline constexpr auto kWriteDeadline = std::chrono::seconds(5);  // and one that does not read its reply
inline constexpr std::uint32_t kHeaderLimit = 8 * 1024;
inline constexpr std::size_t kStreamBacklog = 1 << 20;  // unread bytes a following client may owe: then it is dropped
inline constexpr const char* kHtml = "text/html; charset=utf-8";
inline constexpr auto kShareFor = std::chrono::seconds(1);  // how long a shared answer is handed out
inline constexpr std::size_t kLargeReply = 1 << 20;     // a reply this large is given back to the system once sent

struct Pending {
    ControlRequest request;
    std::function<void(ControlReply)> answer;  // posts the reply back to the server's thread
};

/// How a connection proved who it is: over TCP, the digest of its token (none on the unix
/// socket, whose mode and group admitted it).
struct Credential {
    std::optional<std::array<unsigned char, 32>> token;
};

/// A client following a stream reply (GET /v1/events?follow=1): broadcast() pushes to it.
class Follower {
public:
    virtual ~Follower() = default;
    virtual void push(const std::string& lines) = 0;
    [[nodiscard]] virtual const Credential& credential() const = 0;
    virtual void end() = 0;  // its token was taken away
    [[nodiscard]] virtual bool local() const = 0;  // on the unix socket
};

// Streams at once, each owed at most kStreamBacklog: so many on the unix socket and so many
// over TCP, so that remote clients never take the operator's `proctab events -f` away.
inline constexpr std::size_t kMaxFollowersEach = 32;

/// A connection's place under the caps: given back when the connection ends, on either thread.
struct Admission {
    std::function<void()> release;
    Admission() = default;
    explicit Admission(std::function<void()> r) : release(std::move(r)) {}
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
    ~Admission() {
        if (release) release();
    }
};

/// Takes one of `key`'s `cap` places in `counts`, under `mutex`: false when all are taken.
/// May throw (a map node) before anything is counted.
template <class Key>
bool take_place(std::mutex& mutex, std::map<Key, std::size_t>& counts, const Key& key, std::size_t cap) {
    std::lock_guard lock(mutex);
    auto& mine = counts[key];
    if (mine < cap) {
        ++mine;
        return true;
    }
    if (mine == 0) counts.erase(key);
    return false;
}
/// Gives a place take_place() took back (the connection ended, on either thread).
template <class Key>
void give_place(std::mutex& mutex, std::map<Key, std::size_t>& counts, const Key& key) {
    std::lock_guard lock(mutex);
    if (--counts[key] == 0) counts.erase(key);
}

/// What the TCP listeners check a request against. Replaced whole by listen_http().
struct HttpAuth {
    TokenBook tokens;
    bool anonymous_metrics = false;
};

/// Failed authentications per address (an IPv6 /64): past the limit in a minute, an address
/// is answered 429 without its token being looked at, until the minute is over.
class FailureLimiter {
public:
    static constexpr unsigned kFailuresPerMinute = 30;
    static constexpr std::size_t kAddresses = 10000;
    [[nodiscard]] bool blocked(const std::string& address, std::chrono::steady_clock::time_point now);
    void failed(const std::string& address, std::chrono::steady_clock::time_point now);

private:
    struct Window {
        std::chrono::steady_clock::time_point start;
        unsigned failures = 0;
    };
    std::map<std::string, Window> windows_;
};

struct Counters {
    std::atomic<std::uint64_t> auth_failures{0};     // 401s
    std::atomic<std::uint64_t> rate_limited{0};      // 429s
    std::atomic<std::uint64_t> turned_away{0};       // connections over a cap
};

}  // namespace hbwatch::tool::control_detail

namespace hbwatch::tool {

struct ControlServer::State {
    // Before `io`: the sessions destroyed with it count down and lock.
    std::atomic<std::size_t> connections{0};  // the unix socket's
    std::map<uid_t, std::size_t> per_user;     // open connections by peer uid, under `mutex`
    std::atomic<std::size_t> tcp_connections{0};
    std::map<std::string, std::size_t> per_address;  // open TCP connections by address (/64), under `mutex`
    std::mutex mutex;
    std::deque<control_detail::Pending> pending;
    std::vector<std::weak_ptr<control_detail::Follower>> followers;  // on the server's thread only
    control_detail::Counters counters;
    // The TCP side, on the server's thread only (listen_http runs there too).
    std::shared_ptr<const control_detail::HttpAuth> auth;
    std::shared_ptr<boost::asio::ssl::context> tls;
    std::map<std::string, std::unique_ptr<boost::asio::ip::tcp::acceptor>> tcp_acceptors;  // by "HOST:PORT"
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> retired_acceptors;        // closed by a reload
    control_detail::FailureLimiter failures;
    // Worker threads for replies with `later`.
    std::mutex jobs_mutex;
    struct Job {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> done;
        bool shared = false;
    };
    std::list<Job> jobs;
    struct Shared {
        bool running = false;
        std::vector<std::function<void(ControlReply)>> waiting;
        std::optional<ControlReply> answer;  // the last one made, for a second
        std::chrono::steady_clock::time_point made;
        [[nodiscard]] bool fresh(std::chrono::steady_clock::time_point now) const noexcept {
            return answer && now - made < control_detail::kShareFor;
        }
    };
    std::map<std::string, Shared> shared;  // by share_as, under jobs_mutex
    int cancel = -1;  // eventfd, readable once the server stops: jobs that wait end
    /// A shared answer made less than a second ago for `share_as`, if any (any thread).
    std::optional<ControlReply> fresh_answer(const std::string& share_as);
    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State();
    boost::asio::io_context io;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
    control_detail::local::acceptor acceptor{io};
    boost::asio::steady_timer retry{io};  // after a failed accept (EMFILE): wait, do not spin
    std::string path;
    int wake = -1;
    std::thread thread;
};

namespace control_detail {

std::string error_json(const std::string& message);
std::string chunk(const std::string& data);
void queue_request(ControlServer::State* state, Pending pending);

template <class Stream>
inline constexpr bool kIsTls = false;
template <class Next>
inline constexpr bool kIsTls<asio::ssl::stream<Next>> = true;

/// One connection: one request, one reply, then closed (or, for a stream reply, followed).
/// Every wait has a deadline. `authorize` says who asks (filling the request's role and
/// caller) or answers at once (401, 429) without the request reaching the loop.
template <class Stream>
class Session : public Follower, public std::enable_shared_from_this<Session<Stream>> {
public:
    using Authorize = std::function<std::optional<ControlReply>(const http::request<http::empty_body>&, ControlRequest&, Credential&)>;

    Session(Stream stream, ControlServer::State* state, std::unique_ptr<Admission> admission, Authorize authorize)
        : stream_(std::move(stream)),
          timer_(stream_.get_executor()),
          state_(state),
          admission_(std::move(admission)),
          authorize_(std::move(authorize)) {}

    void start() {
        if constexpr (kIsTls<Stream>) {
            arm(kHandshakeDeadline);
            stream_.async_handshake(asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
                self->timer_.cancel();
                if (ec) return self->close();
                self->read();
            });
        } else {
            read();
        }
    }

    void reply(ControlReply reply) {
        if (reply.stream && reply.status == 200) {
            auto& followers = state_->followers;
            std::erase_if(followers, [](const std::weak_ptr<Follower>& f) { return f.expired(); });
            const auto alike = std::count_if(followers.begin(), followers.end(), [&](const std::weak_ptr<Follower>& f) {
                const auto other = f.lock();
                return other && other->local() == local();
            });
            if (static_cast<std::size_t>(alike) < kMaxFollowersEach) return stream(reply.body);
            reply = ControlReply{503, error_json("procctl already streams to " + std::to_string(kMaxFollowersEach) +
                                                 " clients here: close one (proctab events -f) and ask again")};
        }
        response_.result(static_cast<unsigned>(reply.status));
        response_.set(http::field::content_type, reply.content_type);
        response_.set(http::field::cache_control, "no-store");
        response_.set("X-Content-Type-Options", "nosniff");
        if (reply.status == 401) response_.set(http::field::www_authenticate, "Bearer realm=\"hbwatch\"");
        if (reply.status == 429) response_.set(http::field::retry_after, "60");
        if (reply.content_type.rfind("text/html", 0) == 0) {
            // The page's own script and style only; it talks to this origin and nothing else.
            response_.set("Content-Security-Policy",
                          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                          "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
            response_.set("Referrer-Policy", "no-referrer");
            response_.set("X-Frame-Options", "DENY");
        }
        response_.keep_alive(false);
        if (reply.shared_body) return send_shared(std::move(reply.shared_body));
        if (reply.content_type == "application/json") reply.body += '\n';
        const bool large = reply.body.size() > kLargeReply;
        response_.body() = std::move(reply.body);  // a scrape of a large table is tens of MiB: never copied
        response_.prepare_payload();
        arm(kWriteDeadline);
        http::async_write(stream_, response_, [self = this->shared_from_this(), large](beast::error_code, std::size_t) {
            self->timer_.cancel();
            self->close();
            if (large) {
                self->response_.body() = std::string();
                ::malloc_trim(0);  // what it took goes back to the system, not kept for years
            }
        });
    }

    // Follows with what broadcast() sends: queued, written one chunk at a time, each write
    // with its deadline; a client that falls 1 MiB behind is dropped.
    [[nodiscard]] const Credential& credential() const override { return credential_; }
    void end() override { close(); }
    [[nodiscard]] bool local() const override { return std::is_same_v<Stream, local::socket>; }

    void push(const std::string& lines) override {
        if (!following_) return;
        backlog_ += lines.size();
        if (backlog_ > kStreamBacklog) return close();
        outbox_.push_back(chunk(lines));
        if (outbox_.size() == 1) write_next();
    }

private:
    // A shared answer: the head as for any reply, then the body from the one buffer every
    // waiter holds (a scrape of a large table is tens of MiB: never copied per client).
    void send_shared(std::shared_ptr<const std::string> body) {
        response_.content_length(body->size());
        std::ostringstream head;
        head << response_.base();
        shared_head_ = head.str();
        shared_body_ = std::move(body);
        arm(kWriteDeadline);
        const std::array<asio::const_buffer, 2> buffers{asio::buffer(shared_head_), asio::buffer(*shared_body_)};
        asio::async_write(stream_, buffers, [self = this->shared_from_this()](beast::error_code, std::size_t) {
            self->timer_.cancel();
            self->close();
            const bool last_large = self->shared_body_.use_count() == 1 && self->shared_body_->size() > kLargeReply;
            self->shared_body_.reset();
            if (last_large) ::malloc_trim(0);  // the last holder of a large answer gives it back to the system
        });
    }

    void read() {
        parser_.header_limit(kHeaderLimit);
        parser_.body_limit(64 * 1024);
        arm(kReadDeadline);
        http::async_read(stream_, buffer_, parser_,
                         [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void stream(const std::string& first) {
        following_ = true;
        state_->followers.push_back(this->weak_from_this());
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
        asio::async_write(stream_, asio::buffer(outbox_.front()), [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
            self->timer_.cancel();
            if (ec) return self->close();
            self->backlog_ -= std::min(self->backlog_, n);
            self->outbox_.pop_front();
            self->write_next();
        });
    }
    // A following client says nothing more: any read that ends (EOF, reset) means it left.
    void watch_for_leaving() {
        stream_.async_read_some(asio::buffer(discard_), [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
            if (ec) return self->close();
            self->watch_for_leaving();
        });
    }
    void close() {
        following_ = false;
        beast::error_code ignored;
        timer_.cancel();
        auto& socket = beast::get_lowest_layer(stream_);
        socket.shutdown(std::decay_t<decltype(socket)>::shutdown_both, ignored);
        socket.close(ignored);
    }

    void arm(std::chrono::seconds deadline) {
        timer_.expires_after(deadline);
        timer_.async_wait([weak = this->weak_from_this()](beast::error_code ec) {
            if (ec) return;  // cancelled: the read or write finished
            if (auto self = weak.lock()) {
                beast::error_code ignored;
                beast::get_lowest_layer(self->stream_).close(ignored);
            }
        });
    }

    void on_read(beast::error_code ec) {
        if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor)
            return;  // gone, or dropped at its deadline
        timer_.cancel();
        if (ec) return reply(ControlReply{400, error_json("bad request: " + ec.message())});
        const auto& request = parser_.get();
        ControlRequest asked{std::string(request.method_string()), std::string(request.target())};
        if (auto refused = authorize_(request, asked, credential_)) return reply(std::move(*refused));
        // A scrape, the table or the ports made less than a second ago for someone else: sent
        // from here, so a flood of them never reaches the supervision loop.
        const auto parsed = parse_command(asked);
        if (const auto* command = std::get_if<ControlCommand>(&parsed)) {
            const std::string key = share_key(*command);
            if (!key.empty() && static_cast<int>(asked.role) >= static_cast<int>(required_role(command->verb)))
                if (auto fresh = state_->fresh_answer(key)) return reply(std::move(*fresh));
        }
        queue_request(state_, Pending{std::move(asked), [self = this->shared_from_this()](ControlReply answer) {
                                          asio::post(self->stream_.get_executor(),
                                                     [self, answer = std::move(answer)]() mutable { self->reply(std::move(answer)); });
                                      }});
    }

    Stream stream_;
    asio::steady_timer timer_;
    beast::flat_buffer buffer_;
    http::request_parser<http::empty_body> parser_;
    http::response<http::string_body> response_;
    bool following_ = false;
    std::deque<std::string> outbox_;  // a stream's chunks, the front one being written
    std::size_t backlog_ = 0;
    char discard_[64];
    ControlServer::State* state_;  // outlives every session: they run on its thread, joined first
    std::unique_ptr<Admission> admission_;
    Authorize authorize_;
    Credential credential_;
    std::string shared_head_;
    std::shared_ptr<const std::string> shared_body_;
};

}  // namespace control_detail
}  // namespace hbwatch::tool
