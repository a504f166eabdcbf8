#include "common/version.h"

namespace dsi {
const char* version_string() {
  return "dsi 0.1.0";
}
}  // namespace dsi
