#include "engine/prometheus_text.h"

#include <charconv>
#include <cmath>

namespace hbwatch::tool {

void PrometheusText::family(std::string_view name, std::string_view type, std::string_view help) {
    out_.append("# HELP ").append(name).append(" ");
    for (const char c : help) {  // HELP text escapes backslash and newline
        if (c == '\\') out_ += "\\\\";
        else if (c == '\n') out_ += "\\n";
        else out_ += c;
    }
    out_.append("\n# TYPE ").append(name).append(" ").append(type).append("\n");
}

void PrometheusText::sample(std::string_view name, const Labels& labels, double value) {
    out_.append(name);
    if (!labels.empty()) {
        out_ += '{';
        bool first = true;
        for (const auto& [label, text] : labels) {
            if (!first) out_ += ',';
            first = false;
            out_.append(label).append("=\"");
            for (const char c : text) {
                if (c == '\\') out_ += "\\\\";
                else if (c == '"') out_ += "\\\"";
                else if (c == '\n') out_ += "\\n";
                else out_ += c;
            }
            out_ += '"';
        }
        out_ += '}';
    }
    out_ += ' ';
    if (std::isnan(value)) {
        out_ += "NaN";
    } else if (std::isinf(value)) {
        out_ += value > 0 ? "+Inf" : "-Inf";
    } else {
        char buffer[32];
        const auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
        out_.append(buffer, end);
    }
    out_ += '\n';
}

}  // namespace hbwatch::tool
