#include "engine/http_url.h"

#include <cerrno>

#include <hbwatch/error.h>


namespace hbwatch::tool {

std::string redacted_url(const std::string& url) {
    // Everything from the scheme to the last '@' goes: whatever way a URL splits its user info
    // (a '@' or '/' in a password, a token with no password), none of it shows.
    const auto scheme = url.find("://");
    const auto start = scheme == std::string::npos ? 0 : scheme + 3;
    const auto at = url.rfind('@');
    if (at == std::string::npos || at < start) return url;
    return url.substr(0, start) + "***" + url.substr(at);
}


std::string HttpUrl::basic_auth() const {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < credentials.size(); i += 3) {
        const unsigned n = (static_cast<unsigned char>(credentials[i]) << 16) | (static_cast<unsigned char>(credentials[i + 1]) << 8) |
                           static_cast<unsigned char>(credentials[i + 2]);
        out += {kAlphabet[n >> 18], kAlphabet[(n >> 12) & 63], kAlphabet[(n >> 6) & 63], kAlphabet[n & 63]};
    }
    if (const std::size_t left = credentials.size() - i; left > 0) {
        unsigned n = static_cast<unsigned char>(credentials[i]) << 16;
        if (left == 2) n |= static_cast<unsigned char>(credentials[i + 1]) << 8;
        out += kAlphabet[n >> 18];
        out += kAlphabet[(n >> 12) & 63];
        out += left == 2 ? kAlphabet[(n >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

std::string HttpUrl::target_under(const std::string& path) const {
    std::string base = target.substr(0, target.find('?'));
    while (!base.empty() && base.back() == '/') base.pop_back();
    return base + path;
}

HttpUrl parse_http_url(const std::string& url, const std::string& what) {
    auto fail = [&](const std::string& why) -> HttpUrl {
        throw Error(EINVAL, what + ": '" + redacted_url(url) + "' " + why);
    };
    const std::string scheme = "http://";
    if (url.rfind("https://", 0) == 0)
        return fail("uses https, which hbwatch does not speak: give an http:// URL (a relay on loopback, say, such as a local "
                    "Alertmanager)");
    if (url.rfind(scheme, 0) != 0) return fail("is not an http:// URL (such as http://127.0.0.1:9093)");
    for (const char c : url)
        if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return fail("holds a space or a control character");
    HttpUrl out;
    std::string rest = url.substr(scheme.size());
    const auto slash = rest.find_first_of("/?#");
    std::string authority = rest.substr(0, slash);
    if (slash != std::string::npos) {
        out.target = rest.substr(slash);
        if (out.target.front() != '/') out.target.insert(0, 1, '/');  // in steps: g++ 12 warns falsely (-Wrestrict) on "/" + ...
    }
    if (out.target.find('#') != std::string::npos) out.target.erase(out.target.find('#'));
    if (const auto at = authority.rfind('@'); at != std::string::npos) {
        out.credentials = authority.substr(0, at);
        authority = authority.substr(at + 1);
    }
    if (!authority.empty() && authority.front() == '[') {  // [::1]:9093
        const auto close = authority.find(']');
        if (close == std::string::npos) return fail("has an unclosed [ in its host");
        out.host = authority.substr(1, close - 1);
        authority = authority.substr(close + 1);
        if (!authority.empty() && authority.front() != ':') return fail("has something after its ] that is not :PORT");
        if (!authority.empty()) out.port = authority.substr(1);
    } else {
        const auto colon = authority.find(':');
        out.host = authority.substr(0, colon);
        if (colon != std::string::npos) out.port = authority.substr(colon + 1);
    }
    if (out.host.empty()) return fail("has no host");
    const bool port_ok = !out.port.empty() && out.port.size() <= 5 &&
                         out.port.find_first_not_of("0123456789") == std::string::npos && std::stoul(out.port) >= 1 &&
                         std::stoul(out.port) <= 65535;
    if (!port_ok) return fail("has a port that is not a number from 1 to 65535");
    return out;
}

}  // namespace hbwatch::tool
