#include "core/adapt.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dsi {

double predict_ms(const ChainPlan& p, const LatencyInputs& in) {
  if (p.sp < 1 || p.lookahead < 1) return std::numeric_limits<double>::infinity();
  if (p.mode != Mode::kDsi) return ideal_latency_ms(p.mode, in, p.lookahead);
  const double c = in.c_ms;
  if (in.a >= 1) return std::max(c, 1e-9);
  const double a = std::max(0.0, in.a);
  // A chain whose first wrong draft is its r-th (P(r) = a^(r-1) (1 - a)) ends when a task
  // covering position r has finished and draft r has arrived (at r c). Which task covers r
  // when does not depend on r: it is one deterministic schedule, up to R drafts. The chain's
  // task with no drafts starts at once; the task made at the j-th draft (j a multiple of k)
  // starts on the first free target, or waits as the newest (an older waiting one is dropped).
  // (Clamped as a double: near a = 1 the quotient exceeds any int.)
  const int R =
      a <= 0 ? 1
             : static_cast<int>(std::clamp(std::ceil(std::log(1e-4) / std::log(a)), 1.0, 512.0));
  std::vector<double> free(p.sp, 0.0);
  std::vector<std::pair<int, double>> done;  // (positions covered, finish time), by launch
  free[0] = in.target_ms(1);
  done.push_back({1, free[0]});
  int last_d = 0;
  auto launch = [&](double at, int d) {
    auto f = std::min_element(free.begin(), free.end());
    const double start = std::max(at, *f);
    *f = start + in.target_ms(d - last_d + 1);
    done.push_back({d + 1, *f});  // its drafts, and the token after them
    last_d = d;
  };
  const int k = p.lookahead;
  while (done.back().first < R + 1) {
    const double f = *std::min_element(free.begin(), free.end());
    const int next = last_d + k;
    if (f <= next * c) {
      launch(next * c, next);  // a target is free when the task is made
    } else {
      // Every target is busy: when one frees, the newest task made by then starts.
      const int by_then =
          c > 0 ? static_cast<int>(std::min(std::floor(f / (k * c)), 1e6)) * k : R + k;
      launch(f, std::clamp(by_then, next, R + k));
    }
  }
  // Earliest finish of a task covering position r, for r = R .. 1.
  std::vector<double> cover(R + 2, std::numeric_limits<double>::infinity());
  for (const auto& [pos, t] : done) {
    const int i = std::min(pos, R + 1);
    cover[i] = std::min(cover[i], t);
  }
  for (int r = R; r >= 1; --r) cover[r] = std::min(cover[r], cover[r + 1]);
  double time = 0, tokens = 0, pr = 1 - a;
  for (int r = 1; r <= R; ++r, pr *= a) {
    time += pr * std::max(r * c, cover[r]);
    tokens += pr * r;
  }
  return time / tokens;
}

Adapter::Adapter(AdaptOptions opts, ChainPlan initial)
    : opts_(opts), cur_(initial), probe_gap_(opts.probe_tokens) {
  opts_.n_targets = std::max(1, opts_.n_targets);
  opts_.max_k = std::max(1, opts_.max_k);
}

void Adapter::forward(int tokens, double seconds) {
  if (tokens < 1 || seconds <= 0) return;
  // T(1) from the one-token forwards (every non-SI step, every DSI chain's first task), the
  // slope from the longer ones against it: a least-squares fit over a few lengths swings
  // wildly with one slow forward. Kept by the mode running: DSI's forwards share the CPUs
  // or the device with the drafter and the other targets, non-SI's and SI's do not.
  constexpr double kWeight = 0.2;
  if (skip_forward_) {  // the first after a switch: shared with the earlier plan's tasks
    skip_forward_ = false;
    return;
  }
  Timing& tm = timing_[static_cast<int>(cur_.mode)];
  const double y = seconds * 1e3;
  if (tokens == 1) {
    tm.t_one = tm.ones == 0 ? y : (1 - kWeight) * tm.t_one + kWeight * y;
    ++tm.ones;
  } else if (tm.ones > 0) {
    const double slope = std::max(0.0, (y - tm.t_one) / (tokens - 1));
    tm.slope = tm.longer == 0 ? slope : (1 - kWeight) * tm.slope + kWeight * slope;
    ++tm.longer;
  }
  ++forwards_;
  refresh();
}

