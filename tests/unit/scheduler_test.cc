// Scheduler tests in virtual time (sim/simulator): losslessness over the acceptance
// grid, the ideal latencies of docs/dsi.md ("Ideal latencies") when servers are ample, and KV
// handoff; and the scheduler driven by hand: which handoffs it plans, and its model of the targets'
// caches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "sim/simulator.h"
#include "tests/stats.h"

namespace dsi {
namespace {

SimConfig make(Mode mode, int sp, int k, double a, double t, double c, int n, uint64_t seed) {
  SimConfig cfg;
  cfg.sched.mode = mode;
  cfg.sched.n_targets = sp;
  cfg.sched.lookahead = k;
  cfg.sched.max_new_tokens = n;
  cfg.target = SyntheticParams{.seed = seed, .vocab = 64, .ttft_ms = t, .forward_ms = t};
  cfg.drafter = SyntheticParams{
      .seed = seed, .vocab = 64, .acceptance = a, .ttft_ms = c, .forward_ms = c, .drafter = true};
  cfg.prompt = synthetic_prompt(seed, 8, 64);
  return cfg;
}

TEST(Scheduler, LosslessForEveryModeSpLookaheadAndAcceptance) {
  for (Mode mode : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
    for (int sp = 1; sp <= 6; ++sp) {
      for (int k : {1, 3, 5}) {
        for (double a : {0.0, 0.5, 0.9, 1.0}) {
          for (uint64_t seed : {1, 2}) {
            SimConfig cfg = make(mode, sp, k, a, 20, 2 + seed, 60, seed);
            const auto ref = synthetic_reference(cfg.target, cfg.prompt, 60);
            const SimResult r = simulate(cfg);
            ASSERT_EQ(r.tokens, ref)
                << mode_name(mode) << " sp=" << sp << " k=" << k << " a=" << a << " seed=" << seed;
          }
        }
      }
    }
  }
}

TEST(Scheduler, RoundRobinSpreadsTasksAndStaysLossless) {
  for (int sp : {2, 3, 5}) {
    for (double a : {0.3, 0.9}) {
      SimConfig cfg = make(Mode::kDsi, sp, 2, a, 20, 3, 60, 7);
      cfg.sched.target_choice = TargetChoice::kRoundRobin;
      EXPECT_EQ(simulate(cfg).tokens, synthetic_reference(cfg.target, cfg.prompt, 60))
          << "sp=" << sp << " a=" << a;
    }
  }
}

TEST(Scheduler, StopTokenEndsGeneration) {
  SimConfig cfg = make(Mode::kDsi, 3, 2, 0.7, 20, 2, 200, 5);
  const auto full = synthetic_reference(cfg.target, cfg.prompt, 200);
  cfg.sched.stop_tokens = {full[17]};
  const auto ref = synthetic_reference(cfg.target, cfg.prompt, 200, cfg.sched.stop_tokens);
  ASSERT_LT(ref.size(), 200u);
  EXPECT_EQ(simulate(cfg).tokens, ref);
}

double si_ideal(double t, double c, double a, int k) {
  return (k * c + t) * (1 - a) / (1 - std::pow(a, k + 1));
}
double dsi_ideal(double t, double c, double a, int k) {
  return (1 - a) * (t + k * c * a / (1 - std::pow(a, k)));
}

TEST(Scheduler, MatchesClosedFormsWhenServersAreAmple) {
  struct Case {
    double c, a;
    int k;
  };
  for (Case cs : {Case{0.1, 0.9, 5}, Case{0.05, 0.8, 5}, Case{0.2, 0.5, 2}, Case{0.3, 0.3, 3}}) {
    const double t = 20, c = cs.c * t;
    const int n = 4000;
    SimResult dsi = simulate(make(Mode::kDsi, 16, cs.k, cs.a, t, c, n, 9));
    SimResult si = simulate(make(Mode::kSi, 1, cs.k, cs.a, t, c, n, 9));
    SimResult non = simulate(make(Mode::kNonSi, 1, cs.k, cs.a, t, c, n, 9));
    EXPECT_NEAR(non.latency_per_token_ms, t, 1e-9);
    EXPECT_NEAR(si.latency_per_token_ms / si_ideal(t, c, cs.a, cs.k), 1.0, 0.05)
        << "SI c=" << cs.c << " a=" << cs.a << " k=" << cs.k;
    EXPECT_NEAR(dsi.latency_per_token_ms / dsi_ideal(t, c, cs.a, cs.k), 1.0, 0.05)
        << "DSI c=" << cs.c << " a=" << cs.a << " k=" << cs.k;
    EXPECT_LE(dsi.latency_per_token_ms, non.latency_per_token_ms * 1.0001);
  }
}

TEST(Scheduler, RejectionPreemptsStaleTasks) {
  SimResult r = simulate(make(Mode::kDsi, 8, 1, 0.5, 20, 1, 200, 3));
  EXPECT_GT(r.stats.tasks_preempted, 0);
  EXPECT_GT(r.wasted_ms, 0);
  EXPECT_GT(r.stats.drafts_rejected, 0);
}

TEST(Scheduler, ShortSpQueuesButStaysLossless) {
  SimConfig cfg = make(Mode::kDsi, 1, 1, 0.9, 20, 1, 100, 4);
  SimResult r = simulate(cfg);
  EXPECT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 100));
  EXPECT_GT(r.stats.tasks_cancelled_queued, 0);
}

