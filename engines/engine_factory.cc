// make_engine (engines/engine_factory.h): the spec's "engine" picks the implementation; for
// llama, "device" picks the CPU engine or the CUDA one ("dtype" of its weights, "gpu" index).
#include "engines/engine_factory.h"

#include <fmt/format.h>

#include <stdexcept>

#include "common/gpu_binding.h"
#include "engines/llama/cuda_engine.h"
#include "engines/llama/llama_engine.h"
#include "engines/synthetic_engine.h"

namespace dsi {

std::unique_ptr<Engine> make_engine(const nlohmann::json& spec) {
  const std::string kind = spec.at("engine").get<std::string>();
  if (kind == "synthetic") {
    SyntheticParams p;
    p.seed = spec.at("seed").get<uint64_t>();
    p.vocab = spec.at("vocab").get<int>();
    p.acceptance = spec.value("acceptance", 1.0);
    p.ttft_ms = spec.at("ttft_ms").get<double>();
    p.forward_ms = spec.at("forward_ms").get<double>();
    p.per_token_ms = spec.value("per_token_ms", 0.0);
    p.drafter = spec.at("role").get<std::string>() == "drafter";
    p.overlap = spec.value("overlap", 0.5);
    return std::make_unique<SyntheticEngine>(p);
  }
  if (kind == "llama") {
    const std::string device = spec.value("device", std::string("cpu"));
    // Checked for either device, so that a typo shows before the job needs a GPU. The CPU
    // engine computes in FP32 whatever the dtype.
    const CudaDtype dtype = parse_cuda_dtype(spec.value("dtype", std::string("f16")));
    if (device == "cuda") {
      CudaEngineOptions o;
      o.model_path = spec.at("model").get<std::string>();
      o.layers = spec.value("layers", std::vector<int>{});
      o.max_context = spec.value("max_context", 0);
      o.dtype = dtype;
      // Throws GpuBindingError saying why there is no device (also in a build without CUDA).
      o.device = bound_cuda_device(spec.value("gpu", -1));
#ifdef DSI_WITH_CUDA
      return make_cuda_engine(o);
#else
      throw GpuBindingError("device 'cuda' asked for, but this dsi was built without CUDA");
#endif
    }
    if (device != "cpu") {
      throw std::invalid_argument(
          fmt::format("unknown device '{}' for the llama engine (expected cpu or cuda)", device));
    }
    LlamaEngineOptions o;
    o.model_path = spec.at("model").get<std::string>();
    o.threads = spec.value("threads", 1);
    o.layers = spec.value("layers", std::vector<int>{});
    o.max_context = spec.value("max_context", 0);
    return make_llama_engine(o);
  }
  throw std::invalid_argument(fmt::format("unknown engine '{}'", kind));
}

}  // namespace dsi
