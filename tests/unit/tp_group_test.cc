// Tensor-parallel rank groups (core/tp_group.h): the world's layout and its refusals, and a
// group as threads over loopback channels: the leader's engine hands every call on to its
// members, and through hundreds of cancels at random moments (raised at the leader only), trees,
// truncations and rebuilds the group computes what the whole model computes.
#include "core/tp_group.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include <unistd.h>

#include "model/random_model.h"

namespace dsi {
namespace {

RunConfig llama_cfg() {
  RunConfig c;
  c.engine = "llama";
  c.model_path = "m.gguf";
  return c;
}

TEST(TpGroup, LayoutPlacesEachGroupOnConsecutiveRanks) {
  RunConfig c = llama_cfg();
  c.target_tp = 2;
  c.drafter_tp = 3;
  const auto l = rank_layout(c, 1 + 3 + 2 * 2);
  ASSERT_EQ(l.size(), 8u);
  EXPECT_EQ(l[0].kind, RankPlace::Kind::kCoordinator);
  EXPECT_EQ(l[0].control, 0);
  for (int r = 1; r <= 3; ++r) {
    EXPECT_EQ(l[r].kind, RankPlace::Kind::kDrafter);
    EXPECT_EQ(l[r].shard, r - 1);
    EXPECT_EQ(l[r].first, 1);
    EXPECT_EQ(l[r].control, r == 1 ? 1 : -1);
  }
  EXPECT_EQ(l[4].kind, RankPlace::Kind::kTarget);
  EXPECT_EQ(l[4].control, 2);
  EXPECT_EQ(l[5].control, -1);
  EXPECT_EQ(l[6].index, 1);
  EXPECT_EQ(l[6].control, 3);
  EXPECT_EQ(l[7].shard, 1);
  EXPECT_EQ(l[7].group_name(), "target 1 (world ranks 6-7)");
  EXPECT_EQ(l[1].group_name(), "drafter 0 (world ranks 1-3)");

  // Non-SI: no drafter group.
  c.mode = Mode::kNonSi;
  const auto n = rank_layout(c, 5);
  EXPECT_EQ(n[1].kind, RankPlace::Kind::kTarget);
  EXPECT_EQ(n[3].control, 2);
}

TEST(TpGroup, AWorldThatDoesNotFitTheGroupsIsRefusedWithTheNumbers) {
  RunConfig c = llama_cfg();
  c.target_tp = 2;
  EXPECT_EQ(c.n_targets(6), 2);
  try {
    (void)c.n_targets(5);
    FAIL() << "a world of 5 fits no TP-2 targets after the drafter";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("leave 3 ranks, not a whole number of targets of 2 ranks"),
              std::string::npos)
        << e.what();
  }
  c.targets = 2;
  try {
    (void)c.n_targets(7);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("needs exactly 6 ranks"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_config("engine: synthetic\nroles:\n  target_tp: 2\n", "t"), ConfigError);
  EXPECT_THROW(parse_config("engine: llama\nmodel:\n  path: m.gguf\n  device: cuda\n"
                            "roles:\n  target_tp: 2\n",
                            "t"),
               ConfigError);
  const RunConfig ok =
      parse_config("engine: llama\nmodel:\n  path: m.gguf\nroles:\n  target_tp: 4\n  drafter_tp: "
                   "2\n  allow_cross_node_tp: true\n",
                   "t");
  EXPECT_EQ(ok.target_tp, 4);
  EXPECT_EQ(ok.drafter_tp, 2);
  EXPECT_TRUE(ok.allow_cross_node_tp);
  EXPECT_EQ(ok.n_targets(1 + 2 + 8), 2);
}

double max_rel_diff(std::span<const float> a, std::span<const float> b) {
  double scale = 1e-6, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(a[i])));
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return diff / scale;
}

class TpGroupRun : public ::testing::TestWithParam<int> {};

