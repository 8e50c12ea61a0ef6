#pragma once
// Bash completion, generated from the tools' own CLI11 definitions, so that it cannot drift from
// them: the build runs `TOOL --bash-completion` and the package installs what it prints.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace hbwatch::tool {

/// One way of calling a tool: its options (and subcommands), chosen on the command line by one
/// of `selected_by` (procctl's `--config`/`-c` and `--stop`), or the default when that is empty.
struct CompletionMode {
    const CLI::App* app;
    std::vector<std::string> selected_by;
    /// After this many positionals the words are another program's (procctl's PROGRAM and its
    /// arguments): only file names are offered. 0: never.
    int foreign_after = 0;
};

/// Whether argv is `TOOL --bash-completion` (hidden from --help: it is for the build).
[[nodiscard]] bool wants_bash_completion(int argc, char** argv);

/// A bash completion script for `command`: its subcommands, each one's options, the values a
/// checked option takes ({spare,kill}), file and directory names where an option wants one.
[[nodiscard]] std::string bash_completion(const std::string& command, const std::vector<CompletionMode>& modes);

}  // namespace hbwatch::tool
