// Drafting token trees (SpecInfer): a shape gives the branching factor per depth ([3, 2, 1, 1]:
// three candidates for the first position, two below each, then one), and the drafter expands
// the tree level by level, one tree forward per level, so a tree costs as many drafter
// forwards as a chain of its height. Greedy: a node's children are the drafter's best tokens
// after its path, best first, so the first child of every node is the chain's draft and the
// shape [1, 1, ..., 1] is a chain.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/token_tree.h"
#include "core/verify.h"
#include "engines/engine.h"

namespace dsi {

// Nodes of a full tree of `shape`; "" when every factor is at least 1 and the tree has at most
// max_nodes nodes, else what is wrong.
int tree_shape_nodes(const std::vector<int>& shape);
std::string invalid_tree_shape(const std::vector<int>& shape, int max_nodes);

// The b best tokens of a row of logits, best first (ties to the lower index, as argmax).
std::vector<Token> top_tokens(std::span<const float> logits, int b);

// The b children of a node whose drafter logits are `logits`, for position pos. Greedy: the
// top b. The Gumbel coupling: the drafter's own draw first (the chain's draft, so that q == p
// proposes the target's token), then the most probable others. The residual coupling: b
// draws i.i.d. from q, as multi-step speculative sampling needs (the first is the chain's
// draft; the others are keyed by (pos, sibling index)), repeats included.
std::vector<Token> tree_children(std::span<const float> logits, int b, int pos,
                                 const SamplingParams& sp);

// Tree drafting after a sequence of length pos0 whose next-token logits are `first` (the
// drafter's row after its last committed token, which its cache then holds). Runs
// forward_tree once per depth but the first; the drafter keeps the tree's KV, so keep_path
// can take an accepted path through the nodes it ran (drafted_nodes_run) afterwards.
// probs (when given) gets q after each node that has children: probs[node + 1] (node -1: the
// first row), empty for leaves.
TokenTree draft_tree(Engine& drafter, std::span<const float> first, const std::vector<int>& shape,
                     int pos0, const SamplingParams& sp, const CancelFlag& cancel,
                     std::vector<std::vector<float>>* probs = nullptr);

// draft_tree with greedy children.
TokenTree draft_tree_greedy(Engine& drafter, std::span<const float> first,
                            const std::vector<int>& shape, const CancelFlag& cancel);

// The nodes of a tree drafted by draft_tree_greedy that the drafter ran (all but the deepest
// level): the ones its keep_path can take.
int drafted_nodes_run(const TokenTree& tree);

}  // namespace dsi
