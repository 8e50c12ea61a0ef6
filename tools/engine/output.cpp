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

namespace {

// An open file to read, closed on scope exit; fd -1 when it could not be opened, or is not a
// regular file of procctl's own user (in a sticky directory another user may plant a name).
struct ReadFile {
    int fd = -1;
    std::uint64_t inode = 0, size = 0;
    explicit ReadFile(int opened) : fd(opened) {
        struct stat st {};
        if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
            inode = st.st_ino;
            size = static_cast<std::uint64_t>(st.st_size);
        } else if (fd >= 0) {
            ::close(fd);
            fd = -1;
        }
    }
    ~ReadFile() {
        if (fd >= 0) ::close(fd);
    }
    ReadFile(const ReadFile&) = delete;
    ReadFile& operator=(const ReadFile&) = delete;

    // Bytes [from, to), fewer when the file is shorter.
    [[nodiscard]] std::string read(std::uint64_t from, std::uint64_t to) const {
        std::string data(to > from ? to - from : 0, '\0');
        std::size_t got = 0;
        while (got < data.size()) {
            const ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(from + got));
            if (n <= 0) break;
            got += static_cast<std::size_t>(n);
        }
        data.resize(got);
        return data;
    }
};

// The complete lines of `data`, without their newlines; the bytes they take.
std::size_t append_lines(std::string_view data, std::vector<std::string>& lines) {
    std::size_t used = 0;
    for (std::size_t end; (end = data.find('\n', used)) != std::string_view::npos; used = end + 1)
        lines.emplace_back(data.substr(used, end - used));
    return used;
}

// Where the last `count` lines before `end` (a line's end) start, read backwards in growing
// blocks, at most `*budget` bytes (taken from it): only as far back as those lines go. When
// the budget ends first, the start of the earliest whole line it reached (`end` if none).
std::uint64_t start_of_last_lines(const ReadFile& file, std::uint64_t end, std::size_t count, std::size_t* budget) {
    std::uint64_t pos = end, earliest = end;
    std::size_t found = 0, block = 4096;
    while (pos > 0 && *budget > 0) {
        const auto size = static_cast<std::size_t>(std::min<std::uint64_t>({block, pos, *budget}));
        const std::string data = file.read(pos - size, pos);
        *budget -= std::min(*budget, size);
        if (data.size() < size) break;  // the file shrank: keep what was found
        for (std::size_t i = data.size(); i-- > 0;) {
            const std::uint64_t line_start = pos - size + i + 1;
            if (data[i] != '\n' || line_start == end) continue;  // the newline ending the last line starts nothing
            earliest = line_start;
            if (++found == count) return line_start;
        }
        pos -= size;
        block = std::min<std::size_t>(block * 2, 1 << 20);
    }
    return pos == 0 ? 0 : earliest;
}

// The end of the last whole line of the current file: its size, unless an unfinished piece
// follows the last newline (read backwards within `*budget`).
std::uint64_t end_of_whole_lines(const ReadFile& file, std::size_t* budget) {
    if (file.size == 0 || file.read(file.size - 1, file.size) == "\n") return file.size;
    const std::uint64_t start = start_of_last_lines(file, file.size, 1, budget);
    return start == 0 || start == file.size ? file.size : start;  // no newline in reach: a piece of a giant line
}

}  // namespace

