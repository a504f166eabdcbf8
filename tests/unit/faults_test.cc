// The fault-injection wrappers of launch/faults.h: a control channel that ends the process on
// time, an engine whose imported KV is junk, and how a session applies them.
#include "launch/faults.h"

#include <gtest/gtest.h>

#include "engines/engine_factory.h"
#include "engines/synthetic_engine.h"
#include "transport/data_channel.h"

namespace dsi {
namespace {

const SyntheticParams kParams{.seed = 3, .vocab = 64, .ttft_ms = 0, .forward_ms = 0};
const std::vector<Token> kPrompt = {5, 9, 11, 2, 7};
const std::vector<Token> kNext = {4};

// Logits of kNext after an engine that imported the KV of kPrompt from a clean source.
Logits after_import(Engine& dst, bool over_data_channel) {
  SyntheticEngine src(kParams);
  CancelFlag never;
  src.forward(kPrompt, 0, never);
  const int n = static_cast<int>(kPrompt.size());
  if (over_data_channel) {
    LoopbackDataHub hub(2);
    auto a = hub.channel(0), b = hub.channel(1);
    const DataKey key{1, DataKind::kKvCache, 1, 0};
    src.send_kv(*a, 1, key, 0, n);
    EXPECT_TRUE(dst.recv_kv(*b, key, 0, n, Clock::now() + std::chrono::seconds(5), nullptr));
  } else {
    dst.import_kv(src.export_kv(0, n));
  }
  EXPECT_EQ(dst.kv_len(), n);
  return dst.forward(kNext, 1, never);
}

TEST(Faults, KvCorruptingEngineImportsJunk) {
  for (bool channel : {false, true}) {
    SyntheticEngine clean(kParams);
    KvCorruptingEngine bad(std::make_unique<SyntheticEngine>(kParams));
    EXPECT_EQ(bad.vocab_size(), 64);
    const Logits want = after_import(clean, channel);
    const Logits got = after_import(bad, channel);
    EXPECT_EQ(got.n, 1);
    EXPECT_NE(got.data, want.data) << (channel ? "over the data channel" : "import_kv");
    // What it computes itself is the inner engine's.
    SyntheticEngine ref(kParams);
    KvCorruptingEngine wrapped(std::make_unique<SyntheticEngine>(kParams));
    CancelFlag never;
    EXPECT_EQ(wrapped.forward(kPrompt, 2, never).data, ref.forward(kPrompt, 2, never).data);
  }
}

TEST(FaultsDeathTest, ExitFaultEndsTheProcessOnTime) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto t0 = Clock::now();
  EXPECT_EXIT(
      {
        LoopbackHub hub(2);
        auto ch = hub.channel(1);
        FaultyControlChannel f(*ch, FaultyControlChannel::Fault::kExit, 100);
        // Nothing arrives: recv must not wait past the fault time.
        f.recv(Clock::now() + std::chrono::seconds(30));
        std::exit(0);
      },
      ::testing::ExitedWithCode(3), "");
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(10));
}

TEST(Faults, ChannelPassesFramesBeforeTheFault) {
  LoopbackHub hub(2);
  auto a = hub.channel(0), b = hub.channel(1);
  FaultyControlChannel f(*b, FaultyControlChannel::Fault::kExit, 60e3);
  EXPECT_EQ(f.rank(), 1);
  EXPECT_EQ(f.size(), 2);
  f.send(0, {1, 2, 3}, Traffic::kWork);
  auto got = a->recv(Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->bytes, (std::vector<uint8_t>{1, 2, 3}));
  a->send(1, {4});
  got = f.recv(Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->src, 0);
}

TEST(Faults, AppliedByName) {
  LoopbackHub hub(2);
  auto ch = hub.channel(1);
  WorkerOptions wo;
  EXPECT_NE(apply_fault("exit", 1000, *ch, wo), nullptr);
  EXPECT_NE(apply_fault("hang", 1000, *ch, wo), nullptr);
  EXPECT_FALSE(wo.engine_factory);
  EXPECT_EQ(apply_fault("kv_corrupt", 0, *ch, wo), nullptr);
  ASSERT_TRUE(wo.engine_factory);
  EXPECT_NE(dynamic_cast<KvCorruptingEngine*>(wo.engine_factory(EngineSpec{kParams}).get()),
            nullptr);
  try {
    apply_fault("crash", 0, *ch, wo);
    ADD_FAILURE() << "unknown fault accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("unknown fault 'crash'"), std::string::npos);
  }
}

}  // namespace
}  // namespace dsi
