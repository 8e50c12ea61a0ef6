#pragma once
// The one exception type of hbwatch: registration, table management and the tools throw it.

#include <stdexcept>
#include <string>

#include <hbwatch/export.h>

namespace hbwatch {

/// An error with its facts in the message (key, pid, name, what to do) and an errno-style
/// code() (EINVAL, ENOSPC, EACCES, EPROTO, ENOENT, ...) that the C API returns negated.
class HBWATCH_API Error : public std::runtime_error {
public:
    Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ~Error() override;  // out of line: the type's vtable and typeinfo live in the library
    [[nodiscard]] int code() const noexcept { return code_; }

private:
    int code_;
};

}  // namespace hbwatch