void Adapter::draft(double seconds) {
  if (seconds <= 0) return;
  Timing& tm = timing_[static_cast<int>(cur_.mode)];
  const double ms = seconds * 1e3;
  tm.c = tm.drafts == 0 ? ms : 0.9 * tm.c + 0.1 * ms;
  ++tm.drafts;
  ++drafts_;
  refresh();
}

LatencyInputs Adapter::inputs(Mode m, double a) const {
  // The mode's own observations, else another's (DSI's first: the most pessimistic).
  auto pick = [&](auto has) -> const Timing& {
    if (has(timing_[static_cast<int>(m)])) return timing_[static_cast<int>(m)];
    for (Mode o : {Mode::kDsi, Mode::kSi, Mode::kNonSi}) {
      if (has(timing_[static_cast<int>(o)])) return timing_[static_cast<int>(o)];
    }
    return timing_[static_cast<int>(m)];
  };
  const Timing& one = pick([](const Timing& t) { return t.ones > 0; });
  const Timing& slope = pick([](const Timing& t) { return t.longer > 0; });
  const Timing& drafter = pick([](const Timing& t) { return t.drafts > 0; });
  // T(n) = T(1) + slope (n - 1): t_ms may be negative, target_ms(n >= 1) is not.
  return {.t_ms = one.t_one - slope.slope, .c_ms = drafter.c, .a = a, .per_token_ms = slope.slope};
}

void Adapter::refresh() {
  const LatencyInputs in = inputs(cur_.mode, est_.a);
  est_.t0_ms = in.t_ms;
  est_.t1_ms = in.per_token_ms;
  est_.c_ms = in.c_ms;
}

void Adapter::checked(const SchedulerStats& s) {
  const int64_t na = s.drafts_accepted - seen_acc_, nr = s.drafts_rejected - seen_rej_;
  if (na + nr <= 0) return;
  seen_acc_ = s.drafts_accepted;
  seen_rej_ = s.drafts_rejected;
  acc_total_ += na;
  rej_total_ += nr;
  checked_total_ += na + nr;
  const double keep = std::exp(-static_cast<double>(na + nr) / opts_.memory);
  acc_ = keep * acc_ + static_cast<double>(na);
  rej_ = keep * rej_ + static_cast<double>(nr);
  est_.a = acc_ / (acc_ + rej_);
  refresh();
  for (int i = 0; i < SchedulerStats::kPositions; ++i) {
    acc_at_[i] = keep * acc_at_[i] + static_cast<double>(s.accepted_at[i] - seen_acc_at_[i]);
    rej_at_[i] = keep * rej_at_[i] + static_cast<double>(s.rejected_at[i] - seen_rej_at_[i]);
    seen_acc_at_[i] = s.accepted_at[i];
    seen_rej_at_[i] = s.rejected_at[i];
    const double n = acc_at_[i] + rej_at_[i];
    est_.a_at[i] = n > 0 ? acc_at_[i] / n : 0;
  }
}

bool Adapter::ready() const {
  return forwards_ > 0 && drafts_ > 0 && checked_total_ >= opts_.min_drafts;
}

double Adapter::corrected(const ChainPlan& p, double a) const {
  return predict_ms(p, inputs(p.mode, a)) * est_.speed[static_cast<int>(p.mode)];
}