// KV handoff in virtual time: a transfer costs the source the cost model's transfer time,
// then the destination holds the range.
SimConfig with_kv(SimConfig cfg, KvPolicy policy, bool shared_device = false) {
  cfg.sched.kv = {
      .policy = policy, .bytes_per_token = 46e3, .gbps = 5, .shared_device = shared_device};
  return cfg;
}

TEST(Scheduler, KvHandoffStaysLosslessAndIsImported) {
  for (int sp : {2, 3, 5}) {
    for (double a : {0.3, 0.9}) {
      // CPU-like targets: 10 ms + 3 ms per token computed.
      SimConfig cfg = make(Mode::kDsi, sp, 2, a, 10, 2, 60, 11);
      cfg.target.per_token_ms = 3;
      for (KvPolicy policy : {KvPolicy::kAlways, KvPolicy::kAuto}) {
        const SimResult r = simulate(with_kv(cfg, policy));
        const std::string what = std::string(kv_policy_name(policy)) + " sp=" + std::to_string(sp) +
                                 " a=" + std::to_string(a);
        EXPECT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 60)) << what;
        EXPECT_EQ(r.kv.planned, r.stats.kv_handoffs) << what;
        // Handoffs still under way when the last token commits are not counted.
        EXPECT_GE(r.kv.planned, r.kv.imported + r.kv.fallbacks + r.kv.not_needed) << what;
        EXPECT_GT(r.kv.imported, 0) << what;
        EXPECT_GT(r.kv.verified_on_imported, 0) << what;
        // The targets have their own devices: only `always` hands the prompt over.
        EXPECT_EQ(r.kv.prompt, policy == KvPolicy::kAlways) << what;
      }
    }
  }
}

TEST(Scheduler, KvHandoffNeverPlansNothing) {
  SimConfig cfg = make(Mode::kDsi, 4, 2, 0.7, 10, 2, 60, 11);
  cfg.target.per_token_ms = 3;
  const SimResult r = simulate(with_kv(cfg, KvPolicy::kNever, true));
  EXPECT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 60));
  EXPECT_EQ(r.kv.planned, 0);
  EXPECT_EQ(r.stats.kv_handoffs, 0);
  EXPECT_FALSE(r.kv.prompt);
}

TEST(Scheduler, KvHandoffAutoFollowsTheCostOfRecomputing) {
  // Forwards whose cost grows with their length make transfers worth it; flat forwards (a
  // memory-bound GPU) do not, once the cost model has seen forwards of different lengths.
  SimConfig cpu = make(Mode::kDsi, 4, 3, 0.8, 10, 1, 200, 13);
  cpu.target.per_token_ms = 3;
  SimConfig gpu = make(Mode::kDsi, 4, 3, 0.8, 10, 1, 200, 13);
  const SimResult on_cpu = simulate(with_kv(cpu, KvPolicy::kAuto));
  const SimResult on_gpu = simulate(with_kv(gpu, KvPolicy::kAuto));
  const SimResult always = simulate(with_kv(gpu, KvPolicy::kAlways));
  EXPECT_EQ(on_gpu.tokens, synthetic_reference(gpu.target, gpu.prompt, 200));
  EXPECT_GT(on_cpu.kv.planned, 20);
  EXPECT_LT(on_gpu.kv.planned * 4, on_cpu.kv.planned);
  EXPECT_LT(on_gpu.kv.planned * 4, always.kv.planned);
}

TEST(Scheduler, PromptIsHandedOverOnASharedDevice) {
  SimConfig cfg = make(Mode::kDsi, 3, 2, 0.7, 10, 2, 40, 12);
  const SimResult r = simulate(with_kv(cfg, KvPolicy::kAuto, true));
  EXPECT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 40));
  EXPECT_TRUE(r.kv.prompt);
  EXPECT_GE(r.kv.imported_tokens, 2 * static_cast<int64_t>(cfg.prompt.size() - 1));
  // Target 0 prefills, then the others import: setup is one prefill plus a transfer.
  EXPECT_GT(r.setup_ms, cfg.target.ttft_ms);
  const SimResult own = simulate(with_kv(cfg, KvPolicy::kAuto, false));
  EXPECT_FALSE(own.kv.prompt);
  EXPECT_DOUBLE_EQ(own.setup_ms, cfg.target.ttft_ms);  // in parallel on their own devices
}

// The scheduler driven by hand.
const std::vector<Token> kPrompt = {3, 1, 4, 1};  // prefix: {3, 1, 4}

SchedulerOptions hand_options(Mode mode, KvPolicy policy, bool shared_device = false) {
  return SchedulerOptions{
      .mode = mode,
      .lookahead = 1,
      .n_targets = 2,
      .max_new_tokens = 10,
      .target_choice = TargetChoice::kRoundRobin,
      .kv = {.policy = policy, .bytes_per_token = 1e3, .gbps = 10, .shared_device = shared_device}};
}

std::vector<Action> of_kind(const std::vector<Action>& acts, Action::Kind k) {
  std::vector<Action> out;
  std::copy_if(acts.begin(), acts.end(), std::back_inserter(out),
               [&](const Action& a) { return a.kind == k; });
  return out;
}

