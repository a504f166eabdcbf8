// Rotary position embedding applied in place to the heads of q or k rows. Two pair layouts:
// GGUF "normal" mode (llama arch) rotates adjacent pairs (x[2i], x[2i+1]); Hugging Face
// checkpoints and GGUF "neox" mode (qwen2 arch) rotate half-split pairs (x[i], x[i + d/2]).
#pragma once

#include <cstdint>

namespace dsi::kernels {

enum class RopeLayout : int {
  kAdjacentPairs = 0,  // (x[2i], x[2i+1]), GGUF normal
  kHalfSplit = 1,      // (x[i], x[i+rot_dim/2]), neox / HF
};

// x: (n, n_heads*head_dim) row-major, rotated in place; pos: (n) absolute positions.
// Pair i (0 <= i < rot_dim/2) of every head of row r turns by pos[r] * freq_base^(-2i/rot_dim);
// dimensions at and beyond rot_dim (partial rotary) are left as they are.
void rope_cpu(float* x, const int32_t* pos, int n, int n_heads, int head_dim, int rot_dim,
              float freq_base, RopeLayout layout);

}  // namespace dsi::kernels
