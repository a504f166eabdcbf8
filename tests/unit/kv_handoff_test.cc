// The KV handoff cost model and planner (core/kv_handoff.h).
#include "core/kv_handoff.h"

#include <gtest/gtest.h>

#include <vector>

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

namespace dsi {
namespace {

// The KV handoff planner (core/kv_handoff.h): the scheduler's model of each target's cache.
KvHandoffOptions kv_options(KvPolicy policy, bool shared_device = false) {
  return KvHandoffOptions{
      .policy = policy, .bytes_per_token = 1e3, .gbps = 10, .shared_device = shared_device};
}

const std::vector<Token> kPrefix = {7, 8, 9};
const std::vector<Token> kCommitted = {7, 8, 9, 10, 11, 12};

TEST(KvPlanner, AlwaysHandsTheCommittedRangeEachTargetLacks) {
  KvPlanner p(3, kv_options(KvPolicy::kAlways));
  ASSERT_TRUE(p.enabled());
  for (int t = 0; t < 3; ++t) p.computed(t, kPrefix);
  p.computed(1, std::vector<Token>{7, 8, 9, 10});
  // Target 0 verified the committed tokens and one wrong draft past them.
  p.computed(0, std::vector<Token>{7, 8, 9, 10, 11, 12, 99});
  const auto r = p.plan_committed(0, kCommitted);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ((std::vector<int>{r[0].src, r[0].dst, r[0].begin, r[0].end}),
            (std::vector<int>{0, 1, 4, 6}));
  EXPECT_EQ((std::vector<int>{r[1].src, r[1].dst, r[1].begin, r[1].end}),
            (std::vector<int>{0, 2, 3, 6}));
  // The destinations now hold the committed range (not the source's wrong draft).
  EXPECT_EQ(p.cached(1), kCommitted);
  EXPECT_EQ(p.cached(2), kCommitted);
  // Nothing is planned twice: every target has the range.
  EXPECT_TRUE(p.plan_committed(0, kCommitted).empty());
}

TEST(KvPlanner, NoHandoffToATargetThatHasTheRange) {
  KvPlanner p(3, kv_options(KvPolicy::kAlways));
  p.computed(0, std::vector<Token>{7, 8, 9, 10});
  p.computed(1, kCommitted);                           // ahead of the source
  p.computed(2, std::vector<Token>{7, 8, 9, 10, 50});  // as far as the source, then a wrong draft
  EXPECT_TRUE(p.plan_committed(0, kCommitted).empty());
  // Target 1 holds more than target 0: from it, targets 0 and 2 get [4, 6).
  const auto r = p.plan_committed(1, kCommitted);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].dst, 0);
  EXPECT_EQ(r[1].dst, 2);
  EXPECT_EQ(r[1].begin, 4);
}

TEST(KvPlanner, NeverAndUnavailablePlanNothing) {
  KvPlanner never(3, kv_options(KvPolicy::kNever, true));
  KvPlanner one(1, kv_options(KvPolicy::kAlways, true));
  KvPlanner no_bytes(3, {.policy = KvPolicy::kAlways, .bytes_per_token = 0});
  for (KvPlanner* p : {&never, &one, &no_bytes}) {
    EXPECT_FALSE(p->enabled());
    EXPECT_FALSE(p->hand_over_prompt(kPrefix.size()));
    p->computed(0, kCommitted);
    EXPECT_TRUE(p->plan_committed(0, kCommitted).empty());
  }
}

TEST(KvPlanner, AutoRecomputesShortGapsAndTransfersLongOnes) {
  // 0.1 ms per token recomputed against 200 us + 1 kB / 10 GB/s per transfer: a gap of one
  // token is cheaper to recompute, one of ten tokens to transfer.
  KvPlanner p(2, kv_options(KvPolicy::kAuto));
  for (int n : {1, 2, 4, 8}) p.observe(n, 0.005 + 1e-4 * n);
  EXPECT_NEAR(p.cost().recompute_s(1), 1e-4, 1e-12);
  std::vector<Token> c(20);
  for (int i = 0; i < 20; ++i) c[i] = i;
  p.computed(0, std::span(c).first(10));
  p.computed(1, std::span(c).first(9));
  EXPECT_TRUE(p.plan_committed(0, std::span(c).first(10)).empty());
  EXPECT_EQ(p.cached(1).size(), 9u);  // unchanged: no handoff
  p.computed(0, c);
  const auto r = p.plan_committed(0, c);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].begin, 9);
  EXPECT_EQ(r[0].end, 20);
}

TEST(KvPlanner, ACancelTrimsTheModelToWhatTheWorkerKeeps) {
  KvPlanner p(2, kv_options(KvPolicy::kAlways));
  p.computed(1, kCommitted);
  // A verification of committed[0, 4) + two drafts (3 positions checked) keeps [0, 3).
  p.cancelled(1, std::vector<Token>{7, 8, 9, 10, 40, 41}, 3);
  EXPECT_EQ(p.cached(1), (std::vector<Token>{7, 8, 9}));
  // One that diverges earlier keeps only the common prefix.
  p.cancelled(1, std::vector<Token>{7, 5, 9, 10, 40}, 1);
  EXPECT_EQ(p.cached(1), (std::vector<Token>{7}));
}

TEST(KvPlanner, ThePromptIsHandedOverOnSharedDevicesOrAlways) {
  EXPECT_TRUE(KvPlanner(2, kv_options(KvPolicy::kAuto, true)).hand_over_prompt(3));
  EXPECT_FALSE(KvPlanner(2, kv_options(KvPolicy::kAuto, false)).hand_over_prompt(3));
  EXPECT_TRUE(KvPlanner(2, kv_options(KvPolicy::kAlways, false)).hand_over_prompt(3));
  EXPECT_FALSE(KvPlanner(2, kv_options(KvPolicy::kAlways, true)).hand_over_prompt(0));
}

TEST(KvPolicy, NamesRoundTrip) {
  for (KvPolicy p : {KvPolicy::kAuto, KvPolicy::kAlways, KvPolicy::kNever}) {
    EXPECT_EQ(parse_kv_policy(kv_policy_name(p)), p);
  }
  EXPECT_FALSE(parse_kv_policy("sometimes"));
}

}  // namespace
}  // namespace dsi
