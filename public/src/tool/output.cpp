#include "tool/output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <hbwatch/duration.h>
#include <hbwatch/error.h>

namespace hbwatch::tool {
namespace {

std::string base_of(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::string directory_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

int open_safe_directory(const std::string& path) {
    auto refuse = [&](int error, const std::string& why) { return Error(error, "cannot open " + path + ": " + why); };
    if (path.empty() || path.back() == '/') throw refuse(EINVAL, "give a file name");
    const std::string dir = directory_of(path);
    const int dirfd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        throw refuse(errno, errno == ENOENT ? "its directory " + dir + " does not exist (procctl never creates directories)"
                                            : "its directory " + dir + ": " + std::strerror(errno));
    struct stat d {};
    if (::fstat(dirfd, &d) != 0) {
        const int error = errno;
        ::close(dirfd);
        throw refuse(error, std::strerror(error));
    }
    const bool others_write = (d.st_mode & S_IWOTH) || ((d.st_mode & S_IWGRP) && d.st_gid != ::getegid() && d.st_gid != 0);
    const bool foreign_owner = d.st_uid != ::geteuid() && d.st_uid != 0;
    if (!(d.st_mode & S_ISVTX) && (others_write || foreign_owner)) {
        ::close(dirfd);
        throw refuse(EPERM, "its directory " + dir + " can be changed by " +
                                (foreign_owner ? "its owner, uid " + std::to_string(d.st_uid) : std::string("other users")) +
                                ", who could swap the file for a link to another; use a directory only you (or root) "
                                "can write, or a sticky one such as /tmp");
    }
    return dirfd;
}

int open_for_append(const std::string& path) {
    auto refuse = [&](int error, const std::string& why) { return Error(error, "cannot open " + path + ": " + why); };
    const uid_t me = ::geteuid();
    const int dirfd = open_safe_directory(path);
    const int fd = ::openat(dirfd, base_of(path).c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
    const int error = errno;
    struct stat link {};
    // ELOOP, or EACCES from fs.protected_symlinks in a sticky directory.
    const bool is_link = fd < 0 && ::fstatat(dirfd, base_of(path).c_str(), &link, AT_SYMLINK_NOFOLLOW) == 0 &&
                         S_ISLNK(link.st_mode);
    ::close(dirfd);
    if (fd < 0) throw refuse(error, is_link ? "it is a symbolic link, which procctl never follows" : std::strerror(error));
    struct stat f {};
    if (::fstat(fd, &f) != 0 || (S_ISREG(f.st_mode) && f.st_uid != me)) {
        ::close(fd);
        throw refuse(EPERM, "it is owned by uid " + std::to_string(f.st_uid) + ", not by procctl's user (uid " +
                                std::to_string(me) + "); remove it or use another file");
    }
    return fd;
}

std::string rotated_name(const std::string& path, std::size_t index) {
    const std::string base = base_of(path);
    const auto dot = base.rfind('.');
    std::string number = std::to_string(index);
    number.insert(number.begin(), '.');  // not "." + ...: g++ 12 warns falsely (-Wrestrict) on that
    if (dot == std::string::npos || dot == 0) return path + number;
    return path.substr(0, path.size() - base.size() + dot) + number + base.substr(dot);
}

OutputFile::OutputFile(std::string path, std::uint64_t max_size, std::size_t keep, Report report)
    : path_(std::move(path)), max_size_(max_size), keep_(keep), report_(std::move(report)) {
    fd_ = open_for_append(path_);
    struct stat st {};
    if (::fstat(fd_, &st) == 0) {
        regular_ = S_ISREG(st.st_mode);
        size_ = regular_ ? static_cast<std::uint64_t>(st.st_size) : 0;
    }
}

OutputFile::~OutputFile() {
    finish();
    if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(std::string_view data) noexcept {
    pending_.append(data);
    const auto last = pending_.rfind('\n');
    if (last != std::string::npos) {
        write_lines(std::string_view(pending_).substr(0, last + 1));
        pending_.erase(0, last + 1);
    }
    // A line longer than the cap cannot stay whole in any file: let it through as it comes.
    if (max_size_ != 0 && pending_.size() >= max_size_) {
        write_lines(pending_);
        pending_.clear();
    }
}

void OutputFile::finish() noexcept {
    if (pending_.empty()) return;
    write_lines(pending_);
    pending_.clear();
}

void OutputFile::write_lines(std::string_view data) noexcept {
    while (!data.empty()) {
        if (max_size_ == 0 || !regular_ || size_ + data.size() <= max_size_) {
            raw_write(data);
            return;
        }
        const std::uint64_t room = size_ < max_size_ ? max_size_ - size_ : 0;
        const auto cut = data.substr(0, room).rfind('\n');
        if (cut != std::string_view::npos) {  // the whole lines that fit, then a new file
            raw_write(data.substr(0, cut + 1));
            data.remove_prefix(cut + 1);
            rotate();
        } else if (size_ > 0) {  // the next line does not fit here: it starts the next file
            rotate();
        } else {  // a line longer than a whole file
            raw_write(data.substr(0, max_size_));
            data.remove_prefix(max_size_);
            rotate();
        }
    }
}

void OutputFile::raw_write(std::string_view data) noexcept {
    if (fd_ < 0) {
        try {
            fd_ = open_for_append(path_);
            size_ = 0;
        } catch (const Error& e) {
            fail("cannot reopen " + path_ + " (" + e.what() + ")", e.code(), data.size());
            return;
        }
    }
    while (!data.empty()) {
        const ssize_t n = ::write(fd_, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int error = n < 0 ? errno : EIO;
            fail("cannot write " + path_ + ": " + std::strerror(error), error, data.size());
            return;
        }
        size_ += static_cast<std::uint64_t>(n);
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    if (failing_ != 0) {
        report_("writing " + path_ + " again; " + human_size(dropped_ - dropped_at_failure_) + " (" +
                std::to_string(dropped_ - dropped_at_failure_) + " bytes) of output were dropped meanwhile");
        failing_ = 0;
    }
}

void OutputFile::fail(const std::string& what, int error, std::size_t bytes) noexcept {
    if (failing_ != error) {
        if (failing_ == 0) dropped_at_failure_ = dropped_;
        failing_ = error;
        report_(what + "; dropping output (supervision goes on) until it can be written");
    }
    dropped_ += bytes;
}

void OutputFile::rotate() noexcept {
    // Oldest first: path.(keep-1) -> path.keep ... path -> path.1. A failed rename (a directory
    // planted in the way, a read-only disk) keeps writing past the cap rather than lose data.
    auto cannot = [&](int error, const std::string& why) {
        if (rotate_failing_ != error) report_("cannot rotate " + path_ + ": " + why + "; writing on past the cap");
        rotate_failing_ = error;
        size_ = 0;  // try again a cap later
    };
    for (std::size_t index = keep_; index >= 1; --index) {
        const std::string from = index == 1 ? path_ : rotated_name(path_, index - 1);
        const std::string to = rotated_name(path_, index);
        struct stat st {};
        if (::lstat(from.c_str(), &st) != 0) {
            if (errno == ENOENT) continue;
            return cannot(errno, from + ": " + std::strerror(errno));
        }
        // Only our own regular files move: never a directory or link someone planted.
        if (!S_ISREG(st.st_mode)) return cannot(EEXIST, from + " is not a regular file (planted there?)");
        if (::rename(from.c_str(), to.c_str()) != 0)
            return cannot(errno, "renaming " + from + " to " + to + ": " + std::strerror(errno));
    }
    if (rotate_failing_ != 0) {
        report_("rotating " + path_ + " works again");
        rotate_failing_ = 0;
    }
    ::close(fd_);
    fd_ = -1;
    size_ = 0;
    try {
        fd_ = open_for_append(path_);
    } catch (const Error& e) {
        fail(std::string("cannot reopen after rotating: ") + e.what(), e.code(), 0);
    }
}

}  // namespace hbwatch::tool
