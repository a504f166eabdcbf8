#include "core/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "core/tree_draft.h"

namespace dsi {
namespace {

// One entry per accepted key: its dotted path, a description, and how to store it.
struct Key {
  const char* path;
  const char* help;
  std::function<void(RunConfig&, const YAML::Node&, const std::string&)> set;
};

template <typename T>
T scalar(const YAML::Node& n, const std::string& key, const char* what) {
  if (!n.IsScalar()) throw ConfigError(fmt::format("key '{}' must be {}", key, what));
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    throw ConfigError(fmt::format("key '{}' must be {}, got '{}'", key, what, n.Scalar()));
  }
}

double number(const YAML::Node& n, const std::string& key, double lo, double hi) {
  const double v = scalar<double>(n, key, "a number");
  if (!(v >= lo && v <= hi)) {
    throw ConfigError(fmt::format("key '{}' is {}, it must lie in [{}, {}]", key, v, lo, hi));
  }
  return v;
}

int integer(const YAML::Node& n, const std::string& key, long lo, long hi) {
  const long v = scalar<long>(n, key, "an integer");
  if (v < lo || v > hi) {
    throw ConfigError(fmt::format("key '{}' is {}, it must lie in [{}, {}]", key, v, lo, hi));
  }
  return static_cast<int>(v);
}

std::string one_of(const YAML::Node& n, const std::string& key,
                   std::initializer_list<const char*> allowed) {
  const std::string v = scalar<std::string>(n, key, "a string");
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return v;
    list += list.empty() ? a : std::string(", ") + a;
  }
  throw ConfigError(fmt::format("key '{}' must be one of {}, got '{}'", key, list, v));
}

