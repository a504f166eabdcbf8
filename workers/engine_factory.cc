#include "workers/engine_factory.h"

#include <fmt/format.h>

#include <stdexcept>

#include "workers/llama/llama_engine.h"
#include "workers/synthetic_engine.h"

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
    if (spec.value("device", "cpu") != "cpu") {
      throw std::runtime_error(fmt::format("device '{}' is not supported by this build",
                                           spec.value("device", "cpu")));
    }
    LlamaEngineOptions o;
    o.model_path = spec.at("model").get<std::string>();
    o.threads = spec.value("threads", 1);
    o.layers = spec.value("layers", std::vector<int>{});
    o.max_context = spec.value("max_context", 0);
    return make_llama_engine(o);
  }
  throw std::runtime_error(fmt::format("unknown engine '{}'", kind));
}

}  // namespace dsi
