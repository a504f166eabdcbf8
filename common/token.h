// Token ids and the one sequence operation every layer needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace dsi {

using Token = int32_t;

// Length of the longest common prefix of two token sequences (how much of a cached sequence a
// new one can reuse).
inline size_t common_prefix(std::span<const Token> a, std::span<const Token> b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

}  // namespace dsi
