// SwiGLU gate of the llama MLP: out = silu(gate) * up, elementwise. CPU reference.
#pragma once

#include <cstdint>

namespace dsi::kernels {

// gate, up, out: (n) contiguous; out may alias gate or up.
void swiglu_cpu(float* out, const float* gate, const float* up, int64_t n);

}  // namespace dsi::kernels