void prefill_all(Scheduler& s) {
  std::vector<Action> todo = s.prefill();
  for (size_t i = 0; i < todo.size(); ++i) {
    if (todo[i].kind != Action::kPrefill) continue;
    for (Action& a : s.on_prefilled(todo[i].target)) todo.push_back(std::move(a));
  }
  ASSERT_TRUE(s.prefilled());
}

TEST(Scheduler, PromptHandoffActions) {
  const std::vector<Token> prefix = {3, 1, 4};
  for (bool shared : {false, true}) {
    for (KvPolicy policy : {KvPolicy::kAuto, KvPolicy::kAlways, KvPolicy::kNever}) {
      Scheduler s(hand_options(Mode::kDsi, policy, shared), kPrompt);
      const bool handed = policy == KvPolicy::kAlways || (policy == KvPolicy::kAuto && shared);
      auto first = s.prefill();
      EXPECT_EQ(s.prompt_handed_over(), handed);
      ASSERT_EQ(first.size(), handed ? 1u : 2u);
      for (const Action& a : first) {
        EXPECT_EQ(a.kind, Action::kPrefill);
        EXPECT_EQ(a.seq, prefix);
      }
      auto after0 = s.on_prefilled(0);
      EXPECT_FALSE(s.prefilled());
      if (handed) {
        // The first target's KV goes to the second, whose Prefill then computes nothing.
        ASSERT_EQ(after0.size(), 2u);
        EXPECT_EQ(after0[0].kind, Action::kKvHandoff);
        EXPECT_EQ(
            (std::vector<int>{after0[0].target, after0[0].dst, after0[0].begin, after0[0].end}),
            (std::vector<int>{0, 1, 0, 3}));
        EXPECT_EQ(after0[0].id, 1u);
        EXPECT_EQ(after0[0].seq, prefix);
        EXPECT_EQ(after0[1].kind, Action::kPrefill);
        EXPECT_EQ(after0[1].target, 1);
        EXPECT_EQ(s.stats().kv_handoffs, 1);
      } else {
        EXPECT_TRUE(after0.empty());
        EXPECT_EQ(s.stats().kv_handoffs, 0);
      }
      EXPECT_TRUE(s.on_prefilled(1).empty());
      EXPECT_TRUE(s.prefilled());
      EXPECT_EQ(s.kv().cached(0), prefix);
      EXPECT_EQ(s.kv().cached(1), prefix);
    }
  }
}

TEST(Scheduler, AutoTransfersWhenRecomputingCostsMore) {
  // Non-SI on two targets: target 0 verifies the prompt and commits one token; target 1 lacks
  // the prompt's last token. A forward of 10 ms per token makes the transfer (200 us) worth it;
  // one of 10 us does not. `always` transfers either way, `never` never.
  struct Case {
    KvPolicy policy;
    double seconds;
    bool handoff;
  };
  for (Case c : {Case{KvPolicy::kAuto, 0.010, true}, Case{KvPolicy::kAuto, 1e-5, false},
                 Case{KvPolicy::kAlways, 1e-5, true}, Case{KvPolicy::kNever, 0.010, false}}) {
    Scheduler s(hand_options(Mode::kNonSi, c.policy), kPrompt);
    prefill_all(s);
    auto acts = s.start();
    ASSERT_EQ(acts.size(), 1u);
    ASSERT_EQ(acts[0].kind, Action::kVerify);
    EXPECT_EQ(acts[0].target, 0);
    acts = s.on_result(acts[0].id, std::vector<Token>{5}, Forward{1, c.seconds});
    EXPECT_EQ(s.committed(), (std::vector<Token>{3, 1, 4, 1, 5}));
    // The next verification first (to target 1, round robin), then the handoff.
    ASSERT_FALSE(acts.empty());
    EXPECT_EQ(acts[0].kind, Action::kVerify);
    const auto h = of_kind(acts, Action::kKvHandoff);
    ASSERT_EQ(h.size(), c.handoff ? 1u : 0u) << kv_policy_name(c.policy) << " " << c.seconds;
    if (c.handoff) {
      EXPECT_EQ(acts.back().kind, Action::kKvHandoff);
      EXPECT_EQ((std::vector<int>{h[0].target, h[0].dst, h[0].begin, h[0].end}),
                (std::vector<int>{0, 1, 3, 4}));
      EXPECT_EQ(h[0].seq, kPrompt);
      EXPECT_EQ(s.kv().cached(1), kPrompt);
    } else {
      EXPECT_EQ(s.kv().cached(1), (std::vector<Token>{3, 1, 4}));
    }
    EXPECT_EQ(s.kv().cached(0), kPrompt);  // the result: the sequence it verified
  }
}