const std::vector<Key>& keys() {
  static const std::vector<Key> k = {
      {"mode", "dsi | si | nonsi",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         auto m = parse_mode(scalar<std::string>(n, key, "a string"));
         if (!m)
           throw ConfigError(
               fmt::format("key '{}' must be dsi, si or nonsi, got '{}'", key, n.Scalar()));
         c.mode = *m;
       }},
      {"roles.drafters",
       "drafter ranks, 1-4 (ignored by nonsi); beyond the first they merge their proposals into "
       "the lead's chain as token trees",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.drafters = integer(n, key, 1, kMaxDrafters);
       }},
      {"roles.targets", "target ranks, the SP degree (auto = all remaining ranks)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         if (n.IsScalar() && n.Scalar() == "auto") {
           c.targets = -1;
         } else {
           c.targets = integer(n, key, 1, 4096);
         }
       }},
      {"roles.target_tp",
       "ranks per target: each target is a tensor-parallel group that shards the model (llama "
       "on CPUs); the world is 1 + drafters x drafter_tp + targets x target_tp",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.target_tp = integer(n, key, 1, 64);
       }},
      {"roles.drafter_tp", "ranks per drafter (tensor-parallel group, as roles.target_tp)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.drafter_tp = integer(n, key, 1, 64);
       }},
      {"roles.allow_cross_node_tp",
       "let a tensor-parallel group span nodes (default: each group on one node)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.allow_cross_node_tp = scalar<bool>(n, key, "true or false");
       }},
      {"generation.max_new_tokens", "tokens to generate",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.max_new_tokens = integer(n, key, 1, 1 << 20);
       }},
      {"generation.seed", "seed of the synthetic model and prompt",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.seed =
             static_cast<uint64_t>(scalar<unsigned long long>(n, key, "a non-negative integer"));
       }},
      {"generation.prompt_tokens", "length of the synthetic prompt",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.prompt_tokens = integer(n, key, 1, 1 << 20);
       }},
      {"dsi.lookahead", "k: a verification task after every k drafts",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.lookahead = integer(n, key, 1, 1024);
       }},
      {"dsi.tree",
       "token trees (SI and DSI): the branching factor per depth, e.g. [3, 2, 1, 1] (its depth "
       "is the lookahead; at most 64 nodes); [] or absent: chains",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.tree.clear();
         if (n.IsScalar() && !n.Scalar().empty()) {  // "3,2,1,1" (an override)
           std::stringstream ss(n.Scalar());
           std::string item;
           while (std::getline(ss, item, ',')) {
             c.tree.push_back(integer(YAML::Load(item), key, 1, kMaxTreeNodes));
           }
         } else if (n.IsSequence()) {
           for (const auto& v : n) c.tree.push_back(integer(v, key, 1, kMaxTreeNodes));
         } else if (!n.IsNull() && !(n.IsScalar() && n.Scalar().empty())) {
           throw ConfigError(fmt::format("key '{}' must be a list of branching factors", key));
         }
         if (!c.tree.empty()) c.lookahead = static_cast<int>(c.tree.size());
       }},
      {"dsi.stage",
       "none | ngram: the drafter speculates for itself with prompt lookup (staged drafting; "
       "the same drafts, sooner when the text repeats itself)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.stage = one_of(n, key, {"none", "ngram"});
       }},
      {"dsi.stage_tokens", "staged drafting: looked-up tokens the drafter checks per forward",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.stage_tokens = integer(n, key, 1, kMaxStageTokens);
       }},
      {"dsi.queue", "newest | fifo: which queued task a freed target takes",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         auto q = parse_queue_policy(scalar<std::string>(n, key, "a string"));
         if (!q)
           throw ConfigError(
               fmt::format("key '{}' must be newest or fifo, got '{}'", key, n.Scalar()));
         c.queue = *q;
       }},
      {"dsi.target_choice", "cache | round_robin: which idle target takes a task",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.target_choice = one_of(n, key, {"cache", "round_robin"}) == "cache"
                               ? TargetChoice::kCache
                               : TargetChoice::kRoundRobin;
       }},
      {"engine", "synthetic | llama",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.engine = scalar<std::string>(n, key, "a string");
         if (c.engine != "synthetic" && c.engine != "llama") {
           throw ConfigError(fmt::format("key '{}': unknown engine '{}' (known: synthetic, llama)",
                                         key, c.engine));
         }
       }},
      {"model.path", "llama: GGUF file or Hugging Face folder of the target",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.model_path = expand_path(scalar<std::string>(n, key, "a path"));
       }},
      {"model.drafter_path", "llama: the drafter's model (default: the target's, layer-skip)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.drafter_model_path = expand_path(scalar<std::string>(n, key, "a path"));
       }},
      {"model.drafter_layers", "llama: layers the drafter keeps, e.g. \"0-11,19-29\" (default all)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         if (n.IsSequence()) {
           c.drafter_layers.clear();
           for (const auto& v : n) c.drafter_layers.push_back(integer(v, key, 0, 100000));
         } else {
           c.drafter_layers = parse_layer_list(scalar<std::string>(n, key, "a layer list"), key);
         }
       }},
      {"model.extra_drafters",
       "llama, roles.drafters > 1: one {path, layers} per drafter after the first (path default: "
       "the first drafter's model; layers default: all)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         if (!n.IsSequence()) throw ConfigError(fmt::format("key '{}' must be a list", key));
         c.extra_drafters.clear();
         for (size_t i = 0; i < n.size(); ++i) {
           const YAML::Node& e = n[i];
           const std::string at = fmt::format("{}[{}]", key, i);
           if (!e.IsMap()) {
             throw ConfigError(fmt::format("key '{}' must be a map with path and layers", at));
           }
           ExtraDrafter d;
           for (const auto& kv : e) {
             const std::string k = kv.first.as<std::string>();
             if (k == "path") {
               d.path = expand_path(scalar<std::string>(kv.second, at + ".path", "a path"));
             } else if (k == "layers") {
               d.layers = parse_layer_list(
                   scalar<std::string>(kv.second, at + ".layers", "a layer list"), at + ".layers");
             } else {
               throw ConfigError(fmt::format("unknown key '{}.{}' (path or layers)", at, k));
             }
           }
           c.extra_drafters.push_back(std::move(d));
         }
       }},
      {"model.threads", "llama: compute threads per worker rank",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.threads = integer(n, key, 1, 1024);
       }},
      {"model.max_context", "llama: KV cache length (0 = the model's)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.max_context = integer(n, key, 0, 1 << 24);
       }},
      {"model.device",
       "llama: where the targets compute: cpu | cuda (GPU = node-local rank % GPUs)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.device = one_of(n, key, {"cpu", "cuda"});
       }},
      {"model.drafter_device", "llama: where the drafter computes (default: model.device)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.drafter_device = one_of(n, key, {"cpu", "cuda"});
       }},
      {"model.dtype", "llama on cuda: weight type f32 | f16 | bf16",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.dtype = one_of(n, key, {"f32", "f16", "bf16"});
       }},
      {"model.activations",
       "llama on cpu: what enters quantized products: f32 (exact) | q8 (8-bit, as llama.cpp; "
       "faster, not exact)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.activations = one_of(n, key, {"f32", "q8"});
       }},
      {"generation.prompt", "llama: the prompt text",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.prompt = scalar<std::string>(n, key, "a string");
       }},
      {"generation.chat", "llama: wrap the prompt in the model's chat template",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.chat = scalar<bool>(n, key, "true or false");
       }},
      {"synthetic.t_ms", "t: target forward latency (ms)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.t_ms = number(n, key, 0, 1e6);
       }},
      {"synthetic.c", "c: drafter latency per token as a fraction of t",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.c = number(n, key, 0, 1e3);
       }},
      {"synthetic.a", "a: probability that a draft equals the target's token",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.a = number(n, key, 0, 1);
       }},
      {"synthetic.ttft_ms", "first forward (prefill) of a target (ms; default t_ms)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.ttft_ms = number(n, key, 0, 1e6);
       }},
      {"synthetic.per_token_ms", "extra target latency per token in a forward (ms)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.per_token_ms = number(n, key, 0, 1e6);
       }},
      {"synthetic.vocab", "vocabulary size of the synthetic model",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.vocab = integer(n, key, 2, 1 << 24);
       }},
      {"synthetic.second",
       "when a draft is wrong, the probability that the target's token is the drafter's second "
       "best (what token trees' siblings catch; 0..1, default 0)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.second = number(n, key, 0, 1);
       }},
      {"synthetic.overlap", "how much of the target's logit noise the drafter shares (0..1)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.overlap = number(n, key, 0, 1);
       }},
      {"synthetic.a_phases",
       "drifting acceptance: a list of rates, one per phase_tokens generated tokens (the last "
       "holds to the end); overrides a",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         if (!n.IsSequence() || n.size() == 0) {
           throw ConfigError(fmt::format("key '{}' must be a non-empty list of rates", key));
         }
         c.a_phases.clear();
         for (const auto& v : n) c.a_phases.push_back(number(v, key, 0, 1));
       }},
      {"synthetic.phase_tokens", "generated tokens per phase of a_phases",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.phase_tokens = integer(n, key, 1, 1 << 30);
       }},
      {"sampling.temperature", "0 = greedy; > 0 samples (speculative sampling, lossless)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.temperature = number(n, key, 0, 100);
       }},
      {"sampling.top_k", "keep the k most likely tokens (0 = all)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.top_k = integer(n, key, 0, 1 << 24);
       }},
      {"sampling.top_p", "keep the smallest set of tokens whose mass reaches p",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.top_p = number(n, key, 1e-6, 1);
       }},
      {"sampling.coupling",
       "gumbel: every mode, k and SP give the non-SI text of the seed; residual: accepts more "
       "drafts, but the text depends on k (docs/sampling.md)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.coupling = one_of(n, key, {"gumbel", "residual"});
       }},
      {"sampling.seed", "seed of the sampling draws (default: generation.seed)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.sampling_seed =
             static_cast<int64_t>(scalar<unsigned long long>(n, key, "a non-negative integer"));
       }},
      {"runtime.adapt",
       "off | on: pick non-SI, SI or DSI, the lookahead and the targets used at every chain "
       "boundary from online estimates (mode dsi or si; ignored by nonsi; greedy or the gumbel "
       "coupling)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.adapt = one_of(n, key, {"off", "on"}) == "on";
       }},
      {"runtime.peer_timeout_s", "a silent peer is declared dead after this (s)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.peer_timeout_s = number(n, key, 0.1, 3600);
       }},
      {"runtime.heartbeat_ms", "liveness message period (ms)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.heartbeat_ms = integer(n, key, 1, 60000);
       }},
      {"runtime.wait",
       "adaptive | sleep | spin: how a rank waits for control messages (adaptive spins when "
       "every thread of the node's ranks has a CPU, and otherwise spins for spin_us after a "
       "message, then sleeps on a doorbell)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.wait = one_of(n, key, {"adaptive", "sleep", "spin"});
       }},
      {"runtime.spin_us",
       "adaptive wait on a node with fewer CPUs than threads: how long a "
       "rank spins after a message before it sleeps (us)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.spin_us = integer(n, key, 0, 100000);
       }},
      {"runtime.poll_min_us",
       "re-probe period for peers on other nodes within poll_hot_ms of a message (us)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.poll_min_us = integer(n, key, 1, 100000);
       }},
      {"runtime.poll_max_us", "longest back-off sleep of an idle rank (us)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.poll_max_us = integer(n, key, 1, 1000000);
       }},
      {"runtime.poll_hot_ms", "how long after a message a rank keeps probing every poll_min_us",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.poll_hot_ms = integer(n, key, 0, 100000);
       }},
      {"runtime.kv_handoff", "auto | always | never: hand committed KV to targets that lack it",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.kv_handoff = one_of(n, key, {"auto", "always", "never"});
       }},
      {"runtime.kv_gbps", "data-plane bandwidth the KV cost model assumes (GB/s)",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.kv_gbps = number(n, key, 1e-3, 1e5);
       }},
      {"runtime.data_plane", "auto | mpi | nccl: how KV and probabilities move between workers",
       [](RunConfig& c, const YAML::Node& n, const std::string& key) {
         c.data_plane = one_of(n, key, {"auto", "mpi", "nccl"});
       }},
  };
  return k;
}

