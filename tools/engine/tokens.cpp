#include "engine/tokens.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

constexpr std::size_t kMaxFileBytes = 64 * 1024;

std::array<unsigned char, 32> sha256(std::string_view text) {
    std::array<unsigned char, 32> digest{};
    unsigned int length = 0;
    if (EVP_Digest(text.data(), text.size(), digest.data(), &length, EVP_sha256(), nullptr) != 1 || length != digest.size())
        throw Error(EIO, "SHA-256 failed in OpenSSL");
    return digest;
}

bool token_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || std::strchr("-._~+/=", c) != nullptr;
}

}  // namespace

TokenBook TokenBook::load(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        throw Error(errno, "cannot open the tokens file " + path + ": " + std::strerror(errno) +
                               (errno == ELOOP ? " (it is a symlink: name the file itself)" : ""));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(errno, "cannot stat the tokens file " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw Error(EINVAL, "the tokens file " + path + " is not a regular file");
    if (st.st_uid != ::geteuid())
        throw Error(EPERM, "the tokens file " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not by procctl's user (uid " +
                               std::to_string(::geteuid()) + "): chown it, so that nobody else can have changed it");
    if ((st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        throw Error(EPERM, "the tokens file " + path + " has mode " + mode + ": others may read the tokens; chmod 600 " + path);
    }
    if (st.st_size > static_cast<off_t>(kMaxFileBytes))
        throw Error(EFBIG, "the tokens file " + path + " is larger than 64 KiB: is it the right file?");
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    text.resize(got);

    TokenBook book;
    std::istringstream lines(text);
    std::string line;
    for (unsigned number = 1; std::getline(lines, line); ++number) {
        const auto where = path + ":" + std::to_string(number) + ": ";
        if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
        std::istringstream words(line);
        std::string name, role, token, extra;
        if (!(words >> name)) continue;  // blank or a comment
        if (!(words >> role >> token) || (words >> extra))
            throw Error(EINVAL, where + "give NAME ROLE TOKEN (three words, e.g. `grafana read 4f9c...`)");
        Token entry;
        entry.name = name;
        if (role == "read") entry.role = Role::read;
        else if (role == "operate") entry.role = Role::operate;
        else throw Error(EINVAL, where + "role '" + role + "' is not read or operate");
        if (token.size() < kMinTokenLength)
            throw Error(EINVAL, where + "the token of '" + name + "' is shorter than 20 characters: make one with `openssl rand -hex 32`");
        for (const char c : token)
            if (!token_char(c)) throw Error(EINVAL, where + "the token of '" + name + "' has a character outside A-Z a-z 0-9 - . _ ~ + / =");
        entry.digest = sha256(token);
        for (const auto& other : book.tokens_)
            if (other.digest == entry.digest) throw Error(EINVAL, where + "'" + name + "' has the same token as '" + other.name + "'");
        book.tokens_.push_back(std::move(entry));
    }
    if (book.tokens_.empty()) throw Error(EINVAL, "the tokens file " + path + " has no token: add a line NAME ROLE TOKEN");
    return book;
}

const TokenBook::Token* TokenBook::find(std::string_view presented) const {
    // Digests make every comparison the same length; all are compared, without an early exit.
    const auto digest = sha256(presented);
    const Token* found = nullptr;
    for (const auto& token : tokens_) {
        const bool same = CRYPTO_memcmp(token.digest.data(), digest.data(), digest.size()) == 0;
        found = same ? &token : found;
    }
    return found;
}

bool TokenBook::holds(const std::array<unsigned char, 32>& digest) const {
    bool found = false;
    for (const auto& token : tokens_) found = CRYPTO_memcmp(token.digest.data(), digest.data(), digest.size()) == 0 || found;
    return found;
}

}  // namespace hbwatch::tool
