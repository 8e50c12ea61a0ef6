// The control API over TCP: listeners on the addresses of the config's `http:` section, TLS
// when it names a certificate, bearer tokens, and caps per address. Requests that pass go to
// the same queue, and the same router, as the unix socket's.
#include <arpa/inet.h>
#include <fcntl.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <future>
#include <sstream>

#include <hbwatch/error.h>

#include "engine/control_session.h"
#include "engine/http_config.h"
#include "engine/status_page.h"

namespace hbwatch::tool {
namespace control_detail {

bool FailureLimiter::blocked(const std::string& address, std::chrono::steady_clock::time_point now) {
    const auto found = windows_.find(address);
    if (found == windows_.end()) return false;
    if (now - found->second.start >= std::chrono::minutes(1)) {
        windows_.erase(found);
        return false;
    }
    return found->second.failures >= kFailuresPerMinute;
}

void FailureLimiter::failed(const std::string& address, std::chrono::steady_clock::time_point now) {
    if (windows_.size() >= kAddresses) {  // forget the windows that are over; if none is, the oldest
        std::erase_if(windows_, [&](const auto& w) { return now - w.second.start >= std::chrono::minutes(1); });
        if (windows_.size() >= kAddresses)
            windows_.erase(std::min_element(windows_.begin(), windows_.end(),
                                            [](const auto& a, const auto& b) { return a.second.start < b.second.start; }));
    }
    auto& window = windows_.try_emplace(address, Window{now, 0}).first->second;
    if (now - window.start >= std::chrono::minutes(1)) window = Window{now, 0};
    ++window.failures;
}

}  // namespace control_detail

namespace {

using namespace control_detail;

constexpr std::size_t kMaxTcpConnections = 128;  // with the unix socket's 64 and a stack's own fds, within 1024
constexpr std::size_t kMaxConnectionsPerAddress = 8;

// The key an address is counted under: an IPv6 client holds a whole /64.
std::string address_key(const asio::ip::address& address) {
    if (address.is_v6() && !address.to_v6().is_v4_mapped()) {
        auto bytes = address.to_v6().to_bytes();
        std::fill(bytes.begin() + 8, bytes.end(), 0);
        return asio::ip::address_v6(bytes).to_string() + "/64";
    }
    return address.is_v6() ? asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6()).to_string() : address.to_string();
}

std::optional<std::string> bearer_token(const http::request<http::empty_body>& request) {
    const auto header = request[http::field::authorization];
    constexpr std::string_view kScheme = "Bearer ";
    if (header.size() <= kScheme.size()) return std::nullopt;
    std::string scheme(header.substr(0, kScheme.size()));
    for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "bearer ") return std::nullopt;
    std::string token(header.substr(kScheme.size()));
    while (!token.empty() && token.back() == ' ') token.pop_back();
    return token;
}

// Who asks over TCP, from its token; or the answer it gets at once. A valid token always
// passes: the limit on failures from an address never locks out a neighbour sharing it (a
// NAT, every local user on loopback), and guessing a token of 20 characters or more is not
// what it must stop. Failures past the limit are answered 429, cheaply, and counted.
std::optional<ControlReply> authorize_tcp(ControlServer::State* state, const std::string& address, const std::string& counted_as,
                                          const http::request<http::empty_body>& http_request, ControlRequest& request,
                                          Credential& credential) {
    const auto auth = state->auth;
    const std::string path = request.target.substr(0, request.target.find('?'));
    const bool get = http_request.method() == http::verb::get;
    request.uid.reset();
    request.role = Role::none;
    request.caller = "an anonymous client at " + address;
    const auto token = bearer_token(http_request);
    if (!token) {
        // The page holds no data (it asks for a token), and is answered here, never queued;
        // /metrics only when the config opens it.
        if (get && (path == "/" || path == "/index.html")) return ControlReply(200, std::string(status_page_html()), false, kHtml);
        if (get && path == "/metrics" && auth && auth->anonymous_metrics) {
            request.role = Role::read;
            return std::nullopt;
        }
    }
    const TokenBook::Token* found = token && auth ? auth->tokens.find(*token) : nullptr;
    if (found != nullptr) {
        request.role = found->role;
        request.caller = "token '" + found->name + "' from " + address;
        credential.token = found->digest;
        return std::nullopt;
    }
    const auto now = std::chrono::steady_clock::now();
    if (state->failures.blocked(counted_as, now)) {
        ++state->counters.rate_limited;
        return ControlReply{429, error_json("too many failed authentications from " + address + ": wait a minute")};
    }
    state->failures.failed(counted_as, now);
    ++state->counters.auth_failures;
    return ControlReply{401, error_json(token ? "this token is not in procctl's tokens file"
                                              : "give a token: Authorization: Bearer TOKEN (a line of the tokens file)")};
}

