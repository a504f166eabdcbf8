// The KV handoff cost model (core/kv_handoff.h).
#include "core/kv_handoff.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

TEST(KvCostModel, CpuLikeForwardsPreferTransfer) {
  // A CPU target: 10 ms + 3 ms per token; 46 KB of KV per token over 5 GB/s.
  KvCostModel m(46e3, 5);
  for (int n : {1, 3, 5, 9, 2, 7}) m.observe(n, 0.010 + 0.003 * n);
  EXPECT_NEAR(m.recompute_s(4), 0.012, 1e-9);  // the slope, not the mean
  EXPECT_TRUE(m.prefer_transfer(4));
  EXPECT_NEAR(m.transfer_s(4), 200e-6 + 4 * 46e3 / 5e9, 1e-12);
}

TEST(KvCostModel, FlatGpuForwardsPreferRecompute) {
  // A memory-bound GPU target: a forward of 1..16 tokens costs the same 8 ms, so tokens
  // recomputed inside the next verification cost nothing, and a transfer costs its latency.
  KvCostModel m(256e3, 50);
  for (int n : {1, 4, 8, 16, 2}) m.observe(n, 0.008);
  EXPECT_NEAR(m.recompute_s(8), 0, 1e-12);
  EXPECT_FALSE(m.prefer_transfer(8));
}

TEST(KvCostModel, BeforeTheSlopeIsKnownChargesTheMean) {
  KvCostModel m(1e3, 10);
  EXPECT_EQ(m.recompute_s(10), 0);  // no observation yet: recompute (nothing to go on)
  EXPECT_FALSE(m.prefer_transfer(10));
  m.observe(5, 0.010);
  m.observe(5, 0.012);
  EXPECT_NEAR(m.recompute_s(10), 0.022, 1e-12);  // (22 ms / 10 tokens) per token
  EXPECT_TRUE(m.prefer_transfer(10));
}

}  // namespace
}  // namespace dsi
