#include "common/token_tree.h"

#include <algorithm>

namespace dsi {

TokenTree TokenTree::chain(std::span<const Token> tokens) {
  TokenTree t;
  for (Token x : tokens) t.add(x, t.size() - 1);
  return t;
}

int TokenTree::add(Token token, int parent) {
  tokens.push_back(token);
  parents.push_back(parent);
  return size() - 1;
}

int TokenTree::depth(int i) const {
  int d = 0;
  for (int p = parents[i]; p >= 0; p = parents[p]) ++d;
  return d;
}

std::vector<int> TokenTree::path_to(int i) const {
  std::vector<int> path;
  for (int n = i; n >= 0; n = parents[n]) path.push_back(n);
  std::reverse(path.begin(), path.end());
  return path;
}

std::vector<Token> TokenTree::path_tokens(int i) const {
  std::vector<Token> out;
  for (int n : path_to(i)) out.push_back(tokens[n]);
  return out;
}

std::vector<int> TokenTree::children(int parent) const {
  std::vector<int> out;
  for (int i = 0; i < size(); ++i) {
    if (parents[i] == parent) out.push_back(i);
  }
  return out;
}

bool TokenTree::is_path(std::span<const int> path) const {
  int prev = -1;
  for (int n : path) {
    if (n < 0 || n >= size() || parents[n] != prev) return false;
    prev = n;
  }
  return true;
}

bool TokenTree::grew_from(const TokenTree& other) const {
  return other.size() <= size() &&
         std::equal(other.tokens.begin(), other.tokens.end(), tokens.begin()) &&
         std::equal(other.parents.begin(), other.parents.end(), parents.begin());
}

int TokenTree::follow(std::span<const Token> path) const {
  int node = -1;
  for (Token t : path) {
    int next = -2;
    for (int i = node + 1; i < size(); ++i) {
      if (parents[i] == node && tokens[i] == t) {
        next = i;
        break;
      }
    }
    if (next < 0) return -2;
    node = next;
  }
  return node;
}

std::vector<int> TokenTree::first_path() const {
  std::vector<int> path;
  for (int i = 0; i < size(); ++i) {
    if (parents[i] == (path.empty() ? -1 : path.back())) path.push_back(i);
  }
  return path;
}

TokenTree TokenTree::below(int node) const {
  TokenTree sub;
  std::vector<int> index(size(), -1);  // node -> its index in sub
  for (int i = node + 1; i < size(); ++i) {
    const int p = parents[i];
    if (p == node) {
      index[i] = sub.add(tokens[i], -1);
    } else if (p > node && index[p] >= 0) {
      index[i] = sub.add(tokens[i], index[p]);
    }
  }
  return sub;
}

int TokenTree::height() const {
  int h = 0;
  for (int i = 0; i < size(); ++i) h = std::max(h, depth(i) + 1);
  return h;
}

std::string TokenTree::invalid() const {
  if (parents.size() != tokens.size()) {
    return std::to_string(tokens.size()) + " tokens but " + std::to_string(parents.size()) +
           " parents";
  }
  for (int i = 0; i < size(); ++i) {
    if (parents[i] < -1 || parents[i] >= i) {
      return "node " + std::to_string(i) + " has parent " + std::to_string(parents[i]) +
             " (a parent is -1 or an earlier node)";
    }
  }
  return "";
}

}  // namespace dsi
