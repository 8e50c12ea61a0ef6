#pragma once
// Text from outside (a program's output, a config value, a path, another process's reply) made
// safe to show on an operator's terminal or in a log: nothing in it can move the cursor, change
// colours, reorder what is shown, hide characters, or start a new line.

#include <cstddef>
#include <string>
#include <string_view>

namespace hbwatch::tool {

/// Printable ASCII, tabs and valid UTF-8 pass as they are; everything else is shown escaped:
/// control bytes (C0, DEL, C1) and bytes that are not valid UTF-8 as \xNN; invisible and
/// reordering characters (bidirectional marks, overrides and isolates, zero-width characters,
/// the BOM, U+2028/2029, soft hyphen, tag characters) as \uNNNN or \UNNNNNNNN.
[[nodiscard]] std::string terminal_safe(std::string_view text);

/// A name (a slot's, a program's) as anyone may have written it: the bytes a valid name may
/// hold pass, anything else (quotes, control bytes, invalid UTF-8) is shown as \xNN.
[[nodiscard]] std::string shown_name(std::string_view name);

/// `text` (already terminal_safe) cut to at most `columns` terminal columns, with "~" as the
/// last column when it was cut. Each non-ASCII character counts as two columns and a tab as
/// eight, so the result never wraps onto a second row however the terminal draws it.
[[nodiscard]] std::string fit_columns(std::string_view text, std::size_t columns);

}  // namespace hbwatch::tool