ChainPlan Adapter::best(bool speculative_only, double a) const {
  ChainPlan best{.mode = Mode::kNonSi, .lookahead = cur_.lookahead, .sp = 1};
  double best_ms = speculative_only ? std::numeric_limits<double>::infinity() : corrected(best, a);
  // Ties go to the simpler plan: non-SI, SI, then DSI on fewer targets.
  auto consider = [&](const ChainPlan& p) {
    const double ms = corrected(p, a);
    if (ms < best_ms * (1 - 1e-3)) {
      best = p;
      best_ms = ms;
    }
  };
  for (int k = 1; k <= opts_.max_k; ++k) consider({.mode = Mode::kSi, .lookahead = k, .sp = 1});
  // DSI with short SP: lookaheads up to T / (sp c) predict alike (core/adapt.h); the longest
  // launches least often.
  for (int sp = 1; sp <= opts_.n_targets; ++sp) {
    for (int k = opts_.max_k; k >= 1; --k) consider({.mode = Mode::kDsi, .lookahead = k, .sp = sp});
  }
  return best;
}

void Adapter::decide(double now_s, int generated, const ChainPlan& p, const char* why) {
  decisions_.push_back(AdaptDecision{.at_s = now_s,
                                     .generated = generated,
                                     .plan = p,
                                     .predicted_ms = ready() ? corrected(p, est_.a) : 0,
                                     .est = est_,
                                     .why = why});
  // The first segment of a new mode carries the switch (a target catching up on KV that
  // another computed, a drafter restarting): it does not measure the mode's speed.
  if (p.mode != cur_.mode) {
    fresh_ = true;
    skip_forward_ = true;
    // What the mode left did in a short stay still says how fast it runs.
    const int m = static_cast<int>(cur_.mode);
    if (win_tokens_[m] >= opts_.window_tokens / 4) close_window(m);
  }
  cur_ = p;
  refresh();
  decisions_.back().est = est_;
}

int Adapter::budget_gap() const {
  const ChainPlan nonsi{.mode = Mode::kNonSi, .lookahead = cur_.lookahead, .sp = 1};
  const double base = corrected(nonsi, est_.a);
  const double spec = corrected(best(true, est_.a), est_.a);
  const double loss = base > 0 && std::isfinite(spec) ? std::max(0.0, spec / base - 1) : 0;
  const double gap = opts_.window_tokens * loss / std::max(opts_.probe_budget, 1e-6);
  return static_cast<int>(std::clamp(std::ceil(gap), static_cast<double>(opts_.probe_tokens),
                                     static_cast<double>(opts_.probe_max)));
}

void Adapter::close_window(int m) {
  const int64_t checked = win_acc_[m] + win_rej_[m];
  // A speculative window needs drafts checked to predict with.
  if (win_tokens_[m] <= 0 || (m != static_cast<int>(Mode::kNonSi) && checked == 0)) return;
  const double a =
      checked > 0 ? static_cast<double>(win_acc_[m]) / static_cast<double>(checked) : est_.a;
  const ChainPlan& p = win_plan_[m];
  const double pred_ms = predict_ms(p, inputs(p.mode, a)) * win_tokens_[m];
  if (pred_ms > 0 && win_s_[m] > 0) {
    const double r = win_s_[m] * 1e3 / pred_ms;
    est_.speed[m] = measured_[m] ? 0.5 * est_.speed[m] + 0.5 * r : r;
    measured_[m] = true;
  }
  win_s_[m] = 0;
  win_tokens_[m] = 0;
  win_acc_[m] = win_rej_[m] = 0;
}

int Adapter::account(double now_s, int generated) {
  // What the plan that ran since the last boundary achieved.
  const int m = static_cast<int>(cur_.mode);
  const int dn = generated - seg_gen_;
  tokens_by_mode_[m] += dn;
  if (dn > 0 && fresh_) {
    fresh_ = false;
  } else if (dn > 0 && ready()) {
    win_s_[m] += now_s - seg_t_;
    win_tokens_[m] += dn;
    win_plan_[m] = cur_;
    win_acc_[m] += acc_total_ - seg_acc_;
    win_rej_[m] += rej_total_ - seg_rej_;
    if (win_tokens_[m] >= opts_.window_tokens) close_window(m);
  }
  // A boundary that committed nothing (a stale result, a rejection) leaves its time and its
  // drafts to the next segment.
  if (dn > 0) {
    seg_t_ = now_s;
    seg_gen_ = generated;
    seg_acc_ = acc_total_;
    seg_rej_ = rej_total_;
  }
  return dn;
}