TEST(Scheduler, CancelTrimsTheCacheModelAndHandoffsFillIt) {
  // DSI, k = 1, two targets taken in turn, kv_handoff: always.
  Scheduler s(hand_options(Mode::kDsi, KvPolicy::kAlways), kPrompt);
  prefill_all(s);  // the prompt was handed over: handoff 1
  const std::vector<Token> p = kPrompt;
  auto acts = s.start();
  ASSERT_EQ(of_kind(acts, Action::kStartChain).size(), 1u);
  const uint64_t chain = of_kind(acts, Action::kStartChain)[0].id;
  const auto v1 = of_kind(acts, Action::kVerify);
  ASSERT_EQ(v1.size(), 1u);
  EXPECT_EQ(v1[0].target, 0);
  // Draft 20 at position 4: task 2 verifies p + [20] on target 1.
  acts = s.on_draft(chain, 4, 20);
  const auto v2 = of_kind(acts, Action::kVerify);
  ASSERT_EQ(v2.size(), 1u);
  EXPECT_EQ(v2[0].target, 1);
  // Task 1 commits 20: target 0 holds p, target 1 only p's prefix: handoff [3, 4).
  acts = s.on_result(v1[0].id, std::vector<Token>{20}, Forward{1, 0.01});
  auto h = of_kind(acts, Action::kKvHandoff);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].id, 2u);
  EXPECT_EQ((std::vector<int>{h[0].target, h[0].dst, h[0].begin, h[0].end}),
            (std::vector<int>{0, 1, 3, 4}));
  // Draft 21 at position 5: task 3 verifies p + [20, 21] on target 0.
  acts = s.on_draft(chain, 5, 21);
  const auto v3 = of_kind(acts, Action::kVerify);
  ASSERT_EQ(v3.size(), 1u);
  EXPECT_EQ(v3[0].target, 0);
  // Task 2 says 22, not 21: task 3 is cancelled, a new chain starts, and target 1's KV of
  // position 4 goes to target 0.
  acts = s.on_result(v2[0].id, std::vector<Token>{20, 22}, Forward{2, 0.01});
  EXPECT_EQ(s.committed(), (std::vector<Token>{3, 1, 4, 1, 20, 22}));
  const auto cancel = of_kind(acts, Action::kCancel);
  ASSERT_EQ(cancel.size(), 1u);
  EXPECT_EQ(cancel[0].id, v3[0].id);
  h = of_kind(acts, Action::kKvHandoff);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ((std::vector<int>{h[0].target, h[0].dst, h[0].begin, h[0].end}),
            (std::vector<int>{1, 0, 4, 5}));
  EXPECT_EQ(s.kv().cached(0), (std::vector<Token>{3, 1, 4, 1, 20}));
  // The cancelled verification of p + [20, 21] had the worker keep only p[0, 4): the model
  // forgets the handed-over token.
  s.on_cancelled(v3[0].id);
  EXPECT_EQ(s.kv().cached(0), p);
  EXPECT_EQ(s.stats().kv_handoffs, 3);
}

// Drafts that launch nothing are deferred by the drafter: the chain says which ones wake the
// coordinator (every k-th), and the scheduler says when it would act on the next draft at once
// (the targets have committed past the drafts received), so that the coordinator polls then.
TEST(Scheduler, SaysWhichDraftsWakeItAndWhenItAwaitsOne) {
  for (Mode mode : {Mode::kDsi, Mode::kSi}) {
    SchedulerOptions o = hand_options(mode, KvPolicy::kNever);
    o.lookahead = 3;
    Scheduler s(o, kPrompt);
    s.prefill();
    s.on_prefilled(0);
    s.on_prefilled(1);
    const auto start = s.start();
    const auto chains = of_kind(start, Action::kStartChain);
    ASSERT_EQ(chains.size(), 1u);
    EXPECT_EQ(chains[0].notify_every, 3);
    EXPECT_FALSE(s.awaits_drafts());
    if (mode == Mode::kSi) continue;  // SI verifies only after k drafts
    // DSI's task without drafts commits the next token before any draft has come.
    const auto verify = of_kind(start, Action::kVerify);
    ASSERT_EQ(verify.size(), 1u);
    s.on_result(verify[0].id, std::vector<Token>{5}, Forward{1, 0.01});
    EXPECT_TRUE(s.awaits_drafts());
    s.on_draft(chains[0].id, static_cast<int>(kPrompt.size()), 5);  // accepted
    EXPECT_FALSE(s.awaits_drafts());
  }
}

