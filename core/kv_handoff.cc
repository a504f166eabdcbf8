#include "core/kv_handoff.h"

#include <algorithm>
#include <stdexcept>

namespace dsi {

KvCostModel::KvCostModel(double bytes_per_token, double gbps, double fixed_s)
    : bytes_per_token_(bytes_per_token), bytes_per_s_(gbps * 1e9), fixed_s_(fixed_s) {}

void KvCostModel::observe(int tokens, double seconds) {
  if (tokens <= 0 || seconds < 0) return;
  n_ += 1;
  sx_ += tokens;
  sy_ += seconds;
  sxx_ += static_cast<double>(tokens) * tokens;
  sxy_ += tokens * seconds;
}

double KvCostModel::recompute_s(int tokens) const {
  if (n_ == 0) return 0;
  const double var = sxx_ / n_ - (sx_ / n_) * (sx_ / n_);
  // Lengths that differ by less than a token on average say nothing about the slope.
  const double per_token =
      n_ >= 4 && var >= 0.25 ? (sxy_ / n_ - (sx_ / n_) * (sy_ / n_)) / var : sy_ / sx_;
  return std::max(0.0, per_token) * tokens;
}

double KvCostModel::transfer_s(int tokens) const {
  return fixed_s_ + tokens * bytes_per_token_ / bytes_per_s_;
}

const char* kv_policy_name(KvPolicy p) {
  switch (p) {
    case KvPolicy::kAuto:
      return "auto";
    case KvPolicy::kAlways:
      return "always";
    case KvPolicy::kNever:
      return "never";
  }
  return "?";
}

std::optional<KvPolicy> parse_kv_policy(std::string_view s) {
  if (s == "auto") return KvPolicy::kAuto;
  if (s == "always") return KvPolicy::kAlways;
  if (s == "never") return KvPolicy::kNever;
  return std::nullopt;
}

KvPlanner::KvPlanner(int n_targets, KvHandoffOptions opts)
    : opts_(opts),
      enabled_(opts.policy != KvPolicy::kNever && n_targets >= 2 && opts.bytes_per_token > 0),
      cost_(opts.bytes_per_token, opts.gbps),
      cached_(n_targets) {
  if (enabled_ && !(opts.gbps > 0)) {
    throw std::invalid_argument("KV handoff needs a data-plane bandwidth above 0 GB/s");
  }
}

void KvPlanner::computed(int t, std::span<const Token> seq) {
  cached_.at(t).assign(seq.begin(), seq.end());
}

void KvPlanner::cancelled(int t, std::span<const Token> seq, int n_logits) {
  auto& kv = cached_.at(t);
  const size_t kept = seq.size() - std::min(seq.size(), static_cast<size_t>(std::max(n_logits, 0)));
  kv.resize(std::min(common_prefix(kv, seq), kept));
}

bool KvPlanner::hand_over_prompt(size_t prefix_len) const {
  return enabled_ && prefix_len > 0 && (opts_.policy == KvPolicy::kAlways || opts_.shared_device);
}

std::vector<KvRange> KvPlanner::plan_committed(int src, std::span<const Token> committed,
                                               int n_active) {
  std::vector<KvRange> out;
  if (!enabled_) return out;
  const size_t end = common_prefix(cached_.at(src), committed);
  const int n = n_active < 0 ? static_cast<int>(cached_.size())
                             : std::min(n_active, static_cast<int>(cached_.size()));
  for (int t = 0; t < n; ++t) {
    const size_t have = common_prefix(cached_[t], committed);
    if (t == src || end <= have) continue;  // t holds the range already (or more of it)
    const int gap = static_cast<int>(end - have);
    if (opts_.policy == KvPolicy::kAuto && !cost_.prefer_transfer(gap)) continue;
    out.push_back(KvRange{src, t, static_cast<int>(have), static_cast<int>(end)});
    cached_[t].assign(committed.begin(), committed.begin() + end);
  }
  return out;
}

void KvPlanner::handed_over(const KvRange& r, std::span<const Token> committed) {
  cached_.at(r.dst).assign(committed.begin(), committed.begin() + r.end);
}

}  // namespace dsi
