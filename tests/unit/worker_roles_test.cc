// The worker roles (core/worker_roles.h) on their own: what a role leaves in the data channel
// for the roles that run after it on the same rank.
#include "core/worker_roles.h"

#include <gtest/gtest.h>

#include "engines/synthetic_engine.h"

namespace dsi {
namespace {

TEST(TargetRole, ASampledVerificationKeepsTheKvHandoffsThatArrivedBeforeIt) {
  // A KV handoff is numbered by the coordinator's handoff counter, a verification by its
  // chain: the handoff's header can arrive before a verification of a later chain, and the
  // KvExpect that waits for it runs after that verification. Dropping it there left the
  // destination waiting for a header that had already come (a 60 s timeout in
  // mpi.llama_lossless.tiny.sampled).
  LoopbackHub hub(2);
  LoopbackDataHub data(2);
  auto coord = hub.channel(0);
  auto link = hub.channel(1);
  auto peer = data.channel(0);
  auto own = data.channel(1);
  WorkerContext ctx(*link, WorkerOptions{}, own.get());
  ctx.run = 3;
  ctx.engine = std::make_unique<SyntheticEngine>(
      SyntheticParams{.seed = 1, .vocab = 50, .ttft_ms = 0, .forward_ms = 0});
  ctx.sampling = {.temperature = 0.8f, .seed = 1};

  const DataKey header{3, DataKind::kKvHeader, 2, 0}, blob{3, DataKind::kKvCache, 2, 0};
  const DataKey old_probs{3, DataKind::kDraftProbs, 4, 5}, other_run{2, DataKind::kKvHeader, 9, 0};
  for (const DataKey& k : {header, blob, old_probs, other_run}) peer->send(1, k, {1, 2, 3});

  verify(ctx, msg::Verify{.task = 1, .chain = 7, .seq = {1, 2, 3}, .n_logits = 1});
  auto reply = coord->recv(Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(reply);
  EXPECT_TRUE(decode(reply->bytes).is<msg::Result>());

  std::vector<uint8_t> out;
  const auto now = Clock::now();
  EXPECT_TRUE(own->recv(header, out, now)) << "the handoff's header was discarded";
  EXPECT_TRUE(own->recv(blob, out, now)) << "the handoff's KV was discarded";
  EXPECT_FALSE(own->recv(old_probs, out, now)) << "an older chain's probabilities were kept";
  EXPECT_FALSE(own->recv(other_run, out, now)) << "an earlier run's data was kept";
}

}  // namespace
}  // namespace dsi
