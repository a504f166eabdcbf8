// The whole runtime (coordinator + worker loops with real threads and the wire format) in
// one process over the loopback transport: lossless output, preemption, dead peers.
#include <gtest/gtest.h>

#include <thread>

#include "core/config.h"
#include "core/coordinator.h"
#include "core/worker.h"
#include "engines/synthetic_engine.h"
#include "sim/simulator.h"

namespace dsi {
namespace {

struct World {
  explicit World(int n, WorkerOptions wo = {}) : hub(n), data_hub(n), codes(n) {
    for (int r = 1; r < n; ++r) {
      threads.emplace_back([this, r, wo] {
        auto ch = hub.channel(r);
        auto data = data_hub.channel(r);
        try {
          codes[r] = run_worker(*ch, wo, data.get());
        } catch (const WorkerFatal&) {
          codes[r] = -1;
        }
      });
    }
    coord_ch = hub.channel(0);
  }
  ~World() {
    for (auto& t : threads) t.join();
  }
  LoopbackHub hub;
  LoopbackDataHub data_hub;
  std::unique_ptr<ControlChannel> coord_ch;
  std::vector<std::thread> threads;
  std::vector<int> codes;  // one slot per worker thread (a shared map would race)
};

RunConfig fast_config(Mode mode, double a, int k) {
  RunConfig c;
  c.mode = mode;
  c.a = a;
  c.lookahead = k;
  c.t_ms = 3;
  c.ttft_ms = 3;
  c.c = 0.1;
  c.max_new_tokens = 40;
  c.seed = 5;
  return c;
}

TEST(RuntimeLoopback, EveryModeIsLosslessAndReportsPerRank) {
  World w(6);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (Mode mode : {Mode::kNonSi, Mode::kSi, Mode::kDsi}) {
    for (double a : {0.0, 0.6, 1.0}) {
      RunConfig cfg = fast_config(mode, a, 3);
      const int sp = mode == Mode::kDsi ? 4 : 1;
      std::vector<Token> streamed;
      RunReport r = coord.run(cfg, sp, [&](std::span<const Token> t) {
        streamed.insert(streamed.end(), t.begin(), t.end());
      });
      SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
      EXPECT_EQ(r.tokens, synthetic_reference(target, r.prompt, cfg.max_new_tokens))
          << mode_name(mode) << " a=" << a;
      EXPECT_EQ(streamed, r.tokens);
      EXPECT_EQ(static_cast<int>(r.ranks.size()), cfg.n_drafters() + sp);
      for (const auto& rk : r.ranks) EXPECT_GT(rk.busy_s, 0) << rk.role;
    }
  }
  coord.exit_all(0);
}

TEST(RuntimeLoopback, SiWithTokenTreesIsLossless) {
  // The drafter expands trees, the target verifies them in one tree forward: the target's
  // text, greedy and sampled (Gumbel coupling), whatever the shape.
  World w(3);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (const std::vector<int>& shape : {std::vector<int>{3, 2, 1}, std::vector<int>{2, 2}}) {
    for (double temperature : {0.0, 0.9}) {
      RunConfig cfg = fast_config(Mode::kSi, 0.6, static_cast<int>(shape.size()));
      cfg.tree = shape;
      cfg.temperature = temperature;
      RunReport r = coord.run(cfg, 1);
      SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
      const auto want = temperature > 0
                            ? synthetic_sampled_reference(target, r.prompt, cfg.max_new_tokens,
                                                          sampling_params(cfg))
                            : synthetic_reference(target, r.prompt, cfg.max_new_tokens);
      EXPECT_EQ(r.tokens, want) << "T=" << temperature << " shape of " << shape.size();
      EXPECT_GT(r.stats.drafts_accepted, 0);
      EXPECT_LT(r.stats.tasks_completed, cfg.max_new_tokens);
    }
  }
  // The residual coupling: the drafter sends q after every node with children, the target
  // runs multi-step speculative sampling; the text is the simulator's for the seed.
  for (const std::vector<int>& shape : {std::vector<int>{3, 2, 1}, std::vector<int>{2, 2}}) {
    RunConfig cfg = fast_config(Mode::kSi, 0.6, static_cast<int>(shape.size()));
    cfg.tree = shape;
    cfg.temperature = 0.9;
    cfg.coupling = "residual";
    RunReport r = coord.run(cfg, 1);
    EXPECT_EQ(r.tokens, simulate(sim_config(cfg, 1)).tokens)
        << "residual, shape of " << shape.size();
  }
  // A drafter that is always right, on the KV it kept of its previous tree: every
  // verification takes the whole depth and the target's token.
  RunConfig cfg = fast_config(Mode::kSi, 1.0, 3);
  cfg.tree = {2, 1, 1};
  RunReport r = coord.run(cfg, 1);
  EXPECT_EQ(r.stats.tasks_completed, cfg.max_new_tokens / 4);
  coord.exit_all(0);
}

TEST(RuntimeLoopback, DsiWithTokenTreesIsLossless) {
  // The drafter drafts tree after tree down their first paths while targets verify them, with
  // preemption and a sibling's acceptance restarting the chain: the target's text for every
  // SP, greedy and sampled (Gumbel coupling).
  World w(5);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (const std::vector<int>& shape : {std::vector<int>{3, 2, 1}, std::vector<int>{2, 2}}) {
    for (int sp = 1; sp <= 3; ++sp) {
      for (double temperature : {0.0, 0.9}) {
        RunConfig cfg = fast_config(Mode::kDsi, 0.6, static_cast<int>(shape.size()));
        cfg.tree = shape;
        cfg.temperature = temperature;
        RunReport r = coord.run(cfg, sp);
        SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
        const auto want = temperature > 0
                              ? synthetic_sampled_reference(target, r.prompt, cfg.max_new_tokens,
                                                            sampling_params(cfg))
                              : synthetic_reference(target, r.prompt, cfg.max_new_tokens);
        EXPECT_EQ(r.tokens, want) << "T=" << temperature << " sp=" << sp << " shape of "
                                  << shape.size();
        EXPECT_GT(r.stats.drafts_accepted, 0);
      }
    }
  }
  coord.exit_all(0);
}

TEST(RuntimeLoopback, MergedDraftersAreLossless) {
  // roles.drafters 2-3: the lead drafts the chain and sends its drafts to the others, which
  // propose their own tokens along it; tasks verify the chain with their proposals as
  // siblings. The target's text for SI and DSI at every SP that fits, greedy and sampled
  // (Gumbel coupling), and the siblings do commit tokens the lead missed.
  World w(6);
  Coordinator coord(*w.coord_ch, 50, 5);
  int64_t caught = 0;
  for (int drafters : {2, 3}) {
    for (Mode mode : {Mode::kSi, Mode::kDsi}) {
      for (int sp = 1; sp <= (mode == Mode::kSi ? 1 : 5 - drafters); ++sp) {
        for (double temperature : {0.0, 0.9}) {
          RunConfig cfg = fast_config(mode, 0.6, 4);
          cfg.drafters = drafters;
          cfg.temperature = temperature;
          RunReport r = coord.run(cfg, sp);
          SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
          const auto want = temperature > 0
                                ? synthetic_sampled_reference(target, r.prompt, cfg.max_new_tokens,
                                                              sampling_params(cfg))
                                : synthetic_reference(target, r.prompt, cfg.max_new_tokens);
          EXPECT_EQ(r.tokens, want) << drafters << " drafters, " << mode_name(mode) << " sp=" << sp
                                    << " T=" << temperature;
          EXPECT_GT(r.stats.proposals_received, 0);
          EXPECT_EQ(static_cast<int>(r.ranks.size()), drafters + sp);
          caught += r.stats.siblings_committed;
        }
      }
    }
  }
  EXPECT_GT(caught, 0);
  // With runtime.adapt: the policy's switches (non-SI stops every drafter) change no token.
  RunConfig cfg = fast_config(Mode::kDsi, 0.6, 4);
  cfg.drafters = 2;
  cfg.adapt = true;
  cfg.max_new_tokens = 80;
  const RunReport r = coord.run(cfg, 3);
  SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
  EXPECT_EQ(r.tokens, synthetic_reference(target, r.prompt, cfg.max_new_tokens)) << "adaptive";
  coord.exit_all(0);
}

// A drafter that takes 200 ms per forward (after its prefill): its proposals never come in
// time.
class SlowEngine final : public Engine {
 public:
  explicit SlowEngine(const SyntheticParams& p) : inner_(p) {}
  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override {
    if (kv_len() > 0 && !cancellable_sleep_ms(200, cancel)) throw Cancelled();
    return inner_.forward(tokens, n_logits, cancel);
  }
  void truncate(int n) override { inner_.truncate(n); }
  int kv_len() const override { return inner_.kv_len(); }
  int vocab_size() const override { return inner_.vocab_size(); }

