#include "engine/safe_path.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

// Write access for anyone but root and procctl's user: every user, or a group other than
// root's and procctl's own (whose members could already act as procctl's user group).
bool writable_by_others(const struct stat& st) {
    return (st.st_mode & S_IWOTH) || ((st.st_mode & S_IWGRP) && st.st_gid != 0 && st.st_gid != ::getegid());
}

}  // namespace

SafeDirectory::SafeDirectory(SafeDirectory&& other) noexcept : fd(std::exchange(other.fd, -1)), name(std::move(other.name)) {}

SafeDirectory& SafeDirectory::operator=(SafeDirectory&& other) noexcept {
    if (this != &other) {
        if (fd >= 0) ::close(fd);
        fd = std::exchange(other.fd, -1);
        name = std::move(other.name);
    }
    return *this;
}

SafeDirectory::~SafeDirectory() {
    if (fd >= 0) ::close(fd);
}

SafeDirectory open_safe_directory(const std::string& path) {
    auto refuse = [&](int error, const std::string& why) { return Error(error, "cannot open " + path + ": " + why); };
    if (path.empty() || path.back() == '/') throw refuse(EINVAL, "give a file name");
    std::string full = path;
    if (full.front() != '/') {
        char cwd[4096];
        if (::getcwd(cwd, sizeof cwd) == nullptr) throw refuse(errno, "cannot read the current directory");
        full = std::string(cwd) + "/" + path;
    }
    const uid_t me = ::geteuid();
    auto trusted_owner = [&](uid_t uid) { return uid == 0 || uid == me; };

    // Components still to walk, in order; a symbolic link puts its target's in front.
    std::vector<std::string> pending;
    auto push_front = [&](const std::string& text) {
        std::vector<std::string> parts;
        std::size_t at = 0;
        while (at <= text.size()) {
            const auto slash = std::min(text.find('/', at), text.size());
            if (slash > at) parts.push_back(text.substr(at, slash - at));
            at = slash + 1;
        }
        pending.insert(pending.begin(), parts.begin(), parts.end());
    };
    push_front(full);
    SafeDirectory result;
    result.name = pending.back();
    pending.pop_back();

    std::string walked = "/";
    int dir = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) throw refuse(errno, "cannot open /");
    auto check_directory = [&](int fd, const std::string& where) {
        struct stat d {};
        if (::fstat(fd, &d) != 0) throw refuse(errno, where + ": " + std::strerror(errno));
        if (!trusted_owner(d.st_uid))
            throw refuse(EPERM, "the directory " + where + " belongs to uid " + std::to_string(d.st_uid) +
                                    ", who could swap what is in it; use a directory that only root or you own");
        if (writable_by_others(d) && !(d.st_mode & S_ISVTX))
            throw refuse(EPERM, "the directory " + where + " can be written by other users, who could swap the file "
                                                           "for a link to another; use a directory only you (or root) "
                                                           "can write, or a sticky one such as /tmp");
    };
    try {
        check_directory(dir, "/");
        for (int links = 0; !pending.empty();) {
            const std::string part = pending.front();
            pending.erase(pending.begin());
            if (part == ".") continue;
            if (part == "..") throw refuse(EINVAL, "give a path without '..'");
            const std::string where = walked + (walked.back() == '/' ? "" : "/") + part;
            const int next = ::openat(dir, part.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
            if (next < 0)
                throw refuse(errno, errno == ENOENT ? "its directory " + where + " does not exist (procctl never creates directories)"
                                                    : where + ": " + std::strerror(errno));
            struct stat st {};
            ::fstat(next, &st);
            if (S_ISLNK(st.st_mode)) {
                ::close(next);
                if (!trusted_owner(st.st_uid))
                    throw refuse(EPERM, where + " is a symbolic link owned by uid " + std::to_string(st.st_uid) +
                                            ", which procctl does not follow");
                if (++links > 40) throw refuse(ELOOP, "too many symbolic links");
                char target[4096];
                const ssize_t n = ::readlinkat(dir, part.c_str(), target, sizeof target - 1);
                if (n <= 0) throw refuse(errno, "cannot read the link " + where);
                const std::string text(target, static_cast<std::size_t>(n));
                push_front(text);
                if (text.front() == '/') {  // absolute: walk again from the root
                    ::close(dir);
                    dir = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
                    walked.assign(1, '/');  // not = "/": g++ 12 warns falsely (-Wrestrict) on that
                }
                continue;
            }
            if (!S_ISDIR(st.st_mode)) {
                ::close(next);
                throw refuse(ENOTDIR, where + " is not a directory");
            }
            check_directory(next, where);
            ::close(dir);
            dir = next;
            walked = where;
        }
    } catch (...) {
        ::close(dir);
        throw;
    }
    result.fd = dir;
    return result;
}

