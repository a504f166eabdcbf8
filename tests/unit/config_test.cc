#include "core/config.h"
#include "core/worker_spec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace dsi {
namespace {

std::string error_of(const std::string& yaml, std::vector<std::string> overrides = {}) {
  try {
    parse_config(yaml, "test.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ShippedSyntheticConfigParses) {
  std::ifstream in(std::string(DSI_SOURCE_DIR) + "/configs/synthetic.yaml");
  std::stringstream ss;
  ss << in.rdbuf();
  RunConfig c = parse_config(ss.str(), "synthetic.yaml");
  EXPECT_EQ(c.mode, Mode::kDsi);
  EXPECT_EQ(c.lookahead, 5);
  EXPECT_DOUBLE_EQ(c.ttft_ms, c.t_ms);
  EXPECT_EQ(c.n_targets(6), 4);
}

TEST(Config, ErrorsNameTheKey) {
  EXPECT_NE(error_of("synthetic: {tt_ms: 3}").find("unknown key 'synthetic.tt_ms'"),
            std::string::npos);
  EXPECT_NE(error_of("mode: fast").find("key 'mode' must be dsi, si or nonsi, got 'fast'"),
            std::string::npos);
  EXPECT_NE(error_of("synthetic: {a: high}").find("key 'synthetic.a' must be a number, got 'high'"),
            std::string::npos);
  EXPECT_NE(error_of("dsi: {lookahead: 0}").find("key 'dsi.lookahead' is 0"), std::string::npos);
  EXPECT_NE(error_of("synthetic: 3").find("key 'synthetic' must be a mapping"), std::string::npos);
  EXPECT_NE(error_of("mode: [dsi").find("test.yaml: malformed YAML at line"), std::string::npos);
  EXPECT_NE(error_of("", {"synthetic.x=1"}).find("unknown key 'synthetic.x'"), std::string::npos);
  EXPECT_NE(error_of("", {"nokey"}).find("override 'nokey' must read key=value"),
            std::string::npos);
  EXPECT_EQ(error_of("", {"synthetic.a=0.25"}), "");
  EXPECT_DOUBLE_EQ(parse_config("", "x", {"synthetic.a=0.25"}).a, 0.25);
}

TEST(Config, AdaptAndDriftingAcceptance) {
  const RunConfig c = parse_config(
      "runtime: {adapt: on}\nsynthetic: {a_phases: [0.9, 0.2, 0.9], phase_tokens: 50}\n", "t.yaml");
  EXPECT_TRUE(c.adapt);
  EXPECT_EQ(c.a_phases, (std::vector<double>{0.9, 0.2, 0.9}));
  EXPECT_EQ(c.phase_tokens, 50);
  EXPECT_FALSE(parse_config("", "t.yaml").adapt);  // off unless a config turns it on
  EXPECT_NE(error_of("runtime: {adapt: maybe}").find("key 'runtime.adapt' must be one of off, on"),
            std::string::npos);
  EXPECT_NE(error_of("synthetic: {a_phases: [0.9, 1.5]}").find("synthetic.a_phases"),
            std::string::npos);
  EXPECT_NE(error_of("synthetic: {a_phases: 0.5}").find("must be a non-empty list of rates"),
            std::string::npos);
  // The residual sampler's text depends on k: adaptation would make it depend on timing.
  const std::string residual =
      error_of("runtime: {adapt: on}\nsampling: {temperature: 0.8, coupling: residual}\n");
  EXPECT_NE(residual.find("runtime.adapt: on needs sampling.coupling: gumbel"), std::string::npos)
      << residual;
  EXPECT_EQ(error_of("runtime: {adapt: on}\nsampling: {coupling: residual}\n"), "");  // greedy
  EXPECT_EQ(error_of("mode: nonsi\nruntime: {adapt: on}\n"), "");  // nothing to adapt
  // The shipped real-model configs turn it on.
  for (const char* name : {"default.yaml", "qwen-coder-pair.yaml"}) {
    std::ifstream in(std::string(DSI_SOURCE_DIR) + "/configs/" + name);
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_TRUE(parse_config(ss.str(), name).adapt) << name;
  }
}

TEST(Config, StagedDrafting) {
  const RunConfig c = parse_config("dsi: {stage: ngram, stage_tokens: 6}\n", "t.yaml");
  EXPECT_EQ(c.stage, "ngram");
  EXPECT_EQ(c.stage_tokens, 6);
  EXPECT_EQ(parse_config("mode: si", "t.yaml").stage, "none");
  auto error_of = [](const std::string& yaml) {
    try {
      check_tree_config(parse_config(yaml, "t.yaml"));
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("dsi: {stage: lookup}\n").find("dsi.stage"), std::string::npos);
  EXPECT_NE(error_of("dsi: {stage_tokens: 0}\n").find("dsi.stage_tokens"), std::string::npos);
  EXPECT_NE(error_of("dsi: {stage_tokens: 17}\n").find("dsi.stage_tokens"), std::string::npos);
  EXPECT_NE(error_of("mode: si\ndsi: {stage: ngram, tree: [2, 1]}\n").find("dsi.stage"),
            std::string::npos);
  // The drafter's spec carries it; the targets' do not.
  EXPECT_EQ(worker_spec(c, true).stage_tokens, 6);
  EXPECT_EQ(worker_spec(c, false).stage_tokens, 0);
}

TEST(Config, MergedDrafters) {
  const RunConfig c =
      parse_config("mode: si\nroles: {drafters: 3}\nengine: llama\nmodel:\n  path: /m/target.gguf\n"
                   "  drafter_path: /m/lead.gguf\n  drafter_layers: \"0-3\"\n"
                   "  extra_drafters:\n    - {path: /m/second.gguf}\n    - {layers: \"0-1,5\"}\n",
                   "t.yaml");
  EXPECT_EQ(c.drafters, 3);
  EXPECT_EQ(c.n_drafters(), 3);
  ASSERT_EQ(c.extra_drafters.size(), 2u);
  EXPECT_EQ(c.extra_drafters[0].path, "/m/second.gguf");
  EXPECT_EQ(c.extra_drafters[1].layers, (std::vector<int>{0, 1, 5}));
  // Each drafter's spec: its index, its model (the lead's when the entry names none).
  const auto lead = std::get<LlamaSpec>(worker_spec(c, true, 0).engine);
  const auto second = std::get<LlamaSpec>(worker_spec(c, true, 1).engine);
  const auto third = std::get<LlamaSpec>(worker_spec(c, true, 2).engine);
  EXPECT_EQ(lead.model, "/m/lead.gguf");
  EXPECT_EQ(second.model, "/m/second.gguf");
  EXPECT_TRUE(second.layers.empty());
  EXPECT_EQ(third.model, "/m/lead.gguf");
  EXPECT_EQ(third.layers, (std::vector<int>{0, 1, 5}));
  EXPECT_EQ(worker_spec(c, true, 2).drafter_index, 2);
  // Synthetic drafters draw their errors from their own streams.
  const RunConfig syn = parse_config("roles: {drafters: 2}\n", "t.yaml");
  EXPECT_EQ(std::get<SyntheticParams>(worker_spec(syn, true, 1).engine).stream, 1u);
  EXPECT_EQ(std::get<SyntheticParams>(worker_spec(syn, true, 0).engine).stream, 0u);
  // The world: 1 coordinator + 2 drafters + targets.
  EXPECT_EQ(syn.n_targets(5), 2);
  auto error_of = [](const std::string& yaml) {
    try {
      parse_config(yaml, "t.yaml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto has = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  EXPECT_TRUE(has(error_of("roles: {drafters: 5}\n"), "roles.drafters"));
  EXPECT_TRUE(has(error_of("roles: {drafters: 2}\ndsi: {tree: [2, 1]}\n"), "dsi.tree"));
  EXPECT_EQ(error_of("roles: {drafters: 2}\nruntime: {adapt: on}\n"), "");
  EXPECT_TRUE(has(error_of("roles: {drafters: 2}\nsampling: {temperature: 0.8, coupling: "
                           "residual}\n"),
                  "sampling.coupling"));
  EXPECT_TRUE(has(error_of("roles: {drafters: 3}\nengine: llama\nmodel: {path: /m.gguf, "
                           "extra_drafters: [{path: /a.gguf}]}\n"),
                  "2 entries in model.extra_drafters"));
  EXPECT_TRUE(
      has(error_of("model: {extra_drafters: [{size: 3}]}\n"), "model.extra_drafters[0].size"));
  EXPECT_TRUE(has(error_of("model: {extra_drafters: [{layers: \"x\"}]}\n"),
                  "model.extra_drafters[0].layers"));
  try {
    syn.n_targets(3);
    ADD_FAILURE() << "a world of 3 fit 2 drafters and a target";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(has(e.what(), "2 drafter")) << e.what();
  }
}

TEST(Config, TokenTrees) {
  const RunConfig c = parse_config("mode: si\ndsi: {tree: [3, 2, 1, 1]}\n", "t.yaml");
  EXPECT_EQ(c.tree, (std::vector<int>{3, 2, 1, 1}));
  EXPECT_EQ(c.lookahead, 4);  // the tree's depth
  EXPECT_EQ(parse_config("mode: si", "t.yaml", {"dsi.tree=2,2"}).tree, (std::vector<int>{2, 2}));
  EXPECT_TRUE(parse_config("mode: si\ndsi: {tree: []}\n", "t.yaml").tree.empty());
  // Refused with the key named: the shape, the node budget, the context, and what trees do
  // not run with yet.
  auto has = [](const std::string& err, const std::string& what) {
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  has(error_of("mode: si\ndsi: {tree: [2, 0]}\n"), "dsi.tree");
  has(error_of("mode: si\ndsi: {tree: [4, 4, 4]}\n"),
      "dsi.tree: the tree has 84 nodes, more than the 64");
  has(error_of("mode: si\ndsi: {tree: x}\n"), "dsi.tree");
  has(error_of("mode: si\ndsi: {tree: {a: 1}}\n"), "key 'dsi.tree' must be a list");
  has(error_of("mode: si\nmodel: {max_context: 64}\ngeneration: {max_new_tokens: 60}\n"
               "dsi: {tree: [3, 2]}\n"),
      "dsi.tree: a tree of 9 nodes after 60 new tokens does not fit model.max_context (64)");
  has(error_of("mode: nonsi\ndsi: {tree: [2, 2]}\n"), "dsi.tree needs mode si or dsi");
  EXPECT_EQ(error_of("mode: dsi\ndsi: {tree: [2, 2]}\n"), "");
  has(error_of("mode: si\nruntime: {adapt: on}\ndsi: {tree: [2, 2]}\n"), "runtime.adapt");
  has(error_of("mode: dsi\nsampling: {temperature: 0.7, coupling: residual}\ndsi: {tree: [2]}\n"),
      "dsi.tree with mode dsi needs sampling.coupling: gumbel");
  EXPECT_EQ(
      error_of("mode: si\nsampling: {temperature: 0.7, coupling: residual}\ndsi: {tree: [2]}\n"),
      "");
  EXPECT_EQ(error_of("mode: si\nsampling: {temperature: 0.7}\ndsi: {tree: [2, 1]}\n"), "");
}

TEST(Config, WorldSizeMustFitTheRoles) {
  RunConfig c;
  EXPECT_THROW(c.n_targets(2), ConfigError);
  EXPECT_EQ(c.n_targets(3), 1);
  c.targets = 2;
  EXPECT_THROW(c.n_targets(5), ConfigError);
  EXPECT_EQ(c.n_targets(4), 2);
  c.mode = Mode::kNonSi;
  c.targets = -1;
  EXPECT_EQ(c.n_targets(2), 1);
  try {
    RunConfig d;
    d.n_targets(2);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("the world has 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsi

namespace dsi {
namespace {

TEST(Config, DevicesHandoffAndDataPlane) {
  RunConfig c = parse_config("model:\n  device: cuda\n", "t.yaml");
  EXPECT_EQ(c.device, "cuda");
  EXPECT_EQ(c.drafter_device, "cuda");  // follows model.device unless set
  EXPECT_EQ(c.kv_handoff, "auto");
  EXPECT_EQ(c.data_plane, "auto");
  EXPECT_EQ(c.wait, "adaptive");
  EXPECT_EQ(c.target_choice, TargetChoice::kCache);
  EXPECT_EQ(c.activations, "f32");
  EXPECT_EQ(parse_config("model: {activations: q8}\n", "t.yaml").activations, "q8");
  EXPECT_NE(error_of("model: {activations: int8}\n")
                .find("key 'model.activations' must be one of f32, q8, got 'int8'"),
            std::string::npos);
  EXPECT_EQ(c.coupling, "gumbel");
  const RunConfig r = parse_config("sampling: {temperature: 0.7, coupling: residual}\n", "t.yaml");
  EXPECT_EQ(sampling_params(r).coupling, Coupling::kResidual);
  EXPECT_FLOAT_EQ(sampling_params(r).temperature, 0.7f);
  EXPECT_TRUE(sampling_params(c).greedy());
  EXPECT_NE(error_of("sampling: {coupling: maximal}\n")
                .find("key 'sampling.coupling' must be one of gumbel, residual, got 'maximal'"),
            std::string::npos);
  c = parse_config("model: {device: cuda, drafter_device: cpu, dtype: bf16}\n"
                   "runtime: {kv_handoff: never, data_plane: nccl, kv_gbps: 25, wait: spin, "
                   "spin_us: 40}\n"
                   "dsi: {target_choice: round_robin}\n",
                   "t.yaml");
  EXPECT_EQ(c.drafter_device, "cpu");
  EXPECT_EQ(c.dtype, "bf16");
  EXPECT_EQ(c.kv_handoff, "never");
  EXPECT_EQ(c.data_plane, "nccl");
  EXPECT_DOUBLE_EQ(c.kv_gbps, 25);
  EXPECT_EQ(c.wait, "spin");
  EXPECT_EQ(c.spin_us, 40);
  EXPECT_EQ(c.target_choice, TargetChoice::kRoundRobin);
  EXPECT_NE(
      error_of("runtime: {kv_handoff: sometimes}\n")
          .find("key 'runtime.kv_handoff' must be one of auto, always, never, got 'sometimes'"),
      std::string::npos);
  EXPECT_NE(
      error_of("model: {dtype: fp8}\n").find("key 'model.dtype' must be one of f32, f16, bf16"),
      std::string::npos);
  EXPECT_NE(error_of("", {"runtime.data_plane=gloo"}).find("'runtime.data_plane'"),
            std::string::npos);
  EXPECT_NE(error_of("runtime: {wait: busy}\n")
                .find("key 'runtime.wait' must be one of adaptive, sleep, spin, got 'busy'"),
            std::string::npos);
  EXPECT_NE(error_of("runtime: {spin_us: -1}\n").find("'runtime.spin_us'"), std::string::npos);
}

}  // namespace
}  // namespace dsi
