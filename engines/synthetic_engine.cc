#include "engines/synthetic_engine.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common/cpu_relax.h"

namespace dsi {
namespace synthetic {
namespace {
// splitmix64 finaliser: a cheap, well-mixed 64-bit permutation.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
constexpr uint64_t kTargetSalt = 0x7461726765740000ULL;
constexpr uint64_t kDrawSalt = 0x6472617700000000ULL;
constexpr uint64_t kWrongSalt = 0x77726f6e67000000ULL;
constexpr uint64_t kSecondSalt = 0x7365636f6e640000ULL;
}  // namespace

uint64_t start_hash(uint64_t seed) {
  return mix(seed ^ 0x5eed5eed5eed5eedULL);
}
uint64_t extend_hash(uint64_t h, Token t) {
  return mix(h ^ mix(static_cast<uint64_t>(t) + 1));
}

Token target_next(uint64_t seed, uint64_t h, int vocab) {
  return static_cast<Token>(mix(h ^ seed ^ kTargetSalt) % static_cast<uint64_t>(vocab));
}

namespace {
// Stream 0 keeps the salts of a single drafter; every other stream draws independently.
uint64_t stream_salt(uint32_t stream) {
  return stream == 0 ? 0 : mix(0x73747265616d0000ULL + stream);
}
}  // namespace

Token drafter_next(uint64_t seed, uint64_t h, int vocab, double acceptance, uint32_t stream) {
  const Token right = target_next(seed, h, vocab);
  const uint64_t s = stream_salt(stream);
  const double u = static_cast<double>(mix(h ^ seed ^ kDrawSalt ^ s) >> 11) * 0x1.0p-53;
  if (u < acceptance || vocab < 2) return right;
  const uint64_t off = 1 + mix(h ^ seed ^ kWrongSalt ^ s) % static_cast<uint64_t>(vocab - 1);
  return static_cast<Token>((static_cast<uint64_t>(right) + off) % static_cast<uint64_t>(vocab));
}
double acceptance_at(const SyntheticParams& p, size_t pos) {
  if (p.phases.empty()) return p.acceptance;
  const size_t start = static_cast<size_t>(std::max(0, p.phase_start));
  const size_t i = pos < start ? 0 : (pos - start) / static_cast<size_t>(std::max(1, p.phase_len));
  return p.phases[std::min(i, p.phases.size() - 1)];
}

void logits(const SyntheticParams& p, uint64_t h, size_t pos, float* out) {
  auto noise = [&](uint64_t salt, int i) {
    return static_cast<float>(mix(h ^ p.seed ^ salt ^ mix(static_cast<uint64_t>(i))) >> 40) *
           0x1.0p-24f * kSpread;
  };
  const float w = p.drafter ? static_cast<float>(p.overlap) : 1.0f;
  for (int i = 0; i < p.vocab; ++i) {
    out[i] = w * noise(kTargetSalt, i);
    if (p.drafter) out[i] += (1 - w) * noise(kWrongSalt ^ stream_salt(p.stream), i);
  }
  const Token peak = p.drafter ? drafter_next(p.seed, h, p.vocab, acceptance_at(p, pos), p.stream)
                               : target_next(p.seed, h, p.vocab);
  out[peak] += kPeak;
  if (p.drafter && p.second > 0) {
    const Token right = target_next(p.seed, h, p.vocab);
    const double u =
        static_cast<double>(mix(h ^ p.seed ^ kSecondSalt ^ stream_salt(p.stream)) >> 11) *
        0x1.0p-53;
    // Below the peak (>= kPeak) and above every other token (< kSpread).
    if (right != peak && u < p.second) out[right] = kPeak - 1e-3f;
  }
}
}  // namespace synthetic

bool cancellable_sleep_ms(double ms, const CancelFlag& cancel) {
  // A device finishes a forward on time and its host thread sees it at once (CUDA's
  // synchronisation spins by default): sleep on the cancel flag (raising it wakes the sleeper;
  // the futex sleeps with no timer slack, which would stretch it by 50 us), then spin the last
  // kSpin, which a sleeping thread would overshoot by a wake-up from an idle CPU (tens of
  // microseconds on a VM).
  constexpr auto kSpin = std::chrono::microseconds(60);
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double, std::milli>(std::max(0.0, ms)));
  if (!cancel.sleep_until(deadline - kSpin)) return false;
  while (Clock::now() < deadline) {
    if (cancel.cancelled()) return false;
    cpu_relax();
  }
  return !cancel.cancelled();
}

