// Builds a rank's engine from the engine part of its worker spec (core/worker_spec.h carries
// it in Configure; docs/protocol.md lists its fields).
#pragma once

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "engines/engine.h"
#include "engines/llama/cuda_engine.h"
#include "engines/synthetic_engine.h"
#include "kernels/qmatmul.h"

namespace dsi {

enum class LlamaDevice : uint8_t { kCpu, kCuda };

// A llama engine: the CPU one, or the CUDA one on the rank's bound GPU.
struct LlamaSpec {
  std::string model;  // GGUF file or Hugging Face folder
  LlamaDevice device = LlamaDevice::kCpu;
  CudaDtype dtype = CudaDtype::kF16;  // weights on the GPU; the CPU engine computes in FP32
  int gpu = -1;                       // CUDA device index; -1: the rank's bound device
  int threads = 1;                    // CPU engine threads
  std::vector<int> layers;            // kept layers (layer-skip drafter); empty: all
  int max_context = 0;                // 0: the model's
  // CPU engine: what enters the quantized products (kernels/qmatmul.h); the CUDA engine takes
  // only kF32.
  kernels::Activations activations = kernels::Activations::kF32;
  bool operator==(const LlamaSpec&) const = default;
};

using EngineSpec = std::variant<SyntheticParams, LlamaSpec>;

class Collective;

// `tp`: build shard tp->rank() of a tensor-parallel group (llama on CPUs only; see
// LlamaEngineOptions::tp); null: the whole model.
std::unique_ptr<Engine> make_engine(const EngineSpec& spec, Collective* tp = nullptr);

}  // namespace dsi