namespace dsi {
namespace {

// SI with token trees, in virtual time: the text is the target's own for every shape, greedy
// and sampled (Gumbel coupling), and stop tokens end it as with chains.
TEST(SchedulerTrees, SiWithTreesIsLosslessForEveryShape) {
  const std::vector<std::vector<int>> shapes = {{1}, {1, 1, 1}, {3}, {2, 2, 1}, {3, 2, 1, 1}};
  for (const auto& shape : shapes) {
    for (double a : {0.0, 0.6, 1.0}) {
      for (uint64_t seed : {1, 2}) {
        SimConfig cfg = make(Mode::kSi, 1, static_cast<int>(shape.size()), a, 20, 2, 60, seed);
        cfg.sched.tree = shape;
        ASSERT_EQ(simulate(cfg).tokens, synthetic_reference(cfg.target, cfg.prompt, 60))
            << "shape of " << shape.size() << " levels, a=" << a << " seed=" << seed;
        cfg.sampling = {.temperature = 0.8f, .seed = seed};
        ASSERT_EQ(simulate(cfg).tokens,
                  synthetic_sampled_reference(cfg.target, cfg.prompt, 60, cfg.sampling))
            << "sampled, shape of " << shape.size() << " levels, a=" << a;
      }
    }
  }
  SimConfig cfg = make(Mode::kSi, 1, 2, 0.7, 20, 2, 200, 5);
  cfg.sched.tree = {3, 2};
  const auto full = synthetic_reference(cfg.target, cfg.prompt, 200);
  cfg.sched.stop_tokens = {full[17]};
  EXPECT_EQ(simulate(cfg).tokens,
            synthetic_reference(cfg.target, cfg.prompt, 200, cfg.sched.stop_tokens));
}

// With a drafter that ranks the target's token second when it is wrong (synthetic `second`),
// siblings catch what the chain misses: more tokens per verification at the same depth (the
// same drafter forwards), fewer verifications, the same text.
TEST(SchedulerTrees, SiblingsRaiseTheTokensPerVerification) {
  double chain_tokens = 0, tree_tokens = 0;
  for (uint64_t seed : {1, 2, 3}) {
    SimConfig cfg = make(Mode::kSi, 1, 4, 0.6, 5, 0.5, 200, seed);
    cfg.drafter.second = 0.7;
    const auto ref = synthetic_reference(cfg.target, cfg.prompt, 200);
    cfg.sched.tree = {1, 1, 1, 1};
    const SimResult chain = simulate(cfg);
    cfg.sched.tree = {3, 2, 1, 1};
    const SimResult tree = simulate(cfg);
    ASSERT_EQ(chain.tokens, ref);
    ASSERT_EQ(tree.tokens, ref);
    chain_tokens += 200.0 / chain.stats.tasks_completed;
    tree_tokens += 200.0 / tree.stats.tasks_completed;
  }
  EXPECT_GT(tree_tokens, 1.2 * chain_tokens) << chain_tokens / 3 << " vs " << tree_tokens / 3;
}

// DSI with token trees, in virtual time: the target's text for SP 1-4, several shapes (k up
// to 6), greedy and sampled (Gumbel coupling), with stop tokens, drafters faster and slower
// than the targets.
TEST(SchedulerTrees, DsiWithTreesIsLosslessForEverySpAndShape) {
  const std::vector<std::vector<int>> shapes = {{1},          {3},       {2, 1, 1},
                                                {3, 2, 1, 1}, {2, 2, 2}, {2, 1, 1, 1, 1, 1}};
  for (const auto& shape : shapes) {
    for (int sp = 1; sp <= 4; ++sp) {
      for (double a : {0.0, 0.6, 1.0}) {
        for (double c : {2.0, 30.0}) {
          const uint64_t seed = 1 + sp;
          SimConfig cfg = make(Mode::kDsi, sp, static_cast<int>(shape.size()), a, 20, c, 60, seed);
          cfg.sched.tree = shape;
          cfg.drafter.second = 0.7;
          ASSERT_EQ(simulate(cfg).tokens, synthetic_reference(cfg.target, cfg.prompt, 60))
              << "shape of " << shape.size() << " levels, sp=" << sp << " a=" << a << " c=" << c;
          cfg.sampling = {.temperature = 0.8f, .seed = seed};
          ASSERT_EQ(simulate(cfg).tokens,
                    synthetic_sampled_reference(cfg.target, cfg.prompt, 60, cfg.sampling))
              << "sampled, shape of " << shape.size() << " levels, sp=" << sp << " a=" << a;
        }
      }
    }
  }
  SimConfig cfg = make(Mode::kDsi, 3, 2, 0.7, 20, 2, 200, 5);
  cfg.sched.tree = {3, 2};
  const auto full = synthetic_reference(cfg.target, cfg.prompt, 200);
  cfg.sched.stop_tokens = {full[17]};
  EXPECT_EQ(simulate(cfg).tokens,
            synthetic_reference(cfg.target, cfg.prompt, 200, cfg.sched.stop_tokens));
}

// DSI: siblings catch what the chain misses, so fewer rejections restart the drafter and the
// text comes sooner than with the chain of the same depth (the same drafter forwards, cheap
// tree forwards as on a GPU).
TEST(SchedulerTrees, DsiTreesCommitFasterThanChains) {
  double chain_ms = 0, tree_ms = 0;
  for (uint64_t seed : {1, 2, 3}) {
    SimConfig cfg = make(Mode::kDsi, 4, 4, 0.6, 5, 0.5, 200, seed);
    cfg.drafter.second = 0.7;
    const auto ref = synthetic_reference(cfg.target, cfg.prompt, 200);
    cfg.sched.tree = {1, 1, 1, 1};
    const SimResult chain = simulate(cfg);
    cfg.sched.tree = {3, 2, 1, 1};
    const SimResult tree = simulate(cfg);
    ASSERT_EQ(chain.tokens, ref);
    ASSERT_EQ(tree.tokens, ref);
    chain_ms += chain.total_ms;
    tree_ms += tree.total_ms;
  }
  EXPECT_LT(tree_ms, 0.9 * chain_ms) << chain_ms / 3 << " vs " << tree_ms / 3;
}

// A DSI tree task: the chain's pending drafts, then the tree below them. A sibling's
// acceptance restarts the chain but keeps the task that holds it; a tree that arrives after
// the committed text entered it is verified below the committed text's end.
TEST(SchedulerTrees, DsiTreeTasksHangBelowTheChainsPendingDrafts) {
  SchedulerOptions o{.mode = Mode::kDsi,
                     .lookahead = 2,
                     .n_targets = 2,
                     .max_new_tokens = 20,
                     .target_choice = TargetChoice::kRoundRobin,
                     .tree = {2, 1}};
  Scheduler s(o, {1, 2, 3});
  prefill_all(s);
  const auto start = s.start();
  const auto starts = of_kind(start, Action::kStartChain);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].tree, (std::vector<int>{2, 1}));
  const auto a = of_kind(start, Action::kVerify);  // DSI's task without drafts
  ASSERT_EQ(a.size(), 1u);
  // Tree 1 at 3: 7 (first path: 7 9) and 8; 9 below 7, 10 below 8.
  const TokenTree t1{{7, 8, 9, 10}, {-1, -1, 0, 1}};
  const auto b = of_kind(s.on_draft_tree(starts[0].id, 3, t1), Action::kVerify);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].seq, (std::vector<Token>{1, 2, 3, 7, 8, 9, 10}));
  EXPECT_EQ(b[0].parents, t1.parents);
  // Tree 2 at 5, below 7 9: its task holds 7 9 as a chain, then the tree; both targets are
  // busy, so it waits.
  const TokenTree t2{{11, 12, 13, 14}, {-1, -1, 0, 1}};
  EXPECT_TRUE(of_kind(s.on_draft_tree(starts[0].id, 5, t2), Action::kVerify).empty());
  EXPECT_EQ(s.queued(), 1);
  // The target says 8 at 3: the chain (7) is rejected, tree 2's task goes, tree 1's task
  // stays (8 is its node), and a new chain starts from 1 2 3 8.
  const auto r1 = s.on_result(a[0].id, std::vector<Token>{8}, Forward{1, 0.01});
  EXPECT_EQ(s.committed(), (std::vector<Token>{1, 2, 3, 8}));
  EXPECT_EQ(s.queued(), 0);
  EXPECT_TRUE(of_kind(r1, Action::kCancel).empty());
  const auto starts2 = of_kind(r1, Action::kStartChain);
  ASSERT_EQ(starts2.size(), 1u);
  EXPECT_EQ(starts2[0].seq, s.committed());
  EXPECT_EQ(s.stats().drafts_rejected, 1);
  const auto d = of_kind(r1, Action::kVerify);  // the new chain's task without drafts
  ASSERT_EQ(d.size(), 1u);
  // Tree 1's result: 8, 10 below it, and the target's 5 after them.
  const auto r2 = s.on_result(b[0].id, std::vector<Token>{8, 10, 5}, Forward{4, 0.01});
  EXPECT_EQ(s.committed(), (std::vector<Token>{1, 2, 3, 8, 10, 5}));
  EXPECT_EQ(s.kv().cached(1), (std::vector<Token>{1, 2, 3, 8, 10}));  // the path's KV stays
  ASSERT_EQ(of_kind(r2, Action::kCancel).size(), 1u);                 // d is pointless now
  // The new chain's tree at 4 arrives after the text took 10 5 of its first path (10 5 6):
  // the task is the tree below 5.
  const TokenTree t3{{10, 11, 5, 6, 7}, {-1, -1, 0, 2, 2}};
  const auto e = of_kind(s.on_draft_tree(starts2[0].id, 4, t3), Action::kVerify);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].seq, (std::vector<Token>{1, 2, 3, 8, 10, 5, 6, 7}));
  EXPECT_EQ(e[0].parents, (std::vector<int>{-1, -1}));
  // A result that is not a path of its tree is an error, not a commit.
  EXPECT_THROW(s.on_result(e[0].id, std::vector<Token>{9, 5}, Forward{}), Error);
}

