// The engine factory's device and dtype keys (engines/engine_factory.h), given as the JSON
// worker spec users write (core/worker_spec.h), on a machine without a GPU: "device: cuda"
// fails with a message saying why, bad values are refused by name, and the CPU engine is what
// "device: cpu" (or no device) builds.
#include "engines/engine_factory.h"

#include <gtest/gtest.h>

#include <string>

#include "../test_data.h"
#include "common/gpu_binding.h"
#include "core/worker_spec.h"
#include "engines/llama/cuda_engine.h"
#include "engines/llama/llama_engine.h"

namespace dsi {
namespace {

nlohmann::json llama_spec() {
  return {
      {"engine", "llama"}, {"model", test::tiny_model()}, {"role", "target"}, {"max_context", 32}};
}

std::unique_ptr<Engine> make_engine(const nlohmann::json& spec) {
  return dsi::make_engine(worker_spec_from_json(spec).engine);
}

// The text of the exception `f` throws as E ("" and a test failure when it throws nothing).
template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

TEST(EngineFactory, CpuIsTheDefaultDevice) {
  for (const char* device : {"", "cpu"}) {
    nlohmann::json spec = llama_spec();
    if (*device) spec["device"] = device;
    auto e = make_engine(spec);
    EXPECT_NE(dynamic_cast<LlamaEngine*>(e.get()), nullptr) << device;
    EXPECT_EQ(e->device_name().rfind("cpu@", 0), 0u) << e->device_name();
  }
  // The CPU engine computes in FP32 whatever dtype the config names for the GPU engines.
  nlohmann::json spec = llama_spec();
  spec["dtype"] = "bf16";
  EXPECT_NE(dynamic_cast<LlamaEngine*>(make_engine(spec).get()), nullptr);
}

TEST(EngineFactory, CudaWithoutADeviceSaysWhy) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  nlohmann::json spec = llama_spec();
  spec["device"] = "cuda";
  const std::string why = error_of<GpuBindingError>([&] { make_engine(spec); });
  EXPECT_NE(why.find("device 'cuda' asked for"), std::string::npos) << why;
#ifdef DSI_WITH_CUDA
  EXPECT_TRUE(why.find("cudaGetDeviceCount") != std::string::npos ||
              why.find("no CUDA device") != std::string::npos)
      << why;
#else
  EXPECT_NE(why.find("built without CUDA"), std::string::npos) << why;
#endif
  spec["gpu"] = 0;  // an explicit index changes nothing without a device
  EXPECT_NE(error_of<GpuBindingError>([&] { make_engine(spec); }).find("device 'cuda' asked for"),
            std::string::npos);
}

TEST(EngineFactory, RefusesUnknownDeviceAndDtype) {
  nlohmann::json spec = llama_spec();
  spec["device"] = "tpu";
  const std::string device = error_of<std::invalid_argument>([&] { make_engine(spec); });
  EXPECT_NE(device.find("unknown device 'tpu'"), std::string::npos) << device;
  // The dtype is checked before a device is looked for, so the typo is what the user sees.
  for (const char* d : {"cpu", "cuda"}) {
    spec["device"] = d;
    spec["dtype"] = "fp16";
    const std::string dtype = error_of<std::invalid_argument>([&] { make_engine(spec); });
    EXPECT_NE(dtype.find("unknown dtype 'fp16'"), std::string::npos) << dtype;
  }
}

// 8-bit activations are a CPU engine option: named values only, and refused for the GPU engine
// before a device is looked for.
TEST(EngineFactory, ActivationsAreACpuOption) {
  nlohmann::json spec = llama_spec();
  spec["activations"] = "q8";
  EXPECT_NE(dynamic_cast<LlamaEngine*>(make_engine(spec).get()), nullptr);
  spec["activations"] = "int4";
  const std::string bad = error_of<std::invalid_argument>([&] { make_engine(spec); });
  EXPECT_NE(bad.find("unknown activations 'int4' (expected one of: f32, q8)"), std::string::npos)
      << bad;
  spec["activations"] = "q8";
  spec["device"] = "cuda";
  const std::string gpu = error_of<std::invalid_argument>([&] { make_engine(spec); });
  EXPECT_NE(gpu.find("activations 'q8' are for the CPU engine"), std::string::npos) << gpu;
}

TEST(EngineFactory, ParsesDtypes) {
  EXPECT_EQ(parse_cuda_dtype("f32"), CudaDtype::kF32);
  EXPECT_EQ(parse_cuda_dtype("f16"), CudaDtype::kF16);
  EXPECT_EQ(parse_cuda_dtype("bf16"), CudaDtype::kBF16);
  EXPECT_THROW(parse_cuda_dtype("F16"), std::invalid_argument);
  EXPECT_THROW(parse_cuda_dtype(""), std::invalid_argument);
}

}  // namespace
}  // namespace dsi