TEST_P(TpGroupRun, MembersFollowTheLeaderThroughCancelsTreesAndRebuilds) {
  const int tp = GetParam();
  RandomModelSpec ms;
  ms.dim = 128;
  ms.n_layers = 2;
  ms.n_heads = 4;
  ms.n_kv_heads = 2;  // TP 4: one KV head replicated on two shards
  ms.ffn_dim = 256;
  ms.n_vocab = 300;
  ms.type = GgmlType::Q8_0;
  ms.seed = 11;
  const std::string path =
      (std::filesystem::temp_directory_path() /
       ("dsi_tp_group_" + std::to_string(getpid()) + "_" + std::to_string(tp) + ".gguf"))
          .string();
  random_model_writer(ms).write(path);
  const EngineSpec spec = LlamaSpec{.model = path, .max_context = 256};
  auto whole = make_engine(spec);

  LoopbackHub hub(tp);
  LoopbackCollectiveHub colls(tp, std::chrono::seconds(5));
  std::vector<std::unique_ptr<ControlChannel>> ch;
  std::vector<std::unique_ptr<Collective>> coll;
  for (int r = 0; r < tp; ++r) {
    ch.push_back(hub.channel(r));
    coll.push_back(colls.member(r));
  }
  std::mutex mu;
  std::vector<std::string> fatal;
  const GroupFatal on_fatal = [&](const std::string& why) {
    std::lock_guard lk(mu);
    fatal.push_back(why);
  };
  auto ctx = [&](int r) {
    return GroupContext{
        .ch = ch[r].get(), .coll = coll[r].get(), .name = "target 0", .fatal = on_fatal};
  };
  std::vector<std::thread> members;
  for (int r = 1; r < tp; ++r) {
    members.emplace_back([&, r] { run_group_member(ctx(r)); });
  }

  std::mt19937 gen(100 + tp);
  int cancelled = 0, completed = 0, precancelled = 0;
  {
    // A build the members cannot do (no such file) fails on every shard, and the group lives on.
    EXPECT_THROW(make_group_leader_engine(LlamaSpec{.model = path + ".missing"}, ctx(0)),
                 std::exception);
    auto leader = make_group_leader_engine(spec, ctx(0));
    EXPECT_EQ(leader->kv_bytes_per_token(), 0u);  // no handoff between groups yet
    CancelFlag never;
    for (int i = 0; i < 300; ++i) {
      std::vector<Token> toks(1 + gen() % 5);
      for (auto& t : toks) t = static_cast<Token>(gen() % ms.n_vocab);
      const int kind = static_cast<int>(gen() % 10);
      if (leader->kv_len() + 8 > 200 || kind == 0) {
        const int n = static_cast<int>(gen() % (leader->kv_len() + 1));
        leader->truncate(n);
        whole->truncate(n);
        continue;
      }
      if (kind == 1 && leader->kv_len() > 0) {
        // A tree of the tokens as two branches below the first, then one path kept.
        TokenTree tree;
        tree.add(toks[0], -1);
        for (size_t j = 1; j < toks.size(); ++j)
          tree.add(toks[j], static_cast<int>(j % 2 ? 0 : j - 1));
        const Logits a = leader->forward_tree(tree, 0, never);
        const Logits b = whole->forward_tree(tree, 0, never);
        EXPECT_LT(max_rel_diff(a.data, b.data), 1e-4) << "tree at call " << i;
        const std::vector<int> path_nodes = tree.path_to(tree.size() - 1);
        leader->keep_path(tree, path_nodes, never);
        whole->keep_path(tree, path_nodes, never);
        ASSERT_EQ(leader->kv_len(), whole->kv_len());
        continue;
      }
      // A forward: cancelled before it starts one time in four (it must stop at the first
      // all-reduce), at a random moment (during, or after it ends) two times in four.
      CancelFlag flag;
      std::jthread canceller;
      if (i % 4 == 0) {
        flag.cancel();
        ++precancelled;
      } else if (i % 4 != 3) {
        const auto us = std::chrono::microseconds(gen() % 300);
        canceller = std::jthread([&flag, us] {
          std::this_thread::sleep_for(us);
          flag.cancel();
        });
      }
      const int before = leader->kv_len();
      try {
        const bool argmax = kind == 2;
        Logits got;
        std::vector<Token> got_ids;
        if (argmax) {
          got_ids = leader->forward_argmax(toks, static_cast<int>(toks.size()), flag);
        } else {
          got = leader->forward(toks, static_cast<int>(toks.size()), flag);
        }
        const Logits want = whole->forward(toks, static_cast<int>(toks.size()), never);
        if (argmax) {
          EXPECT_EQ(got_ids.size(), toks.size());
        } else {
          EXPECT_LT(max_rel_diff(got.data, want.data), 1e-4) << "call " << i;
        }
        ++completed;
      } catch (const Cancelled&) {
        EXPECT_EQ(leader->kv_len(), before);  // rolled back, on every shard as the next calls show
        ++cancelled;
      }
      if (canceller.joinable()) canceller.join();
      ASSERT_EQ(leader->kv_len(), whole->kv_len());
    }
    // After it all, a last forward still matches: every shard's cache is where the leader's is.
    const std::vector<Token> last = {7, 8, 9};
    EXPECT_LT(
        max_rel_diff(leader->forward(last, 3, never).data, whole->forward(last, 3, never).data),
        1e-4);
  }  // the leader's engine drops the members' shards
  end_group(*ch[0]);
  for (auto& t : members) t.join();
  EXPECT_TRUE(fatal.empty()) << fatal.front();
  EXPECT_GE(cancelled, precancelled);  // and those cancelled in flight (how many: timing)
  EXPECT_GT(precancelled, 20);
  EXPECT_GT(completed, 20);
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Degrees, TpGroupRun, ::testing::Values(2, 4));

}  // namespace
}  // namespace dsi