ChainPlan Adapter::plan(double now_s, int generated) {
  if (!started_) {
    started_ = true;
    seg_t_ = now_s;
    seg_gen_ = generated;
    decide(now_s, generated, cur_, "start");
    return cur_;
  }
  const int dn = account(now_s, generated);
  if (!ready()) return cur_;
  if (cur_.mode == Mode::kNonSi) nonsi_since_probe_ += dn;

  const ChainPlan nonsi{.mode = Mode::kNonSi, .lookahead = cur_.lookahead, .sp = 1};
  if (measuring_nonsi_) {
    // Tokens the tasks of the earlier plan commit do not time anything: wait for non-SI's
    // own one-token forwards too.
    if (generated - probe_start_ < opts_.warmup_tokens ||
        (timing_[static_cast<int>(Mode::kNonSi)].ones < 3 &&
         generated - probe_start_ < 8 * opts_.warmup_tokens)) {
      return cur_;
    }
    measuring_nonsi_ = false;
    nonsi_since_probe_ = 0;
    const ChainPlan b = best(false, est_.a);
    if (b.mode == Mode::kNonSi) probe_gap_ = budget_gap();
    decide(now_s, generated, b,
           b.mode == Mode::kNonSi ? "non-SI measured: faster" : "non-SI measured: slower");
    return cur_;
  }
  // Until non-SI has run, it is predicted from DSI's forwards, which share the machine with
  // the drafter and the other targets (on a CPU, or with several ranks on one GPU, a target
  // alone can be twice as fast; the first forwards are slower still, on a cold cache). So
  // once the run is warm, non-SI is timed for a few tokens, once.
  if (!nonsi_timed_ && cur_.mode != Mode::kNonSi &&
      timing_[static_cast<int>(Mode::kNonSi)].ones == 0 && generated >= opts_.window_tokens) {
    nonsi_timed_ = true;
    measuring_nonsi_ = true;
    probe_start_ = generated;
    decide(now_s, generated, nonsi, "measure non-SI");
    return cur_;
  }
  if (probing_) {
    // A probe runs for a measuring window of tokens.
    if (generated - probe_start_ < opts_.window_tokens) return cur_;
    probing_ = false;
    const ChainPlan b = best(false, est_.a);
    if (b.mode == Mode::kNonSi) {
      probe_gap_ = std::min(std::max(2 * probe_gap_, budget_gap()), opts_.probe_max);
      decide(now_s, generated, b, "probe lost");
    } else {
      probe_gap_ = opts_.probe_tokens;
      decide(now_s, generated, b, "probe won");
    }
    return cur_;
  }
  const ChainPlan b = best(false, est_.a);
  if (b != cur_ && corrected(b, est_.a) < (1 - opts_.min_gain) * corrected(cur_, est_.a)) {
    decide(now_s, generated, b, "faster");
    nonsi_since_probe_ = 0;
    if (b.mode == Mode::kNonSi) probe_gap_ = std::max(probe_gap_, budget_gap());
  } else if (cur_.mode == Mode::kNonSi && nonsi_since_probe_ >= probe_gap_) {
    nonsi_since_probe_ = 0;
    // A probe is worth its cost only if speculation could win were the drafts better: with
    // half the rejections seen so far. If not, wait the longest gap (speeds may change).
    const double hope_a = (1 + est_.a) / 2;
    const ChainPlan hope = best(true, hope_a);
    if (corrected(hope, hope_a) < (1 - opts_.min_gain) * corrected(cur_, hope_a)) {
      probing_ = true;
      probe_start_ = generated;
      decide(now_s, generated, best(true, est_.a), "probe");
    } else {
      probe_gap_ = opts_.probe_max;
    }
  }
  return cur_;
}

}  // namespace dsi