// Flattens a YAML mapping into dotted keys, rejecting anything that is not a known key.
void walk(const YAML::Node& node, const std::string& prefix, std::map<std::string, YAML::Node>& out,
          const std::set<std::string>& known, const std::set<std::string>& sections) {
  if (!node.IsMap()) {
    throw ConfigError(prefix.empty() ? "the config must be a YAML mapping of keys"
                                     : fmt::format("key '{}' must be a mapping", prefix));
  }
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    if (known.count(path)) {
      out[path] = kv.second;
    } else if (sections.count(path)) {
      walk(kv.second, path, out, known, sections);
    } else {
      throw ConfigError(fmt::format("unknown key '{}'", path));
    }
  }
}

}  // namespace

std::vector<int> parse_layer_list(const std::string& text, const std::string& key) {
  std::vector<int> out;
  size_t i = 0;
  auto bad = [&] {
    return ConfigError(
        fmt::format("key '{}' must list layers like \"0-11,19-29\", got '{}'", key, text));
  };
  while (i < text.size()) {
    size_t used = 0;
    int a, b;
    try {
      a = std::stoi(text.substr(i), &used);
    } catch (const std::exception&) {
      throw bad();
    }
    i += used;
    b = a;
    if (i < text.size() && text[i] == '-') {
      ++i;
      try {
        b = std::stoi(text.substr(i), &used);
      } catch (const std::exception&) {
        throw bad();
      }
      i += used;
    }
    if (a < 0 || b < a) throw bad();
    for (int l = a; l <= b; ++l) out.push_back(l);
    while (i < text.size() && (text[i] == ',' || text[i] == ' ')) ++i;
  }
  if (out.empty()) throw bad();
  return out;
}

