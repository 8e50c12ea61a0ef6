#pragma once
// The bearer tokens of the TCP control API: a file of `NAME ROLE TOKEN` lines that must be a
// regular file owned by procctl's user and readable by nobody else. Tokens are kept as SHA-256
// digests and compared in constant time, every one of them on every look-up; only their NAME
// ever reaches a log line.

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "engine/control.h"

namespace hbwatch::tool {

class TokenBook {
public:
    struct Token {
        std::string name;
        Role role = Role::none;
        std::array<unsigned char, 32> digest{};
    };
    /// Reads `path`. Throws hbwatch::Error naming the file (and line) and what to do: a mode
    /// wider than 0600, another owner, a symlink, an unknown role, a token shorter than 20
    /// characters, the same token twice.
    static TokenBook load(const std::string& path);
    /// The token `presented` is, or null. Takes the same time whichever token matches.
    [[nodiscard]] const Token* find(std::string_view presented) const;
    /// Whether a token with this digest is in the book (a reload's check of open streams).
    [[nodiscard]] bool holds(const std::array<unsigned char, 32>& digest) const;
    [[nodiscard]] std::size_t size() const noexcept { return tokens_.size(); }

private:
    std::vector<Token> tokens_;
};

inline constexpr std::size_t kMinTokenLength = 20;

}  // namespace hbwatch::tool
