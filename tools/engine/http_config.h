#pragma once
// The stack's `http:` section: the control API over TCP, for operators' browsers, Prometheus
// and remote tools. Off unless configured; every request needs a bearer token from
// tokens_file, except the status page itself (it holds no data) and, when allowed, /metrics.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hbwatch::tool {

struct HttpConfig {
    std::vector<std::string> listen;  // "127.0.0.1:9500", "[::1]:9500": literal addresses, no names
    std::string tokens_file;          // NAME ROLE TOKEN lines; 0600 (or stricter), owned by procctl's user
    std::string cert, key;            // PEM files: TLS on every listener when given
    bool anonymous_metrics = false;   // GET /metrics without a token
    bool operator==(const HttpConfig&) const = default;
    [[nodiscard]] bool enabled() const noexcept { return !listen.empty(); }
};

/// "127.0.0.1:9500" or "[::1]:9500" as (address, port); nullopt for anything else (names,
/// a missing or zero port).
[[nodiscard]] std::optional<std::pair<std::string, std::uint16_t>> parse_listen_address(const std::string& text);

/// What an operator should hear about `http` (plain HTTP on an address that is not loopback).
[[nodiscard]] std::vector<std::string> http_warnings(const HttpConfig& http);

}  // namespace hbwatch::tool
