// A token tree (SpecInfer's speculated token tree): nodes hold tokens, each follows its parent
// or, with parent -1, the sequence the tree grows from. Parents come before their children, so
// node order is a topological order and a node's ancestors have smaller indices. A chain is the
// tree whose node i follows node i - 1.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/token.h"

namespace dsi {

struct TokenTree {
  std::vector<Token> tokens;
  std::vector<int> parents;  // -1: follows the sequence; else an earlier node

  int size() const { return static_cast<int>(tokens.size()); }
  // A chain of `tokens` (node i follows node i - 1).
  static TokenTree chain(std::span<const Token> tokens);
  // Appends a node and returns its index.
  int add(Token token, int parent);
  // Depth of node i: 0 for a node that follows the sequence.
  int depth(int i) const;
  // The nodes from the top (depth 0) down to node i, inclusive.
  std::vector<int> path_to(int i) const;
  // Tokens of path_to(i).
  std::vector<Token> path_tokens(int i) const;
  // The children of node `parent` (-1: the nodes at depth 0), in index order.
  std::vector<int> children(int parent) const;
  // Whether `path` is a top-down path (path[0] at depth 0, each the parent of the next).
  bool is_path(std::span<const int> path) const;
  // Whether the first nodes of this tree are `other`'s (this one grew from it).
  bool grew_from(const TokenTree& other) const;
  // The node that the top-down path of `tokens` ends at (-1 for no tokens), or -2 when the
  // tree holds no such path.
  int follow(std::span<const Token> tokens) const;
  // The first child of each node from the top down (a drafter's chain, when children come
  // best first): its nodes.
  std::vector<int> first_path() const;
  // The nodes below `node` as a tree of their own (node's children at depth 0), in index
  // order; below(-1) is the whole tree.
  TokenTree below(int node) const;
  // The greatest depth + 1 (0 for an empty tree).
  int height() const;
  // "" if well formed (as many parents as tokens, each -1 or an earlier node), else what is
  // wrong.
  std::string invalid() const;
};

}  // namespace dsi
