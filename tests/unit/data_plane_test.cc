#include "transport/data_plane.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

std::vector<WorkerGpu> two_gpus() {
  return {{1, "node-a", "0000:1b:00.0"}, {2, "node-a", "0000:1c:00.0"}};
}

TEST(DataPlane, AutoTakesNcclWhenEveryWorkerHasItsOwnGpu) {
  const auto c = choose_data_plane("auto", two_gpus());
  EXPECT_TRUE(c.nccl);
  EXPECT_FALSE(c.error);
  EXPECT_EQ(c.reason, "data plane: NCCL between 2 GPU ranks");
  EXPECT_TRUE(choose_data_plane("nccl", two_gpus()).nccl);
}

TEST(DataPlane, MpiModeNeverTakesNccl) {
  const auto c = choose_data_plane("mpi", two_gpus());
  EXPECT_FALSE(c.nccl);
  EXPECT_FALSE(c.error);
}

TEST(DataPlane, SharedGpuFallsBackToMpiNamingTheRanks) {
  std::vector<WorkerGpu> w = {
      {1, "node-a", "0000:1b:00.0"}, {2, "node-a", "0000:1c:00.0"}, {3, "node-a", "0000:1b:00.0"}};
  const auto c = choose_data_plane("auto", w);
  EXPECT_FALSE(c.nccl);
  EXPECT_FALSE(c.error);
  EXPECT_EQ(c.reason,
            "data plane: MPI host buffers (ranks 1 and 3 share GPU 0000:1b:00.0 on node-a; NCCL "
            "needs one GPU per rank)");
}

TEST(DataPlane, SameBusIdOnDifferentHostsIsNotShared) {
  std::vector<WorkerGpu> w = {{1, "node-a", "0000:1b:00.0"}, {2, "node-b", "0000:1b:00.0"}};
  EXPECT_TRUE(choose_data_plane("auto", w).nccl);
}

TEST(DataPlane, ForcedNcclWithSharedGpuIsAnErrorNamingTheRanks) {
  std::vector<WorkerGpu> w = {
      {1, "h", "0000:1b:00.0"}, {2, "h", "0000:1b:00.0"}, {3, "h", "0000:1b:00.0"}};
  const auto c = choose_data_plane("nccl", w);
  EXPECT_FALSE(c.nccl);
  EXPECT_TRUE(c.error);
  EXPECT_EQ(c.reason,
            "runtime.data_plane is nccl but ranks 1, 2 and 3 share GPU 0000:1b:00.0 on h; NCCL "
            "needs one GPU per rank");
}

TEST(DataPlane, WorkersWithoutGpu) {
  std::vector<WorkerGpu> some = {{1, "h", "0000:1b:00.0"}, {2, "h", ""}};
  auto c = choose_data_plane("auto", some);
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason,
            "data plane: MPI host buffers (rank 2 has no GPU; NCCL needs a GPU on every worker "
            "rank)");
  c = choose_data_plane("nccl", some);
  EXPECT_TRUE(c.error);
  EXPECT_NE(c.reason.find("rank 2 has no GPU"), std::string::npos) << c.reason;

  std::vector<WorkerGpu> none = {{1, "h", ""}, {2, "h", ""}};
  c = choose_data_plane("auto", none);
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "data plane: MPI host buffers (no worker rank runs on a GPU)");
  EXPECT_TRUE(choose_data_plane("nccl", none).error);
  EXPECT_TRUE(choose_data_plane("nccl", {}).error);
}

TEST(DataPlane, UnknownModeIsAnError) {
  const auto c = choose_data_plane("infiniband", two_gpus());
  EXPECT_TRUE(c.error);
  EXPECT_EQ(c.reason, "runtime.data_plane must be auto, mpi or nccl, not 'infiniband'");
}

}  // namespace
}  // namespace dsi
