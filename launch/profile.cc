// `dsi profile`: measures a model pair on this machine through the Engine interface alone, so
// it profiles any engine make_engine builds: the target's TTFT (prefill), its decode latency,
// its forward latency as a function of the tokens verified (draft length + 1), the drafter's
// latency per token, and the acceptance rate on the target's own continuation over a prompt
// set: greedy (the drafter's argmax equals the target's), and with sampling (the spec has a
// "sampling" block) the expected speculative-sampling acceptance sum_x min(p(x), q(x)). Writes the
// JSON `dsi simulate` reads (format in docs/benchmarks.md). A plain process: no MPI.
#include <fmt/format.h>

#include <array>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "core/config.h"
#include "core/verify.h"
#include "core/worker_spec.h"
#include "engines/engine_factory.h"
#include "kernels/argmax.h"
#include "launch/commands.h"
#include "sim/simulator.h"

namespace dsi::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Times one forward; returns the greedy token of each returned logits row (and the logits).
std::vector<Token> timed_forward(Engine& e, std::span<const Token> tokens, int n_logits, double& ms,
                                 Logits* logits = nullptr) {
  static const CancelFlag never;
  const auto t0 = Clock::now();
  Logits l = e.forward(tokens, n_logits, never);
  ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  std::vector<Token> out = l.argmax();
  if (logits) *logits = std::move(l);
  return out;
}

// Expected acceptance of speculative sampling at one position. The residual coupling's is
// sum_x min(p(x), q(x)); the Gumbel coupling's, the chance that both races pick one token,
// has no closed form and is estimated over 32 independent races (keys 0..31 of this seed).
// The rank of token t among the drafter's logits (1: its best; ties to the lower index, as
// argmax and the tree drafter's top tokens order them).
int rank_of(std::span<const float> logits, Token t) {
  int r = 1;
  for (size_t i = 0; i < logits.size(); ++i) {
    r += logits[i] > logits[t] || (logits[i] == logits[t] && i < static_cast<size_t>(t));
  }
  return r;
}

double sampled_acceptance(const Logits& target, const Logits& drafter, const SamplingParams& sp) {
  const auto p = sampling_probs(target.row(target.n - 1), sp);
  const auto q = sampling_probs(drafter.row(drafter.n - 1), sp);
  if (sp.coupling == Coupling::kGumbel) {
    constexpr int kRaces = 32;
    int same = 0;
    for (int j = 0; j < kRaces; ++j) same += race_sample(p, j, sp) == race_sample(q, j, sp);
    return double(same) / kRaces;
  }
  double s = 0;
  for (size_t i = 0; i < p.size() && i < q.size(); ++i) s += std::min(p[i], q[i]);
  return s;
}

// A user-given worker spec (JSON, core/worker_spec.h).
WorkerSpec parse_spec(const std::string& text, const char* what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception&) {
    j = nullptr;
  }
  if (!j.is_object() || !j.contains("engine")) {
    throw UsageError(
        fmt::format("{} must be a JSON object with an \"engine\" field, got '{}'", what, text));
  }
  try {
    return worker_spec_from_json(j);
  } catch (const SpecError& e) {
    throw UsageError(fmt::format("{}: {}", what, e.what()));
  }
}

std::vector<std::vector<Token>> read_prompts(const std::string& path, int vocab) {
  std::ifstream f(path);
  if (!f) throw UsageError(fmt::format("cannot read prompts file '{}'", path));
  std::vector<std::vector<Token>> out;
  std::string line;
  for (int no = 1; std::getline(f, line); ++no) {
    if (line.empty() || line[0] == '#') continue;
    std::stringstream ss(line);
    std::vector<Token> p;
    long v;
    while (ss >> v) {
      if (v < 0 || v >= vocab) {
        throw UsageError(
            fmt::format("{}:{}: token id {} outside the vocabulary [0, {})", path, no, v, vocab));
      }
      p.push_back(static_cast<Token>(v));
    }
    if (!ss.eof()) throw UsageError(fmt::format("{}:{}: not a list of token ids", path, no));
    if (!p.empty()) out.push_back(std::move(p));
  }
  if (out.empty()) throw UsageError(fmt::format("prompts file '{}' holds no prompt", path));
  return out;
}

}  // namespace

