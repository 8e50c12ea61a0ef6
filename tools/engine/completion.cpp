#include "engine/completion.h"

#include <algorithm>
#include <cstring>
#include <set>

namespace hbwatch::tool {
namespace {

// What an option's value is: a file or directory name (completed as such), one of a set
// (CLI11 names it "TEXT:{a,b}"), or anything else (nothing offered).
struct ValueKind {
    std::string compgen;  // the words of `compgen -W`, or empty
    bool file = false, directory = false;
};

ValueKind value_kind(const CLI::Option& option) {
    ValueKind kind;
    const std::string type = option.get_type_name();
    const auto open = type.find('{');
    const auto close = type.find('}', open);
    if (open != std::string::npos && close != std::string::npos) {
        kind.compgen = type.substr(open + 1, close - open - 1);
        std::replace(kind.compgen.begin(), kind.compgen.end(), ',', ' ');
        return kind;
    }
    // By the option's name: the tools' options that take a path.
    static const std::set<std::string> directories{"--chdir", "--run-dir", "--diagnoses", "--stop"};
    static const std::set<std::string> files{"--config", "--log", "--pidfile", "--stdout", "--stderr", "--events", "--path"};
    for (const auto& long_name : option.get_lnames()) {
        if (directories.count("--" + long_name)) kind.directory = true;
        if (files.count("--" + long_name)) kind.file = true;
    }
    if (type.find("DIR") != std::string::npos) kind.directory = true;
    return kind;
}

std::vector<std::string> names_of(const CLI::Option& option) {
    std::vector<std::string> names;
    for (const auto& s : option.get_snames()) names.push_back("-" + s);
    for (const auto& l : option.get_lnames()) names.push_back("--" + l);
    return names;
}

std::string join(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) {
        if (!out.empty()) out += ' ';
        out += w;
    }
    return out;
}

// The options of one app (not its positionals, nor hidden ones), with --help.
std::vector<const CLI::Option*> options_of(const CLI::App& app) {
    return app.get_options([](const CLI::Option* o) { return o->nonpositional() && !o->get_group().empty(); });
}

std::string shell_function_name(const std::string& command) {
    std::string name = "_hbwatch_" + command;
    for (char& c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') c = '_';
    return name;
}

// The case arms that say what follows an option which takes a value.
void value_arms(const CLI::App& app, std::set<std::string>& seen, std::string& out) {
    for (const auto* option : options_of(app)) {
        if (option->get_items_expected_max() == 0) continue;  // a flag
        const auto kind = value_kind(*option);
        std::vector<std::string> fresh;
        for (const auto& name : names_of(*option))
            if (seen.insert(name).second) fresh.push_back(name);
        if (fresh.empty()) continue;
        std::string names;
        for (const auto& n : fresh) names += (names.empty() ? "" : "|") + n;
        if (!kind.compgen.empty())
            out += "        " + names + ") __hbwatch_offer -W '" + kind.compgen + "'; return ;;\n";
        else if (kind.directory)
            out += "        " + names + ") __hbwatch_offer_paths -d; return ;;\n";
        else if (kind.file)
            out += "        " + names + ") __hbwatch_offer_paths -f; return ;;\n";
        else
            out += "        " + names + ") return ;;\n";  // a number, a duration, a name: nothing to offer
    }
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) value_arms(*sub, seen, out);
}

// Every name of an option that takes a value, as one case pattern ("--log|-c|...").
void value_names(const CLI::App& app, std::set<std::string>& names) {
    for (const auto* option : options_of(app))
        if (option->get_items_expected_max() > 0)
            for (const auto& name : names_of(*option)) names.insert(name);
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) value_names(*sub, names);
}

std::string mode_name_of(const CompletionMode& mode) {
    return mode.selected_by.empty() ? "" : mode.selected_by.front().substr(mode.selected_by.front().find_first_not_of('-'));
}

}  // namespace

bool wants_bash_completion(int argc, char** argv) { return argc == 2 && std::strcmp(argv[1], "--bash-completion") == 0; }

