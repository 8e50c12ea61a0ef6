#pragma once
// The status page (GET /): one self-contained HTML file, its style and script inside, built
// into procctl from tools/engine/status_page.html.

#include <string_view>

namespace hbwatch::tool {

[[nodiscard]] std::string_view status_page_html() noexcept;

}  // namespace hbwatch::tool