std::string expand_path(const std::string& path) {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i == 0 && path[0] == '~' && (path.size() == 1 || path[1] == '/')) {
      const char* home = std::getenv("HOME");
      out += home ? home : "~";
    } else if (path[i] == '$') {
      size_t j = i + 1;
      const bool braced = j < path.size() && path[j] == '{';
      if (braced) ++j;
      size_t k = j;
      while (k < path.size() &&
             (std::isalnum(static_cast<unsigned char>(path[k])) || path[k] == '_'))
        ++k;
      const char* v = std::getenv(path.substr(j, k - j).c_str());
      out += v ? v : "";
      i = braced && k < path.size() && path[k] == '}' ? k : k - 1;
    } else {
      out += path[i];
    }
  }
  return out;
}

int RunConfig::n_targets(int world) const {
  const int dr = n_drafters() * drafter_tp;
  const int fixed = 1 + dr;
  const int per = target_tp;
  const std::string drafters = drafter_tp > 1
                                   ? fmt::format("{} drafter x {} ranks", n_drafters(), drafter_tp)
                                   : fmt::format("{} drafter", n_drafters());
  const std::string roles =
      n_drafters() ? fmt::format("1 coordinator + {}", drafters) : "1 coordinator";
  const std::string unit = per > 1 ? fmt::format(" x {} ranks (roles.target_tp)", per) : "";
  if (targets < 0) {
    if (world < fixed + per) {
      throw ConfigError(fmt::format(
          "mode {} needs at least {} ranks ({} + at least 1 target{}), but the world has {} "
          "(launch with mpirun -np {} or more)",
          mode_name(mode), fixed + per, roles, unit, world, fixed + per));
    }
    if ((world - fixed) % per != 0) {
      throw ConfigError(fmt::format(
          "the world of {} ranks does not fit mode {}: {} leave {} ranks, not a whole number of "
          "targets of {} ranks (roles.target_tp); launch with mpirun -np {} or {}",
          world, mode_name(mode), roles, world - fixed, per, fixed + (world - fixed) / per * per,
          fixed + ((world - fixed) / per + 1) * per));
    }
    return (world - fixed) / per;
  }
  if (world != fixed + targets * per) {
    throw ConfigError(fmt::format(
        "roles.targets = {} with mode {} needs exactly {} ranks ({} + {} targets{}), but the "
        "world has {} (launch with mpirun -np {})",
        targets, mode_name(mode), fixed + targets * per, roles, targets, unit, world,
        fixed + targets * per));
  }
  return targets;
}