int open_for_append(const SafeDirectory& dir, const std::string& path) {
    auto refuse = [&](int error, const std::string& why) { return Error(error, "cannot open " + path + ": " + why); };
    const uid_t me = ::geteuid();
    // O_NONBLOCK: a FIFO planted there must not block the open; it is refused just below.
    const int fd = ::openat(dir.fd, dir.name.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0640);
    const int error = errno;
    struct stat link {};
    // ELOOP, or EACCES from fs.protected_symlinks in a sticky directory.
    const bool is_link =
        fd < 0 && ::fstatat(dir.fd, dir.name.c_str(), &link, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(link.st_mode);
    if (fd < 0) {
        if (error == ENXIO) throw refuse(error, "it is a FIFO or socket, where only files and devices are written");
        throw refuse(error, is_link ? "it is a symbolic link, which procctl never follows" : std::strerror(error));
    }
    struct stat f {};
    if (::fstat(fd, &f) != 0 || !(S_ISREG(f.st_mode) || S_ISCHR(f.st_mode))) {
        ::close(fd);
        throw refuse(EPERM, "it is a FIFO or socket, where only files and devices are written");
    }
    if (S_ISREG(f.st_mode) && f.st_uid != me) {
        ::close(fd);
        throw refuse(EPERM, "it is owned by uid " + std::to_string(f.st_uid) + ", not by procctl's user (uid " +
                                std::to_string(me) + "); remove it or use another file");
    }
    ::fcntl(fd, F_SETFL, O_APPEND);  // blocking again: a device such as a terminal may need it
    return fd;
}

int open_trusted_file(const std::string& path, const std::string& what) {
    auto refuse = [&](int error, const std::string& why) {
        return Error(error, "cannot use " + what + " " + path + ": " + why);
    };
    const uid_t me = ::geteuid();
    std::string at = path;
    for (int links = 0;; ++links) {
        const SafeDirectory dir = open_safe_directory(at);
        const int fd = ::openat(dir.fd, dir.name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ELOOP) {  // a last symbolic link: followed only when trusted
            struct stat link {};
            char target[4096];
            const ssize_t n = ::readlinkat(dir.fd, dir.name.c_str(), target, sizeof target - 1);
            if (::fstatat(dir.fd, dir.name.c_str(), &link, AT_SYMLINK_NOFOLLOW) != 0 || n <= 0)
                throw refuse(errno, "cannot read the symbolic link " + at);
            if (link.st_uid != 0 && link.st_uid != me)
                throw refuse(EPERM, "the symbolic link " + at + " belongs to uid " + std::to_string(link.st_uid) +
                                        ", which procctl does not follow");
            if (links >= 40) throw refuse(ELOOP, "too many symbolic links");
            std::string next(target, static_cast<std::size_t>(n));
            if (next.front() != '/') next = at.substr(0, at.rfind('/') + 1) + next;
            at = next;
            continue;
        }
        if (fd < 0) throw refuse(errno, std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            throw refuse(EINVAL, "it is not a regular file");
        }
        std::string why;
        if (st.st_uid != 0 && st.st_uid != me)
            why = "it belongs to uid " + std::to_string(st.st_uid) + ", who could change what procctl runs; have root "
                  "or procctl's user (uid " + std::to_string(me) + ") own it";
        else if (writable_by_others(st))
            why = std::string("its mode gives write access to ") + ((st.st_mode & S_IWOTH) ? "every user" : "group " +
                  std::to_string(st.st_gid)) + ", who could change what procctl runs; chmod go-w it";
        if (!why.empty()) {
            ::close(fd);
            throw refuse(EPERM, why);
        }
        ::fcntl(fd, F_SETFL, 0);
        return fd;
    }
}

}  // namespace hbwatch::tool
