#pragma once
// The Prometheus text exposition format (version 0.0.4), written one family at a time: HELP,
// TYPE, then its samples. Numbers are written exactly (shortest round trip), so counters and
// Unix timestamps keep every digit; label values are escaped as the format says.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hbwatch::tool {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

class PrometheusText {
public:
    using Labels = std::vector<std::pair<std::string_view, std::string>>;
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const Labels& labels, double value);
    void sample(std::string_view name, double value) { sample(name, {}, value); }
    [[nodiscard]] const std::string& text() const noexcept { return out_; }
    [[nodiscard]] std::string take() { return std::move(out_); }
    void append(const std::string& more) { out_ += more; }

private:
    std::string out_;
};

}  // namespace hbwatch::tool
