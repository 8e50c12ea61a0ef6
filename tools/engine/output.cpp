// The rotating writer: a program's output (or a tool's log) appended to its file, rotated
// between lines, and never failing its caller.
#include "engine/output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/duration.h"
#include <hbwatch/error.h>

namespace hbwatch::tool {

std::string rotated_name(const std::string& name, std::size_t index) {
    const auto dot = name.rfind('.');
    std::string number = std::to_string(index);
    number.insert(number.begin(), '.');  // not "." + ...: g++ 12 warns falsely (-Wrestrict) on that
    if (dot == std::string::npos || dot == 0) return name + number;
    return name.substr(0, dot) + number + name.substr(dot);
}

void check_output_file_size(std::uint64_t size, const std::string& what) {
    if (size < kMinOutputFileSize || size > kMaxOutputFileSize)
        throw Error(EINVAL, what + " is out of range: give 1K to 1T");
}

OutputFile::OutputFile(std::string path, std::uint64_t max_size, std::size_t keep, Report report)
    : path_(std::move(path)), dir_(open_safe_directory(path_)), max_size_(max_size), keep_(keep), report_(std::move(report)) {
    fd_ = open_for_append(dir_, path_);
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
    // Only the new bytes are scanned: a newline can only be among them.
    if (const auto last = data.rfind('\n'); last != std::string_view::npos) {
        if (pending_.empty()) {
            write_lines(data.substr(0, last + 1));
        } else {
            pending_.append(data.substr(0, last + 1));
            write_lines(pending_);
            pending_.clear();
        }
        data.remove_prefix(last + 1);
    }
    // A line longer than the cap (or than what is worth holding) cannot stay whole: let it
    // through as it comes.
    const std::uint64_t hold = max_size_ == 0 ? kMaxHeldLine : std::min<std::uint64_t>(max_size_, kMaxHeldLine);
    while (pending_.size() + data.size() >= hold) {
        if (pending_.size() >= hold) {  // held under a larger cap, before a reload lowered it
            write_lines(pending_);
            pending_.clear();
            continue;
        }
        const std::size_t take = static_cast<std::size_t>(hold) - pending_.size();
        if (pending_.empty()) {
            write_lines(data.substr(0, take));
        } else {
            pending_.append(data.substr(0, take));
            write_lines(pending_);
            pending_.clear();
        }
        data.remove_prefix(take);
    }
    pending_.append(data);
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
            fd_ = open_for_append(dir_, path_);
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
                std::to_string(dropped_ - dropped_at_failure_) + " bytes) of output were dropped meanwhile", false);
        failing_ = 0;
    }
}

void OutputFile::fail(const std::string& what, int error, std::size_t bytes) noexcept {
    if (failing_ != error) {
        if (failing_ == 0) dropped_at_failure_ = dropped_;
        failing_ = error;
        report_(what + "; dropping output (supervision goes on) until it can be written", true);
    }
    dropped_ += bytes;
}

void OutputFile::rotate() noexcept {
    // Oldest first: path.(keep-1) -> path.keep ... path -> path.1. A failed rename (a directory
    // planted in the way, a read-only disk) keeps writing past the cap rather than lose data.
    auto cannot = [&](int error, const std::string& why) {
        if (rotate_failing_ != error) report_("cannot rotate " + path_ + ": " + why + "; writing on past the cap", false);
        rotate_failing_ = error;
        size_ = 0;  // try again a cap later
    };
    // Names within the directory checked at the start: an ancestor swapped since is not followed.
    const std::string prefix = path_.substr(0, path_.size() - dir_.name.size());
    for (std::size_t index = keep_; index >= 1; --index) {
        const std::string from = index == 1 ? dir_.name : rotated_name(dir_.name, index - 1);
        const std::string to = rotated_name(dir_.name, index);
        struct stat st {};
        if (::fstatat(dir_.fd, from.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) continue;
            return cannot(errno, prefix + from + ": " + std::strerror(errno));
        }
        // Only our own regular files move: never a directory or link someone planted.
        if (!S_ISREG(st.st_mode)) return cannot(EEXIST, prefix + from + " is not a regular file (planted there?)");
        if (::renameat(dir_.fd, from.c_str(), dir_.fd, to.c_str()) != 0)
            return cannot(errno, "renaming " + prefix + from + " to " + prefix + to + ": " + std::strerror(errno));
    }
    ++rotations_;  // the file that was current is now rotated file 1
    if (rotate_failing_ != 0) {
        report_("rotating " + path_ + " works again", false);
        rotate_failing_ = 0;
    }
    ::close(fd_);
    fd_ = -1;
    size_ = 0;
    try {
        fd_ = open_for_append(dir_, path_);
    } catch (const Error& e) {
        fail(std::string("cannot reopen after rotating: ") + e.what(), e.code(), 0);
    }
}

}  // namespace hbwatch::tool
