#pragma once
// Files procctl writes (its log, the program's output), opened safely and written without
// ever failing the caller: a write error is reported once, counted, and the bytes dropped, so
// a full disk can neither stop supervision nor block the program on its pipe.

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <vector>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "engine/safe_path.h"

namespace hbwatch::tool {

/// Rotation sizes an operator may give (--output-max-size, log_max_size): 1K to 1T.
inline constexpr std::uint64_t kMinOutputFileSize = 1024;
inline constexpr std::uint64_t kMaxOutputFileSize = std::uint64_t{1} << 40;
/// The longest partial line held for its newline: a longer line is written out in pieces of
/// this size, so a program that never writes a newline costs bounded memory.
inline constexpr std::size_t kMaxHeldLine = 64 * 1024;

/// Throws hbwatch::Error(EINVAL) "WHAT is out of range: give 1K to 1T" outside those sizes;
/// `what` names the option and the text given ("--output-max-size 0").
void check_output_file_size(std::uint64_t size, const std::string& what);

/// The name of rotated file `index` of `name`: "svc.out" -> "svc.1.out", "svc" -> "svc.1".
std::string rotated_name(const std::string& name, std::size_t index);

/// An appending, rotating file fed with arbitrary chunks of a byte stream. Bytes pass through
/// unchanged; rotation happens only between lines, unless a single line is larger than the
/// cap. The partial last line is held until its newline, finish(), or until it reaches the cap
/// or kMaxHeldLine (then it is written out in pieces). Each write scans only its own bytes.
class OutputFile {
public:
    /// Receives one line per problem (and per recovery): "cannot write FILE: No space left ...",
    /// and whether that line begins a stretch of dropped output.
    using Report = std::function<void(const std::string& line, bool dropping)>;

    /// Opens the file now (throws hbwatch::Error as open_for_append); `max_size` 0 never rotates.
    OutputFile(std::string path, std::uint64_t max_size, std::size_t keep, Report report);
    ~OutputFile();
    OutputFile(const OutputFile&) = delete;
    OutputFile& operator=(const OutputFile&) = delete;

    void write(std::string_view data) noexcept;
    /// Writes the held partial line, if any.
    void finish() noexcept;
    /// New rotation limits (a reload), from the next write on.
    void set_limits(std::uint64_t max_size, std::size_t keep) noexcept {
        max_size_ = max_size;
        keep_ = keep;
    }

    [[nodiscard]] const std::string& path() const noexcept { return path_; }

    /// Where a reader of the file stands: the file (its inode, and how many rotations this
    /// object had made when it was the current file: inodes of deleted files are reused) and
    /// the offset in it.
    struct Cursor {
        std::uint64_t inode = 0;
        std::uint64_t generation = 0;
        std::uint64_t offset = 0;
        bool operator==(const Cursor&) const = default;
    };
    struct Lines {
        std::vector<std::string> lines;
        Cursor next;          // to pass to follow() for what comes after
        bool skipped = false;  // follow(): more was written and rotated away than the files kept
        std::size_t bytes_read = 0;  // of the budget given
    };
    /// The last `count` complete lines written (from the current file and, when it holds fewer,
    /// the rotated ones, newest first), reading backwards only as far as they go, and at most
    /// `max_bytes` in all.
    [[nodiscard]] Lines tail(std::size_t count, std::size_t max_bytes) const;
    /// The complete lines written since `from` (across rotations, from every file still kept), at
    /// most `max_bytes`; a rotated file's last line is whole even without its newline.
    [[nodiscard]] Lines follow(Cursor from, std::size_t max_bytes) const;

    [[nodiscard]] std::uint64_t dropped_bytes() const noexcept { return dropped_; }

private:
    // The current file (0) or rotated file `index`, opened for reading through the checked
    // directory without following a link: -1 when missing. Whose it is, ReadFile checks.
    int open_for_reading(std::size_t index) const noexcept;
    void write_lines(std::string_view data) noexcept;
    void raw_write(std::string_view data) noexcept;
    void rotate() noexcept;
    void fail(const std::string& what, int error, std::size_t bytes) noexcept;

    std::string path_;
    SafeDirectory dir_;
    std::uint64_t max_size_;
    std::size_t keep_;
    Report report_;
    int fd_ = -1;
    bool regular_ = true;
    std::uint64_t size_ = 0;
    std::uint64_t rotations_ = 0;  // completed: the generation of the current file
    std::string pending_;       // the last line, until its newline comes (at most kMaxHeldLine)
    int failing_ = 0;           // errno of the write failure being reported, 0 while writes succeed
    int rotate_failing_ = 0;    // the same for rotation
    std::uint64_t dropped_ = 0;
    std::uint64_t dropped_at_failure_ = 0;
};

/// The read ends of programs' output pipes, each feeding its OutputFile, polled in the
/// caller's loop.
class OutputPipes {
public:
    OutputPipes() = default;
    OutputPipes(const OutputPipes&) = delete;
    OutputPipes& operator=(const OutputPipes&) = delete;
    ~OutputPipes();  // closes the pipes still open

    /// Follows `fd` (made non-blocking; closed here once it reaches EOF) into `file`.
    void add(int fd, OutputFile* file);
    /// The write ends a child's stdout and stderr get, -1 where it has no file; close() them
    /// in the parent once the child has them.
    struct ChildEnds {
        int out = -1, err = -1;
        void close() noexcept;
    };
    /// Pipes into `out` and `err` (either may be null), followed from now on; one pipe when
    /// they are the same file, so its lines interleave as written.
    [[nodiscard]] ChildEnds open_for(OutputFile* out, OutputFile* err);
    /// Whether a pipe still feeds `file`.
    [[nodiscard]] bool feeds(const OutputFile* file) const noexcept;
    /// Appends a pollfd per pipe.
    void add_pollfds(std::vector<pollfd>& fds) const;
    /// Moves what the pipes hold into their files (a bounded amount per pipe, so that one busy
    /// pipe cannot starve the loop); a pipe at EOF (every writer gone) is closed. Only this
    /// object's entries of `fds` are looked at.
    void drain(const std::vector<pollfd>& fds);
    /// After the programs are gone, reads the pipes to their ends, for at most `limit`.
    void drain_to_end(std::chrono::milliseconds limit);

private:
    struct Reader {
        int fd;
        OutputFile* file;
    };
    std::vector<Reader> readers_;
};

}  // namespace hbwatch::tool