std::string bash_completion(const std::string& command, const std::vector<CompletionMode>& modes) {
    const std::string function = shell_function_name(command);
    std::string out = "# bash completion for " + command + ", generated from its own option definitions (" + command +
                      " --bash-completion): do not edit.\n";
    // Words offered one per line, never split at spaces or globbed; paths as file names
    // (quoted where they need it, a directory with its slash).
    out += "__hbwatch_offer() { mapfile -t COMPREPLY < <(compgen \"$@\" -- \"$cur\"); }\n"
           "__hbwatch_offer_paths() { compopt -o filenames 2>/dev/null; __hbwatch_offer \"$@\"; }\n";
    out += function + "() {\n"
           "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
           "    COMPREPLY=()\n";
    // Which mode and which subcommand the words so far chose, and how many positionals they hold
    // (an option's value is not one).
    std::set<std::string> takes_value;
    for (const auto& mode : modes) value_names(*mode.app, takes_value);
    out += "    local mode='' sub='' past='' positionals=0 skip='' i\n"
           "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
           "        if [ -n \"$skip\" ]; then skip=''; continue; fi\n"
           "        case ${COMP_WORDS[i]} in\n";
    for (const auto& mode : modes) {
        if (mode.selected_by.empty()) continue;
        std::string names;
        for (const auto& n : mode.selected_by) names += (names.empty() ? "" : "|") + n;
        // Chosen only before the first word that is not an option, as the tool does.
        out += "            " + names + ") [ -n \"$past\" ] || mode=" + mode_name_of(mode) + "; skip=1 ;;\n";
        std::string with_value;
        for (const auto& n : mode.selected_by) with_value += (with_value.empty() ? "" : "|") + n + "=*";
        out += "            " + with_value + ") [ -n \"$past\" ] || mode=" + mode_name_of(mode) + " ;;\n";
    }
    std::set<std::string> subcommand_names;
    for (const auto& mode : modes)
        for (const auto* sub : mode.app->get_subcommands([](const CLI::App*) { return true; })) subcommand_names.insert(sub->get_name());
    if (!subcommand_names.empty()) {
        std::string names;
        for (const auto& n : subcommand_names) names += (names.empty() ? "" : "|") + n;
        out += "            " + names + ") [ -z \"$sub\" ] && sub=${COMP_WORDS[i]} ;;\n";
    }
    std::string value_options;
    for (const auto& n : takes_value) value_options += (value_options.empty() ? "" : "|") + n;
    if (!value_options.empty()) out += "            " + value_options + ") skip=1 ;;\n";
    out += "            -*) ;;\n"
           "            *) past=1; positionals=$((positionals + 1)) ;;\n"
           "        esac\n"
           "    done\n";
    // Past the last positional of a mode whose remaining words are another program's (procctl's
    // PROGRAM ARGS...): only file names.
    for (const auto& mode : modes)
        if (mode.foreign_after > 0)
            out += "    if [ \"$mode\" = '" + mode_name_of(mode) + "' ] && [ \"$positionals\" -ge " + std::to_string(mode.foreign_after) +
                   " ]; then __hbwatch_offer_paths -f; return; fi\n";
    out += "    case $prev in\n";
    std::set<std::string> seen;
    for (const auto& mode : modes) value_arms(*mode.app, seen, out);
    out += "    esac\n"
           "    local options='' subcommands=''\n"
           "    case $mode/$sub in\n";
    std::vector<std::string> selectors;
    for (const auto& mode : modes)
        for (const auto& n : mode.selected_by) selectors.push_back(n);
    for (const auto& mode : modes) {
        const std::string mode_name = mode_name_of(mode);
        std::vector<std::string> words;
        for (const auto* option : options_of(*mode.app))
            for (const auto& n : names_of(*option)) words.push_back(n);
        std::vector<std::string> subs;
        for (const auto* sub : mode.app->get_subcommands([](const CLI::App*) { return true; })) {
            subs.push_back(sub->get_name());
            std::vector<std::string> sub_words;
            for (const auto* option : options_of(*sub))
                for (const auto& n : names_of(*option)) sub_words.push_back(n);
            out += "        " + mode_name + "/" + sub->get_name() + ") options='" + join(sub_words) + "' ;;\n";
        }
        if (mode.selected_by.empty()) {  // the default mode also offers the options that choose another
            for (const auto& s : selectors) words.push_back(s);
        }
        out += "        " + mode_name + "/) options='" + join(words) + "' subcommands='" + join(subs) + "' ;;\n";
    }
    // An option where one is begun; else a subcommand, while none is chosen; else a file name.
    out += "    esac\n"
           "    if [[ $cur == -* ]]; then __hbwatch_offer -W \"$options\"\n"
           "    elif [ -n \"$subcommands\" ]; then __hbwatch_offer -W \"$subcommands\"\n"
           "    else __hbwatch_offer_paths -f; fi\n"
           "}\n"
           "complete -F " + function + " " + command + "\n";
    return out;
}

}  // namespace hbwatch::tool
