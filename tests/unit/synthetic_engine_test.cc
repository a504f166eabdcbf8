#include "engines/synthetic_engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <thread>

namespace dsi {
namespace {

Token argmax_row(const Logits& l, int r) {
  auto row = l.row(r);
  return static_cast<Token>(std::max_element(row.begin(), row.end()) - row.begin());
}

TEST(SyntheticEngine, TargetTokenDependsOnWholeContextAndSurvivesRollback) {
  SyntheticParams p{.seed = 7, .vocab = 50, .ttft_ms = 0, .forward_ms = 0};
  SyntheticEngine e(p);
  CancelFlag never;
  std::vector<Token> ctx{1, 2, 3, 4};
  Logits a = e.forward(ctx, 2, never);
  ASSERT_EQ(a.n, 2);
  const Token t3 = argmax_row(a, 0), t4 = argmax_row(a, 1);
  e.truncate(3);
  Logits b = e.forward(std::vector<Token>{4}, 1, never);
  EXPECT_EQ(argmax_row(b, 0), t4);
  e.truncate(2);
  Logits c = e.forward(std::vector<Token>{3}, 1, never);
  EXPECT_EQ(argmax_row(c, 0), t3);
  // A different earlier token changes the prediction at this position (for almost every seed).
  SyntheticEngine f(p);
  Logits d = f.forward(std::vector<Token>{9, 2, 3}, 1, never);
  EXPECT_NE(argmax_row(d, 0), t3);
}

TEST(SyntheticEngine, DrafterAgreesAtRateA) {
  for (double a : {0.0, 0.5, 0.9, 1.0}) {
    int agree = 0;
    const int n = 20000;
    uint64_t h = synthetic::start_hash(3);
    for (int i = 0; i < n; ++i) {
      h = synthetic::extend_hash(h, i % 17);
      agree += synthetic::drafter_next(3, h, 64, a) == synthetic::target_next(3, h, 64);
    }
    EXPECT_NEAR(static_cast<double>(agree) / n, a, 0.015) << "a=" << a;
  }
}

// A cancelled forward throws Cancelled and leaves the cache as it was, whether the flag was up
// before the call or is raised by another thread while it sleeps. Its latency is an hour: a
// forward that ignored the flag would fail the test by its ctest timeout, so no wall-clock
// bound of the test's own (which a loaded machine could break) is needed.
TEST(SyntheticEngine, CancelStopsForwardAndKeepsCache) {
  constexpr double kHourMs = 3.6e6;
  SyntheticEngine e(SyntheticParams{.ttft_ms = kHourMs, .forward_ms = kHourMs});
  CancelFlag raised;
  raised.cancel();
  EXPECT_THROW(e.forward(std::vector<Token>{1, 2}, 1, raised), Cancelled);
  EXPECT_EQ(e.kv_len(), 0);

  SyntheticEngine f(SyntheticParams{.ttft_ms = 0, .forward_ms = kHourMs});
  CancelFlag never, flag;
  f.forward(std::vector<Token>{1, 2}, 0, never);  // prefill: free
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    flag.cancel();
  });
  EXPECT_THROW(f.forward(std::vector<Token>{3, 4, 5}, 1, flag), Cancelled);
  t.join();
  EXPECT_EQ(f.kv_len(), 2);
}

// The latency a forward costs (first forward ttft_ms, later ones forward_ms, plus per_token_ms
// per token; a rollback to 0 makes the next one a first forward again), and the forward sleeps
// at least that long. Only lower bounds on the clock: oversleeping is the machine's business.
TEST(SyntheticEngine, ForwardSleepsAtLeastItsCost) {
  SyntheticEngine e(SyntheticParams{.ttft_ms = 30, .forward_ms = 10, .per_token_ms = 2});
  CancelFlag never;
  auto timed_ms = [&](int n) {
    const auto t0 = std::chrono::steady_clock::now();
    e.forward(std::vector<Token>(n, 1), 1, never);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  EXPECT_DOUBLE_EQ(e.forward_cost_ms(3), 36);
  EXPECT_GE(timed_ms(3), 36);
  EXPECT_DOUBLE_EQ(e.forward_cost_ms(2), 14);
  EXPECT_GE(timed_ms(2), 14);
  EXPECT_DOUBLE_EQ(e.forward_cost_ms(1), 12);
  e.truncate(0);
  EXPECT_DOUBLE_EQ(e.forward_cost_ms(1), 32);
  EXPECT_GE(timed_ms(1), 32);
  EXPECT_EQ(e.kv_len(), 1);
  // The sleep itself: true at its deadline, false as soon as it sees the flag.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(cancellable_sleep_ms(5, never));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(5));
  CancelFlag raised;
  raised.cancel();
  EXPECT_FALSE(cancellable_sleep_ms(3.6e6, raised));
  // A flag raised while the forward sleeps wakes it at once, not at the end of a slice.
  CancelFlag later;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    later.cancel();
  });
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(cancellable_sleep_ms(3.6e6, later));
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(2));
  canceller.join();
  // The same flag, reset, sleeps to its deadline again.
  later.reset();
  const auto t2 = std::chrono::steady_clock::now();
  EXPECT_TRUE(later.sleep_until(t2 + std::chrono::milliseconds(20)));
  EXPECT_GE(std::chrono::steady_clock::now() - t2, std::chrono::milliseconds(20));
}

TEST(SyntheticEngine, KvExportImportReproducesPredictions) {
  SyntheticParams p{.seed = 11, .vocab = 32, .ttft_ms = 0, .forward_ms = 0};
  SyntheticEngine a(p), b(p);
  CancelFlag never;
  a.forward(std::vector<Token>{5, 6, 7}, 0, never);
  b.import_kv(a.export_kv(0, 3));
  EXPECT_EQ(argmax_row(a.forward(std::vector<Token>{8}, 1, never), 0),
            argmax_row(b.forward(std::vector<Token>{8}, 1, never), 0));
}

// Engine::forward_argmax's default (what the CPU engines use): the rows' greedy tokens of the
// same forward, the KV cache moved the same way; Logits::argmax breaks ties to the lowest
// index (kernels/argmax.h), which the GPU engine's device argmax must match.
TEST(SyntheticEngine, ForwardArgmaxIsArgmaxOfForward) {
  SyntheticParams p{.seed = 5, .vocab = 40, .ttft_ms = 0, .forward_ms = 0};
  SyntheticEngine a(p), b(p);
  CancelFlag never;
  const std::vector<Token> ctx{3, 1, 4, 1, 5};
  const Logits l = a.forward(ctx, 3, never);
  const std::vector<Token> ids = b.forward_argmax(ctx, 3, never);
  EXPECT_EQ(b.kv_len(), a.kv_len());
  ASSERT_EQ(ids.size(), 3u);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(ids[r], argmax_row(l, r)) << r;
  EXPECT_EQ(ids, l.argmax());
  EXPECT_TRUE(b.forward_argmax(std::vector<Token>{9}, 0, never).empty());
  EXPECT_EQ(b.kv_len(), 6);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Logits ties{4, 3, {1, 2, 2, /**/ -inf, -inf, -inf, /**/ nan, 5, 6, /**/ 0, nan, 7}};
  EXPECT_EQ(ties.argmax(), (std::vector<Token>{1, 0, 0, 2}));
}

}  // namespace
}  // namespace dsi
