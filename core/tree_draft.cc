#include "core/tree_draft.h"

#include <algorithm>
#include <numeric>

#include "common/rng.h"
#include "kernels/sampling.h"

namespace dsi {

int tree_shape_nodes(const std::vector<int>& shape) {
  long nodes = 0, level = 1;
  for (int b : shape) {
    level *= std::max(b, 0);
    nodes += level;
    if (nodes > (1 << 20)) return 1 << 20;  // far above any budget
  }
  return static_cast<int>(nodes);
}

std::string invalid_tree_shape(const std::vector<int>& shape, int max_nodes) {
  if (shape.empty()) return "a tree shape needs at least one depth";
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 1) {
      return "the branching factor at depth " + std::to_string(d) + " is " +
             std::to_string(shape[d]) + " (at least 1)";
    }
  }
  if (const int n = tree_shape_nodes(shape); n > max_nodes) {
    return "the tree has " + std::to_string(n) + " nodes, more than the " +
           std::to_string(max_nodes) + " allowed";
  }
  return "";
}

std::vector<Token> top_tokens(std::span<const float> logits, int b) {
  std::vector<Token> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  b = std::min<int>(b, static_cast<int>(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + b, idx.end(), [&](Token x, Token y) {
    return logits[x] > logits[y] || (logits[x] == logits[y] && x < y);
  });
  idx.resize(b);
  return idx;
}

std::vector<Token> tree_children(std::span<const float> logits, int b, int pos,
                                 const SamplingParams& sp) {
  if (sp.greedy()) return top_tokens(logits, b);
  const auto q = sampling_probs(logits, sp);
  std::vector<Token> out = {draft_sample(q, pos, sp)};
  if (sp.coupling == Coupling::kResidual) {
    for (int j = 1; j < b; ++j) {
      const double u = rng_uniform_at(sp.seed, sp.request, static_cast<uint32_t>(pos),
                                      RngPurpose::kSample, static_cast<uint32_t>(j));
      out.push_back(kernels::sample_cdf_cpu(q.data(), static_cast<int>(q.size()), u));
    }
    return out;
  }
  for (Token t : top_tokens(q, b)) {
    if (static_cast<int>(out.size()) == b) break;
    if (t != out[0]) out.push_back(t);
  }
  return out;
}

TokenTree draft_tree(Engine& drafter, std::span<const float> first, const std::vector<int>& shape,
                     int pos0, const SamplingParams& sp, const CancelFlag& cancel,
                     std::vector<std::vector<float>>* probs) {
  TokenTree tree;
  if (shape.empty()) return tree;
  if (probs) probs->assign(1, sampling_probs(first, sp));
  for (Token t : tree_children(first, shape[0], pos0, sp)) tree.add(t, -1);
  int level_begin = 0;
  for (size_t d = 1; d < shape.size(); ++d) {
    const int level_end = tree.size();
    const Logits l = drafter.forward_tree(tree, level_begin, cancel);
    const int pos = pos0 + static_cast<int>(d);
    if (probs) probs->resize(level_end + 1);
    for (int node = level_begin; node < level_end; ++node) {
      if (probs) (*probs)[node + 1] = sampling_probs(l.row(node - level_begin), sp);
      for (Token t : tree_children(l.row(node - level_begin), shape[d], pos, sp)) {
        tree.add(t, node);
      }
    }
    level_begin = level_end;
  }
  if (probs) probs->resize(tree.size() + 1);  // leaves: none
  return tree;
}

TokenTree draft_tree_greedy(Engine& drafter, std::span<const float> first,
                            const std::vector<int>& shape, const CancelFlag& cancel) {
  return draft_tree(drafter, first, shape, 0, SamplingParams{}, cancel);
}

int drafted_nodes_run(const TokenTree& tree) {
  const int deepest = tree.height() - 1;
  int ran = 0;
  while (ran < tree.size() && tree.depth(ran) < deepest) ++ran;
  return ran;
}

}  // namespace dsi
