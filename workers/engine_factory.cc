#include "workers/engine_factory.h"

#include <fmt/format.h>

#include <stdexcept>

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
  throw std::runtime_error(fmt::format("unknown engine '{}'", kind));
}

}  // namespace dsi
