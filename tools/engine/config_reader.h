#pragma once
// Reading a YAML (or JSON) config that a root supervisor must not trust: the shape of the file
// checked before it is loaded (keys given twice, aliases that multiply it), and a reader whose
// every error names FILE:LINE:COLUMN, the key, and what is allowed. The stack's keys are
// stack_config.cpp's.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include <hbwatch/error.h>

#include "core/duration.h"

namespace hbwatch::tool {

/// A whole, non-negative number written in decimal and nothing else (at most 9 digits).
inline std::optional<unsigned long> whole_number(const std::string& text) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 9) return std::nullopt;
    return std::stoul(text);
}

/// "a, b, c": the words with `separator` between them.
inline std::string join(const std::vector<std::string>& words, const char* separator = ", ") {
    std::string out;
    for (const auto& word : words) out += (out.empty() ? "" : separator) + word;
    return out;
}

/// `text` parsed, after a pass over its parser events that refuses a key given twice in one
/// map and a document whose aliases expand it past 4 MiB of nodes and text. Throws
/// hbwatch::Error(EINVAL) naming PATH:LINE:COLUMN.
[[nodiscard]] YAML::Node load_checked_yaml(const std::string& text, const std::string& path);

/// Reads the nodes of one config file, each error placed at its FILE:LINE:COLUMN.
class ConfigReader {
public:
    explicit ConfigReader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const YAML::Node& node, const std::string& what) const {
        const YAML::Mark mark = node.Mark();
        if (mark.is_null()) throw Error(EINVAL, path_ + ": " + what);
        throw Error(EINVAL, path_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + what);
    }

    // Every key of `map` must be one of `allowed`.
    void only_keys(const YAML::Node& map, const std::string& where, const std::vector<std::string>& allowed) const {
        for (auto it = map.begin(); it != map.end(); ++it) {
            const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
            if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
                fail(it->first, where + "unknown key '" + key + "': the keys allowed here are " + join(allowed));
        }
    }

    std::string text(const YAML::Node& node, const std::string& key) const {
        if (!node.IsScalar()) fail(node, key + ": give a string");
        return node.Scalar();
    }
    std::chrono::milliseconds duration(const YAML::Node& node, const std::string& key, DurationRange range) const {
        const std::string value = text(node, key);
        try {
            (void)parse_duration(value);
        } catch (const Error& e) {
            fail(node, key + ": " + e.what());
        }
        try {
            return parse_duration_in(value, key + ":", range);
        } catch (const Error& e) {
            fail(node, e.what());
        }
    }
    std::uint64_t size(const YAML::Node& node, const std::string& key) const {
        try {
            return parse_size(text(node, key));
        } catch (const Error& e) {
            fail(node, key + ": " + e.what());
        }
    }
    unsigned number(const YAML::Node& node, const std::string& key, unsigned low, unsigned high) const {
        const std::string value = text(node, key);
        const auto n = whole_number(value);
        if (!n || *n < low || *n > high)
            fail(node, key + ": '" + value + "' is not a whole number from " + std::to_string(low) + " to " + std::to_string(high));
        return static_cast<unsigned>(*n);
    }
    bool flag(const YAML::Node& node, const std::string& key) const {
        const std::string value = text(node, key);
        if (value == "true" || value == "yes") return true;
        if (value == "false" || value == "no") return false;
        fail(node, key + ": '" + value + "' is not true or false");
    }
    std::vector<std::string> words(const YAML::Node& node, const std::string& key, bool allow_empty = false) const {
        if (!node.IsSequence()) fail(node, key + ": give a list, such as [program, --flag, value]");
        std::vector<std::string> out;
        for (const auto& item : node) out.push_back(text(item, key + " item"));
        if (out.empty() && !allow_empty) fail(node, key + ": the list is empty");
        return out;
    }

private:
    std::string path_;
};

}  // namespace hbwatch::tool
