// The run configuration: a YAML file plus command-line overrides, validated strictly. Every
// problem (unknown key, wrong type, impossible value, a world size that does not fit the
// roles) is a ConfigError whose message names the key or the rank count.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "core/scheduler.h"
#include "core/verify.h"

namespace dsi {

// A drafter beyond the lead (roles.drafters > 1, model.extra_drafters): its model and layers.
struct ExtraDrafter {
  std::string path;         // empty: the lead drafter's model
  std::vector<int> layers;  // kept layers; empty: all
  bool operator==(const ExtraDrafter&) const = default;
};

// The most drafter ranks (roles.drafters).
inline constexpr int kMaxDrafters = 4;

struct RunConfig {
  Mode mode = Mode::kDsi;
  // Drafter ranks. Beyond the first (the lead, whose drafts are the chain), each proposes its
  // own token at every position of the lead's chain, and the proposals merge into one token
  // tree per verification (merged drafters, docs/design.md).
  int drafters = 1;
  int targets = -1;  // -1: every rank left after the coordinator and the drafter
  // Tensor parallelism: each target (drafter) is a group of this many ranks that shard one
  // model (core/tp_group.h); its first rank, the leader, talks to the coordinator.
  int target_tp = 1;
  int drafter_tp = 1;
  bool allow_cross_node_tp = false;  // a group may span nodes
  // generation
  int max_new_tokens = 64;
  uint64_t seed = 1;
  int prompt_tokens = 16;  // synthetic prompt length
  // dsi
  int lookahead = 5;
  // Token trees (SI and DSI): the branching factor per depth, e.g. {3, 2, 1, 1}; its depth
  // is the lookahead. Empty: chains.
  std::vector<int> tree;
  // Staged drafting (core/staged_draft.h): "none" or "ngram" (prompt lookup), and the most
  // looked-up tokens checked per drafter forward.
  std::string stage = "none";
  int stage_tokens = 4;
  QueuePolicy queue = QueuePolicy::kNewest;
  TargetChoice target_choice = TargetChoice::kCache;
  // engine
  std::string engine = "synthetic";  // synthetic | llama
  // llama engine
  std::string model_path;           // GGUF file or Hugging Face folder (~ and $VARS expanded)
  std::string drafter_model_path;   // empty: the target's file (layer-skip self-drafting)
  std::vector<int> drafter_layers;  // kept layers of the drafter; empty: all
  std::vector<ExtraDrafter> extra_drafters;  // drafters 1.. of roles.drafters (llama)
  int threads = 1;                           // per worker rank
  int max_context = 0;                       // 0: the model's
  std::string device = "cpu";                // where targets compute: cpu | cuda
  std::string drafter_device;                // where the drafter computes; empty: as `device`
  std::string activations = "f32";           // llama on cpu: f32 | q8
  std::string dtype = "f16";                 // cuda weights: f32 | f16 | bf16
  std::string prompt = "Tell me a short story about a robot who learns to paint.";
  bool chat = true;  // wrap the prompt in the model's chat template if it has one
  // Set by a caller (the server), not by a config file: the prompt as token ids, used instead
  // of `prompt` (llama) or the synthetic prompt when not empty.
  std::vector<Token> prompt_ids;
  // synthetic engine (DSI paper notation: t, c as a fraction of t, a)
  double t_ms = 20;
  double c = 0.1;
  double a = 0.9;
  double ttft_ms = -1;  // -1: same as t_ms (drafter: c * this)
  double per_token_ms = 0;
  int vocab = 64;
  double overlap = 0.5;  // drafter's share of the target's logit noise (sampling)
  double second = 0;     // a wrong drafter ranks the target's token second this often (trees)
  // Drifting acceptance: a_phases[i] holds for generated tokens [i, i + 1) * phase_tokens
  // (the last for the rest of the run); empty: `a` throughout.
  std::vector<double> a_phases;
  int phase_tokens = 100;
  // sampling (temperature 0: greedy)
  double temperature = 0;
  int top_k = 0;
  double top_p = 1;
  int64_t sampling_seed = -1;       // -1: generation.seed
  std::string coupling = "gumbel";  // gumbel | residual (core/verify.h)
  // runtime
  bool adapt = false;  // runtime.adapt: the policy of core/adapt.h picks mode, k and SP
  double peer_timeout_s = 5;
  int heartbeat_ms = 200;
  // How a rank waits for control messages (transport/mpi_channel.h): adaptive | sleep | spin.
  std::string wait = "adaptive";
  int spin_us = 0;
  int poll_min_us = 20;
  int poll_max_us = 200;
  int poll_hot_ms = 25;
  // KV handoff between targets (docs/design.md): auto decides by a cost model, always hands
  // every gap over, never recomputes.
  std::string kv_handoff = "auto";
  double kv_gbps = 10;              // the data plane's bandwidth, for the cost model
  std::string data_plane = "auto";  // auto | mpi | nccl