void admit_tcp(ControlServer::State* state, tcp::socket socket) {
    beast::error_code peer_error;
    const auto peer = socket.remote_endpoint(peer_error);
    if (peer_error) return;  // gone already
    const std::string address = address_key(peer.address());
    const std::string shown = peer.address().to_string();
    // Made before anything is counted: nothing below can throw with a count taken.
    auto admission = std::make_unique<Admission>();
    std::function<void()> release = [state, address] {
        --state->tcp_connections;
        give_place(state->mutex, state->per_address, address);
    };
    const bool admitted = state->tcp_connections.load() < kMaxTcpConnections &&
                          take_place(state->mutex, state->per_address, address, kMaxConnectionsPerAddress);
    if (!admitted) {
        ++state->counters.turned_away;
        return;  // the socket closes as it goes
    }
    ++state->tcp_connections;
    admission->release = std::move(release);
    ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
    auto authorize = [state, shown, address](const http::request<http::empty_body>& http_request, ControlRequest& request,
                                             Credential& credential) {
        return authorize_tcp(state, shown, address, http_request, request, credential);
    };
    if (state->tls) {
        using Tls = asio::ssl::stream<tcp::socket>;
        std::make_shared<Session<Tls>>(Tls(std::move(socket), *state->tls), state, std::move(admission), authorize)->start();
    } else {
        std::make_shared<Session<tcp::socket>>(std::move(socket), state, std::move(admission), authorize)->start();
    }
}

void accept_tcp(ControlServer::State* state, tcp::acceptor* acceptor) {
    acceptor->async_accept([state, acceptor](beast::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
        if (ec) {  // EMFILE: wait, do not spin
            try {
                auto timer = std::make_shared<asio::steady_timer>(state->io, std::chrono::milliseconds(100));
                timer->async_wait([state, acceptor, timer](beast::error_code wait) {
                    if (!wait && acceptor->is_open()) accept_tcp(state, acceptor);
                });
                return;
            } catch (const std::exception&) {  // no memory even for a timer: accept again at once
            }
        } else {
            try {
                admit_tcp(state, std::move(socket));
            } catch (const std::exception&) {  // no memory for it: turned away, counted out by its admission
            }
        }
        accept_tcp(state, acceptor);  // always: the listener must go on accepting
    });
}

std::shared_ptr<asio::ssl::context> tls_context(const HttpConfig& http) {
    if (http.cert.empty() && http.key.empty()) return nullptr;
    if (http.cert.empty() || http.key.empty()) throw Error(EINVAL, "http: give both cert and key for TLS, or neither");
    auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 | asio::ssl::context::no_sslv3 |
                         asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
    ::SSL_CTX_set_options(context->native_handle(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    ::SSL_CTX_set_cipher_list(context->native_handle(), "ECDHE+AESGCM:ECDHE+CHACHA20");  // TLS 1.2; 1.3's are all AEAD
    // An encrypted key would make OpenSSL ask on the terminal, from the loop: refused instead.
    context->set_password_callback([](std::size_t, asio::ssl::context::password_purpose) { return std::string(); });
    beast::error_code ec;
    context->use_certificate_chain_file(http.cert, ec);
    if (ec) throw Error(EINVAL, "http: cannot use the certificate " + http.cert + ": " + ec.message());
    context->use_private_key_file(http.key, asio::ssl::context::pem, ec);
    if (ec)
        throw Error(EINVAL, "http: cannot use the private key " + http.key + ": " + ec.message() +
                                " (is it the certificate's key, in PEM, without a passphrase?)");
    return context;
}

}  // namespace

std::vector<std::string> http_warnings(const HttpConfig& http) {
    std::vector<std::string> warnings;
    if (!http.cert.empty()) return warnings;
    for (const auto& text : http.listen)
        if (const auto parsed = parse_listen_address(text); parsed && !asio::ip::make_address(parsed->first).is_loopback())
            warnings.push_back("http: " + text + " is not a loopback address and there is no cert and key: tokens cross the network "
                               "readable (give cert and key in the http section for TLS)");
    return warnings;
}

std::optional<std::pair<std::string, std::uint16_t>> parse_listen_address(const std::string& text) {
    std::string host, port;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
        in6_addr v6{};
        if (::inet_pton(AF_INET6, host.c_str(), &v6) != 1) return std::nullopt;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string::npos) return std::nullopt;
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        in_addr v4{};
        if (::inet_pton(AF_INET, host.c_str(), &v4) != 1) return std::nullopt;
    }
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit)) return std::nullopt;
    const unsigned long number = std::stoul(port);
    if (number == 0 || number > 65535) return std::nullopt;
    return std::pair{host, static_cast<std::uint16_t>(number)};
}