SyntheticEngine::SyntheticEngine(SyntheticParams p) : p_(p) {
  if (p_.vocab < 2) throw std::invalid_argument("synthetic vocab must be at least 2");
}

double SyntheticEngine::forward_cost_ms(int n_tokens) const {
  return (hashes_.empty() ? p_.ttft_ms : p_.forward_ms) + n_tokens * p_.per_token_ms;
}

Logits SyntheticEngine::forward(std::span<const Token> tokens, int n_logits,
                                const CancelFlag& cancel) {
  const int n = static_cast<int>(tokens.size());
  if (n_logits < 0 || n_logits > n) throw std::invalid_argument("n_logits out of range");
  tree_ = {};
  if (!cancellable_sleep_ms(forward_cost_ms(n), cancel)) throw Cancelled();
  Logits out{n_logits, p_.vocab, std::vector<float>(static_cast<size_t>(n_logits) * p_.vocab)};
  uint64_t h = hashes_.empty() ? synthetic::start_hash(p_.seed) : hashes_.back();
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= p_.vocab) throw std::out_of_range("token id out of vocab");
    h = synthetic::extend_hash(h, tokens[i]);
    hashes_.push_back(h);
    const int row = i - (n - n_logits);
    if (row >= 0) {
      synthetic::logits(p_, h, hashes_.size(),
                        out.data.data() + static_cast<size_t>(row) * p_.vocab);
    }
  }
  return out;
}

Logits SyntheticEngine::forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) {
  check_tree_forward(tree_, tree, from);
  const int size = tree.size();
  for (Token t : tree.tokens) {
    if (t < 0 || t >= p_.vocab) throw std::out_of_range("token id out of vocab");
  }
  tree_ = {};
  if (!cancellable_sleep_ms(forward_cost_ms(size - from), cancel)) throw Cancelled();
  Logits out{size - from, p_.vocab,
             std::vector<float>(static_cast<size_t>(size - from) * p_.vocab)};
  const uint64_t base = hashes_.empty() ? synthetic::start_hash(p_.seed) : hashes_.back();
  tree_hashes_.resize(size);
  for (int i = from; i < size; ++i) {
    const int p = tree.parents[i];
    tree_hashes_[i] = synthetic::extend_hash(p < 0 ? base : tree_hashes_[p], tree.tokens[i]);
    synthetic::logits(p_, tree_hashes_[i], hashes_.size() + tree.depth(i) + 1,
                      out.data.data() + static_cast<size_t>(i - from) * p_.vocab);
  }
  tree_ = tree;
  return out;
}

void SyntheticEngine::keep_path(const TokenTree& tree, std::span<const int> path,
                                const CancelFlag& cancel) {
  (void)cancel;
  if (!check_keep_path(tree_, tree, path)) return;
  for (int node : path) hashes_.push_back(tree_hashes_[node]);
  tree_ = {};
}

void SyntheticEngine::truncate(int n) {
  if (n < 0 || n > kv_len()) throw std::out_of_range("truncate beyond the KV cache");
  hashes_.resize(n);
  tree_ = {};
}

KvBlob SyntheticEngine::export_kv(int begin, int end) const {
  if (begin < 0 || end > kv_len() || begin > end) throw std::out_of_range("KV range");
  KvBlob kv{begin, end, std::vector<uint8_t>((end - begin) * sizeof(uint64_t))};
  std::memcpy(kv.bytes.data(), hashes_.data() + begin, kv.bytes.size());
  return kv;
}

void SyntheticEngine::import_kv(const KvBlob& kv) {
  if (kv.begin != kv_len()) throw std::invalid_argument("KV import must start at kv_len()");
  tree_ = {};
  const size_t n = kv.bytes.size() / sizeof(uint64_t);
  const size_t old = hashes_.size();
  hashes_.resize(old + n);
  std::memcpy(hashes_.data() + old, kv.bytes.data(), kv.bytes.size());
}

std::vector<Token> synthetic_prompt(uint64_t seed, int n, int vocab) {
  std::vector<Token> p;
  uint64_t h = synthetic::start_hash(seed ^ 0x70726f6d7074ULL);
  for (int i = 0; i < n; ++i) {
    h = synthetic::extend_hash(h, i);
    p.push_back(static_cast<Token>(h % static_cast<uint64_t>(vocab)));
  }
  return p;
}

}  // namespace dsi
