#pragma once
// What proctab shows of the heartbeat table and of the host's processes (table_view.cpp).

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/table.h"
#include "engine/inspect.h"

namespace hbwatch::tool {

/// "table 0x48425754: 3/4096 slots, mode 0600 root:root, 9 regs, 2 kills".
[[nodiscard]] std::string header_line(const TableInfo& info, std::size_t used);
/// The table, one line an entry, at most 80 columns.
void print_table(const Table& table, std::ostream& out);
[[nodiscard]] nlohmann::json entries_json(const Table& table);
/// The Prometheus text format, for node_exporter's textfile collector.
[[nodiscard]] std::string prometheus(const Table& table);
/// The same over several tables: their entries with a `key` label when there is more than one.
[[nodiscard]] std::string prometheus_tables(const std::vector<const Table*>& tables);
void print_processes(const std::vector<HostProcess>& processes, bool with_parent);
[[nodiscard]] nlohmann::json processes_json(const std::vector<HostProcess>& processes);

}  // namespace hbwatch::tool
