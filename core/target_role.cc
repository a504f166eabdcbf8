// The target role (core/worker_roles.h): one verification of a draft sequence.
#include <fmt/format.h>

#include <cstring>
#include <string>

#include "core/worker_roles.h"

namespace dsi {
namespace {

// Before a sampled verification of `chain`: the drafter's probability vectors of older chains
// and every earlier run's data will never be asked for again. (Only those: a KV handoff's
// stream is a handoff number, and its KvExpect may still be queued.)
void discard_stale(WorkerContext& ctx, uint64_t chain) {
  const uint32_t run = ctx.run;
  ctx.data->discard([&](const DataKey& k) {
    return k.run != run || ((k.kind == DataKind::kDraftProbs || k.kind == DataKind::kTreeProbs) &&
                            k.stream < chain);
  });
}

// The drafter's probability vector q under `key` (kind, chain, index) from the data channel,
// into q; Cancelled when the task is cancelled meanwhile, Error naming `what` when it does not
// come within the peer timeout or has the wrong size.
std::span<const float> recv_probs(WorkerContext& ctx, const DataKey& key, int vocab,
                                  const std::string& what, std::vector<float>& q) {
  std::vector<uint8_t> bytes;
  if (!ctx.data->recv(key, bytes, ctx.peer_deadline(), &ctx.cancel)) {
    if (ctx.cancel.cancelled()) throw Cancelled();
    throw Error(
        fmt::format("the drafter's probabilities for {} (chain {}) did not arrive within {} s",
                    what, key.stream, ctx.opts.peer_timeout_s));
  }
  if (bytes.size() != static_cast<size_t>(vocab) * sizeof(float)) {
    throw Error(fmt::format("drafter probabilities of {} bytes for a vocabulary of {}",
                            bytes.size(), vocab));
  }
  q.resize(vocab);
  std::memcpy(q.data(), bytes.data(), bytes.size());
  return q;
}

// Speculative sampling: the decided tokens of a verification, with the drafter's probability
// vectors of m.chain from the data channel.
std::vector<Token> decide_sampled(WorkerContext& ctx, const msg::Verify& m, const Logits& l) {
  const int end = static_cast<int>(m.seq.size());
  const int first = end - l.n + 1;
  const uint32_t run = ctx.run;
  discard_stale(ctx, m.chain);
  std::vector<float> p, q;
  auto p_at = [&](int pos) {
    p = sampling_probs(l.row(pos - first), ctx.sampling);
    return std::span<const float>(p);
  };
  auto q_at = [&](int pos) {
    return recv_probs(ctx, DataKey{run, DataKind::kDraftProbs, m.chain, pos}, l.vocab,
                      fmt::format("position {}", pos), q);
  };
  return verify_sampled(m.seq, first, p_at, q_at, BonusRule{m.bonus_anchor, m.bonus_period},
                        ctx.sampling);
}

// A verification of a token tree: the committed tokens the cache lacks (at least the last, for
// its logits) as a chain, the tree below them, all in one tree forward; the accepted path's KV
// stays.
void verify_tree(WorkerContext& ctx, const msg::Verify& m) {
  const double t0 = steady_now_s();
  const size_t n_nodes = m.parents.size();
  if (n_nodes == 0 || n_nodes >= m.seq.size()) {
    throw Error(fmt::format("a tree verification of {} nodes in a sequence of {} tokens", n_nodes,
                            m.seq.size()));
  }
  const auto committed = std::span(m.seq).first(m.seq.size() - n_nodes);
  const TokenTree drafts{{m.seq.end() - n_nodes, m.seq.end()},
                         {m.parents.begin(), m.parents.end()}};
  if (const std::string why = drafts.invalid(); !why.empty()) {
    throw Error("a malformed token tree to verify: " + why);
  }
  const size_t keep = ctx.reuse_prefix(committed, 1);
  TokenTree v = TokenTree::chain(committed.subspan(keep));
  const int top = v.size();  // drafts node i is node top + i of v; -1 is top - 1
  for (int i = 0; i < drafts.size(); ++i) {
    v.add(drafts.tokens[i], drafts.parents[i] < 0 ? top - 1 : top + drafts.parents[i]);
  }
  Span span{.kind = SpanKind::kVerify, .id = m.task, .drafts = drafts.size()};
  try {
    const Logits l = ctx.engine->forward_tree(v, 0, ctx.cancel);
    auto row = [&](int node) { return l.row(top + node); };
    TreeVerdict verdict;
    if (ctx.sampling.greedy()) {
      const std::vector<Token> ys = l.argmax();
      verdict = verify_tree_exact(drafts, [&](int node) { return ys[top + node]; });
    } else {
      discard_stale(ctx, m.chain);
      std::vector<float> p, q;
      verdict = verify_tree_sampled(
          drafts, static_cast<int>(committed.size()),
          [&](int node) {
            p = sampling_probs(row(node), ctx.sampling);
            return std::span<const float>(p);
          },
          [&](int node) {
            // The residual coupling: q after the node, which the drafter sent with the tree.
            return recv_probs(ctx, DataKey{ctx.run, DataKind::kTreeProbs, m.chain, node + 1},
                              l.vocab, fmt::format("tree node {}", node), q);
          },
          ctx.sampling);
    }
    std::vector<int> path(top);
    for (int i = 0; i < top; ++i) path[i] = i;
    std::vector<Token> y;
    for (int node : verdict.path) {
      path.push_back(top + node);
      y.push_back(drafts.tokens[node]);
    }
    ctx.engine->keep_path(v, path, ctx.cancel);
    ctx.cached.assign(committed.begin(), committed.end());
    ctx.cached.insert(ctx.cached.end(), y.begin(), y.end());
    y.push_back(verdict.next);
    if (ctx.imported_from < static_cast<int>(keep)) ++ctx.kv.verified_on_imported;
    const double t1 = steady_now_s();
    span.tokens = v.size();
    ctx.log.record(span, t0, t1);
    ctx.reply(msg::Result{
        .task = m.task, .tokens = std::move(y), .computed = v.size(), .busy_s = t1 - t0});
  } catch (const Cancelled&) {
    const double t1 = steady_now_s();
    span.cancelled = true;
    ctx.log.record(span, t0, t1);
    ctx.reply(msg::Cancelled{.task = m.task, .busy_s = t1 - t0});
  }
}

}  // namespace

void verify(WorkerContext& ctx, const msg::Verify& m) {
  if (!m.parents.empty()) {
    verify_tree(ctx, m);
    return;
  }
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