 private:
  SyntheticEngine inner_;
};

TEST(RuntimeLoopback, ASlowDrafterCostsSpeedNotTokens) {
  // The third drafter is slow: SI gives up waiting for its proposals each window, DSI never
  // waits; the text is the target's either way.
  WorkerOptions wo;
  wo.engine_factory = [](const EngineSpec& spec) -> std::unique_ptr<Engine> {
    const auto* p = std::get_if<SyntheticParams>(&spec);
    if (p && p->drafter && p->stream == 2) return std::make_unique<SlowEngine>(*p);
    return make_engine(spec);
  };
  World w(6, wo);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (Mode mode : {Mode::kSi, Mode::kDsi}) {
    RunConfig cfg = fast_config(mode, 0.6, 4);
    cfg.drafters = 3;
    const RunReport r = coord.run(cfg, mode == Mode::kSi ? 1 : 2);
    SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
    EXPECT_EQ(r.tokens, synthetic_reference(target, r.prompt, cfg.max_new_tokens))
        << mode_name(mode);
    if (mode == Mode::kSi) EXPECT_GT(r.proposal_waits_given_up, 0);
    EXPECT_LT(r.elapsed_s, 2.0) << mode_name(mode);  // not a wait of 200 ms per window
  }
  coord.exit_all(0);
}

TEST(RuntimeLoopback, StagedDraftingKeepsTheDraftsAndTheText) {
  // dsi.stage: ngram: the drafter checks prompt-lookup proposals in one forward; its drafts
  // are its own, so every run's text equals the run without the stage: greedy, the Gumbel
  // coupling and the residual coupling (whose targets take the drafter's q from the staged
  // forward), SI and DSI. A small vocabulary makes the lookup find matches.
  World w(5);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (Mode mode : {Mode::kSi, Mode::kDsi}) {
    for (const char* sampling : {"greedy", "gumbel", "residual"}) {
      RunConfig cfg = fast_config(mode, 0.7, 4);
      cfg.vocab = 8;
      cfg.max_new_tokens = 60;
      if (std::string(sampling) != "greedy") {
        cfg.temperature = 0.9;
        cfg.coupling = sampling;
      }
      const int sp = mode == Mode::kDsi ? 3 : 1;
      const RunReport plain = coord.run(cfg, sp);
      cfg.stage = "ngram";
      cfg.stage_tokens = 3;
      const RunReport staged = coord.run(cfg, sp);
      EXPECT_EQ(staged.tokens, plain.tokens) << mode_name(mode) << " " << sampling;
      if (std::string(sampling) != "residual") {
        SyntheticParams target{.seed = cfg.seed, .vocab = cfg.vocab};
        const auto want = cfg.temperature > 0
                              ? synthetic_sampled_reference(
                                    target, staged.prompt, cfg.max_new_tokens, sampling_params(cfg))
                              : synthetic_reference(target, staged.prompt, cfg.max_new_tokens);
        EXPECT_EQ(staged.tokens, want) << mode_name(mode) << " " << sampling;
      }
      // The drafter ran staged forwards (more than one token after the first drafts).
      int staged_forwards = 0;
      for (const auto& rk : staged.ranks) {
        if (rk.role != "drafter") continue;
        for (const Span& sp_ : rk.spans) {
          staged_forwards += sp_.kind == SpanKind::kDraft && !sp_.cancelled && sp_.tokens > 1 &&
                             sp_.pos > static_cast<int>(staged.prompt.size());
        }
      }
      EXPECT_GT(staged_forwards, 0) << mode_name(mode) << " " << sampling;
    }
  }
  coord.exit_all(0);
}

TEST(RuntimeLoopback, SamplingOutputIsTheSimulatorsForEverySp) {
  // Sampling decisions are pure functions of (seed, position, context): the threaded runtime
  // must produce exactly what the virtual-time simulator produces, whatever the timing.
  World w(6);
  Coordinator coord(*w.coord_ch, 50, 5);
  for (Mode mode : {Mode::kDsi, Mode::kSi}) {
    for (int sp : {1, 2, 4}) {
      if (mode == Mode::kSi && sp > 1) continue;
      RunConfig cfg = fast_config(mode, 0.6, 3);
      cfg.temperature = 0.9;
      cfg.top_k = 20;
      RunReport r = coord.run(cfg, sp);
      SimConfig sc;
      sc.sched = {
          .mode = mode, .lookahead = 3, .n_targets = sp, .max_new_tokens = cfg.max_new_tokens};
      sc.target = {.seed = cfg.seed, .vocab = cfg.vocab, .forward_ms = 1};
      sc.drafter = {.seed = cfg.seed,
                    .vocab = cfg.vocab,
                    .acceptance = cfg.a,
                    .forward_ms = 0.1,
                    .drafter = true,
                    .overlap = cfg.overlap};
      sc.prompt = r.prompt;
      sc.sampling = {.temperature = 0.9f, .top_k = 20, .seed = cfg.seed};
      EXPECT_EQ(r.tokens, simulate(sc).tokens) << mode_name(mode) << " sp=" << sp;
      EXPECT_GT(r.stats.drafts_rejected, 0);
    }
  }
  coord.exit_all(0);
}

TEST(RuntimeLoopback, RunsThatDifferOnlyInSamplingKeepTheEngines) {
  // A server's requests change temperature and seed: the workers keep their engines (the
  // weights and the cached prefix) and build them once.
  std::atomic<int> built{0};
  WorkerOptions wo;
  wo.engine_factory = [&built](const EngineSpec& spec) {
    ++built;
    return make_engine(spec);
  };
  World w(4, wo);
  Coordinator coord(*w.coord_ch, 50, 5);
  RunConfig cfg = fast_config(Mode::kDsi, 0.6, 3);
  for (double temp : {0.0, 0.8, 0.5}) {
    cfg.temperature = temp;
    cfg.sampling_seed = static_cast<int64_t>(temp * 10);
    (void)coord.run(cfg, 2);
  }
  EXPECT_EQ(built.load(), 3);  // drafter and two targets, once each
  coord.exit_all(0);
}

TEST(RuntimeLoopback, RejectionsPreemptRunningVerifications) {
  World w(7);
  Coordinator coord(*w.coord_ch, 50, 5);
  RunConfig cfg = fast_config(Mode::kDsi, 0.5, 1);
  cfg.t_ms = cfg.ttft_ms = 20;
  cfg.c = 0.05;
  cfg.max_new_tokens = 30;
  RunReport r = coord.run(cfg, 5);
  EXPECT_GT(r.stats.tasks_preempted, 0);
  EXPECT_GT(r.wasted_target_s(), 0);
  int cut = 0;
  for (const auto& rk : r.ranks) {
    for (const auto& s : rk.spans) {
      // A preempted span is cut well short of the 20 ms forward.
      if (s.cancelled && s.dur_us < 15e3) ++cut;
    }
  }
  EXPECT_GT(cut, 0);
  coord.exit_all(0);
}

TEST(RuntimeLoopback, DeadTargetIsNamedWithinTheTimeout) {
  World w(4, WorkerOptions{.heartbeat_ms = 20, .peer_timeout_s = 0.5});
  Coordinator coord(*w.coord_ch, 20, 0.5);
  RunConfig cfg = fast_config(Mode::kDsi, 0.9, 2);
  cfg.max_new_tokens = 100000;
  cfg.t_ms = 5;
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    w.hub.kill(3);
  });
  const auto t0 = Clock::now();
  try {
    coord.run(cfg, 2);
    FAIL() << "run finished although rank 3 died";
  } catch (const PeerError& e) {
    EXPECT_EQ(e.rank, 3);
    EXPECT_NE(std::string(e.what()).find("rank 3 (target 1)"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  killer.join();
  coord.exit_all(1);
  // The dead rank never hears Exit: its worker gives up on the silent coordinator.
}

// While one of the worker's threads runs a long forward, the other keeps receiving: a silent
// coordinator is noticed within the timeout and the forward is cancelled, not waited for.
TEST(RuntimeLoopback, WorkerGivesUpOnASilentCoordinatorWhileComputing) {
  World w(2, WorkerOptions{.heartbeat_ms = 20, .peer_timeout_s = 0.3});
  ControlLink link(*w.coord_ch);
  const WorkerSpec spec{.engine = SyntheticParams{.ttft_ms = 20000, .forward_ms = 20000}};
  link.send(1, Message{.run = 1, .body = msg::Configure{.spec = spec}});
  std::optional<Envelope> ready;
  while (!ready || !ready->msg.is<msg::Ready>()) {
    ready = link.recv(Clock::now() + std::chrono::seconds(5));
    ASSERT_TRUE(ready) << "no Ready";
  }
  const auto t0 = Clock::now();
  link.send(1, Message{.run = 1, .body = msg::Verify{.task = 1, .seq = {1, 2, 3}, .n_logits = 1}});
  w.threads[0].join();  // the coordinator says nothing more
  w.threads.clear();
  EXPECT_EQ(w.codes[1], -1) << "the worker should have given up on the coordinator";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3)) << "it waited for the 20 s forward";
}

TEST(RuntimeLoopback, WorkerReportsEngineErrors) {
  World w(3);
  Coordinator coord(*w.coord_ch, 50, 5);
  RunConfig cfg = fast_config(Mode::kDsi, 0.9, 2);
  cfg.vocab = 1;  // the synthetic engine refuses it
  EXPECT_THROW(coord.run(cfg, 1), PeerError);
  coord.exit_all(1);
}

}  // namespace
}  // namespace dsi
