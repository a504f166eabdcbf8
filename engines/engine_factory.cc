// make_engine (engines/engine_factory.h): the spec's alternative picks the implementation; for
// llama, the device picks the CPU engine or the CUDA one (dtype of its weights, gpu index).
#include "engines/engine_factory.h"

#include <fmt/format.h>

#include <stdexcept>

#include "common/gpu_binding.h"
#include "engines/llama/llama_engine.h"
#include "transport/collective.h"

namespace dsi {
namespace {

std::unique_ptr<Engine> make_llama(const LlamaSpec& spec, Collective* tp) {
  if (spec.device == LlamaDevice::kCuda) {
    if (tp && tp->size() > 1) {
      throw std::invalid_argument("tensor parallelism on CUDA is not built yet (CPU groups only)");
    }
    if (spec.activations != kernels::Activations::kF32) {
      throw std::invalid_argument(
          fmt::format("activations '{}' are for the CPU engine; device 'cuda' computes with "
                      "f32 activations",
                      kernels::activations_name(spec.activations)));
    }
    CudaEngineOptions o;
    o.model_path = spec.model;
    o.layers = spec.layers;
    o.max_context = spec.max_context;
    o.dtype = spec.dtype;
    // Throws GpuBindingError saying why there is no device (also in a build without CUDA).
    o.device = bound_cuda_device(spec.gpu);
#ifdef DSI_WITH_CUDA
    return make_cuda_engine(o);
#else
    throw GpuBindingError("device 'cuda' asked for, but this dsi was built without CUDA");
#endif
  }
  LlamaEngineOptions o;
  o.model_path = spec.model;
  o.threads = spec.threads;
  o.layers = spec.layers;
  o.max_context = spec.max_context;
  o.activations = spec.activations;
  o.tp = tp;
  return make_llama_engine(o);
}

}  // namespace

std::unique_ptr<Engine> make_engine(const EngineSpec& spec, Collective* tp) {
  if (const auto* s = std::get_if<SyntheticParams>(&spec)) {
    if (tp && tp->size() > 1) {
      throw std::invalid_argument("the synthetic engine cannot be sharded (tensor parallelism)");
    }
    return std::make_unique<SyntheticEngine>(*s);
  }
  return make_llama(std::get<LlamaSpec>(spec), tp);
}

}  // namespace dsi
