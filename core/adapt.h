// Adaptive speculation (`runtime.adapt: on`): at every chain boundary the scheduler asks the
// Adapter what to run next (non-SI, SI or DSI, the lookahead k, how many targets). The Adapter
// keeps online estimates of the target's forward time as a function of its length, the
// drafter's time per draft and the acceptance rate (also per draft position), predicts each
// candidate's latency per token with the closed forms (core/latency_model.h), and scales each
// mode's prediction by what that mode actually achieved (measured wall time per token against
// its prediction: contention for cores and orchestration, which the closed forms ignore).
// While non-SI runs nothing measures acceptance, so after `probe_tokens` non-SI tokens it
// probes speculation for a measuring window, doubling the gap while the probes keep losing
// and keeping what lost probes cost under `probe_budget` of the time, and waits the longest
// gap when speculation could not win even with half the rejections.
//
// It is clock-free: every call takes the time from its caller (the coordinator's clock, or
// the simulator's virtual time), so the simulator drives the same policy. A plan never
// changes a token: greedy decoding and the Gumbel coupling decide each position from the
// prefix alone (docs/sampling.md), so the config refuses adaptation with the residual sampler.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/latency_model.h"
#include "core/scheduler.h"

namespace dsi {

struct AdaptOptions {
  int n_targets = 1;       // targets in the world: DSI may use 1..n_targets
  int max_k = 8;           // lookaheads tried: 1..max_k
  double min_gain = 0.03;  // leave the current plan only for a predicted gain this large
  int probe_tokens = 32;   // non-SI tokens before the first probe of speculation
  int probe_max = 512;     // the gap doubles up to this while probes lose
  // Probes that lose cost at most this share of the time: after a probe that ran a window
  // (1 + loss) times slower than non-SI, the gap is at least window * loss / budget tokens.
  double probe_budget = 0.03;
  double memory = 32;      // acceptance: observations of weight 1/e after this many drafts
  int window_tokens = 16;  // a mode's measured speed is updated every this many tokens
  int warmup_tokens = 4;   // non-SI tokens that time a target alone, when it matters
  int min_drafts = 8;      // estimates are trusted after this many drafts were checked
};

// What the Adapter believes now, in milliseconds.
struct AdaptEstimates {
  // The mode running's: target forward of n tokens t0 + t1 * n, drafter per draft c.
  double t0_ms = 0, t1_ms = 0;
  double c_ms = 0;
  double a = 0;                                           // acceptance rate (decayed)
  std::array<double, SchedulerStats::kPositions> a_at{};  // per draft position (decayed)
  std::array<double, 3> speed{1, 1, 1};                   // by Mode: measured / predicted latency
  LatencyInputs inputs() const {
    return {.t_ms = t0_ms, .c_ms = c_ms, .a = a, .per_token_ms = t1_ms};
  }
};

struct AdaptDecision {
  double at_s = 0;    // the caller's clock
  int generated = 0;  // tokens generated before it
  ChainPlan plan;
  double predicted_ms = 0;  // per token, speed-corrected
  AdaptEstimates est;
  // "start", "faster", "measure non-SI", "non-SI measured: faster|slower", "probe",
  // "probe lost", "probe won"
  std::string why;
};

// Predicted latency per token (ms) of a plan, before the speed correction: the closed forms
// for non-SI and SI; for DSI, the expected time of a chain over its expected tokens, with the
// chain's verification schedule on sp targets worked out (tasks wait for a free target), so a
// short SP is priced in. Zero overhead and i.i.d. acceptance, like the closed forms.
double predict_ms(const ChainPlan& p, const LatencyInputs& in);

class Adapter {
 public:
  Adapter(AdaptOptions opts, ChainPlan initial);

  // Observations.
  void forward(int tokens, double seconds);  // a verification's (or a non-SI step's) forward
  void draft(double seconds);                // one draft forward
  void checked(const SchedulerStats& s);     // reads the acceptance counters' growth

  // At a chain boundary: the plan to run from here. now_s and generated measure the plan
  // that ran since the previous call.
  ChainPlan plan(double now_s, int generated);
  // At the end of the run: accounts for the plan that ran last.
  void finish(double now_s, int generated) {
    if (started_) account(now_s, generated);
  }

  const AdaptEstimates& estimates() const { return est_; }
  const std::vector<AdaptDecision>& decisions() const { return decisions_; }
  // Tokens generated under each mode (index: Mode).
  const std::array<int64_t, 3>& tokens_by_mode() const { return tokens_by_mode_; }

 private:
  bool ready() const;
  // Closes the segment since the last boundary; returns its tokens.
  int account(double now_s, int generated);
  // Turns mode m's window into a measured speed (and empties it).
  void close_window(int m);
  // What the closed forms need for mode m's plans, with acceptance a.
  LatencyInputs inputs(Mode m, double a) const;
  void refresh();  // est_'s timings: those of the mode running
  double corrected(const ChainPlan& p, double a) const;
  ChainPlan best(bool speculative_only, double a) const;
  void decide(double now_s, int generated, const ChainPlan& p, const char* why);
  // The non-SI tokens before the next probe under probe_budget, from the predicted loss of
  // the best speculative plan against non-SI.
  int budget_gap() const;

  AdaptOptions opts_;
  ChainPlan cur_;
  AdaptEstimates est_;
  // Forward and draft times, by the mode running when they were observed.
  struct Timing {
    double t_one = 0;  // target forward of one token (ms)
    double slope = 0;  // each further token (ms)
    double c = 0;      // a draft (ms)
    int ones = 0, longer = 0, drafts = 0;
  };
  std::array<Timing, 3> timing_{};
  int forwards_ = 0, drafts_ = 0;
  bool fresh_ = true;          // the next segment is the first of its mode
  bool skip_forward_ = false;  // the next forward is the first after a mode switch
  // Acceptance: decayed accepted / rejected counts, overall and by position.
  double acc_ = 0, rej_ = 0;
  std::array<double, SchedulerStats::kPositions> acc_at_{}, rej_at_{};
  int64_t seen_acc_ = 0, seen_rej_ = 0, checked_total_ = 0;
  std::array<int64_t, SchedulerStats::kPositions> seen_acc_at_{}, seen_rej_at_{};
  // The segment since the last boundary, and each mode's accumulated window.
  double seg_t_ = 0;
  int seg_gen_ = 0;
  bool started_ = false;
  bool measuring_nonsi_ = false;  // a few non-SI tokens to time a target alone
  bool nonsi_timed_ = false;      // that happened (once a run)
  // A window's prediction uses the acceptance seen in that window, not the decayed estimate,
  // so that a change of acceptance is not mistaken for a change of speed.
  std::array<double, 3> win_s_{};
  std::array<int, 3> win_tokens_{};
  std::array<ChainPlan, 3> win_plan_{};  // the plan that ran last in the window
  std::array<int64_t, 3> win_acc_{}, win_rej_{};
  int64_t acc_total_ = 0, rej_total_ = 0;  // drafts checked so far
  int64_t seg_acc_ = 0, seg_rej_ = 0;      // at the segment's start
  std::array<bool, 3> measured_{};
  std::array<int64_t, 3> tokens_by_mode_{};
  // Probing while non-SI runs.
  int nonsi_since_probe_ = 0;
  int probe_gap_;
  bool probing_ = false;
  int probe_start_ = 0;
  std::vector<AdaptDecision> decisions_;
};

}  // namespace dsi