// The residual coupling with trees, as the runtime runs it (simulated): siblings drawn i.i.d.
// from q with keyed draws, verified by multi-step speculative sampling. The joint distribution
// of the first two tokens is the target's (a chi-square test over 4000 seeds; the first
// verification often commits one token, so the second spans two verifications), and a tree of
// one child per level makes the chain's text (the same draws).
TEST(SchedulerTrees, ResidualTreesSampleTheTargetsDistribution) {
  const SyntheticParams target{.seed = 42, .vocab = 6, .forward_ms = 10};
  const SyntheticParams drafter{
      .seed = 42, .vocab = 6, .acceptance = 0.3, .forward_ms = 1, .drafter = true, .overlap = 0.1};
  const std::vector<Token> prompt = {1, 2, 3};
  auto run = [&](const std::vector<int>& tree, int k, uint64_t seed, int n) {
    SimConfig cfg;
    cfg.sched = {
        .mode = Mode::kSi, .lookahead = k, .n_targets = 1, .max_new_tokens = n, .tree = tree};
    cfg.target = target;
    cfg.drafter = drafter;
    cfg.prompt = prompt;
    cfg.sampling = {.temperature = 1, .seed = seed, .coupling = Coupling::kResidual};
    return simulate(cfg).tokens;
  };
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    ASSERT_EQ(run({1, 1}, 2, seed, 30), run({}, 2, seed, 30)) << "seed " << seed;
  }
  const int runs = 4000;
  std::map<std::pair<int, int>, int> counts;
  for (int r = 0; r < runs; ++r) {
    const auto t = run({3, 2}, 2, 5000 + r, 2);
    ASSERT_EQ(t.size(), 2u);
    ++counts[{t[0], t[1]}];
  }
  const SamplingParams sp{.temperature = 1};
  const auto p1 = synthetic_probs(target, prompt, sp);
  double chi2 = 0;
  int cells = 0;
  for (int a = 0; a < 6; ++a) {
    std::vector<Token> ctx = prompt;
    ctx.push_back(a);
    const auto p2 = synthetic_probs(target, ctx, sp);
    for (int b = 0; b < 6; ++b) {
      const double e = runs * static_cast<double>(p1[a]) * p2[b];
      chi2 += (counts[{a, b}] - e) * (counts[{a, b}] - e) / e;
      ++cells;
    }
  }
  EXPECT_GT(gamma_q((cells - 1) / 2.0, chi2 / 2), 1e-4) << "chi2 " << chi2;
}