RunConfig parse_config(const std::string& yaml_text, const std::string& origin,
                       const std::vector<std::string>& overrides) {
  std::set<std::string> known, sections;
  for (const Key& k : keys()) {
    std::string p = k.path;
    known.insert(p);
    for (size_t dot = p.find('.'); dot != std::string::npos; dot = p.find('.', dot + 1)) {
      sections.insert(p.substr(0, dot));
    }
  }
  try {
    YAML::Node root = YAML::Load(yaml_text);
    std::map<std::string, YAML::Node> values;
    if (root.IsDefined() && !root.IsNull()) walk(root, "", values, known, sections);
    for (const std::string& o : overrides) {
      const size_t eq = o.find('=');
      if (eq == std::string::npos || eq == 0) {
        throw ConfigError(fmt::format("override '{}' must read key=value", o));
      }
      const std::string key = o.substr(0, eq);
      if (!known.count(key))
        throw ConfigError(fmt::format("unknown key '{}' (in an override)", key));
      values[key] = YAML::Load(o.substr(eq + 1));
    }
    RunConfig cfg;
    for (const Key& k : keys()) {
      auto it = values.find(k.path);
      if (it != values.end()) k.set(cfg, it->second, k.path);
    }
    if (cfg.ttft_ms < 0) cfg.ttft_ms = cfg.t_ms;
    if (cfg.drafter_device.empty()) cfg.drafter_device = cfg.device;
    if (cfg.engine == "llama" && cfg.model_path.empty()) {
      throw ConfigError(
          "engine llama needs key 'model.path' (a GGUF file or a Hugging Face folder)");
    }
    if (cfg.poll_min_us > cfg.poll_max_us) {
      throw ConfigError(
          fmt::format("runtime.poll_min_us ({}) must not exceed runtime.poll_max_us ({})",
                      cfg.poll_min_us, cfg.poll_max_us));
    }
    if (cfg.heartbeat_ms * 1e-3 * 2 > cfg.peer_timeout_s) {
      throw ConfigError(fmt::format(
          "runtime.peer_timeout_s ({}) must be at least twice runtime.heartbeat_ms ({} ms)",
          cfg.peer_timeout_s, cfg.heartbeat_ms));
    }
    check_adapt(cfg);
    check_tree_config(cfg);
    check_drafters_config(cfg);
    check_tp_config(cfg);
    return cfg;
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: {}", origin, e.message()));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: malformed YAML at line {}, column {}: {}", origin,
                                  e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

void check_tree_config(const RunConfig& cfg) {
  if (cfg.tree.empty()) return;
  if (cfg.stage != "none") {
    throw ConfigError("dsi.tree does not run with dsi.stage yet (staged drafting drafts chains)");
  }
  if (const std::string why = invalid_tree_shape(cfg.tree, kMaxTreeNodes); !why.empty()) {
    throw ConfigError("dsi.tree: " + why);
  }
  if (cfg.mode == Mode::kNonSi) {
    throw ConfigError("dsi.tree needs mode si or dsi (non-SI drafts nothing)");
  }
  if (cfg.adapt) throw ConfigError("dsi.tree does not run with runtime.adapt: on yet");
  if (cfg.temperature > 0 && cfg.coupling == "residual" && cfg.mode == Mode::kDsi) {
    throw ConfigError(
        "dsi.tree with mode dsi needs sampling.coupling: gumbel when sampling.temperature > 0 "
        "(multi-step speculative sampling over the residual runs with mode si only for now)");
  }
  const int nodes = tree_shape_nodes(cfg.tree);
  if (cfg.max_context > 0 && cfg.max_new_tokens + nodes + 1 > cfg.max_context) {
    throw ConfigError(fmt::format(
        "dsi.tree: a tree of {} nodes after {} new tokens does not fit model.max_context ({})",
        nodes, cfg.max_new_tokens, cfg.max_context));
  }
}

void check_drafters_config(const RunConfig& cfg) {
  if (cfg.n_drafters() <= 1) return;
  const std::string n = fmt::format("roles.drafters = {}", cfg.drafters);
  if (!cfg.tree.empty()) {
    throw ConfigError(n + " does not run with dsi.tree yet (merged drafters extend chains)");
  }
  if (cfg.temperature > 0 && cfg.coupling == "residual") {
    throw ConfigError(
        n + " needs sampling.coupling: gumbel when sampling.temperature > 0 (the residual "
            "sampler's text would depend on which proposals arrived in time)");
  }
  const size_t extra = static_cast<size_t>(cfg.drafters - 1);
  if (cfg.engine == "llama" && cfg.extra_drafters.size() != extra) {
    throw ConfigError(fmt::format(
        "{} needs {} entries in model.extra_drafters (a model or layers for each drafter after "
        "the first), got {}",
        n, extra, cfg.extra_drafters.size()));
  }
}

std::vector<std::vector<int>> parse_tree_shapes(const std::string& s, const std::string& what) {
  std::vector<std::vector<int>> out;
  std::stringstream list(s);
  for (std::string item; std::getline(list, item, ';');) {
    std::vector<int> shape;
    std::stringstream factors(item);
    for (std::string f; std::getline(factors, f, ',');) {
      size_t used = 0;
      int b = 0;
      try {
        b = std::stoi(f, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != f.size()) {
        throw ConfigError(fmt::format("{}: '{}' in '{}' is not a branching factor", what, f, item));
      }
      shape.push_back(b);
    }
    if (const std::string why = invalid_tree_shape(shape, kMaxTreeNodes); !why.empty()) {
      throw ConfigError(fmt::format("{}: tree '{}': {}", what, item, why));
    }
    out.push_back(std::move(shape));
  }
  if (out.empty()) throw ConfigError(fmt::format("{}: no tree shape in '{}'", what, s));
  return out;
}

std::string tree_shape_name(const std::vector<int>& shape) {
  std::string name;
  for (int b : shape) name += (name.empty() ? "" : ",") + std::to_string(b);
  return name;
}

void check_adapt(const RunConfig& cfg) {
  if (!cfg.adapt || cfg.mode == Mode::kNonSi) return;  // non-SI has nothing to adapt
  if (cfg.temperature > 0 && cfg.coupling == "residual") {
    throw ConfigError(
        "runtime.adapt: on needs sampling.coupling: gumbel when sampling.temperature > 0 (the "
        "residual sampler's text depends on the lookahead, which adaptation changes)");
  }
}

SamplingParams sampling_params(const RunConfig& cfg) {
  if (cfg.temperature <= 0) return {};
  return {.temperature = static_cast<float>(cfg.temperature),
          .top_k = cfg.top_k,
          .top_p = static_cast<float>(cfg.top_p),
          .seed = cfg.sampling_seed >= 0 ? static_cast<uint64_t>(cfg.sampling_seed) : cfg.seed,
          .coupling = cfg.coupling == "residual" ? Coupling::kResidual : Coupling::kGumbel};
}

std::string config_reference() {
  std::string s;
  for (const Key& k : keys()) s += fmt::format("  {:28} {}\n", k.path, k.help);
  return s;
}

void check_tp_config(const RunConfig& cfg) {
  if (!cfg.tensor_parallel()) return;
  const std::string n = cfg.target_tp > 1 ? fmt::format("roles.target_tp = {}", cfg.target_tp)
                                          : fmt::format("roles.drafter_tp = {}", cfg.drafter_tp);
  if (cfg.engine != "llama") {
    throw ConfigError(n + " needs engine llama (the synthetic engine has no shards)");
  }
  const bool cuda = (cfg.target_tp > 1 && cfg.device == "cuda") ||
                    (cfg.n_drafters() > 0 && cfg.drafter_tp > 1 && cfg.drafter_device == "cuda");
  if (cuda) {
    throw ConfigError(n +
                      " runs on CPUs only for now (NCCL groups and CUDA sharding are not built)");
  }
}

}  // namespace dsi
