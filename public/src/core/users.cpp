#include "core/users.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>

namespace hbwatch {
namespace {

std::vector<char> entry_buffer(int which) {
    const long size = ::sysconf(which);
    return std::vector<char>(static_cast<std::size_t>(size > 0 ? size : 16384));
}

}  // namespace

std::vector<uid_t> group_members(gid_t gid) {
    std::vector<uid_t> uids;
    std::vector<std::string> names;
    auto buffer = entry_buffer(_SC_GETGR_R_SIZE_MAX);
    group entry{};
    group* found = nullptr;
    while (::getgrgid_r(gid, &entry, buffer.data(), buffer.size(), &found) == ERANGE) buffer.resize(buffer.size() * 2);
    if (found != nullptr)
        for (char** member = found->gr_mem; member != nullptr && *member != nullptr; ++member) names.emplace_back(*member);
    for (const auto& name : names)
        if (const passwd* pw = ::getpwnam(name.c_str())) uids.push_back(pw->pw_uid);
    ::setpwent();
    while (const passwd* pw = ::getpwent())
        if (pw->pw_gid == gid) uids.push_back(pw->pw_uid);
    ::endpwent();
    return uids;
}

std::string group_label(gid_t gid) {
    auto buffer = entry_buffer(_SC_GETGR_R_SIZE_MAX);
    group entry{};
    group* found = nullptr;
    while (::getgrgid_r(gid, &entry, buffer.data(), buffer.size(), &found) == ERANGE) buffer.resize(buffer.size() * 2);
    const std::string number = "gid " + std::to_string(gid);
    return found != nullptr ? std::string(found->gr_name) + " (" + number + ")" : number;
}

std::string user_name(uid_t uid) {
    auto buffer = entry_buffer(_SC_GETPW_R_SIZE_MAX);
    passwd entry{};
    passwd* found = nullptr;
    while (::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) == ERANGE) buffer.resize(buffer.size() * 2);
    return found != nullptr ? std::string(found->pw_name) : "uid " + std::to_string(uid);
}

}  // namespace hbwatch
