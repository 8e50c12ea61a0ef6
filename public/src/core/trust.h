#pragma once
// Who may make hbwatch's tools signal whom. Anyone who can write the table can write any
// entry, so an entry proves nothing by itself. A tool signals a process only when
//   - the process registered itself: it holds this image's marker mapping, which only code
//     running inside it can create and which exec drops (consent, and proof of no exec); or
//   - every user able to write the table could have signalled it anyway (a delegated entry,
//     made by proctab beat on a script's behalf), and it has not exec'd since.
// See the README's threat model.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/process.h"
#include "core/table.h"

namespace hbwatch {

/// The users who can write the table at a key, from its owner, creator, mode and group.
struct TableWriters {
    key_t key = 0;
    mode_t mode = 0;
    uid_t owner = 0, creator = 0;
    gid_t group = 0;
    bool everyone = false;     // mode o+w: any user on the host
    std::vector<uid_t> users;  // the writers other than root: owner, creator, group members

    /// "uid 1000 and the members of group 65534 (uid 65534)", for messages.
    [[nodiscard]] std::string describe() const;
};

/// The writers of the table at `key`; nullopt when there is no segment there. Group members
/// are those the user database lists (supplementary or primary).
[[nodiscard]] std::optional<TableWriters> table_writers(key_t key);

/// The first writer that could not signal a process with `target` uids itself; nullopt when
/// every writer could. With `everyone`, the answer is the "nobody" uid (65534).
[[nodiscard]] std::optional<uid_t> writer_who_could_not_signal(const TableWriters& writers, const ProcessUids& target);

/// This process's marker: a tiny memfd mapping named "hbwatch-image:<nonce>", created on first
/// use in each process. Only code running in the process can create it, a fork()ed child does
/// not inherit it (MADV_DONTFORK), and exec drops it. Returns the nonce, or 0 when the kernel
/// offers no memfd.
[[nodiscard]] std::uint64_t image_marker();

/// Whether process `pid` holds the marker `nonce`: a mapping of that name in /proc/PID/maps
/// that is a memfd owned by one of the process's `uids` (through /proc/PID/map_files, which
/// needs CAP_SYS_ADMIN; without it, the name alone). Confirm the answer with a pidfd of the
/// process that is still running afterwards.
[[nodiscard]] bool holds_image_marker(pid_t pid, std::uint64_t nonce, const ProcessUids& uids);
/// The same, but nullopt when /proc/PID/maps cannot be read (another user's process, or one
/// that is not dumpable): then nobody can tell, and nothing may be decided on it.
[[nodiscard]] std::optional<bool> image_marker_held(pid_t pid, std::uint64_t nonce, const ProcessUids& uids);

/// A warning for `user` registering in the table at `key` when users other than root and
/// `user` can write it (they could make checkproc stop the registrant); empty otherwise.
[[nodiscard]] std::string shared_table_warning(key_t key, uid_t user);

}  // namespace hbwatch
