#include "engine/slot_release.h"

#include <utility>

#include <hbwatch/error.h>

#include "core/table.h"

namespace hbwatch::tool {

void release_slots_of(std::vector<ProcessIdentity>& ended, const std::vector<std::string>& env, const LogSink& log) {
    if (ended.empty()) return;
    std::vector<ProcessIdentity> dead;
    std::swap(dead, ended);
    try {
        TableOptions options;
        options.key = key_from_environment();
        for (const auto& entry : env)
            if (entry.starts_with("HBWATCH_KEY=")) options.key = parse_key(entry.substr(12));
        auto table = Table::open_existing(options, Table::Access::read_write);
        if (!table) return;
        table->for_each([&](const SlotSnapshot& s) {
            if (s.phase == SlotPhase::claiming) return;
            for (const auto& who : dead) {
                if (!same_process(who, s.process) || liveness(s.process) == Liveness::alive) continue;
                if (!table->free_slot(s.index, s.token)) return;
                std::string line = "freed slot ";
                line.append(std::to_string(s.index)).append(" of pid ").append(std::to_string(s.process.pid));
                line.append(" '").append(s.name()).append("' at key ").append(format_key(table->key()));
                log(LogLevel::info, line.append(": it ended without releasing it"));
                return;
            }
        });
    } catch (const Error& e) {
        std::string line = "could not free the heartbeat entries of stopped processes: ";
        log(LogLevel::warn, line.append(e.what()));
    }
}

}  // namespace hbwatch::tool
