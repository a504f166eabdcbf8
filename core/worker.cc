#include "core/worker.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <thread>

#include "engines/engine_factory.h"
#include "core/verify.h"

namespace dsi {
namespace {

using json = nlohmann::json;

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// The first transfer of a KV handoff, always in host memory: whether the blob follows.
struct KvHeader {
  uint32_t ok;  // 0: the source no longer holds the range; recompute
  uint32_t reserved;
  uint64_t bytes;
};

bool is_kv(const DataKey& k) { return k.kind == DataKind::kKvHeader || k.kind == DataKind::kKvCache; }

class Worker {
 public:
  Worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data)
      : ch_(ch), opts_(opts), data_(data) {}

  int serve();

 private:
  void compute_loop();
  void handle(Message m);
  void route(Message m);  // communication thread
  void configure(const Message& m);
  void prefill(const Message& m);
  void verify(const Message& m);
  void start_chain(const Message& m);
  void draft_step();
  void stop(const Message& m);
  void kv_send(const Message& m);    // KvSend: this target holds the range
  void kv_expect(const Message& m);  // KvExpect: this target lacks it
  // Fault injection (tests): imports junk in place of the blob, to show that the lossless
  // checks notice a wrong handoff.
  bool import_corrupted(const DataKey& key, int begin, int end);
  Clock::time_point peer_deadline() const {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(opts_.peer_timeout_s));
  }
  // Truncates the engine to the longest cached prefix of `seq`, keeping at least `recompute`
  // tokens to run again (their logits are wanted). Returns how many tokens are kept.
  size_t reuse_prefix(std::span<const Token> seq, size_t recompute);
  void span(const char* name, double t0, double t1, json args);
  void reply(Message m) {
    m.run = run_;
    ch_.send(0, m);
  }

  // Target side of speculative sampling: the decided tokens of a verification.
  std::vector<Token> verify_sampling(const Message& m, const Logits& l);

  ControlLink ch_;
  WorkerOptions opts_;
  DataChannel* data_;
  SamplingParams sampling_;
  std::vector<int> targets_;  // drafter: where its probability vectors go
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> inbox_;
  CancelFlag cancel_;
  uint64_t current_task_ = 0;  // Verify being computed, guarded by mu_
  bool drafting_ = false;      // a draft forward is running, guarded by mu_
  std::atomic<uint32_t> run_{0};
  std::atomic<bool> exited_{false};
  int exit_code_ = 0;

  std::unique_ptr<Engine> engine_;
  json spec_;
  std::string role_;
  std::vector<Token> cached_;  // the tokens whose KV the engine holds
  double origin_s_ = 0;
  json spans_ = json::array();
  double busy_s_ = 0, wasted_s_ = 0, last_end_s_ = 0;
  json kv_stats_;  // KV handoff counters of this run
  void count_kv(const char* what, int64_t n = 1) {
    kv_stats_[what] = kv_stats_[what].get<int64_t>() + n;
  }
  // Lowest cache position holding imported KV (INT_MAX: none), to count the verifications
  // that attend to handed-over KV.
  int imported_from_ = INT_MAX;

  // Drafter chain, guarded by mu_ for the wait predicate.
  bool chain_active_ = false;
  uint64_t chain_ = 0;
  std::vector<Token> seq_;  // committed sequence + drafts of this chain
  int window_ = -1;
  int stop_len_ = 0;
};

void Worker::span(const char* name, double t0, double t1, json args) {
  if (t0 - last_end_s_ > 1e-3 && last_end_s_ > 0) {
    spans_.push_back({{"name", "idle"}, {"ts", (last_end_s_ - origin_s_) * 1e6},
                      {"dur", (t0 - last_end_s_) * 1e6}});
  }
  spans_.push_back({{"name", name}, {"ts", (t0 - origin_s_) * 1e6}, {"dur", (t1 - t0) * 1e6},
                    {"args", std::move(args)}});
  last_end_s_ = t1;
}

size_t Worker::reuse_prefix(std::span<const Token> seq, size_t recompute) {
  const size_t keep = std::min(common_prefix(cached_, seq), seq.size() - recompute);
  engine_->truncate(static_cast<int>(keep));
  cached_.resize(keep);
  if (static_cast<int>(keep) <= imported_from_) imported_from_ = INT_MAX;
  return keep;
}

void Worker::configure(const Message& m) {
  origin_s_ = m.x;
  spans_ = json::array();
  busy_s_ = wasted_s_ = 0;
  last_end_s_ = 0;
  kv_stats_ = {{"sent", 0}, {"sent_bytes", 0}, {"imported", 0}, {"imported_tokens", 0},
               {"fallbacks", 0}, {"not_needed", 0}, {"verified_on_imported", 0}};
  {
    std::lock_guard lk(mu_);
    chain_active_ = false;
  }
  try {
    json spec = json::parse(m.text);
    if (!engine_ || spec != spec_) {
      engine_.reset();
      engine_ = make_engine(spec);
      spec_ = spec;
      cached_.clear();
      imported_from_ = INT_MAX;
    }
    role_ = spec.at("role").get<std::string>();
    sampling_ = SamplingParams{};
    if (spec.contains("sampling")) {
      const auto& j = spec["sampling"];
      sampling_ = {j.at("temperature").get<float>(), j.at("top_k").get<int>(),
                   j.at("top_p").get<float>(), j.at("seed").get<uint64_t>(),
                   j.value("request", uint64_t{0})};
    }
    targets_ = spec.value("targets", std::vector<int>{});
    if (!sampling_.greedy() && !data_) throw std::runtime_error("sampling needs a data channel");
    if (data_) data_->discard([&](const DataKey& k) { return k.run != m.run; });
    reply(Message{.type = MsgType::kReady, .a = engine_->vocab_size(), .b = data_ ? 1 : 0,
                  .x = static_cast<double>(engine_->kv_bytes_per_token()),
                  .text = engine_->device_name()});
  } catch (const std::exception& e) {
    reply(Message{.type = MsgType::kError, .text = fmt::format("building the engine: {}", e.what())});
  }
}

void Worker::prefill(const Message& m) {
  const double t0 = now_s();
  const size_t keep = reuse_prefix(m.tokens, 0);
  CancelFlag never;
  if (keep < m.tokens.size()) {
    engine_->forward(std::span(m.tokens).subspan(keep), 0, never);
  }
  cached_ = m.tokens;
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span("prefill", t0, t1, {{"tokens", m.tokens.size() - keep}});
  reply(Message{.type = MsgType::kPrefillDone, .a = engine_->kv_len()});
}

void Worker::verify(const Message& m) {
  const double t0 = now_s();
  const size_t n_logits = static_cast<size_t>(m.a);
  const size_t keep = reuse_prefix(m.tokens, n_logits);
  const auto todo = std::span(m.tokens).subspan(keep);
  try {
    std::vector<Token> y;
    if (sampling_.greedy()) {
      // The engine picks the tokens (on its device): no logits cross to the host.
      y = engine_->forward_argmax(todo, static_cast<int>(n_logits), cancel_);
      cached_ = m.tokens;
    } else {
      Logits l = engine_->forward(todo, static_cast<int>(n_logits), cancel_);
      cached_ = m.tokens;
      y = verify_sampling(m, l);
    }
    if (imported_from_ < static_cast<int>(keep)) {
      count_kv("verified_on_imported");
    }
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    span("verify", t0, t1, {{"task", m.id}, {"drafts", n_logits - 1}, {"tokens", todo.size()}});
    reply(Message{.type = MsgType::kResult, .id = m.id, .a = static_cast<int32_t>(todo.size()),
                  .x = t1 - t0, .tokens = std::move(y)});
  } catch (const Cancelled&) {
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    wasted_s_ += t1 - t0;
    span("verify (preempted)", t0, t1, {{"task", m.id}, {"drafts", n_logits - 1}, {"cancelled", true}});
    reply(Message{.type = MsgType::kCancelled, .id = m.id, .x = t1 - t0});
  }
}

std::vector<Token> Worker::verify_sampling(const Message& m, const Logits& l) {
  const int end = static_cast<int>(m.tokens.size());
  const int first = end - l.n + 1;
  // Probability vectors of older chains will never be asked for again.
  data_->discard([&](const DataKey& k) { return k.run != m.run || k.stream < m.aux; });
  std::vector<float> p, q;
  auto p_at = [&](int pos) {
    p = sampling_probs(l.row(pos - first), sampling_);
    return std::span<const float>(p);
  };
  auto q_at = [&](int pos) {
    std::vector<uint8_t> bytes;
    const DataKey key{m.run, DataKind::kDraftProbs, m.aux, pos};
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(opts_.peer_timeout_s));
    if (!data_->recv(key, bytes, deadline, &cancel_)) {
      if (cancel_.cancelled()) throw Cancelled();
      throw std::runtime_error(fmt::format(
          "the drafter's probabilities for position {} (chain {}) did not arrive within {} s", pos,
          m.aux, opts_.peer_timeout_s));
    }
    if (bytes.size() != l.row(0).size() * sizeof(float)) {
      throw std::runtime_error(fmt::format("drafter probabilities of {} bytes for a vocabulary of {}",
                                           bytes.size(), l.vocab));
    }
    q.resize(l.vocab);
    std::memcpy(q.data(), bytes.data(), bytes.size());
    return std::span<const float>(q);
  };
  return verify_sampled(m.tokens, first, p_at, q_at, BonusRule{m.b, m.c}, sampling_);
}

void Worker::start_chain(const Message& m) {
  std::lock_guard lk(mu_);
  chain_ = m.id;
  seq_ = m.tokens;
  window_ = m.a;
  stop_len_ = m.b;
  chain_active_ = true;
}

void Worker::draft_step() {
  // Runs with drafting_ set; the communication thread cancels it when a new chain starts.
  uint64_t chain;
  std::vector<Token> seq;
  {
    std::lock_guard lk(mu_);
    chain = chain_;
    seq = seq_;
  }
  const double t0 = now_s();
  const size_t keep = reuse_prefix(seq, 1);
  try {
    const auto todo = std::span(seq).subspan(keep);
    const int pos = static_cast<int>(seq.size());
    Token tok;
    if (sampling_.greedy()) {
      tok = engine_->forward_argmax(todo, 1, cancel_)[0];
      cached_ = seq;
    } else {
      Logits l = engine_->forward(todo, 1, cancel_);
      cached_ = seq;
      // Draw the draft from q and hand q to every target before announcing the draft.
      const auto q = sampling_probs(l.row(0), sampling_);
      tok = draft_sample(q, pos, sampling_);
      std::vector<uint8_t> bytes(q.size() * sizeof(float));
      std::memcpy(bytes.data(), q.data(), bytes.size());
      for (int r : targets_) data_->send(r, DataKey{run_, DataKind::kDraftProbs, chain, pos}, bytes);
    }
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    span("draft", t0, t1, {{"chain", chain}, {"pos", seq.size()}});
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && chain_active_) {
      seq_.push_back(tok);
      if (window_ > 0) --window_;
      reply(Message{.type = MsgType::kDraft, .id = chain, .a = static_cast<int32_t>(seq.size()),
                    .b = tok});
    }
  } catch (const Cancelled&) {
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    span("draft (preempted)", t0, t1, {{"chain", chain}, {"cancelled", true}});
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

void Worker::kv_send(const Message& m) {
  if (!data_) throw std::runtime_error("a KV handoff needs a data channel");
  const double t0 = now_s();
  const int begin = m.a, end = m.b;
  // The range must still be in the cache, computed for the very tokens the coordinator
  // committed (a stale task since may have rolled it back).
  const bool ok = begin >= 0 && begin < end && static_cast<int>(m.tokens.size()) >= end &&
                  engine_->kv_len() >= end &&
                  common_prefix(cached_, m.tokens) >= static_cast<size_t>(end);
  const KvHeader h{ok ? 1u : 0u, 0, ok ? (end - begin) * engine_->kv_bytes_per_token() : 0};
  std::vector<uint8_t> hb(sizeof h);
  std::memcpy(hb.data(), &h, sizeof h);
  data_->send(m.c, DataKey{run_, DataKind::kKvHeader, m.id, 0}, std::move(hb));
  if (ok) {
    engine_->send_kv(*data_, m.c, DataKey{run_, DataKind::kKvCache, m.id, 0}, begin, end);
    count_kv("sent");
    count_kv("sent_bytes", static_cast<int64_t>(h.bytes));
  }
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span("kv send", t0, t1, {{"handoff", m.id}, {"to", m.c}, {"tokens", end - begin}, {"ok", ok}});
}

bool Worker::import_corrupted(const DataKey& key, int begin, int end) {
  KvBlob kv{begin, end, {}};
  if (!data_->recv(key, kv.bytes, peer_deadline())) return false;
  // Host engines' blobs are float32: overwrite them with +-1000.
  std::vector<float> junk(kv.bytes.size() / sizeof(float));
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = i % 2 ? 1000.f : -1000.f;
  std::memcpy(kv.bytes.data(), junk.data(), junk.size() * sizeof(float));
  engine_->import_kv(kv);
  return true;
}

void Worker::kv_expect(const Message& m) {
  if (!data_) throw std::runtime_error("a KV handoff needs a data channel");
  const double t0 = now_s();
  const int begin = m.a, end = m.b;
  // Handoffs are numbered in the order the coordinator plans them: older ones that were not
  // needed will not be asked for again.
  data_->discard([&](const DataKey& k) { return is_kv(k) && k.stream < m.id; });
  const size_t have = common_prefix(cached_, m.tokens);
  std::string outcome = "imported";
  if (have >= static_cast<size_t>(end)) {
    outcome = "not needed";
    count_kv("not_needed");
  } else if (have < static_cast<size_t>(begin) || static_cast<int>(m.tokens.size()) < end) {
    outcome = "cache behind the range";  // the next forward recomputes
    count_kv("fallbacks");
  } else {
    std::vector<uint8_t> hb;
    if (!data_->recv(DataKey{run_, DataKind::kKvHeader, m.id, 0}, hb, peer_deadline()) ||
        hb.size() != sizeof(KvHeader)) {
      throw std::runtime_error(fmt::format("KV handoff {} from rank {} did not arrive within {} s",
                                           m.id, m.c, opts_.peer_timeout_s));
    }
    KvHeader h;
    std::memcpy(&h, hb.data(), sizeof h);
    const uint64_t want = (end - begin) * engine_->kv_bytes_per_token();
    if (!h.ok) {
      outcome = "source no longer held it";
      count_kv("fallbacks");
    } else if (h.bytes != want) {
      throw std::runtime_error(fmt::format(
          "KV handoff {} from rank {} carries {} bytes for {} tokens, this engine expects {} "
          "(different model or kept layers?)", m.id, m.c, h.bytes, end - begin, want));
    } else {
      engine_->truncate(begin);
      cached_.resize(begin);
      if (begin <= imported_from_) imported_from_ = INT_MAX;
      const DataKey key{run_, DataKind::kKvCache, m.id, 0};
      if (!(opts_.fault == "kv_corrupt" ? import_corrupted(key, begin, end)
                                        : engine_->recv_kv(*data_, key, begin, end, peer_deadline(), nullptr))) {
        throw std::runtime_error(fmt::format("the KV of handoff {} from rank {} did not arrive within {} s",
                                             m.id, m.c, opts_.peer_timeout_s));
      }
      cached_.assign(m.tokens.begin(), m.tokens.begin() + end);
      imported_from_ = std::min(imported_from_, begin);
      count_kv("imported");
      count_kv("imported_tokens", end - begin);
    }
    data_->discard([&](const DataKey& k) { return is_kv(k) && k.stream == m.id; });
  }
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span("kv import", t0, t1, {{"handoff", m.id}, {"from", m.c}, {"tokens", end - begin}, {"outcome", outcome}});
}

void Worker::stop(const Message&) {
  {
    std::lock_guard lk(mu_);
    chain_active_ = false;
  }
  json report = {{"busy_s", busy_s_}, {"wasted_s", wasted_s_}, {"role", role_},
                 {"kv", kv_stats_}, {"spans", std::move(spans_)}};
  spans_ = json::array();
  reply(Message{.type = MsgType::kStopped, .text = report.dump()});
}

void Worker::handle(Message m) {
  if (m.type == MsgType::kConfigure) run_ = m.run;
  if (m.run != run_ && m.type != MsgType::kExit) return;  // left over from an earlier run
  try {
    switch (m.type) {
      case MsgType::kConfigure: configure(m); break;
      case MsgType::kPrefill: prefill(m); break;
      case MsgType::kVerify: verify(m); break;
      case MsgType::kStartChain: start_chain(m); break;
      case MsgType::kStop: stop(m); break;
      case MsgType::kKvSend: kv_send(m); break;
      case MsgType::kKvExpect: kv_expect(m); break;
      default: break;
    }
  } catch (const std::exception& e) {
    reply(Message{.type = MsgType::kError,
                  .text = fmt::format("{} failed: {}", msg_type_name(m.type), e.what())});
  }
  std::lock_guard lk(mu_);
  current_task_ = 0;
}

void Worker::compute_loop() {
  for (;;) {
    Message m;
    {
      std::unique_lock lk(mu_);
      auto can_draft = [&] {
        return chain_active_ && window_ != 0 && static_cast<int>(seq_.size()) < stop_len_;
      };
      cv_.wait(lk, [&] { return !inbox_.empty() || can_draft(); });
      if (inbox_.empty()) {
        drafting_ = true;
        cancel_.reset();
        lk.unlock();
        draft_step();
        continue;
      }
      m = std::move(inbox_.front());
      inbox_.pop_front();
      if (m.type == MsgType::kVerify) {
        current_task_ = m.id;
        cancel_.reset();
      }
    }
    if (m.type == MsgType::kExit) {
      exit_code_ = m.a;
      exited_ = true;
      return;
    }
    handle(std::move(m));
  }
}

void Worker::route(Message m) {
  if (m.type == MsgType::kHeartbeat) return;
  std::lock_guard lk(mu_);
  if (m.type == MsgType::kCancel) {
    if (m.run != run_) return;
    if (current_task_ == m.id) {
      cancel_.cancel();
      return;
    }
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->type == MsgType::kVerify && it->id == m.id) {
        inbox_.erase(it);
        ch_.send(0, Message{.type = MsgType::kCancelled, .run = run_, .id = m.id});
        return;
      }
    }
    return;  // already finished: its Result is on its way
  }
  // A new chain, the end of the run or of the process supersedes the forward in progress.
  if (m.type == MsgType::kStartChain || m.type == MsgType::kStop || m.type == MsgType::kExit) {
    if (drafting_ || current_task_ != 0) cancel_.cancel();
  }
  if (m.type == MsgType::kKvSend) {
    // Serving a handoff takes a copy and another target may be waiting for it: it goes
    // ahead of queued work (behind earlier handoffs, in order).
    auto it = std::find_if(inbox_.begin(), inbox_.end(),
                           [](const Message& q) { return q.type != MsgType::kKvSend; });
    inbox_.insert(it, std::move(m));
    cv_.notify_one();
    return;
  }
  inbox_.push_back(std::move(m));
  cv_.notify_one();
}

int Worker::serve() {
  std::thread compute([this] { compute_loop(); });
  const auto hb = std::chrono::milliseconds(opts_.heartbeat_ms);
  const auto timeout = std::chrono::duration<double>(opts_.peer_timeout_s);
  const auto start = Clock::now();
  const auto fault_at = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double, std::milli>(opts_.fault_after_ms));
  auto last_heard = start;
  auto next_hb = start;
  auto shutdown_compute = [&] {
    {
      std::lock_guard lk(mu_);
      cancel_.cancel();
      inbox_.push_front(Message{.type = MsgType::kExit, .a = 1});
    }
    cv_.notify_one();
    compute.join();
  };
  const bool timed_fault = opts_.fault == "exit" || opts_.fault == "hang";
  while (!exited_) {
    auto now = Clock::now();
    if (timed_fault && now >= fault_at) {
      if (opts_.fault == "exit") _exit(3);
      if (opts_.fault == "hang") raise(SIGSTOP);
    }
    if (now >= next_hb) {
      ch_.send(0, Message{.type = MsgType::kHeartbeat, .run = run_});
      next_hb = now + hb;
    }
    auto deadline = next_hb;
    if (timed_fault) deadline = std::min(deadline, fault_at);
    std::optional<Envelope> env;
    try {
      env = ch_.recv(deadline);
    } catch (const ProtocolError& e) {
      shutdown_compute();
      throw WorkerFatal(fmt::format("rank {}: bad control message: {}", ch_.rank(), e.what()));
    }
    now = Clock::now();
    if (!env) {
      if (now - last_heard > timeout) {
        shutdown_compute();
        throw WorkerFatal(fmt::format(
            "rank {}: the coordinator (rank 0) has not been heard from for {:.1f} s",
            ch_.rank(), std::chrono::duration<double>(now - last_heard).count()));
      }
      continue;
    }
    last_heard = now;
    const bool exit_msg = env->msg.type == MsgType::kExit;
    route(std::move(env->msg));
    if (exit_msg) break;
  }
  compute.join();
  return exit_code_;
}

}  // namespace

int run_worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data) {
  Worker w(ch, opts, data);
  return w.serve();
}

}  // namespace dsi
