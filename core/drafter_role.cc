// The drafter role (core/worker_roles.h): drafts along the current chain.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "core/staged_draft.h"
#include "core/tree_draft.h"
#include "core/worker_roles.h"

namespace dsi {

namespace {
// Prompt lookup matches the text's last 1 .. kStageNgram tokens.
constexpr int kStageNgram = 3;
}  // namespace

void DrafterRole::configure(std::vector<int32_t> targets, int stage_tokens, int index,
                            std::vector<int32_t> followers) {
  targets_ = std::move(targets);
  stage_tokens_ = stage_tokens;
  index_ = index;
  followers_ = std::move(followers);
  early_.clear();
  active_ = false;
}

void DrafterRole::announce(uint64_t chain, int pos, std::span<const Token> drafts, double busy_s) {
  size_t sent = 0;
  for (size_t i = 0; i < drafts.size() && can_draft(); ++i, ++sent) {
    seq_.push_back(drafts[i]);
    if (window_ > 0) --window_;
    // The coordinator acts on every notify_every-th draft of a chain (it launches a
    // verification) and on the last; it reads the others with those.
    const size_t n = seq_.size() - chain_base_;
    const bool wake = n % notify_every_ == 0 || !can_draft();
    ctx_.reply(msg::Draft{.chain = chain,
                          .pos = pos + static_cast<int>(i),
                          .token = drafts[i],
                          .busy_s = static_cast<float>(busy_s / drafts.size())},
               !wake);
  }
  // The other drafters propose along these drafts: each wakes at once to do so.
  if (sent > 0) {
    const msg::Follow f{
        .chain = chain, .pos = pos, .tokens = {drafts.begin(), drafts.begin() + sent}};
    for (int r : followers_) ctx_.link.send(r, Message{.run = ctx_.run, .body = f});
  }
}

void DrafterRole::step_staged(uint64_t chain, const std::vector<Token>& seq, size_t keep,
                              const std::vector<Token>& proposal, double t0) {
  const int pos = static_cast<int>(seq.size());
  try {
    const bool probs = needs_draft_probs(ctx_.sampling);
    const StagedDrafts d = staged_draft(*ctx_.engine, std::span(seq).subspan(keep), proposal, pos,
                                        ctx_.sampling, probs, ctx_.cancel);
    ctx_.cached = seq;
    ctx_.cached.insert(ctx_.cached.end(), d.tokens.begin(), d.tokens.end() - 1);
    if (probs) {
      for (size_t i = 0; i < d.probs.size(); ++i) {
        std::vector<uint8_t> bytes(d.probs[i].size() * sizeof(float));
        std::memcpy(bytes.data(), d.probs[i].data(), bytes.size());
        const int at = pos + static_cast<int>(i);
        for (int r : targets_)
          ctx_.data->send(r, DataKey{ctx_.run, DataKind::kDraftProbs, chain, at}, bytes);
      }
    }
    const double t1 = steady_now_s();
    ctx_.log.record({.kind = SpanKind::kDraft,
                     .id = chain,
                     .tokens = d.forward_tokens,
                     .drafts = static_cast<int32_t>(d.tokens.size()),
                     .pos = pos},
                    t0, t1);
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && active_) announce(chain, pos, d.tokens, t1 - t0);
  } catch (const Cancelled&) {
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .cancelled = true}, t0, steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

void DrafterRole::start(const msg::StartChain& m) {
  chain_ = m.chain;
  seq_ = m.committed;
  window_ = m.window;
  stop_len_ = m.stop_len;
  chain_base_ = m.committed.size();
  notify_every_ = std::max(1, m.notify_every);
  tree_ = m.tree;
  active_ = true;
  if (index_ > 0) {
    // A follower proposes from the chain's first position to its window (SI) or stop length.
    next_ = chain_base_;
    limit_ = static_cast<size_t>(std::max(0, m.stop_len));
    if (m.window >= 0) limit_ = std::min(limit_, chain_base_ + static_cast<size_t>(m.window));
    std::vector<msg::Follow> early;
    early.swap(early_);
    for (msg::Follow& f : early) follow(f);
  }
}

void DrafterRole::follow(const msg::Follow& m) {
  if (index_ == 0 || m.chain < chain_) return;  // not a follower, or a superseded chain
  if (m.chain > chain_ || !active_) {
    early_.push_back(m);
    return;
  }
  // One sender, in order: the drafts continue the sequence (anything else is stale).
  if (m.pos == static_cast<int>(seq_.size()))
    seq_.insert(seq_.end(), m.tokens.begin(), m.tokens.end());
}

void DrafterRole::step_follow(uint64_t chain, std::vector<Token> seq, size_t from, double t0) {
  // Propose at positions from .. to = |seq|: the logits after each of seq's last n tokens.
  const size_t to = seq.size();
  const int n = static_cast<int>(to - from + 1);
  const size_t keep = ctx_.reuse_prefix(seq, n);
  try {
    const auto todo = std::span(seq).subspan(keep);
    std::vector<Token> toks;
    if (ctx_.sampling.greedy()) {
      toks = ctx_.engine->forward_argmax(todo, n, ctx_.cancel);
    } else {
      // The Gumbel coupling: each drafter draws with the position's shared key.
      const Logits l = ctx_.engine->forward(todo, n, ctx_.cancel);
      for (int i = 0; i < n; ++i) {
        toks.push_back(draft_sample(sampling_probs(l.row(i), ctx_.sampling),
                                    static_cast<int>(from) + i, ctx_.sampling));
      }
    }
    ctx_.cached = seq;
    const double t1 = steady_now_s();
    ctx_.log.record({.kind = SpanKind::kDraft,
                     .id = chain,
                     .tokens = static_cast<int32_t>(todo.size()),
                     .drafts = n,
                     .pos = static_cast<int32_t>(from)},
                    t0, t1);
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && active_ && next_ == from) {
      next_ = to + 1;
      // SI waits for them; DSI reads them with its next message.
      ctx_.reply(msg::Proposals{.chain = chain,
                                .pos = static_cast<int32_t>(from),
                                .tokens = std::move(toks),
                                .busy_s = static_cast<float>(t1 - t0)},
                 window_ < 0);
    }
  } catch (const Cancelled&) {
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .cancelled = true}, t0, steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

void DrafterRole::step() {
  uint64_t chain;
  std::vector<Token> seq;
  size_t from = 0, to = 0;
  {
    std::lock_guard lk(mu_);
    chain = chain_;
    seq = seq_;
    if (index_ > 0) {
      from = next_;
      to = std::min(seq.size(), limit_ - 1);
      if (!can_draft() || from > to) {
        drafting_ = false;  // a new chain came between claiming the step and taking it
        return;
      }
    }
  }
  const double t0 = steady_now_s();
  if (index_ > 0) {
    seq.resize(to);
    step_follow(chain, std::move(seq), from, t0);
    return;
  }
  if (!tree_.empty()) {
    step_tree(chain, seq, t0);
    return;
  }
  const size_t keep = ctx_.reuse_prefix(seq, 1);
  if (stage_tokens_ > 0) {
    // Staged drafting: prompt lookup proposes what follows, one forward checks it.
    int budget;
    {
      std::lock_guard lk(mu_);
      budget = stop_len_ - static_cast<int>(seq.size());
      if (window_ > 0) budget = std::min(budget, window_);
    }
    const std::vector<Token> proposal =
        ngram_proposal(seq, kStageNgram, std::min(stage_tokens_, budget - 1));
    if (!proposal.empty()) {
      step_staged(chain, seq, keep, proposal, t0);
      return;
    }
  }
  try {
    const auto todo = std::span(seq).subspan(keep);
    const int pos = static_cast<int>(seq.size());
    Token tok;
    if (ctx_.sampling.greedy()) {
      tok = ctx_.engine->forward_argmax(todo, 1, ctx_.cancel)[0];
      ctx_.cached = seq;
    } else {
      Logits l = ctx_.engine->forward(todo, 1, ctx_.cancel);
      ctx_.cached = seq;
      // Draw the draft from q; the residual coupling's targets need q too, so it goes to
      // every target before the draft is announced (the Gumbel coupling compares tokens).
      const auto q = sampling_probs(l.row(0), ctx_.sampling);
      tok = draft_sample(q, pos, ctx_.sampling);
      if (needs_draft_probs(ctx_.sampling)) {
        std::vector<uint8_t> bytes(q.size() * sizeof(float));
        std::memcpy(bytes.data(), q.data(), bytes.size());
        for (int r : targets_) {
          ctx_.data->send(r, DataKey{ctx_.run, DataKind::kDraftProbs, chain, pos}, bytes);
        }
      }
    }
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .pos = pos}, t0, steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && active_) announce(chain, pos, std::span(&tok, 1), steady_now_s() - t0);
  } catch (const Cancelled&) {
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .cancelled = true}, t0, steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

