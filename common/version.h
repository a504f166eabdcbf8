// Version of the dsi runtime and of its wire protocol (docs/protocol.md).
#pragma once

namespace dsi {
const char* version_string();
}  // namespace dsi
