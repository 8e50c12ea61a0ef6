#include "engine/terminal_text.h"

#include <cstdint>
#include <cstdio>

#include "core/table.h"

namespace hbwatch::tool {
namespace {

// Characters that draw nothing, or change the order or the lines of what is drawn.
bool invisible_or_reordering(std::uint32_t c) {
    return (c >= 0x80 && c <= 0x9f)        // C1 controls (CSI among them)
           || c == 0xad                    // soft hyphen
           || c == 0x034f                  // combining grapheme joiner
           || c == 0x115f || c == 0x1160 || c == 0x3164 || c == 0xffa0  // Hangul fillers: drawn blank
           || c == 0x17b4 || c == 0x17b5   // Khmer inherent vowels: drawn as nothing
           || c == 0x061c                  // Arabic letter mark
           || c == 0x180e                  // Mongolian vowel separator
           || (c >= 0x200b && c <= 0x200f)  // zero-width space, non-joiner, joiner; LRM, RLM
           || (c >= 0x2028 && c <= 0x202e)  // line and paragraph separators; embeddings, overrides
           || (c >= 0x2060 && c <= 0x2064)  // word joiner, invisible operators
           || (c >= 0x2066 && c <= 0x2069)  // isolates
           || (c >= 0xfe00 && c <= 0xfe0f)  // variation selectors
           || c == 0xfeff                  // BOM, zero-width no-break space
           || (c >= 0xfff9 && c <= 0xfffb)  // interlinear annotation
           || (c >= 0x1d173 && c <= 0x1d17a)  // musical formatting controls
           || (c >= 0xe0000 && c <= 0xe007f)  // tag characters
           || (c >= 0xe0100 && c <= 0xe01ef);  // variation selectors supplement
}

// The code point of the UTF-8 sequence at text[i], and its length; length 0 when invalid
// (a stray continuation byte, a truncated sequence, an overlong form, a surrogate, > U+10FFFF).
std::size_t decode(std::string_view text, std::size_t i, std::uint32_t& code) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
    const unsigned char lead = byte(0);
    std::size_t length;
    if (lead >= 0xc2 && lead <= 0xdf) length = 2, code = lead & 0x1f;
    else if (lead >= 0xe0 && lead <= 0xef) length = 3, code = lead & 0x0f;
    else if (lead >= 0xf0 && lead <= 0xf4) length = 4, code = lead & 0x07;
    else return 0;
    if (i + length > text.size()) return 0;
    for (std::size_t k = 1; k < length; ++k) {
        if ((byte(k) & 0xc0) != 0x80) return 0;
        code = (code << 6) | (byte(k) & 0x3f);
    }
    const bool overlong = (length == 3 && code < 0x800) || (length == 4 && code < 0x10000);
    if (overlong || (code >= 0xd800 && code <= 0xdfff) || code > 0x10ffff) return 0;
    return length;
}

}  // namespace

std::string terminal_safe(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    char escape[16];
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x80) {
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                std::snprintf(escape, sizeof escape, "\\x%02x", c);
                out += escape;
            } else {
                out += static_cast<char>(c);
            }
            ++i;
            continue;
        }
        std::uint32_t code = 0;
        const std::size_t length = decode(text, i, code);
        if (length == 0) {
            std::snprintf(escape, sizeof escape, "\\x%02x", c);
            out += escape;
            ++i;
        } else if (invisible_or_reordering(code)) {
            std::snprintf(escape, sizeof escape, code > 0xffff ? "\\U%08x" : "\\u%04x", static_cast<unsigned>(code));
            out += escape;
            i += length;
        } else {
            out.append(text.substr(i, length));
            i += length;
        }
    }
    return out;
}

std::string shown_name(std::string_view name) { return escaped(name, name_char); }

std::string fit_columns(std::string_view text, std::size_t columns) {
    std::size_t used = 0, i = 0;
    const auto width_at = [&](std::size_t at, std::size_t& bytes) -> std::size_t {
        const auto c = static_cast<unsigned char>(text[at]);
        bytes = 1;
        if (c == '\t') return 8;
        if (c < 0x80) return 1;
        while (at + bytes < text.size() && (static_cast<unsigned char>(text[at + bytes]) & 0xc0) == 0x80) ++bytes;
        return 2;
    };
    std::size_t total = 0;
    for (std::size_t at = 0, bytes; at < text.size(); at += bytes) total += width_at(at, bytes);
    if (total <= columns) return std::string(text);
    if (columns == 0) return {};
    for (std::size_t bytes; i < text.size(); i += bytes) {
        const std::size_t width = width_at(i, bytes);
        if (used + width > columns - 1) break;
        used += width;
    }
    return std::string(text.substr(0, i)) + "~";
}

}  // namespace hbwatch::tool