void DrafterRole::keep_drafted_path(const std::vector<Token>& seq) {
  // The committed text that follows the last tree down its nodes: keep their KV (the engine
  // holds every node but the deepest level's) instead of computing them again.
  const TokenTree& t = last_tree_;
  const size_t base = ctx_.cached.size();
  if (t.size() == 0 || seq.size() <= base || common_prefix(ctx_.cached, seq) != base) return;
  const int ran = drafted_nodes_run(t);
  std::vector<int> path;
  for (size_t i = base; i < seq.size(); ++i) {
    int next = -1;
    for (int c : t.children(path.empty() ? -1 : path.back())) {
      if (c < ran && t.tokens[c] == seq[i]) {
        next = c;
        break;
      }
    }
    if (next < 0) break;
    path.push_back(next);
  }
  try {
    ctx_.engine->keep_path(t, path, ctx_.cancel);
  } catch (const std::logic_error&) {
    return;  // the engine no longer holds the tree's rows (a new run): compute them again
  }
  ctx_.cached.insert(ctx_.cached.end(), seq.begin() + base, seq.begin() + base + path.size());
}

void DrafterRole::step_tree(uint64_t chain, const std::vector<Token>& seq, double t0) {
  const int pos = static_cast<int>(seq.size());
  keep_drafted_path(seq);
  last_tree_ = {};
  const size_t keep = ctx_.reuse_prefix(seq, 1);
  try {
    std::vector<int> shape;
    {
      std::lock_guard lk(mu_);
      shape.assign(tree_.begin(), tree_.end());
      // No node at or past the stop length.
      shape.resize(std::clamp<int>(stop_len_ - pos, 1, static_cast<int>(shape.size())));
    }
    const Logits first = ctx_.engine->forward(std::span(seq).subspan(keep), 1, ctx_.cancel);
    ctx_.cached = seq;
    // The residual coupling's targets test each node's children against q after the node.
    const bool send_probs = needs_draft_probs(ctx_.sampling);
    std::vector<std::vector<float>> probs;
    const TokenTree tree = draft_tree(*ctx_.engine, first.row(0), shape, pos, ctx_.sampling,
                                      ctx_.cancel, send_probs ? &probs : nullptr);
    last_tree_ = tree;
    for (size_t i = 0; i < probs.size(); ++i) {
      if (probs[i].empty()) continue;
      std::vector<uint8_t> bytes(probs[i].size() * sizeof(float));
      std::memcpy(bytes.data(), probs[i].data(), bytes.size());
      for (int r : targets_) {
        ctx_.data->send(r, DataKey{ctx_.run, DataKind::kTreeProbs, chain, static_cast<int32_t>(i)},
                        bytes);
      }
    }
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .drafts = tree.size(), .pos = pos}, t0,
                    steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && active_) {
      if (window_ > 0) {
        window_ = 0;  // SI: one tree per chain
      } else {
        // DSI: the next tree grows below this one's first path, the chain's drafts.
        for (int node : tree.first_path()) seq_.push_back(tree.tokens[node]);
      }
      ctx_.reply(msg::DraftTree{.chain = chain,
                                .pos = pos,
                                .tokens = tree.tokens,
                                .parents = {tree.parents.begin(), tree.parents.end()},
                                .busy_s = static_cast<float>(steady_now_s() - t0)});
    }
  } catch (const Cancelled&) {
    ctx_.log.record({.kind = SpanKind::kDraft, .id = chain, .cancelled = true}, t0, steady_now_s());
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

}  // namespace dsi