TEST(SchedulerTrees, ATreeTaskCommitsThePathAndTheTargetsToken) {
  SchedulerOptions o{
      .mode = Mode::kSi, .lookahead = 2, .n_targets = 1, .max_new_tokens = 10, .tree = {2, 2}};
  Scheduler s(o, {1, 2, 3});
  prefill_all(s);
  const auto starts = of_kind(s.start(), Action::kStartChain);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].tree, (std::vector<int>{2, 2}));
  // Tree: 7 and 8 at depth 0; 9, 10 below 7; 11, 12 below 8.
  const TokenTree tree{{7, 8, 9, 10, 11, 12}, {-1, -1, 0, 0, 1, 1}};
  EXPECT_TRUE(s.on_draft_tree(starts[0].id + 1, 3, tree).empty());  // another chain: dropped
  const auto verifies = of_kind(s.on_draft_tree(starts[0].id, 3, tree), Action::kVerify);
  ASSERT_EQ(verifies.size(), 1u);
  EXPECT_EQ(verifies[0].seq, (std::vector<Token>{1, 2, 3, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(verifies[0].parents, tree.parents);
  // The target accepted 8 then 12 and says 5 after them.
  const auto next = s.on_result(verifies[0].id, std::vector<Token>{8, 12, 5}, Forward{7, 0.01});
  EXPECT_EQ(s.committed(), (std::vector<Token>{1, 2, 3, 8, 12, 5}));
  EXPECT_EQ(s.stats().drafts_accepted, 2);
  EXPECT_EQ(s.kv().cached(0), (std::vector<Token>{1, 2, 3, 8, 12}));  // the path's KV stays
  const auto again = of_kind(next, Action::kStartChain);              // the next chain from there
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].seq, s.committed());
  // A result that is not a path of its tree is an error, not a commit.
  const auto v2 = of_kind(s.on_draft_tree(again[0].id, 6, tree), Action::kVerify);
  ASSERT_EQ(v2.size(), 1u);
  EXPECT_THROW(s.on_result(v2[0].id, std::vector<Token>{9, 5}, Forward{}), Error);
  EXPECT_THROW(s.on_draft_tree(again[0].id, 6, TokenTree{{1}, {3}}), Error);
}

}  // namespace
}  // namespace dsi

// Merged drafters in virtual time: the lead drafts the chain, 1-2 followers propose their own
// tokens along it, and every task is the chain plus their differing proposals as siblings.
// The text is the target's for SI and DSI, SP 1-4, drafters faster and slower than the
// targets, greedy and sampled (Gumbel coupling), with a stop token.
TEST(SchedulerMerged, MergedDraftersAreLosslessForEveryModeAndSp) {
  int64_t siblings = 0;
  for (Mode mode : {Mode::kSi, Mode::kDsi}) {
    for (int followers : {1, 2}) {
      for (int sp = 1; sp <= (mode == Mode::kSi ? 1 : 4); ++sp) {
        for (double a : {0.0, 0.6, 1.0}) {
          for (double c : {2.0, 30.0}) {
            const uint64_t seed = 3 + sp + followers;
            SimConfig cfg = make(mode, sp, 4, a, 20, c, 60, seed);
            cfg.sched.followers = followers;
            const SimResult r = simulate(cfg);
            ASSERT_EQ(r.tokens, synthetic_reference(cfg.target, cfg.prompt, 60))
                << mode_name(mode) << " followers=" << followers << " sp=" << sp << " a=" << a
                << " c=" << c;
            siblings += r.stats.siblings_committed;
            if (a < 1) EXPECT_GT(r.stats.proposals_received, 0);
            cfg.sampling = {.temperature = 0.8f, .seed = seed};
            ASSERT_EQ(simulate(cfg).tokens,
                      synthetic_sampled_reference(cfg.target, cfg.prompt, 60, cfg.sampling))
                << "sampled, " << mode_name(mode) << " followers=" << followers << " sp=" << sp
                << " a=" << a;
          }
        }
      }
    }
  }
  EXPECT_GT(siblings, 0);
  SimConfig cfg = make(Mode::kDsi, 3, 3, 0.6, 20, 2, 200, 5);
  cfg.sched.followers = 2;
  const auto full = synthetic_reference(cfg.target, cfg.prompt, 200);
  cfg.sched.stop_tokens = {full[23]};
  EXPECT_EQ(simulate(cfg).tokens,
            synthetic_reference(cfg.target, cfg.prompt, 200, cfg.sched.stop_tokens));
}

