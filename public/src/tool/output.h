#pragma once
// Files procctl writes (its log, the program's output), opened safely and written without
// ever failing the caller: a write error is reported once, counted, and the bytes dropped, so
// a full disk can neither stop supervision nor block the program on its pipe.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace hbwatch::tool {

/// Opens `path` for appending (created 0640 if missing), refusing what a root daemon must not
/// write through: a symbolic link as the last component, a missing directory (never created),
/// a directory that another user may write unless it is sticky, and an existing regular file
/// owned by another user. Throws hbwatch::Error naming the path, the reason and what to do.
int open_for_append(const std::string& path);

/// Opens the directory of `path` (O_PATH) after checking that no other user could swap what
/// is in it: it exists, and it is not writable by another user unless it is sticky. Throws
/// hbwatch::Error naming the path, the reason and what to do.
int open_safe_directory(const std::string& path);

/// The directory part of `path` ("." when it has none).
std::string directory_of(const std::string& path);

/// The name of rotated file `index` of `path`: "svc.out" -> "svc.1.out", "svc" -> "svc.1".
std::string rotated_name(const std::string& path, std::size_t index);

/// An appending, rotating file fed with arbitrary chunks of a byte stream. Bytes pass through
/// unchanged; rotation happens only between lines, unless a single line is larger than the
/// cap. The partial last line is held until its newline, the cap, or finish().
class OutputFile {
public:
    /// Receives one line per problem (and per recovery): "cannot write FILE: No space left ...".
    using Report = std::function<void(const std::string&)>;

    /// Opens the file now (throws hbwatch::Error as open_for_append); `max_size` 0 never rotates.
    OutputFile(std::string path, std::uint64_t max_size, std::size_t keep, Report report);
    ~OutputFile();
    OutputFile(const OutputFile&) = delete;
    OutputFile& operator=(const OutputFile&) = delete;

    void write(std::string_view data) noexcept;
    /// Writes the held partial line, if any.
    void finish() noexcept;

    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    [[nodiscard]] std::uint64_t dropped_bytes() const noexcept { return dropped_; }

private:
    void write_lines(std::string_view data) noexcept;
    void raw_write(std::string_view data) noexcept;
    void rotate() noexcept;
    void fail(const std::string& what, int error, std::size_t bytes) noexcept;

    std::string path_;
    std::uint64_t max_size_;
    std::size_t keep_;
    Report report_;
    int fd_ = -1;
    bool regular_ = true;
    std::uint64_t size_ = 0;
    std::string pending_;       // the last line, until its newline comes
    int failing_ = 0;           // errno of the write failure being reported, 0 while writes succeed
    int rotate_failing_ = 0;    // the same for rotation
    std::uint64_t dropped_ = 0;
    std::uint64_t dropped_at_failure_ = 0;
};

}  // namespace hbwatch::tool
