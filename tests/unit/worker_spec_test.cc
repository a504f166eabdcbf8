// The worker spec (core/worker_spec.h): what a run config gives each role, and the JSON form
// users give `dsi profile`, read and written in one place and refused by key when wrong.
#include "core/worker_spec.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

using json = nlohmann::json;

std::string error_of(const json& j) {
  try {
    worker_spec_from_json(j);
  } catch (const SpecError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted " << j.dump();
  return "";
}

TEST(WorkerSpec, FromTheRunConfig) {
  RunConfig cfg;
  cfg.t_ms = 20;
  cfg.ttft_ms = 30;
  cfg.c = 0.1;
  cfg.a = 0.7;
  cfg.per_token_ms = 0.5;
  cfg.seed = 9;
  const WorkerSpec t = worker_spec(cfg, false);
  EXPECT_EQ(t.role, Role::kTarget);
  EXPECT_TRUE(t.sampling.greedy());
  const auto& tp = std::get<SyntheticParams>(t.engine);
  EXPECT_EQ(tp.seed, 9u);
  EXPECT_EQ(tp.forward_ms, 20);
  EXPECT_EQ(tp.ttft_ms, 30);
  EXPECT_EQ(tp.per_token_ms, 0.5);
  EXPECT_FALSE(tp.drafter);
  const WorkerSpec d = worker_spec(cfg, true);
  EXPECT_EQ(d.role, Role::kDrafter);
  const auto& dp = std::get<SyntheticParams>(d.engine);
  EXPECT_DOUBLE_EQ(dp.forward_ms, 2);
  EXPECT_DOUBLE_EQ(dp.ttft_ms, 3);
  EXPECT_EQ(dp.acceptance, 0.7);
  EXPECT_EQ(dp.per_token_ms, 0);
  EXPECT_TRUE(dp.drafter);

  cfg.engine = "llama";
  cfg.model_path = "target.gguf";
  cfg.drafter_model_path = "drafter.gguf";
  cfg.drafter_layers = {0, 2};
  cfg.device = "cuda";
  cfg.drafter_device = "cpu";
  cfg.dtype = "bf16";
  cfg.activations = "q8";
  cfg.temperature = 0.8;
  cfg.top_k = 5;
  cfg.sampling_seed = 4;
  const auto lt = std::get<LlamaSpec>(worker_spec(cfg, false).engine);
  EXPECT_EQ(lt.model, "target.gguf");
  EXPECT_EQ(lt.device, LlamaDevice::kCuda);
  EXPECT_EQ(lt.dtype, CudaDtype::kBF16);
  EXPECT_EQ(lt.activations, kernels::Activations::kQ8);
  EXPECT_TRUE(lt.layers.empty());
  const WorkerSpec ld = worker_spec(cfg, true);
  EXPECT_EQ(std::get<LlamaSpec>(ld.engine).model, "drafter.gguf");
  EXPECT_EQ(std::get<LlamaSpec>(ld.engine).device, LlamaDevice::kCpu);
  EXPECT_EQ(std::get<LlamaSpec>(ld.engine).layers, (std::vector<int>{0, 2}));
  EXPECT_FLOAT_EQ(ld.sampling.temperature, 0.8f);
  EXPECT_EQ(ld.sampling.top_k, 5);
  EXPECT_EQ(ld.sampling.seed, 4u);
  EXPECT_EQ(ld.sampling.coupling, Coupling::kGumbel);  // the default
  cfg.coupling = "residual";
  EXPECT_EQ(worker_spec(cfg, false).sampling.coupling, Coupling::kResidual);
}

TEST(WorkerSpec, JsonRoundTrips) {
  RunConfig cfg;
  cfg.temperature = 0.5;
  WorkerSpec d = worker_spec(cfg, true);
  d.targets = {2, 3};
  EXPECT_EQ(worker_spec_from_json(worker_spec_json(d)), d);
  d.sampling.coupling = Coupling::kResidual;
  EXPECT_EQ(worker_spec_json(d)["sampling"]["coupling"], "residual");
  EXPECT_EQ(worker_spec_from_json(worker_spec_json(d)), d);
  cfg.engine = "llama";
  cfg.model_path = "m.gguf";
  cfg.drafter_device = "cpu";
  cfg.drafter_layers = {1};
  const WorkerSpec l = worker_spec(cfg, true);
  EXPECT_EQ(worker_spec_from_json(worker_spec_json(l)), l);
  EXPECT_EQ(worker_spec_json(l)["device"], "cpu");
}

TEST(WorkerSpec, ReadsTheJsonUsersWrite) {
  // As docs/benchmarks.md shows it, and as earlier versions wrote it (llama with seed, vocab).
  const WorkerSpec s = worker_spec_from_json(json::parse(
      R"({"engine": "synthetic", "role": "drafter", "seed": 3, "vocab": 100, "ttft_ms": 2,
          "forward_ms": 1, "acceptance": 0.6, "sampling": {"temperature": 0.9, "top_k": 20}})"));
  EXPECT_EQ(s.role, Role::kDrafter);
  const auto& p = std::get<SyntheticParams>(s.engine);
  EXPECT_EQ(p.vocab, 100);
  EXPECT_EQ(p.acceptance, 0.6);
  EXPECT_TRUE(p.drafter);
  EXPECT_EQ(p.overlap, 0.5);
  EXPECT_FLOAT_EQ(s.sampling.temperature, 0.9f);
  EXPECT_EQ(s.sampling.top_p, 1.0f);
  EXPECT_EQ(s.sampling.seed, 1u);
  const WorkerSpec l = worker_spec_from_json(json::parse(
      R"({"engine": "llama", "model": "m.gguf", "seed": 1, "vocab": 64, "threads": 2})"));
  EXPECT_EQ(l.role, Role::kTarget);
  EXPECT_EQ(std::get<LlamaSpec>(l.engine).threads, 2);
  EXPECT_EQ(std::get<LlamaSpec>(l.engine).device, LlamaDevice::kCpu);
  EXPECT_EQ(std::get<LlamaSpec>(l.engine).gpu, -1);
}

TEST(WorkerSpec, RefusesBadJsonByKey) {
  const json syn = {
      {"engine", "synthetic"}, {"seed", 1}, {"vocab", 8}, {"ttft_ms", 1}, {"forward_ms", 1}};
  EXPECT_NO_THROW(worker_spec_from_json(syn));
  EXPECT_NE(error_of(json::array()).find("a worker spec is a JSON object"), std::string::npos);
  EXPECT_NE(error_of({{"engine", "gpt"}}).find("unknown engine 'gpt'"), std::string::npos);
  json j = syn;
  j.erase("vocab");
  EXPECT_NE(error_of(j).find("lacks key 'vocab'"), std::string::npos) << error_of(j);
  j = syn;
  j["vocab"] = "many";
  EXPECT_NE(error_of(j).find("key 'vocab' is \"many\", not an integer"), std::string::npos)
      << error_of(j);
  j = syn;
  j["model"] = "m.gguf";
  EXPECT_NE(error_of(j).find("unknown key 'model' in a synthetic worker spec"), std::string::npos);
  j = syn;
  j["role"] = "judge";
  EXPECT_NE(error_of(j).find("unknown role 'judge' (expected one of: drafter, target)"),
            std::string::npos)
      << error_of(j);
  j = syn;
  j["sampling"] = {{"temperature", 1}, {"topk", 3}};
  EXPECT_NE(error_of(j).find("unknown key 'topk' in the sampling block"), std::string::npos);
  j["sampling"] = {{"temperature", 1}, {"coupling", "maximal"}};
  EXPECT_NE(error_of(j).find("maximal"), std::string::npos) << error_of(j);
  const json llama = {{"engine", "llama"}, {"model", "m.gguf"}, {"layers", "0-3"}};
  EXPECT_NE(error_of(llama).find("key 'layers' is \"0-3\", not a list of integers"),
            std::string::npos)
      << error_of(llama);
}

}  // namespace
}  // namespace dsi