void ControlServer::listen_http(const HttpConfig& http) {
    // Read and checked here, on the caller's thread: a refusal changes nothing.
    std::shared_ptr<const HttpAuth> auth;
    std::shared_ptr<asio::ssl::context> tls;
    std::vector<std::pair<std::string, tcp::endpoint>> wanted;  // as written, and the endpoint it means
    if (http.enabled()) {
        if (http.tokens_file.empty()) throw Error(EINVAL, "http: tokens_file is required (every request but the page needs a token)");
        auth = std::make_shared<HttpAuth>(HttpAuth{TokenBook::load(http.tokens_file), http.anonymous_metrics});
        tls = tls_context(http);
        for (const auto& text : http.listen) {
            const auto parsed = parse_listen_address(text);
            if (!parsed) throw Error(EINVAL, "http: listen '" + text + "' is not ADDRESS:PORT (127.0.0.1:9500, [::1]:9500)");
            wanted.emplace_back(text, tcp::endpoint(asio::ip::make_address(parsed->first), parsed->second));
        }
    }
    State* state = state_.get();
    // The acceptors live on the server's thread: the change is made there, and waited for. They
    // are keyed by endpoint, so "127.0.0.1:09500" is the listener "127.0.0.1:9500" already is.
    auto change = [state, wanted = std::move(wanted), auth, tls] {
        std::map<std::string, std::unique_ptr<tcp::acceptor>> next;
        std::vector<std::string> fresh;
        auto undo = [&] {
            beast::error_code ignored;
            for (auto& [key, acceptor] : next) {
                if (std::find(fresh.begin(), fresh.end(), key) != fresh.end()) acceptor->close(ignored);
                else state->tcp_acceptors.emplace(key, std::move(acceptor));
            }
        };
        for (const auto& [text, endpoint] : wanted) {
            std::ostringstream key_text;
            key_text << endpoint;
            const std::string key = key_text.str();
            if (next.count(key)) continue;
            if (auto kept = state->tcp_acceptors.find(key); kept != state->tcp_acceptors.end()) {
                next.emplace(key, std::move(kept->second));
                state->tcp_acceptors.erase(kept);
                continue;
            }
            auto acceptor = std::make_unique<tcp::acceptor>(state->io);
            beast::error_code ec;
            acceptor->open(endpoint.protocol(), ec);
            if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
            if (!ec && endpoint.address().is_v6()) acceptor->set_option(asio::ip::v6_only(true), ec);
            if (!ec) acceptor->bind(endpoint, ec);
            if (!ec) acceptor->listen(128, ec);
            if (ec) {
                undo();  // the listeners stay as they were; those opened here are closed
                const bool in_use = ec == asio::error::address_in_use;
                throw Error(in_use ? EADDRINUSE : EINVAL,
                            "http: cannot listen on " + text + ": " + ec.message() +
                                (in_use ? " (another process holds the port: proctab ports; or procctl itself on another address of "
                                          "it, which a reload cannot move in one step: restart procctl)"
                                        : ""));
            }
            ::fcntl(acceptor->native_handle(), F_SETFD, FD_CLOEXEC);
            next.emplace(key, std::move(acceptor));
            fresh.push_back(key);
        }
        beast::error_code ignored;
        for (auto& [address, gone] : state->tcp_acceptors) {
            gone->close(ignored);
            // An accept handler of it may still be queued: kept until the server ends.
            state->retired_acceptors.push_back(std::move(gone));
        }
        state->tcp_acceptors = std::move(next);
        state->auth = auth;
        state->tls = tls;
        for (const auto& key : fresh) accept_tcp(state, state->tcp_acceptors.at(key).get());
        // A stream opened with a token the file no longer holds ends now.
        for (const auto& weak : state->followers)
            if (auto follower = weak.lock())
                if (const auto& token = follower->credential().token; token && !(auth && auth->tokens.holds(*token))) follower->end();
    };
    // (A std::packaged_task would be taken by Asio as a completion token: a promise instead.)
    auto done = std::make_shared<std::promise<void>>();
    auto result = done->get_future();
    asio::post(state->io, [change = std::move(change), done]() mutable {
        try {
            change();
            done->set_value();
        } catch (...) {
            done->set_exception(std::current_exception());
        }
    });
    result.get();  // the server's thread never blocks: this takes microseconds
}

}  // namespace hbwatch::tool