// A second drafter with independent errors catches a share of the lead's misses: more tokens
// per verification and a lower latency than one drafter, in SI and DSI (virtual time, same
// forwards).
TEST(SchedulerMerged, ASecondDrafterCommitsWhatTheLeadMisses) {
  for (Mode mode : {Mode::kSi, Mode::kDsi}) {
    double one_ms = 0, two_ms = 0;
    int64_t one_tasks = 0, two_tasks = 0, caught = 0;
    for (uint64_t seed : {1, 2, 3}) {
      SimConfig cfg = make(mode, mode == Mode::kSi ? 1 : 4, 4, 0.6, 5, 0.5, 300, seed);
      const auto ref = synthetic_reference(cfg.target, cfg.prompt, 300);
      const SimResult one = simulate(cfg);
      cfg.sched.followers = 1;
      const SimResult two = simulate(cfg);
      ASSERT_EQ(one.tokens, ref);
      ASSERT_EQ(two.tokens, ref);
      one_ms += one.total_ms;
      two_ms += two.total_ms;
      one_tasks += one.stats.tasks_completed;
      two_tasks += two.stats.tasks_completed;
      caught += two.stats.siblings_committed;
    }
    // A follower right where the lead is wrong: (1 - a) * a of the positions.
    EXPECT_GT(caught, 50) << mode_name(mode);
    EXPECT_LT(two_ms, 0.95 * one_ms)
        << mode_name(mode) << ": " << one_ms / 3 << " vs " << two_ms / 3;
    if (mode == Mode::kSi) EXPECT_LT(two_tasks, one_tasks);
  }
}

// The task layout by hand: SI waits for the followers' proposals of its window, then verifies
// the lead's chain with each differing proposal as a leaf under the chain node before it;
// stop_waiting() launches without the missing ones; a committed sibling starts a new chain.
TEST(SchedulerMerged, SiWaitsForProposalsAndHangsThemAsSiblings) {
  SchedulerOptions o{.mode = Mode::kSi, .lookahead = 3, .n_targets = 1, .max_new_tokens = 20};
  o.followers = 2;
  Scheduler s(o, {1, 2, 3});
  auto acts = s.start();
  ASSERT_EQ(acts.size(), 1u);
  ASSERT_EQ(acts[0].kind, Action::kStartChain);
  const uint64_t chain = acts[0].id;
  EXPECT_TRUE(s.on_draft(chain, 3, 10).empty());
  EXPECT_TRUE(s.on_proposals(0, chain, 3, std::vector<Token>{10, 21}).empty());
  EXPECT_TRUE(s.on_draft(chain, 4, 11).empty());
  EXPECT_TRUE(s.on_draft(chain, 5, 12).empty());
  EXPECT_TRUE(s.awaits_proposals());  // follower 0 lacks position 5, follower 1 all
  EXPECT_TRUE(s.on_proposals(1, chain, 3, std::vector<Token>{30, 11, 12}).empty());
  // Out of order: dropped.
  EXPECT_TRUE(s.on_proposals(0, chain, 6, std::vector<Token>{7}).empty());
  acts = s.on_proposals(0, chain, 5, std::vector<Token>{12});
  EXPECT_FALSE(s.awaits_proposals());
  ASSERT_EQ(acts.size(), 1u);
  ASSERT_EQ(acts[0].kind, Action::kVerify);
  // The chain 10 11 12, then 30 at depth 0 (follower 1) and 21 at depth 1 (follower 0).
  EXPECT_EQ(acts[0].seq, (std::vector<Token>{1, 2, 3, 10, 11, 12, 30, 21}));
  EXPECT_EQ(acts[0].parents, (std::vector<int>{-1, 0, 1, -1, 0}));
  EXPECT_EQ(acts[0].n_logits, 6);
  EXPECT_EQ(s.stats().siblings_verified, 2);
  // The target took 10 then the sibling 21, and says 40 after it.
  acts = s.on_result(acts[0].id, std::vector<Token>{10, 21, 40}, Forward{6, 0.01});
  EXPECT_EQ(s.committed(), (std::vector<Token>{1, 2, 3, 10, 21, 40}));
  EXPECT_EQ(s.stats().siblings_committed, 1);
  EXPECT_EQ(s.stats().drafts_rejected, 1);  // the lead's 11
  ASSERT_FALSE(acts.empty());
  EXPECT_EQ(acts[0].kind, Action::kStartChain);
  EXPECT_EQ(acts[0].seq, s.committed());
  const uint64_t chain2 = acts[0].id;
  // Proposals of the old chain are stale; a window without them waits until told not to.
  EXPECT_TRUE(s.on_proposals(0, chain, 6, std::vector<Token>{5}).empty());
  s.on_draft(chain2, 6, 50);
  s.on_draft(chain2, 7, 51);
  s.on_draft(chain2, 8, 52);
  EXPECT_TRUE(s.awaits_proposals());
  acts = s.stop_waiting();
  ASSERT_EQ(acts.size(), 1u);
  EXPECT_EQ(acts[0].kind, Action::kVerify);
  EXPECT_TRUE(acts[0].parents.empty());  // nothing proposed: a chain
  EXPECT_THROW(s.on_proposals(2, chain2, 6, std::vector<Token>{1}), std::invalid_argument);
}

}  // namespace
}  // namespace dsi
