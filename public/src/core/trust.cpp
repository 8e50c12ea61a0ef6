#include "core/trust.h"

#include "core/users.h"

#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

#include <hbwatch/error.h>

namespace hbwatch {
namespace {

constexpr const char* kMarkerPrefix = "hbwatch-image:";

std::string hex16(std::uint64_t value) {
    char text[24];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
    return text;
}

}  // namespace

std::string TableWriters::describe() const {
    if (everyone) return "every user (the table's mode gives write access to others)";
    if (users.empty()) return "root only";
    std::string text;
    for (uid_t uid : users) text += (text.empty() ? "uid " : ", uid ") + std::to_string(uid);
    return text + " (owner, creator" + ((mode & 020) ? " and members of group " + std::to_string(group) : "") + ")";
}

std::optional<TableWriters> table_writers(key_t key) {
    auto facts = segment_facts(key);
    if (!facts) return std::nullopt;
    TableWriters w;
    w.key = key;
    w.mode = facts->mode;
    w.owner = facts->uid;
    w.creator = facts->cuid;
    w.group = facts->gid;
    w.everyone = (facts->mode & 002) != 0;
    // Owner and creator may change the mode at will, so they count whatever the mode says.
    w.users = {facts->uid, facts->cuid};
    if (facts->mode & 020) {
        // The kernel grants group access to the members of the owner group and of the
        // creator's group alike.
        for (gid_t gid : {facts->gid, facts->cgid}) {
            auto members = group_members(gid);
            w.users.insert(w.users.end(), members.begin(), members.end());
            if (facts->cgid == facts->gid) break;
        }
    }
    std::erase(w.users, uid_t{0});
    std::sort(w.users.begin(), w.users.end());
    w.users.erase(std::unique(w.users.begin(), w.users.end()), w.users.end());
    return w;
}

std::optional<uid_t> writer_who_could_not_signal(const TableWriters& writers, const ProcessUids& target) {
    if (writers.everyone) return uid_t{65534};
    for (uid_t uid : writers.users)
        if (!user_may_signal(uid, target)) return uid;
    return std::nullopt;
}

std::uint64_t image_marker() {
    // One marker per process: MADV_DONTFORK keeps it out of a fork()ed child, which must not
    // inherit the proof that its parent registered; a child that registers makes its own. No
    // mutex (one held at fork() would stay locked in the child): racing threads may each make
    // one, and each records the nonce of a marker that exists.
    static std::atomic<std::uint64_t> nonce{0};
    static std::atomic<pid_t> owner{0};
    const pid_t self = ::getpid();
    if (owner.load(std::memory_order_acquire) == self) return nonce.load(std::memory_order_relaxed);
    std::uint64_t value = 0;
    while (value == 0)
        if (::getrandom(&value, sizeof value, 0) != static_cast<ssize_t>(sizeof value)) return 0;
    const std::string name = kMarkerPrefix + hex16(value);
    const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
    if (fd < 0) return 0;
    // PROT_NONE and never touched: it costs an address range, no memory.
    void* at = ::mmap(nullptr, 4096, PROT_NONE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (at == MAP_FAILED) return 0;
    if (::madvise(at, 4096, MADV_DONTFORK) != 0) {
        ::munmap(at, 4096);
        return 0;
    }
    nonce.store(value, std::memory_order_relaxed);
    owner.store(self, std::memory_order_release);
    return value;
}

bool holds_image_marker(pid_t pid, std::uint64_t nonce, const ProcessUids& uids) {
    return image_marker_held(pid, nonce, uids).value_or(false);
}

std::optional<bool> image_marker_held(pid_t pid, std::uint64_t nonce, const ProcessUids& uids) {
    if (pid <= 0 || nonce == 0) return false;
    const std::string proc = "/proc/" + std::to_string(pid);
    auto maps = read_proc_file(proc + "/maps");
    if (!maps) return std::nullopt;  // not ours to read (another user, not dumpable): unknown
    const std::string wanted = std::string("/memfd:") + kMarkerPrefix + hex16(nonce) + " (deleted)";
    for (const auto line : lines_of(*maps)) {
        // "START-END PERMS OFFSET DEV INODE PATH": the path is the rest after five fields.
        const auto words = leading_words(line, 5);
        if (words.size() != 6 || words[5] != wanted) continue;
        const std::string range(words[0]);
        // The name alone proves nothing: a process may map a file someone else made and named
        // so. The marker must be a memfd (unlinked, on the memfd device) owned by the process.
        struct stat file {};
        if (::stat((proc + "/map_files/" + range).c_str(), &file) != 0) {
            // Reading map_files needs CAP_SYS_ADMIN: a checkproc without it, which can signal
            // only its own user's processes, goes by the name.
            if (errno == EPERM || errno == EACCES) return true;
            continue;
        }
        static const dev_t memfd_device = [] {
            struct stat st {};
            const int probe = ::memfd_create("hbwatch-probe", MFD_CLOEXEC);
            if (probe >= 0) {
                ::fstat(probe, &st);
                ::close(probe);
            }
            return st.st_dev;
        }();
        const bool owned = file.st_uid == uids.real || file.st_uid == uids.effective || file.st_uid == uids.saved;
        if (S_ISREG(file.st_mode) && file.st_nlink == 0 && file.st_dev == memfd_device && owned) return true;
    }
    return false;
}

std::string shared_table_warning(key_t key, uid_t user) {
    // Cheap on purpose (no user database in a service's registration): the table's mode and
    // group against the caller's own group. checkproc applies the exact membership rule.
    auto facts = segment_facts(key);
    if (!facts) return {};
    std::string who;
    if (facts->mode & 002) who = "every user (its mode gives write access to others)";
    else if ((facts->mode & 020) && facts->gid != 0 && facts->gid != ::getegid())
        who = "the members of group " + std::to_string(facts->gid);
    else if ((facts->mode & 020) && facts->cgid != 0 && facts->cgid != ::getegid())
        who = "the members of group " + std::to_string(facts->cgid) + " (the creator's group)";
    else if ((facts->uid != 0 && facts->uid != user) || (facts->cuid != 0 && facts->cuid != user))
        who = "uid " + std::to_string(facts->uid != user ? facts->uid : facts->cuid);
    if (who.empty()) return {};
    return "the hbwatch table at key " + format_key(key) + " can be written by " + who +
           ": any of them can make checkproc stop this process by forging its entry. If they are not all trusted, "
           "have root recreate the table with --mode 0600, or 0660 with a group of trusted users (proctab init)";
}

}  // namespace hbwatch
