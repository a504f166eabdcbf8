#include "core/worker_spec.h"

#include <fmt/format.h>

#include <set>

namespace dsi {
namespace {

using json = nlohmann::json;

// The value of an enum spelled by its wire name.
template <class E>
E parse_enum(const std::string& text, const char* key) {
  const auto names = enum_names(E{});
  for (size_t i = 0; i < names.size(); ++i) {
    if (text == names[i]) return static_cast<E>(i);
  }
  throw SpecError(
      fmt::format("unknown {} '{}' (expected one of: {})", key, text, fmt::join(names, ", ")));
}

template <class E>
const char* enum_name(E e) {
  return enum_names(E{})[static_cast<size_t>(e)];
}

// j[key] as T (`fallback` when absent); a value of the wrong type is named.
template <class T>
T get(const json& j, const char* key, const T& fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw SpecError(fmt::format("worker spec key '{}' is {}, not {}", key, it->dump(),
                                std::is_same_v<T, std::string>        ? "a string"
                                : std::is_same_v<T, std::vector<int>> ? "a list of integers"
                                : std::is_integral_v<T>               ? "an integer"
                                                                      : "a number"));
  }
}

template <class T>
T need(const json& j, const char* key, const char* engine) {
  if (!j.contains(key)) {
    throw SpecError(fmt::format("worker spec of the {} engine lacks key '{}'", engine, key));
  }
  return get<T>(j, key, T{});
}

void check_keys(const json& j, const std::set<std::string>& known, const char* where) {
  for (const auto& [k, v] : j.items()) {
    if (!known.contains(k)) throw SpecError(fmt::format("unknown key '{}' in {}", k, where));
  }
}

}  // namespace

WorkerSpec worker_spec(const RunConfig& cfg, bool drafter, int index) {
  WorkerSpec s;
  s.role = drafter ? Role::kDrafter : Role::kTarget;
  s.sampling = sampling_params(cfg);
  s.drafter_index = drafter ? index : 0;
  if (drafter && index == 0 && cfg.stage == "ngram") s.stage_tokens = cfg.stage_tokens;
  const ExtraDrafter* extra =
      drafter && index > 0 && index <= static_cast<int>(cfg.extra_drafters.size())
          ? &cfg.extra_drafters[index - 1]
          : nullptr;
  if (cfg.engine == "llama") {
    LlamaSpec l;
    l.model = drafter && !cfg.drafter_model_path.empty() ? cfg.drafter_model_path : cfg.model_path;
    l.device = parse_enum<LlamaDevice>(drafter ? cfg.drafter_device : cfg.device, "device");
    l.dtype = parse_enum<CudaDtype>(cfg.dtype, "dtype");
    l.threads = cfg.threads;
    l.max_context = cfg.max_context;
    l.activations = parse_enum<kernels::Activations>(cfg.activations, "activations");
    if (drafter) l.layers = cfg.drafter_layers;
    if (extra) {
      if (!extra->path.empty()) l.model = extra->path;
      l.layers = extra->layers;
    }
    s.engine = l;
  } else if (cfg.engine == "synthetic") {
    SyntheticParams p{.seed = cfg.seed, .vocab = cfg.vocab, .drafter = drafter};
    if (drafter) {
      p.ttft_ms = cfg.c * cfg.ttft_ms;
      p.forward_ms = cfg.c * cfg.t_ms;
      p.acceptance = cfg.a;
      p.overlap = cfg.overlap;
      p.second = cfg.second;
      p.stream = static_cast<uint32_t>(index);
      p.phases = cfg.a_phases;
      p.phase_start = cfg.prompt_tokens;
      p.phase_len = cfg.phase_tokens;
    } else {
      p.ttft_ms = cfg.ttft_ms;
      p.forward_ms = cfg.t_ms;
      p.per_token_ms = cfg.per_token_ms;
      p.acceptance = 1;
    }
    s.engine = p;
  } else {
    throw ConfigError(fmt::format("unknown engine '{}' (expected synthetic or llama)", cfg.engine));
  }
  return s;
}

