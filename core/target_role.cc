// The target role (core/worker_roles.h): one verification of a draft sequence.
#include <fmt/format.h>

#include <cstring>

#include "core/worker_roles.h"

namespace dsi {
namespace {

// Speculative sampling: the decided tokens of a verification, with the drafter's probability
// vectors of m.chain from the data channel.
std::vector<Token> decide_sampled(WorkerContext& ctx, const msg::Verify& m, const Logits& l) {
  const int end = static_cast<int>(m.seq.size());
  const int first = end - l.n + 1;
  const uint32_t run = ctx.run;
  // Probability vectors of older chains will never be asked for again. (Only those: a KV
  // handoff's stream is a handoff number, and its KvExpect may still be queued.)
  ctx.data->discard([&](const DataKey& k) {
    return k.run != run || (k.kind == DataKind::kDraftProbs && k.stream < m.chain);
  });
  std::vector<float> p, q;
  auto p_at = [&](int pos) {
    p = sampling_probs(l.row(pos - first), ctx.sampling);
    return std::span<const float>(p);
  };
  auto q_at = [&](int pos) {
    std::vector<uint8_t> bytes;
    const DataKey key{run, DataKind::kDraftProbs, m.chain, pos};
    if (!ctx.data->recv(key, bytes, ctx.peer_deadline(), &ctx.cancel)) {
      if (ctx.cancel.cancelled()) throw Cancelled();
      throw Error(fmt::format(
          "the drafter's probabilities for position {} (chain {}) did not arrive within {} s", pos,
          m.chain, ctx.opts.peer_timeout_s));
    }
    if (bytes.size() != l.row(0).size() * sizeof(float)) {
      throw Error(fmt::format("drafter probabilities of {} bytes for a vocabulary of {}",
                              bytes.size(), l.vocab));
    }
    q.resize(l.vocab);
    std::memcpy(q.data(), bytes.data(), bytes.size());
    return std::span<const float>(q);
  };
  return verify_sampled(m.seq, first, p_at, q_at, BonusRule{m.bonus_anchor, m.bonus_period},
                        ctx.sampling);
}

}  // namespace

void verify(WorkerContext& ctx, const msg::Verify& m) {
  const double t0 = steady_now_s();
  const size_t n_logits = static_cast<size_t>(m.n_logits);
  const size_t keep = ctx.reuse_prefix(m.seq, n_logits);
  const auto todo = std::span(m.seq).subspan(keep);
  Span span{.kind = SpanKind::kVerify, .id = m.task, .drafts = m.n_logits - 1};
  try {
    std::vector<Token> y;
    if (ctx.sampling.greedy()) {
      // The engine picks the tokens (on its device): no logits cross to the host.
      y = ctx.engine->forward_argmax(todo, static_cast<int>(n_logits), ctx.cancel);
      ctx.cached = m.seq;
    } else {
      Logits l = ctx.engine->forward(todo, static_cast<int>(n_logits), ctx.cancel);
      ctx.cached = m.seq;
      y = decide_sampled(ctx, m, l);
    }
    if (ctx.imported_from < static_cast<int>(keep)) ++ctx.kv.verified_on_imported;
    const double t1 = steady_now_s();
    span.tokens = static_cast<int32_t>(todo.size());
    ctx.log.record(span, t0, t1);
    ctx.reply(msg::Result{.task = m.task,
                          .tokens = std::move(y),
                          .computed = static_cast<int32_t>(todo.size()),
                          .busy_s = t1 - t0});
  } catch (const Cancelled&) {
    const double t1 = steady_now_s();
    span.cancelled = true;
    ctx.log.record(span, t0, t1);
    ctx.reply(msg::Cancelled{.task = m.task, .busy_s = t1 - t0});
  }
}

}  // namespace dsi
