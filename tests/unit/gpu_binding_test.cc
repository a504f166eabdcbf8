// GPU binding by node-local rank (common/gpu_binding.h): the selection rules run without a
// GPU; the error for a missing device is what a user sees on a GPU-less machine.
#include "common/gpu_binding.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace dsi {
namespace {

auto env_of(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(GpuBinding, LocalRankFromLaunchers) {
  EXPECT_EQ(local_rank_from_env(env_of({})).rank, -1);
  EXPECT_EQ(local_rank_from_env(env_of({{"SLURM_LOCALID", "3"}})).rank, 3);
  EXPECT_EQ(local_rank_from_env(env_of({{"SLURM_LOCALID", "3"}})).source, "SLURM_LOCALID");
  // mpirun inside a Slurm allocation sets both; Open MPI's own is the right one.
  const auto both =
      local_rank_from_env(env_of({{"SLURM_LOCALID", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "5"}}));
  EXPECT_EQ(both.rank, 5);
  EXPECT_EQ(both.source, "OMPI_COMM_WORLD_LOCAL_RANK");
  // Garbage is ignored rather than read as 0.
  EXPECT_EQ(local_rank_from_env(env_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "x1"}})).rank, -1);
  EXPECT_EQ(local_rank_from_env(env_of({{"SLURM_LOCALID", "-2"}})).rank, -1);
}

TEST(GpuBinding, RoundRobinOverVisibleDevices) {
  // 5 ranks on a 2-GPU node: 0,1,0,1,0 — several ranks share a GPU.
  const int want[] = {0, 1, 0, 1, 0};
  for (int r = 0; r < 5; ++r) EXPECT_EQ(choose_gpu(-1, r, 2), want[r]) << r;
  EXPECT_EQ(choose_gpu(-1, 7, 1), 0);
  EXPECT_EQ(choose_gpu(1, 0, 4), 1);  // an explicit index wins
}

TEST(GpuBinding, ErrorsNameTheProblem) {
  try {
    choose_gpu(-1, 0, 0);
    FAIL() << "no device must throw";
  } catch (const GpuBindingError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
  try {
    choose_gpu(2, 0, 2);
    FAIL() << "an index beyond the visible devices must throw";
  } catch (const GpuBindingError& e) {
    EXPECT_NE(std::string(e.what()).find("GPU 2"), std::string::npos) << e.what();
  }
}

TEST(GpuBinding, NoDeviceHereGivesAReason) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  try {
    bound_cuda_device(-1);
    FAIL() << "binding without a device must throw";
  } catch (const GpuBindingError& e) {
    EXPECT_NE(std::string(e.what()).find("device 'cuda' asked for"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsi
