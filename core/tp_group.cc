#include "core/tp_group.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <utility>

#include "core/protocol.h"

namespace dsi {
namespace {

// The calls a leader hands on, one frame each: the op's byte, then its fields.
enum class Op : uint8_t {
  kBuild = 1,
  kForward,
  kTree,
  kKeepPath,
  kTruncate,
  kSendKv,
  kRecvKv,
  kDrop,
  kEnd
};

struct Out {
  std::vector<uint8_t> b;
  explicit Out(Op op) { b.push_back(static_cast<uint8_t>(op)); }
  void i32(int32_t v) {
    const size_t at = b.size();
    b.resize(at + sizeof v);
    std::memcpy(b.data() + at, &v, sizeof v);
  }
  void i64(int64_t v) {
    const size_t at = b.size();
    b.resize(at + sizeof v);
    std::memcpy(b.data() + at, &v, sizeof v);
  }
  void key(const DataKey& k) {
    i64(k.run);
    i64(static_cast<int64_t>(k.kind));
    i64(static_cast<int64_t>(k.stream));
    i64(k.index);
  }
  template <class T>
  void list(std::span<const T> v) {
    static_assert(sizeof(T) == sizeof(int32_t));
    i32(static_cast<int32_t>(v.size()));
    const size_t at = b.size();
    b.resize(at + v.size_bytes());
    if (!v.empty()) std::memcpy(b.data() + at, v.data(), v.size_bytes());
  }
  void tree(const TokenTree& t) {
    list(std::span<const Token>(t.tokens));
    list(std::span<const int>(t.parents));
  }
};

struct In {
  std::span<const uint8_t> b;
  size_t at = 1;
  int32_t i32() {
    int32_t v;
    if (at + sizeof v > b.size()) throw ProtocolError("group call cut short");
    std::memcpy(&v, b.data() + at, sizeof v);
    at += sizeof v;
    return v;
  }
  int64_t i64() {
    int64_t v;
    if (at + sizeof v > b.size()) throw ProtocolError("group call cut short");
    std::memcpy(&v, b.data() + at, sizeof v);
    at += sizeof v;
    return v;
  }
  DataKey key() {
    DataKey k;
    k.run = static_cast<uint32_t>(i64());
    k.kind = static_cast<DataKind>(i64());
    k.stream = static_cast<uint64_t>(i64());
    k.index = i64();
    return k;
  }
  template <class T>
  std::vector<T> list() {
    const int32_t n = i32();
    if (n < 0 || at + static_cast<size_t>(n) * sizeof(T) > b.size()) {
      throw ProtocolError("group call cut short");
    }
    std::vector<T> v(static_cast<size_t>(n));
    if (n) std::memcpy(v.data(), b.data() + at, v.size() * sizeof(T));
    at += v.size() * sizeof(T);
    return v;
  }
  TokenTree tree() {
    TokenTree t;
    t.tokens = list<Token>();
    t.parents = list<int>();
    return t;
  }
};

void to_members(ControlChannel& group, const std::vector<uint8_t>& frame) {
  for (int r = 1; r < group.size(); ++r) group.send(r, frame, Traffic::kWork);
}

constexpr std::chrono::milliseconds kBuildPatience = std::chrono::minutes(10);

// After a build: which shards failed, agreed over the group (each adds a 1 at its own rank).
std::vector<int> failed_shards(Collective& coll, bool failed) {
  std::vector<float> flags(static_cast<size_t>(coll.size()), 0.f);
  flags[static_cast<size_t>(coll.rank())] = failed ? 1.f : 0.f;
  // Shards may finish loading minutes apart (a cold page cache, many shards on one node).
  (void)coll.all_reduce(flags, false, kBuildPatience);
  std::vector<int> out;
  for (int r = 0; r < coll.size(); ++r) {
    if (flags[static_cast<size_t>(r)] > 0) out.push_back(r);
  }
  return out;
}

// A handoff's import, agreed over the group: every shard keeps the range only if every shard
// received its part (a shard that did not would leave the group's caches unequal).
bool agreed_recv_kv(Engine& e, Collective& coll, DataChannel* ch, const DataKey& key, int begin,
                    int end, Clock::time_point deadline, const CancelFlag* cancel) {
  bool ok = false;
  try {
    ok = ch && e.recv_kv(*ch, key, begin, end, deadline, cancel);
  } catch (const CollectiveTimeout&) {
    throw;
  } catch (const std::exception&) {
    ok = false;
  }
  // A shard whose part never came gives up at the deadline: the others wait that long too.
  const auto left =
      std::max(std::chrono::milliseconds(0),
               std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
  const bool all = !coll.all_reduce(std::span<float>(), !ok, left);
  if (!all && e.kv_len() > begin) e.truncate(begin);
  return all;
}

bool is_kv(const DataKey& k) {
  return k.kind == DataKind::kKvHeader || k.kind == DataKind::kKvCache;
}

std::unique_ptr<Engine> build_shard(const EngineSpec& spec, Collective& coll,
                                    std::exception_ptr& error) {
  try {
    return make_engine(spec, &coll);
  } catch (...) {
    error = std::current_exception();
    return nullptr;
  }
}

class GroupLeaderEngine final : public Engine {
 public:
  GroupLeaderEngine(std::unique_ptr<Engine> local, const GroupContext& ctx)
      : local_(std::move(local)), ctx_(ctx) {}
  ~GroupLeaderEngine() override {
    try {
      to_members(*ctx_.ch, Out(Op::kDrop).b);
    } catch (const std::exception& e) {
      fmt::print(stderr, "dsi: warning: {}: could not tell the members to drop their shards: {}\n",
                 ctx_.name, e.what());
    }
  }

  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override {
    hand_on_forward(tokens, n_logits);
    return guard([&] { return local_->forward(tokens, n_logits, cancel); });
  }
  std::vector<Token> forward_argmax(std::span<const Token> tokens, int n_logits,
                                    const CancelFlag& cancel) override {
    hand_on_forward(tokens, n_logits);
    return guard([&] { return local_->forward_argmax(tokens, n_logits, cancel); });
  }
  Logits forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) override {
    Out o(Op::kTree);
    o.i32(from);
    o.tree(tree);
    to_members(*ctx_.ch, o.b);
    return guard([&] { return local_->forward_tree(tree, from, cancel); });
  }
  void keep_path(const TokenTree& tree, std::span<const int> path,
                 const CancelFlag& cancel) override {
    Out o(Op::kKeepPath);
    o.tree(tree);
    o.list(path);
    to_members(*ctx_.ch, o.b);
    guard([&] {
      local_->keep_path(tree, path, cancel);
      return 0;
    });
  }
  void truncate(int n) override {
    Out o(Op::kTruncate);
    o.i32(n);
    to_members(*ctx_.ch, o.b);
    local_->truncate(n);
  }
  int kv_len() const override { return local_->kv_len(); }
  int vocab_size() const override { return local_->vocab_size(); }
  std::string device_name() const override { return local_->device_name(); }
  // KV handoff between target groups moves each shard's heads, shard i to shard i.
  size_t kv_bytes_per_token() const override {
    return ctx_.kv_handoff ? local_->kv_bytes_per_token() : 0;
  }
  void send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const override {
    Out o(Op::kSendKv);
    o.i32(dst - ctx_.first_target);
    o.key(key);
    o.i32(begin);
    o.i32(end);
    to_members(*ctx_.ch, o.b);
    local_->send_kv(ch, dst, key, begin, end);
  }
  bool recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
               std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel) override {
    Out o(Op::kRecvKv);
    o.key(key);
    o.i32(begin);
    o.i32(end);
    o.i64(std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count());
    to_members(*ctx_.ch, o.b);
    return guard([&] {
      return agreed_recv_kv(*local_, *ctx_.coll, &ch, key, begin, end, deadline, cancel);
    });
  }

 private:
  void hand_on_forward(std::span<const Token> tokens, int n_logits) {
    Out o(Op::kForward);
    o.i32(n_logits);
    o.list(tokens);
    to_members(*ctx_.ch, o.b);
  }
  // A collective that timed out leaves the group out of step for good.
  template <class F>
  auto guard(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const CollectiveTimeout& e) {
      ctx_.fatal(fmt::format("{}: {}", ctx_.name, e.what()));
      throw;
    }
  }

  std::unique_ptr<Engine> local_;
  GroupContext ctx_;
};

}  // namespace

std::string RankPlace::group_name() const {
  if (kind == Kind::kCoordinator) return "the coordinator";
  const std::string ranks = group_size > 1
                                ? fmt::format("world ranks {}-{}", first, first + group_size - 1)
                                : fmt::format("world rank {}", first);
  return fmt::format("{} {} ({})", kind == Kind::kDrafter ? "drafter" : "target", index, ranks);
}

std::vector<RankPlace> rank_layout(const RunConfig& cfg, int world) {
  const int targets = cfg.n_targets(world);
  std::vector<RankPlace> out(1);
  int control = 1;
  auto add = [&](RankPlace::Kind kind, int count, int size) {
    for (int i = 0; i < count; ++i) {
      const int first = static_cast<int>(out.size());
      for (int s = 0; s < size; ++s) {
        out.push_back({.kind = kind,
                       .index = i,
                       .shard = s,
                       .group_size = size,
                       .first = first,
                       .control = s == 0 ? control++ : -1});
      }
    }
  };
  add(RankPlace::Kind::kDrafter, cfg.n_drafters(), cfg.drafter_tp);
  add(RankPlace::Kind::kTarget, targets, cfg.target_tp);
  return out;
}

std::unique_ptr<Engine> make_group_leader_engine(const EngineSpec& spec, const GroupContext& ctx) {
  msg::Configure c;
  c.spec.engine = spec;
  Out o(Op::kBuild);
  const std::vector<uint8_t> m = encode(Message{.body = c});
  o.b.insert(o.b.end(), m.begin(), m.end());
  to_members(*ctx.ch, o.b);
  std::exception_ptr error;
  auto local = build_shard(spec, *ctx.coll, error);
  std::vector<int> failed;
  try {
    failed = failed_shards(*ctx.coll, error != nullptr);
  } catch (const CollectiveTimeout& e) {
    ctx.fatal(fmt::format("{}: building the shards: {}", ctx.name, e.what()));
    throw;
  }
  if (error) std::rethrow_exception(error);
  if (!failed.empty()) {
    throw Error(fmt::format("{}: shard {} could not build its engine (its error is printed by that "
                            "rank)",
                            ctx.name, fmt::join(failed, ", ")));
  }
  return std::make_unique<GroupLeaderEngine>(std::move(local), ctx);
}

void end_group(ControlChannel& group) {
  to_members(group, Out(Op::kEnd).b);
}

void run_group_member(const GroupContext& ctx) {
  ControlChannel& group = *ctx.ch;
  Collective& coll = *ctx.coll;
  const std::string& name = ctx.name;
  const int shard = coll.rank();
  std::unique_ptr<Engine> engine;
  const CancelFlag never;
  for (;;) {
    auto f = group.recv(Clock::now() + std::chrono::seconds(1));
    if (!f) continue;
    if (f->bytes.empty()) {
      ctx.fatal(fmt::format("{}: an empty call from the leader", name));
      return;
    }
    In in{f->bytes};
    const Op op = static_cast<Op>(f->bytes[0]);
    try {
      switch (op) {
        case Op::kBuild: {
          engine.reset();
          const Message m = decode(std::span(f->bytes).subspan(1));
          std::exception_ptr error;
          engine = build_shard(m.as<msg::Configure>().spec.engine, coll, error);
          if (error) {
            try {
              std::rethrow_exception(error);
            } catch (const std::exception& e) {
              fmt::print(
                  stderr, "dsi: error: {}\n",
                  Error(fmt::format("{}: shard {} building its engine: {}", name, shard, e.what()))
                      .what());
            }
          }
          (void)failed_shards(coll, error != nullptr);
          break;
        }
        case Op::kDrop:
          engine.reset();
          break;
        case Op::kEnd:
          return;
        default: {
          if (!engine) {
            ctx.fatal(fmt::format("{}: shard {} was called without an engine", name, shard));
            return;
          }
          if (op == Op::kForward) {
            const int n_logits = in.i32();
            const auto tokens = in.list<Token>();
            (void)engine->forward(tokens, n_logits, never);
          } else if (op == Op::kTree) {
            const int from = in.i32();
            (void)engine->forward_tree(in.tree(), from, never);
          } else if (op == Op::kKeepPath) {
            const TokenTree tree = in.tree();
            engine->keep_path(tree, in.list<int>(), never);
          } else if (op == Op::kTruncate) {
            engine->truncate(in.i32());
          } else if (op == Op::kSendKv) {
            const int dst = in.i32();
            const DataKey key = in.key();
            const int begin = in.i32(), end = in.i32();
            if (!ctx.shard_data) throw ProtocolError("a KV handoff without a shard data channel");
            // Transfers of earlier runs that were never imported will not be asked for.
            ctx.shard_data->discard([&](const DataKey& k) { return is_kv(k) && k.run != key.run; });
            engine->send_kv(*ctx.shard_data, dst, key, begin, end);
          } else if (op == Op::kRecvKv) {
            const DataKey key = in.key();
            const int begin = in.i32(), end = in.i32();
            const auto deadline = Clock::now() + std::chrono::microseconds(in.i64());
            if (ctx.shard_data) {  // older handoffs and other runs will not be asked for
              ctx.shard_data->discard([&](const DataKey& k) {
                return is_kv(k) && (k.run != key.run || k.stream < key.stream);
              });
            }
            (void)agreed_recv_kv(*engine, coll, ctx.shard_data, key, begin, end, deadline, nullptr);
            if (ctx.shard_data) {
              ctx.shard_data->discard([&](const DataKey& k) { return is_kv(k) && k == key; });
            }
          } else {
            ctx.fatal(fmt::format("{}: unknown call {} from the leader", name, f->bytes[0]));
            return;
          }
        }
      }
    } catch (const CollectiveTimeout& e) {
      ctx.fatal(fmt::format("{}: shard {}: {}", name, shard, e.what()));
      return;
    } catch (const ProtocolError& e) {
      ctx.fatal(fmt::format("{}: shard {}: {}", name, shard, e.what()));
      return;
    } catch (const std::exception&) {
      // Cancelled, or what the leader's own call throws too (the same checks on the same
      // arguments): the group stays in step.
    }
  }
}

}  // namespace dsi
