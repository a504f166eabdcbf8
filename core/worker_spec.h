// The worker spec: what a worker rank builds and serves for one run (its role, its engine,
// the sampling parameters). The coordinator sends it in Configure (core/protocol.h encodes
// it); `dsi profile` builds engines from it, also from user-given JSON (worker_spec_from_json
// and worker_spec_json are the one place where that JSON format is read and written).
#pragma once

#include <array>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

#include "core/config.h"
#include "core/verify.h"
#include "core/wire.h"
#include "engines/engine_factory.h"

namespace dsi {

enum class Role : uint8_t { kDrafter, kTarget };

struct WorkerSpec {
  Role role = Role::kTarget;
  EngineSpec engine;
  SamplingParams sampling;       // temperature 0: greedy
  std::vector<int32_t> targets;  // drafter with sampling: the ranks its probabilities go to
  // Drafter: staged drafting with prompt lookup (core/staged_draft.h), up to this many looked-up
  // tokens checked per forward; 0: none.
  int32_t stage_tokens = 0;
  // Merged drafters (roles.drafters > 1): 0 for the lead drafter, whose drafts are the chain's
  // and go to `followers` too; j > 0 for the others, which propose their own token at each
  // position of the lead's chain (core/worker_roles.h).
  int32_t drafter_index = 0;
  std::vector<int32_t> followers;
  bool operator==(const WorkerSpec&) const = default;
};

// A spec that cannot be read (unknown key, wrong type, bad value); the message names the key.
struct SpecError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// The spec of a run's drafter or of its targets (the coordinator adds the drafter's targets).
// Drafter `index` of roles.drafters (0: the lead) takes its model from model.extra_drafters.
WorkerSpec worker_spec(const RunConfig& cfg, bool drafter, int index = 0);

// The JSON form (docs/benchmarks.md, `dsi profile --target-spec`):
//   {"engine": "synthetic" | "llama", "role": "drafter" | "target" (default target),
//    synthetic: "seed", "vocab", "ttft_ms", "forward_ms", "acceptance", "per_token_ms",
//               "overlap", "second";
//    llama: "model", "device", "dtype", "gpu", "threads", "layers", "max_context",
//           "activations";
//    "sampling": {"temperature", "top_k", "top_p", "seed", "request", "coupling"},
//    "targets": [ranks], "stage_tokens": n}
// Throws SpecError naming the key for an unknown key, a wrong type or a bad value.
WorkerSpec worker_spec_from_json(const nlohmann::json& j);
nlohmann::json worker_spec_json(const WorkerSpec& spec);

// The codec's field lists (core/wire.h).
constexpr std::array<const char*, 2> enum_names(Role) {
  return {"drafter", "target"};
}
constexpr WireInfo wire_info(const Role*) {
  return {"Role", "what a worker rank does"};
}
constexpr std::array<const char*, 2> enum_names(LlamaDevice) {
  return {"cpu", "cuda"};
}
constexpr WireInfo wire_info(const LlamaDevice*) {
  return {"LlamaDevice", "where a llama engine computes"};
}
constexpr std::array<const char*, 3> enum_names(CudaDtype) {
  return {"f32", "f16", "bf16"};
}
constexpr WireInfo wire_info(const CudaDtype*) {
  return {"CudaDtype", "element type of the weights on a GPU"};
}
constexpr std::array<const char*, 2> enum_names(Coupling) {
  return {"gumbel", "residual"};
}
constexpr WireInfo wire_info(const Coupling*) {
  return {"Coupling", "how the drafter's and the target's draws are coupled (core/verify.h)"};
}

}  // namespace dsi
namespace dsi::kernels {  // found by argument-dependent lookup
constexpr std::array<const char*, 2> enum_names(Activations) {
  return {"f32", "q8"};
}
constexpr WireInfo wire_info(const Activations*) {
  return {"Activations", "what enters a CPU llama engine's quantized products"};
}
}  // namespace dsi::kernels
namespace dsi {

constexpr WireInfo wire_info(const WorkerSpec*) {
  return {"WorkerSpec", "what a worker rank builds and serves for one run"};
}
template <Is<WorkerSpec> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.role, "role", "drafter or target");
  v(s.engine, "engine", "the engine to build (rebuilt only when the spec changes)");
  v(s.sampling, "sampling", "temperature 0: greedy");
  v(s.targets, "targets", "drafter with sampling: the target ranks its probability vectors go to");
  v(s.stage_tokens, "stage_tokens",
    "drafter: staged drafting with prompt lookup, up to this many looked-up tokens checked per "
    "forward (0: none)");
  v(s.drafter_index, "drafter_index",
    "merged drafters: 0 for the lead drafter, j > 0 for the others");
  v(s.followers, "followers", "the lead drafter: the ranks of the other drafters its drafts go to");
}

constexpr WireInfo wire_info(const SyntheticParams*) {
  return {"SyntheticParams", "the synthetic engine (engines/synthetic_engine.h)"};
}
template <Is<SyntheticParams> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.seed, "seed", "seed of the model's hash");
  v(s.vocab, "vocab", "vocabulary size");
  v(s.acceptance, "acceptance", "drafter: probability that a draft is the target's token");
  v(s.ttft_ms, "ttft_ms", "first forward of a sequence (ms)");
  v(s.forward_ms, "forward_ms", "every later forward (ms)");
  v(s.per_token_ms, "per_token_ms", "plus this per token in a forward (ms)");
  v(s.drafter, "drafter", "the drafter's behaviour (role drafter)");
  v(s.overlap, "overlap", "drafter: its share of the target's logit noise");
  v(s.phases, "phases", "drafter: drifting acceptance, one rate per phase (empty: acceptance)");
  v(s.phase_start, "phase_start",
    "drafter: position where the phases start (the prompt before it is phase 0)");
  v(s.phase_len, "phase_len", "drafter: positions per phase");
  v(s.second, "second",
    "drafter: when wrong, the probability that the target's token is its second best");
  v(s.stream, "stream",
    "drafter: which of merged drafters (0: the lead), each with its own errors");
}

constexpr WireInfo wire_info(const LlamaSpec*) {
  return {"LlamaSpec", "a llama engine, CPU or CUDA (engines/engine_factory.h)"};
}
template <Is<LlamaSpec> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.model, "model", "GGUF file or Hugging Face folder");
  v(s.device, "device", "cpu or cuda");
  v(s.dtype, "dtype", "weights on the GPU (the CPU engine computes in FP32)");
  v(s.gpu, "gpu", "CUDA device index; -1: the rank's bound device");
  v(s.threads, "threads", "CPU engine threads");
  v(s.layers, "layers", "kept layers (layer-skip drafter); empty: all");
  v(s.max_context, "max_context", "0: the model's");
  v(s.activations, "activations", "CPU engine: f32 (exact) or q8 (8-bit, faster, not exact)");
}

constexpr WireInfo wire_info(const SamplingParams*) {
  return {"SamplingParams", "speculative sampling (core/verify.h, docs/sampling.md)"};
}
template <Is<SamplingParams> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.temperature, "temperature", "0: greedy");
  v(s.top_k, "top_k", "0: no limit");
  v(s.top_p, "top_p", "nucleus mass");
  v(s.seed, "seed", "seed of every draw");
  v(s.request, "request", "request index mixed into the draws");
  v(s.coupling, "coupling", "gumbel (text independent of k and SP) or residual");
}

}  // namespace dsi