int cmd_profile(const ProfileOptions& o) {
  try {
    if (o.tokens < 2 || o.max_draft < 1 || o.repeats < 1 || o.prompts < 1) {
      throw UsageError("--tokens must be >= 2, --max-draft, --repeats and --prompts >= 1");
    }
    WorkerSpec tspec, dspec;
    uint64_t seed = 1;
    int prompt_tokens = 16;
    if (!o.target_spec.empty() || !o.drafter_spec.empty()) {
      if (o.target_spec.empty() || o.drafter_spec.empty()) {
        throw UsageError("--target-spec and --drafter-spec go together");
      }
      tspec = parse_spec(o.target_spec, "--target-spec");
      dspec = parse_spec(o.drafter_spec, "--drafter-spec");
    } else {
      std::string text;
      if (!o.config_path.empty()) {
        std::ifstream f(o.config_path);
        if (!f) throw UsageError(fmt::format("cannot read config file '{}'", o.config_path));
        std::stringstream ss;
        ss << f.rdbuf();
        text = ss.str();
      }
      RunConfig cfg;
      try {
        cfg = parse_config(text, o.config_path.empty() ? "defaults" : o.config_path, o.overrides);
      } catch (const ConfigError& e) {
        throw UsageError(std::string(e.message()));
      }
      try {
        tspec = worker_spec(cfg, false);
        dspec = worker_spec(cfg, true);
      } catch (const std::exception& e) {
        throw UsageError(e.what());
      }
      seed = cfg.seed;
      prompt_tokens = cfg.prompt_tokens;
    }

    std::unique_ptr<Engine> target, drafter;
    try {
      target = make_engine(tspec.engine);
      drafter = make_engine(dspec.engine);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("cannot build the engines: {}", error_message(e)));
    }
    const int vocab = target->vocab_size();
    if (drafter->vocab_size() != vocab) {
      throw UsageError(fmt::format("target and drafter vocabularies differ ({} vs {})", vocab,
                                   drafter->vocab_size()));
    }
    std::vector<std::vector<Token>> prompts;
    if (!o.prompts_path.empty()) {
      prompts = read_prompts(o.prompts_path, vocab);
    } else {
      for (int i = 0; i < o.prompts; ++i)
        prompts.push_back(synthetic_prompt(seed + i, prompt_tokens, vocab));
    }

    const SamplingParams sp = tspec.sampling;
    const bool sampling = !sp.greedy();
    double sampled_sum = 0;
    std::vector<double> ttft, decode, d_ttft, d_decode;
    json per_prompt = json::array();
    int64_t agree = 0, compared = 0;
    // How often the target's greedy token is the drafter's 1st .. kRanks-th best (token trees'
    // siblings catch ranks 2 and on).
    constexpr int kRanks = 4;
    std::array<int64_t, kRanks> by_rank{};
    std::vector<Token> verify_ctx;
    int verify_len = 0;
    double ms = 0;
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      const auto& prompt = prompts[pi];
      target->truncate(0);
      drafter->truncate(0);
      // The target's greedy continuation g[0..n) and its timings.
      std::vector<Token> g;
      std::vector<Logits> tl(sampling ? o.tokens : 1);  // the target's rows, kept for sampling
      g.push_back(timed_forward(*target, prompt, 1, ms, &tl[0])[0]);
      ttft.push_back(ms);
      for (int i = 1; i < o.tokens; ++i) {
        g.push_back(
            timed_forward(*target, std::span(&g[i - 1], 1), 1, ms, sampling ? &tl[i] : nullptr)[0]);
        decode.push_back(ms);
      }
      // The drafter on the same context, fed the target's tokens (greedy acceptance; with
      // sampling, the expected acceptance of each position from both distributions).
      int agree_p = 0;
      double sampled_p = 0;
      Logits dl;
      Token d = timed_forward(*drafter, prompt, 1, ms, &dl)[0];
      d_ttft.push_back(ms);
      agree_p += d == g[0];
      auto count_rank = [&](Token target_token) {
        const int r = rank_of(dl.row(0), target_token);
        if (r <= kRanks) ++by_rank[r - 1];
      };
      count_rank(g[0]);
      if (sampling) sampled_p += sampled_acceptance(tl[0], dl, sp);
      for (int i = 1; i < o.tokens; ++i) {
        d = timed_forward(*drafter, std::span(&g[i - 1], 1), 1, ms, &dl)[0];
        d_decode.push_back(ms);
        agree_p += d == g[i];
        count_rank(g[i]);
        if (sampling) sampled_p += sampled_acceptance(tl[i], dl, sp);
      }
      agree += agree_p;
      sampled_sum += sampled_p;
      compared += o.tokens;
      per_prompt.push_back({{"prompt_tokens", prompt.size()},
                            {"acceptance_rate_greedy", double(agree_p) / o.tokens}});
      if (sampling) per_prompt.back()["acceptance_rate_sampled"] = sampled_p / o.tokens;
      if (pi == 0) {
        verify_ctx = g;
        verify_len = target->kv_len();
      }
      if (!o.json) {
        fmt::print("prompt {:3}: {:4} tokens, TTFT {:8.3f} ms, decode {:8.3f} ms/token, drafter "
                   "{:7.3f} ms/token, acceptance {:.3f}\n",
                   pi, prompt.size(), ttft.back(), median(decode), median(d_decode),
                   sampling ? sampled_p / o.tokens : double(agree_p) / o.tokens);
        std::fflush(stdout);
      }
    }

    // Target forward latency against the tokens a verification forwards (drafts + 1), each
    // measured on top of the first prompt's context and rolled back.
    target->truncate(0);
    timed_forward(*target, prompts[0], 1, ms);
    timed_forward(*target, std::span(verify_ctx.data(), verify_ctx.size() - 1), 1, ms);
    verify_len = target->kv_len();
    std::vector<Token> filler;
    for (int i = 0; i <= o.max_draft; ++i) filler.push_back(verify_ctx[i % verify_ctx.size()]);
    json by_tokens = json::array();
    std::vector<double> xs, ys;
    for (int n = 1; n <= o.max_draft + 1; ++n) {
      std::vector<double> t;
      for (int r = 0; r < o.repeats; ++r) {
        timed_forward(*target, std::span(filler.data(), n), n, ms);
        t.push_back(ms);
        target->truncate(verify_len);
      }
      const double m = median(t);
      by_tokens.push_back({{"tokens", n}, {"ms", m}});
      xs.push_back(n);
      ys.push_back(m);
    }
    // Least-squares line t(n) = t0 + slope * n; a negative slope (noise) means flat.
    double mx = 0, my = 0;
    for (size_t i = 0; i < xs.size(); ++i) mx += xs[i], my += ys[i];
    mx /= xs.size();
    my /= ys.size();
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < xs.size(); ++i)
      sxy += (xs[i] - mx) * (ys[i] - my), sxx += (xs[i] - mx) * (xs[i] - mx);
    double slope = sxx > 0 ? sxy / sxx : 0;
    if (slope < 0) slope = 0;
    double t0 = my - slope * mx;
    if (t0 < 0) t0 = 0;

    const double a_greedy = compared ? double(agree) / compared : 0;
    const double a = sampling ? (compared ? sampled_sum / compared : 0) : a_greedy;
    const double c_ms = median(d_decode);
    std::vector<double> rank_p, ranks;  // ranks: 2nd best on, for simulate
    for (int r = 0; r < kRanks; ++r) {
      rank_p.push_back(compared ? double(by_rank[r]) / compared : 0);
      if (r > 0) ranks.push_back(rank_p.back());
    }
    json out = {
        {"format", "dsi-profile"},
        {"version", 1},
        {"target_spec", worker_spec_json(tspec)},
        {"drafter_spec", worker_spec_json(dspec)},
        {"prompts", prompts.size()},
        {"tokens_per_prompt", o.tokens},
        {"repeats", o.repeats},
        {"target",
         {{"ttft_ms", median(ttft)},
          {"decode_ms", median(decode)},
          {"forward_ms_by_tokens", by_tokens},
          {"fit", {{"t0_ms", t0}, {"per_token_ms", slope}}}}},
        {"drafter", {{"ttft_ms", median(d_ttft)}, {"c_ms", c_ms}}},
        {"acceptance_rate", a},
        {"acceptance_rate_greedy", a_greedy},
        {"sampling",
         {{"temperature", sp.temperature},
          {"top_k", sp.top_k},
          {"top_p", sp.top_p},
          {"coupling", enum_names(sp.coupling)[static_cast<int>(sp.coupling)]}}},
        {"acceptance_by_prompt", per_prompt},
        {"acceptance_by_rank", rank_p},
        {"simulate",
         {{"t_ms", t0}, {"per_token_ms", slope}, {"c_ms", c_ms}, {"a", a}, {"ranks", ranks}}},
    };
    if (o.json) {
      fmt::print("{}\n", out.dump());
    } else {
      fmt::print("target: TTFT {:.3f} ms, decode {:.3f} ms/token, verify forward of n tokens: "
                 "{:.3f} + {:.4f} n ms\n",
                 median(ttft), median(decode), t0, slope);
      for (const auto& b : by_tokens)
        fmt::print("  n = {:2}: {:8.3f} ms\n", b["tokens"].get<int>(), b["ms"].get<double>());
      fmt::print("drafter: TTFT {:.3f} ms, c = {:.3f} ms/token ({:.3f} t)\nacceptance rate a = "
                 "{:.3f} ({}) over {} prompts x {} tokens\n",
                 median(d_ttft), c_ms, t0 + slope > 0 ? c_ms / (t0 + slope) : 0, a,
                 sampling ? fmt::format("expected, sampling at temperature {}; greedy {:.3f}",
                                        sp.temperature, a_greedy)
                          : std::string("greedy"),
                 prompts.size(), o.tokens);
      fmt::print("the target's greedy token is the drafter's best / 2nd / 3rd / 4th: {:.3f} / "
                 "{:.3f} / {:.3f} / {:.3f} (what token trees' siblings catch)\n",
                 rank_p[0], rank_p[1], rank_p[2], rank_p[3]);
    }
    if (!o.out_path.empty()) {
      std::ofstream f(o.out_path);
      if (!f) throw UsageError(fmt::format("cannot write '{}'", o.out_path));
      f << out.dump(1) << "\n";
      if (!o.json)
        fmt::print("profile written to {} (dsi simulate --profile {})\n", o.out_path, o.out_path);
    }
    return 0;
  } catch (const UsageError& e) {
    fmt::print(stderr, "dsi profile: error: {}\n", e.what());
    return 2;
  }
}

}  // namespace dsi::cli