  // Targets (the SP degree) of this config in a world of `world` ranks (coordinator +
  // drafters x drafter_tp + targets x target_tp); throws ConfigError naming the counts when it
  // does not fit.
  int n_targets(int world) const;
  // Ranks of one drafter (target) group.
  int drafter_group() const { return drafter_tp; }
  int target_group() const { return target_tp; }
  bool tensor_parallel() const { return target_tp > 1 || (n_drafters() > 0 && drafter_tp > 1); }
  int n_drafters() const { return mode == Mode::kNonSi ? 0 : drafters; }
};

// Parses YAML text (`origin` names it in messages) with overrides "dotted.key=value" applied
// on top. Throws ConfigError.
RunConfig parse_config(const std::string& yaml_text, const std::string& origin,
                       const std::vector<std::string>& overrides = {});

// Parses a layer list such as "0-11,19-29" or "0,2,4"; throws ConfigError naming `key`.
std::vector<int> parse_layer_list(const std::string& text, const std::string& key);

// Expands a leading ~ and $VAR / ${VAR} in a path.
std::string expand_path(const std::string& path);

// A human description of the keys, for --help.
std::string config_reference();

// Throws ConfigError when runtime.adapt is on where it cannot be: with the residual sampler
// at temperature > 0 (its text depends on k). Mode nonsi ignores runtime.adapt.
void check_adapt(const RunConfig& cfg);

// The most nodes a token tree may have (dsi.tree): the verifier runs them in one forward.
inline constexpr int kMaxTreeNodes = 64;
// The most looked-up tokens a staged drafter checks in one forward (dsi.stage_tokens).
inline constexpr int kMaxStageTokens = 16;

// Throws ConfigError naming dsi.tree when the tree cannot run with the rest of the config
// (SI or DSI, greedy or the Gumbel coupling, not with runtime.adapt, within the node budget
// and the context).
void check_tree_config(const RunConfig& cfg);

// Throws ConfigError naming roles.drafters when merged drafters cannot run with the rest of the
// config (chains; not with the residual coupling; a model for each extra llama drafter).
void check_drafters_config(const RunConfig& cfg);

// Throws ConfigError naming roles.target_tp / roles.drafter_tp when tensor-parallel groups
// cannot run with the rest of the config (the llama engine on CPUs; NCCL groups and CUDA
// sharding are not built).
void check_tp_config(const RunConfig& cfg);

// Tree shapes written "3,2,1,1;2,1,1,1" (a command-line list): each checked as dsi.tree is;
// ConfigError naming `what` and the bad item otherwise.
std::vector<std::vector<int>> parse_tree_shapes(const std::string& s, const std::string& what);
// A shape as written there ("3,2,1,1").
std::string tree_shape_name(const std::vector<int>& shape);

// The sampling block of a run (greedy when temperature is 0): what every worker and the
// simulator sample with.
SamplingParams sampling_params(const RunConfig& cfg);

}  // namespace dsi
