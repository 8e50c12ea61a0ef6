// The sinks that speak HTTP: webhooks (a POST per event, retried) and Alertmanager (the alert
// book, posted whole).
#include <functional>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "core/duration.h"
#include "engine/alert_book.h"
#include "engine/event_sink.h"
#include "engine/http_url.h"

namespace hbwatch::tool {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

// One POST with a deadline for the whole exchange. The status code, or nullopt with `error`.
std::optional<unsigned> http_post(const HttpUrl& url, const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout, const std::function<bool()>& cancelled, std::string& error) {
    try {
        asio::io_context io;
        asio::ip::tcp::resolver resolver(io);
        beast::tcp_stream stream(io);
        stream.expires_after(timeout);
        bool failed = false;
        beast::error_code result;
        http::response<http::string_body> response;
        beast::flat_buffer buffer;
        http::request<http::string_body> request{http::verb::post, target, 11};
        request.set(http::field::host, url.host);
        request.set(http::field::user_agent, "hbwatch");
        request.set(http::field::content_type, "application/json");
        if (!url.credentials.empty()) request.set(http::field::authorization, "Basic " + url.basic_auth());
        request.body() = body;
        request.prepare_payload();
        auto fail = [&](beast::error_code ec) {
            failed = true;
            result = ec;
        };
        resolver.async_resolve(url.host, url.port, [&](beast::error_code ec, asio::ip::tcp::resolver::results_type found) {
            if (ec) return fail(ec);
            stream.async_connect(found, [&](beast::error_code ec2, const asio::ip::tcp::endpoint&) {
                if (ec2) return fail(ec2);
                http::async_write(stream, request, [&](beast::error_code ec3, std::size_t) {
                    if (ec3) return fail(ec3);
                    http::async_read(stream, buffer, response, [&](beast::error_code ec4, std::size_t) {
                        if (ec4) fail(ec4);
                    });
                });
            });
        });
        // The resolver has no deadline of its own: the io_context's run is bounded instead, in
        // slices, so that procctl's exit cuts a delivery short.
        const auto end = std::chrono::steady_clock::now() + timeout + std::chrono::milliseconds(100);
        while (!io.stopped() && std::chrono::steady_clock::now() < end) {
            io.run_for(std::chrono::milliseconds(100));
            if (!io.stopped() && cancelled()) {
                error = "cut short: procctl is exiting";
                return std::nullopt;
            }
        }
        if (!io.stopped()) {
            error = "no answer within " + human_duration(timeout);
            return std::nullopt;
        }
        if (failed) {
            error = result == beast::error::timeout ? "no answer within " + human_duration(timeout) : result.message();
            return std::nullopt;
        }
        beast::error_code ignored;
        stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
        return response.result_int();
    } catch (const std::exception& e) {
        error = e.what();
        return std::nullopt;
    }
}

bool permanent_failure(unsigned status) { return status >= 400 && status < 500 && status != 408 && status != 429; }

class WebhookSink final : public EventSinks::Sink {
public:
    WebhookSink(std::shared_ptr<EventSinks::Shared> shared, WebhookConfig config)
        : Sink(std::move(shared), "webhook " + redacted_url(config.url), config.filter, config.queue),
          config_(std::move(config)),
          url_(parse_http_url(config_.url, "webhook url")) {}
    ~WebhookSink() override { stop(0); }

private:
    void run() override {
        std::vector<pollfd> none;
        for (;;) {
            report_drops();
            if (must_stop()) break;
            auto event = take();
            if (!event) {
                if (finishing()) break;
                wait(none, 0);
                continue;
            }
            deliver(*event);
            done_with_event();
        }
        report_drops();
    }

    void deliver(const Event& event) {
        const std::string body = to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        std::vector<pollfd> none;
        for (unsigned attempt = 0;; ++attempt) {
            std::string error;
            const auto status = http_post(url_, url_.target, body, config_.timeout, [this] { return must_stop(); }, error);
            if (status && *status >= 200 && *status < 300) return;
            if (status) error = "HTTP " + std::to_string(*status);
            if (attempt >= config_.retries || (status && permanent_failure(*status))) {
                say(spdlog::level::err, "could not deliver event #" + std::to_string(event.seq) + " (" + to_string(event.kind) + ") after " +
                                            std::to_string(attempt + 1) + " tries: " + error);
                failed_one();
                return;
            }
            const auto pause = std::chrono::milliseconds(1000) * (1u << std::min(attempt, 5u));
            say(spdlog::level::warn, "event #" + std::to_string(event.seq) + ": " + error + "; trying again in " + human_duration(pause));
            const std::uint64_t until = monotonic_now_ns() + static_cast<std::uint64_t>(pause.count()) * 1'000'000u;
            while (monotonic_now_ns() < until && !must_stop()) wait(none, until);
            if (must_stop()) {
                failed_one();
                return;
            }
        }
    }

