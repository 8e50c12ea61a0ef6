#pragma once
// Paths a root procctl trusts: every directory on the way, every symbolic link it follows and
// the file itself belong to root or to procctl's user, and no other user can swap any of
// them. What is opened is then used through descriptors, so a later swap is never followed.

#include <string>

namespace hbwatch::tool {

/// The directory of a file, opened (O_PATH) after checking, component by component from /,
/// that no other user could swap anything on the way: every directory and every symbolic
/// link followed is owned by root or by procctl's user, and no directory is writable by
/// another user unless it is sticky (where only an entry's owner may rename it). A missing
/// directory is an error, never created. Later operations go through `fd` with the file's
/// `name`, so a path swapped after the check is never followed. Throws hbwatch::Error naming
/// the path, the reason and what to do.
struct SafeDirectory {
    int fd = -1;
    std::string name;  // the last component of the path
    SafeDirectory() = default;
    SafeDirectory(SafeDirectory&& other) noexcept;
    SafeDirectory& operator=(SafeDirectory&& other) noexcept;
    ~SafeDirectory();
};
SafeDirectory open_safe_directory(const std::string& path);

/// Opens `name` in `dir` for appending (created 0640 if missing), refusing a symbolic link, a
/// FIFO or socket, and a regular file owned by another user. Throws hbwatch::Error naming `path`.
int open_for_append(const SafeDirectory& dir, const std::string& path);

/// Opens `path` for reading (O_RDONLY, CLOEXEC) after the same walk as open_safe_directory,
/// following a last symbolic link only when it is owned by root or procctl's user. The file
/// must be a regular file owned by root or procctl's user that no other user may write (as
/// for the directories: not others, and a group only when it is root's or procctl's own):
/// whoever could change it could change what procctl runs. `what` names it in the
/// error ("the config"). Throws hbwatch::Error naming the path, the reason and what to do.
int open_trusted_file(const std::string& path, const std::string& what);

}  // namespace hbwatch::tool