WorkerSpec worker_spec_from_json(const json& j) {
  if (!j.is_object())
    throw SpecError(fmt::format("a worker spec is a JSON object, not {}", j.dump()));
  WorkerSpec s;
  const std::string engine = need<std::string>(j, "engine", "any");
  s.role = parse_enum<Role>(get<std::string>(j, "role", "target"), "role");
  if (engine == "synthetic") {
    check_keys(j,
               {"engine", "role", "sampling", "targets", "stage_tokens", "seed", "vocab",
                "acceptance", "ttft_ms", "forward_ms", "per_token_ms", "overlap", "phases",
                "phase_start", "phase_len", "second"},
               "a synthetic worker spec");
    SyntheticParams p;
    p.seed = need<uint64_t>(j, "seed", "synthetic");
    p.vocab = need<int>(j, "vocab", "synthetic");
    p.acceptance = get<double>(j, "acceptance", 1.0);
    p.ttft_ms = need<double>(j, "ttft_ms", "synthetic");
    p.forward_ms = need<double>(j, "forward_ms", "synthetic");
    p.per_token_ms = get<double>(j, "per_token_ms", 0.0);
    p.overlap = get<double>(j, "overlap", 0.5);
    p.second = get<double>(j, "second", 0.0);
    if (!(p.second >= 0 && p.second <= 1)) throw SpecError("synthetic second must lie in [0, 1]");
    p.phases = get<std::vector<double>>(j, "phases", {});
    p.phase_start = get<int>(j, "phase_start", 0);
    p.phase_len = get<int>(j, "phase_len", 1);
    if (p.phase_len < 1) throw SpecError("synthetic phase_len must be at least 1");
    p.drafter = s.role == Role::kDrafter;
    s.engine = p;
  } else if (engine == "llama") {
    // seed and vocab belong to the synthetic engine; specs written for both carry them.
    check_keys(j,
               {"engine", "role", "sampling", "targets", "stage_tokens", "seed", "vocab", "model",
                "device", "dtype", "gpu", "threads", "layers", "max_context", "activations"},
               "a llama worker spec");
    LlamaSpec l;
    l.model = need<std::string>(j, "model", "llama");
    // The dtype is checked first (for either device), so that a typo shows before the job
    // needs a GPU.
    l.dtype = parse_enum<CudaDtype>(get<std::string>(j, "dtype", "f16"), "dtype");
    l.device = parse_enum<LlamaDevice>(get<std::string>(j, "device", "cpu"), "device");
    l.gpu = get<int>(j, "gpu", -1);
    l.threads = get<int>(j, "threads", 1);
    l.layers = get<std::vector<int>>(j, "layers", {});
    l.max_context = get<int>(j, "max_context", 0);
    l.activations =
        parse_enum<kernels::Activations>(get<std::string>(j, "activations", "f32"), "activations");
    s.engine = l;
  } else {
    throw SpecError(fmt::format("unknown engine '{}' (expected synthetic or llama)", engine));
  }
  if (j.contains("sampling")) {
    const json& sj = j["sampling"];
    if (!sj.is_object()) throw SpecError("worker spec key 'sampling' is not an object");
    check_keys(sj, {"temperature", "top_k", "top_p", "seed", "request", "coupling"},
               "the sampling block");
    s.sampling.temperature = get<float>(sj, "temperature", 0.0f);
    s.sampling.top_k = get<int>(sj, "top_k", 0);
    s.sampling.top_p = get<float>(sj, "top_p", 1.0f);
    s.sampling.seed = get<uint64_t>(sj, "seed", uint64_t{1});
    s.sampling.request = get<uint64_t>(sj, "request", uint64_t{0});
    s.sampling.coupling =
        parse_enum<Coupling>(get<std::string>(sj, "coupling", "gumbel"), "coupling");
  }
  s.targets = get<std::vector<int>>(j, "targets", {});
  s.stage_tokens = get<int>(j, "stage_tokens", 0);
  if (s.stage_tokens < 0 || s.stage_tokens > kMaxStageTokens) {
    throw SpecError(fmt::format("worker spec stage_tokens must lie in [0, {}], got {}",
                                kMaxStageTokens, s.stage_tokens));
  }
  return s;
}

json worker_spec_json(const WorkerSpec& s) {
  json j = {{"role", enum_name(s.role)}};
  if (const auto* p = std::get_if<SyntheticParams>(&s.engine)) {
    j.update({{"engine", "synthetic"},
              {"seed", p->seed},
              {"vocab", p->vocab},
              {"acceptance", p->acceptance},
              {"ttft_ms", p->ttft_ms},
              {"forward_ms", p->forward_ms},
              {"per_token_ms", p->per_token_ms},
              {"overlap", p->overlap},
              {"second", p->second},
              {"phases", p->phases},
              {"phase_start", p->phase_start},
              {"phase_len", p->phase_len}});
  } else {
    const auto& l = std::get<LlamaSpec>(s.engine);
    j.update({{"engine", "llama"},
              {"model", l.model},
              {"device", enum_name(l.device)},
              {"dtype", enum_name(l.dtype)},
              {"gpu", l.gpu},
              {"threads", l.threads},
              {"layers", l.layers},
              {"max_context", l.max_context},
              {"activations", enum_name(l.activations)}});
  }
  if (!s.sampling.greedy()) {
    j["sampling"] = {{"temperature", s.sampling.temperature},
                     {"top_k", s.sampling.top_k},
                     {"top_p", s.sampling.top_p},
                     {"seed", s.sampling.seed},
                     {"request", s.sampling.request},
                     {"coupling", enum_name(s.sampling.coupling)}};
  }
  if (!s.targets.empty()) j["targets"] = s.targets;
  if (s.stage_tokens > 0) j["stage_tokens"] = s.stage_tokens;
  return j;
}

}  // namespace dsi