    WebhookConfig config_;
    HttpUrl url_;
};

// The alerts are kept as state, not as a queue: each event updates the book at once (on the
// caller's thread, a few comparisons), so a slow Alertmanager can delay alerts but never lose
// a resolution to a full queue. Each post sends the whole book.
class AlertmanagerSink final : public EventSinks::Sink {
public:
    AlertmanagerSink(std::shared_ptr<EventSinks::Shared> shared, AlertmanagerConfig config, std::chrono::milliseconds quiet_window)
        : Sink(std::move(shared), "alertmanager " + redacted_url(config.url), EventFilter{}, 1),
          config_(std::move(config)),
          url_(parse_http_url(config_.url, "alertmanager url")),
          book_(quiet_window) {}
    ~AlertmanagerSink() override { stop(0); }

    void offer(const Event& event) override {
        bool changed;
        {
            std::lock_guard lock(book_mutex_);
            changed = book_.on(event);
        }
        if (changed) wake_up();
    }

private:
    void run() override {
        std::vector<pollfd> none;
        std::uint64_t delivered = 0;  // the book's version Alertmanager has
        std::uint64_t next_send = 0, retry_at = 0;
        unsigned failures = 0;
        bool dirty = false;
        const std::uint64_t resend_ns = static_cast<std::uint64_t>(config_.resend.count()) * 1'000'000u;
        for (;;) {
            std::uint64_t now = monotonic_now_ns();
            std::string body;
            std::uint64_t version = 0, expiry = 0;
            std::size_t count = 0;
            std::optional<AlertBook> snapshot;
            {
                std::lock_guard lock(book_mutex_);
                book_.expire(now, realtime_now_ns());
                version = book_.version();
                count = book_.alerts().size();
                dirty = version != delivered && count > 0;
                if (count > 0 && (dirty || now >= next_send) && now >= retry_at) snapshot = book_;
                expiry = book_.next_expiry();
            }
            // Made outside the lock: offer(), on the supervision loop, waits for nothing long.
            if (snapshot) body = snapshot->payload(realtime_now_ns(), 4 * resend_ns).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
            snapshot.reset();
            if (!body.empty()) {
                std::string error;
                const auto status =
                    http_post(url_, url_.target_under("/api/v2/alerts"), body, config_.timeout, [this] { return must_stop(); }, error);
                now = monotonic_now_ns();
                if (status && *status >= 200 && *status < 300) {
                    if (failures > 0) say(spdlog::level::info, "delivered again after " + std::to_string(failures) + " failed tries");
                    failures = 0;
                    std::lock_guard lock(book_mutex_);
                    book_.forget_resolved(version);
                    delivered = version;
                    dirty = book_.version() != delivered && !book_.alerts().empty();
                    next_send = now + resend_ns;
                    retry_at = 0;
                } else {
                    if (status) error = "HTTP " + std::to_string(*status);
                    if (failures++ == 0 || failures % 10 == 0)
                        say(spdlog::level::err, "could not post " + std::to_string(count) + " alert(s): " + error + " (tried " +
                                                    std::to_string(failures) + " times; trying again)");
                    retry_at = now + std::min<std::uint64_t>(1'000'000'000ull << std::min(failures, 5u), resend_ns);
                }
            }
            if (must_stop() || (finishing() && (!dirty || failures > 0))) break;
            std::uint64_t until = count == 0 ? 0 : (dirty ? retry_at : std::max(next_send, retry_at));
            if (expiry != 0) until = until == 0 ? expiry : std::min(until, expiry);
            if (until != 0 && until <= now) until = now + 1'000'000;  // at least a millisecond
            wait(none, until);
        }
        if (dirty) failed_one();
    }

    AlertmanagerConfig config_;
    HttpUrl url_;
    std::mutex book_mutex_;
    AlertBook book_;
};

}  // namespace

std::unique_ptr<EventSinks::Sink> make_webhook_sink(std::shared_ptr<EventSinks::Shared> shared, const WebhookConfig& config) {
    return std::make_unique<WebhookSink>(std::move(shared), config);
}

std::unique_ptr<EventSinks::Sink> make_alertmanager_sink(std::shared_ptr<EventSinks::Shared> shared, const AlertmanagerConfig& config,
                                                         std::chrono::milliseconds quiet_window) {
    return std::make_unique<AlertmanagerSink>(std::move(shared), config, quiet_window);
}

}  // namespace hbwatch::tool