int OutputFile::open_for_reading(std::size_t index) const noexcept {
    const std::string name = index == 0 ? dir_.name : rotated_name(dir_.name, index);
    return ::openat(dir_.fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
}

OutputFile::Lines OutputFile::tail(std::size_t count, std::size_t max_bytes) const {
    Lines out;
    std::size_t budget = max_bytes;
    for (std::size_t index = 0; index <= keep_; ++index) {
        const ReadFile file(open_for_reading(index));
        if (file.fd < 0) break;
        // A rotated file never grows again: its cut last line counts as whole.
        const std::uint64_t end = index == 0 ? end_of_whole_lines(file, &budget) : file.size;
        if (index == 0) out.next = Cursor{file.inode, rotations_, end};
        if (out.lines.size() >= count || budget == 0) break;
        const std::uint64_t start = start_of_last_lines(file, end, count - out.lines.size(), &budget);
        const std::string data = file.read(start, end);
        std::vector<std::string> lines;
        const std::size_t used = append_lines(data, lines);
        if (used < data.size()) lines.push_back(data.substr(used));
        lines.insert(lines.end(), std::make_move_iterator(out.lines.begin()), std::make_move_iterator(out.lines.end()));
        out.lines = std::move(lines);
        if (start > 0) break;  // enough lines, or the budget ended inside this file
    }
    out.bytes_read = max_bytes - budget;
    return out;
}

OutputFile::Lines OutputFile::follow(Cursor from, std::size_t max_bytes) const {
    Lines out;
    out.next = from;
    // The cursor's file is rotated file (rotations since) now, if it is still kept: checked by
    // its inode, since a rotation that failed half way shifts fewer files. No rotation can
    // happen meanwhile: it happens on this thread.
    std::vector<std::unique_ptr<ReadFile>> files;  // files[i]: rotated file i (0: the current one)
    const std::uint64_t age = rotations_ - from.generation;
    const bool known = from.inode != 0 && from.generation <= rotations_ && age <= keep_;
    for (std::size_t index = 0; index <= (known ? age : keep_); ++index) {
        files.push_back(std::make_unique<ReadFile>(open_for_reading(index)));
        if (files.back()->fd < 0) {
            files.pop_back();
            break;
        }
    }
    if (files.empty()) return out;
    std::size_t at = 0;
    std::uint64_t offset = 0;
    if (known && files.size() == age + 1 && files[age]->inode == from.inode && from.offset <= files[age]->size) {
        at = static_cast<std::size_t>(age);
        offset = from.offset;
    } else if (from.inode != 0) {  // rotated away past every kept file, truncated, or not ours
        out.skipped = true;
        at = files.size() - 1;  // the oldest kept file on
    }
    const std::size_t budget = max_bytes;
    for (std::size_t index = at;; --index) {
        const ReadFile& file = *files[index];
        const std::uint64_t to = std::min<std::uint64_t>(file.size, offset + max_bytes);
        const std::string data = file.read(offset, to);
        std::size_t used = append_lines(data, out.lines);
        // A rotated file never grows again: a last line without its newline is whole. And a line
        // longer than the whole budget comes in pieces.
        const bool final_tail = index > 0 && to == file.size && used < data.size();
        if (final_tail || (used == 0 && data.size() == budget && budget > 0)) {
            out.lines.push_back(data.substr(used));
            used = data.size();
        }
        max_bytes -= std::min<std::size_t>(max_bytes, used);
        out.bytes_read += used;
        out.next = Cursor{file.inode, rotations_ - index, offset + used};
        if (index == 0 || offset + used < file.size) break;  // the budget is spent
        offset = 0;
    }
    return out;
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
        report_("rotating " + path_ + " works again");
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

OutputPipes::~OutputPipes() {
    for (const auto& reader : readers_) ::close(reader.fd);
}

bool OutputPipes::feeds(const OutputFile* file) const noexcept {
    return std::any_of(readers_.begin(), readers_.end(), [&](const Reader& r) { return r.file == file; });
}

void OutputPipes::add(int fd, OutputFile* file) {
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
    readers_.push_back(Reader{fd, file});
}

OutputPipes::ChildEnds OutputPipes::open_for(OutputFile* out, OutputFile* err) {
    ChildEnds ends;
    auto open_pipe = [&](OutputFile* file) {
        int fds[2];
        if (file == nullptr || ::pipe2(fds, O_CLOEXEC) != 0) return -1;
        add(fds[0], file);
        return fds[1];
    };
    ends.out = open_pipe(out);
    ends.err = err == out && ends.out >= 0 ? ::fcntl(ends.out, F_DUPFD_CLOEXEC, 0) : open_pipe(err);
    return ends;
}

void OutputPipes::ChildEnds::close() noexcept {
    for (int* fd : {&out, &err}) {
        if (*fd >= 0) ::close(*fd);
        *fd = -1;
    }
}

void OutputPipes::add_pollfds(std::vector<pollfd>& fds) const {
    for (const auto& reader : readers_) fds.push_back(pollfd{reader.fd, POLLIN, 0});
}

void OutputPipes::drain(const std::vector<pollfd>& fds) {
    char buffer[65536];
    for (const auto& p : fds) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto it = std::find_if(readers_.begin(), readers_.end(), [&](const Reader& r) { return r.fd == p.fd; });
        if (it == readers_.end()) continue;
        bool at_end = false;
        for (int round = 0; round < 16; ++round) {
            const ssize_t n = ::read(it->fd, buffer, sizeof buffer);
            if (n > 0) {
                it->file->write(std::string_view(buffer, static_cast<std::size_t>(n)));
                continue;
            }
            at_end = n == 0 || (errno != EAGAIN && errno != EINTR);
            break;
        }
        if (at_end) {
            ::close(it->fd);
            readers_.erase(it);
        }
    }
}

void OutputPipes::drain_to_end(std::chrono::milliseconds limit) {
    const std::uint64_t deadline = monotonic_now_ns() + to_ns(limit);
    while (!readers_.empty() && monotonic_now_ns() < deadline) {
        std::vector<pollfd> fds;
        add_pollfds(fds);
        ::poll(fds.data(), fds.size(), poll_timeout_ms(deadline, monotonic_now_ns()));
        drain(fds);
    }
}

}  // namespace hbwatch::tool
