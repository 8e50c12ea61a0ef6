// The reader of what OutputFile wrote: the last lines (tail), and the lines since a cursor
// across rotations (follow), read backwards only as far as they go and within a byte budget.
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

}  // namespace hbwatch::tool
