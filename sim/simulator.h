// Event-driven simulation of the scheduler in virtual time with zero orchestration overhead:
// the same Scheduler the coordinator runs, driven by simulated drafter and target servers
// whose tokens come from the synthetic model (the bench divides its latency by the measured
// one) or from an i.i.d. acceptance model (each draft right with probability a, independent
// of everything else: the assumption of the closed forms, used by `dsi simulate`). It also
// tests the scheduler's losslessness without threads.
#pragma once

#include <cstdint>
#include <vector>

#include <optional>

#include "core/adapt.h"
#include "core/config.h"
#include "core/scheduler.h"
#include "core/verify.h"
#include "engines/synthetic_engine.h"

namespace dsi {

// Where the simulated tokens come from.
enum class TokenModel {
  kSynthetic,  // the synthetic engine's hashes: the same tokens a real synthetic run makes
  kIid,        // target token at position p: a hash of (seed, p); every draft is right with
               // probability a, drawn from a PRNG seeded with iid_seed (one draw per draft)
};

struct SimConfig {
  SchedulerOptions sched;   // sched.kv: KV handoff between the simulated targets
  SyntheticParams target;   // latency: forward_ms + per_token_ms * tokens (ttft unused)
  SyntheticParams drafter;  // same, per draft forward; acceptance a
  std::vector<Token> prompt;
  SamplingParams sampling;  // temperature 0: greedy
  VerifierVariant verifier = VerifierVariant::kCorrect;
  TokenModel model = TokenModel::kSynthetic;  // kIid: greedy only
  uint64_t iid_seed = 1;
  // kIid with token trees: the probability that the target's token is the drafter's 2nd,
  // 3rd, ... best (its best: drafter.acceptance), drawn per tree node.
  std::vector<double> iid_ranks;
  // runtime.adapt: the adaptive policy (core/adapt.h) plans every chain, in virtual time.
  std::optional<AdaptOptions> adapt;
  // Otherwise, a planner of the test's own (e.g. random plans, which must not change a token).
  Scheduler::Planner planner;
};

struct SimResult {
  std::vector<Token> tokens;  // generated tokens (committed minus prompt)
  double setup_ms = 0;        // prefill (and the prompt's KV handoff): not in total_ms
  double total_ms = 0;        // from the first scheduler action to the last commit
  double latency_per_token_ms = 0;
  SchedulerStats stats;
  double target_busy_ms = 0;         // summed over targets
  double wasted_ms = 0;              // target time spent on tasks that were then cancelled
  KvHandoffStats kv;                 // handoffs: a transfer costs the cost model's transfer time on
                                     // the source; the destination then holds the range
  std::vector<double> commit_ms;     // when each generated token committed (from total_ms's start)
  std::vector<AdaptDecision> adapt;  // the adaptive policy's decisions
  std::array<int64_t, 3> tokens_by_mode{};
};

SimResult simulate(const SimConfig& cfg);

// The simulation of a synthetic-engine run of `cfg` with sp targets: same model, prompt,
// latencies and sampling as the runtime would use.
SimConfig sim_config(const RunConfig& cfg, int sp);

// Target-only greedy decoding of the synthetic model: the reference every mode must match.
std::vector<Token> synthetic_reference(const SyntheticParams& target,
                                       const std::vector<Token>& prompt, int max_new_tokens,
                                       const std::vector<Token>& stop_tokens = {});

// The reference output of cfg's token model (target-only greedy decoding).
std::vector<Token> simulated_reference(const SimConfig& cfg);

// Target-only sampling of the synthetic model (non-SI with `sp`).
std::vector<Token> synthetic_sampled_reference(const SyntheticParams& target,
                                               const std::vector<Token>& prompt, int max_new_tokens,
                                               const SamplingParams& sp);

// Probabilities the synthetic model samples from after `context` (sampling params applied).
std::vector<float> synthetic_probs(const SyntheticParams& model, const std::vector<Token>& context,
                                   const SamplingParams& sp);

}  // namespace dsi
