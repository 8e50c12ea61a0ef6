#pragma once
// What the tests of checkproc share: a demo_service registered at a scratch key, and the
// entries left in that table.

#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/table.h"
#include "support.h"

namespace hbtest::checkproc {

inline std::string key_text(const hbtest::ScratchKey& scratch) { return hbwatch::format_key(scratch.key()); }

/// A demo_service registered at the scratch key (waits for its "registered" line).
inline std::unique_ptr<hbtest::Process> service(const hbtest::ScratchKey& scratch, const std::string& name, std::vector<std::string> extra = {},
                                                const std::function<void()>& in_child = {}) {
    std::vector<std::string> argv{hbtest::bin("demo_service"), name, "--key", key_text(scratch)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = std::make_unique<hbtest::Process>(argv, in_child);
    REQUIRE(p->wait_for_output("registered in slot"));
    return p;
}

/// How many entries the scratch table holds.
inline std::size_t live_entries(const hbtest::ScratchKey& scratch) {
    auto table = hbwatch::Table::open_existing(scratch.options(), hbwatch::Table::Access::read_only);
    std::size_t n = 0;
    if (table) table->for_each([&](const hbwatch::SlotSnapshot&) { ++n; });
    return n;
}

}  // namespace hbtest::checkproc
