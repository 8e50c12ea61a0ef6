#pragma once
// http://[user:password@]host[:port][/path]: where a webhook or Alertmanager is. Read once,
// from the config, so a bad URL is an error at start-up rather than at the first event.

#include <string>

namespace hbwatch::tool {

struct HttpUrl {
    std::string host;
    std::string port = "80";
    std::string target = "/";  // path and query
    std::string credentials;   // "user:password", sent as Basic auth; never logged
    /// credentials in base64, for an Authorization header.
    [[nodiscard]] std::string basic_auth() const;
    /// `path` under this URL's path: http://am:9093/prefix + /api/v2/alerts.
    [[nodiscard]] std::string target_under(const std::string& path) const;
};

/// http://user:password@host/path shown as http://***@host/path: credentials never reach a log.
[[nodiscard]] std::string redacted_url(const std::string& url);

/// Throws hbwatch::Error(EINVAL) naming `what` and the URL (credentials hidden) for anything
/// but http://HOST[:PORT][/PATH].
[[nodiscard]] HttpUrl parse_http_url(const std::string& url, const std::string& what);

}  // namespace hbwatch::tool
