#include "core/worker.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstring>
#include <deque>
#include <thread>

#include "core/verify.h"
#include "engines/engine_factory.h"
#include "kernels/argmax.h"

namespace dsi {
namespace {

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// The first transfer of a KV handoff, always in host memory: whether the blob follows.
struct KvHeader {
  uint32_t ok;  // 0: the source no longer holds the range; recompute
  uint32_t reserved;
  uint64_t bytes;
};

bool is_kv(const DataKey& k) { return k.kind == DataKind::kKvHeader || k.kind == DataKind::kKvCache; }

std::vector<Token> argmax_rows(const Logits& l) {
  std::vector<Token> out(l.n);
  if (l.n > 0) kernels::argmax_cpu(out.data(), l.data.data(), l.n, l.vocab);
  return out;
}

class Worker {
 public:
  Worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data)
      : ch_(ch), opts_(opts), data_(data) {}

  int serve();

 private:
  void compute_loop();
  void handle(Message m);
  void route(Message m);  // communication thread
  void configure(const msg::Configure& m);
  void prefill(const msg::Prefill& m);
  void verify(const msg::Verify& m);
  void start_chain(const msg::StartChain& m);
  void draft_step();
  void stop();
  void kv_send(const msg::KvSend& m);      // this target holds the range
  void kv_expect(const msg::KvExpect& m);  // this target lacks it
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
  // Records a span of kind s.kind from t0 to t1 (s's other fields as given), after an idle
  // span when the rank was idle for more than a millisecond.
  void span(Span s, double t0, double t1);
  void reply(Message::Body b) { ch_.send(0, Message{.run = run_, .body = std::move(b)}); }

  // Target side of speculative sampling: the decided tokens of a verification.
  std::vector<Token> verify_sampling(const msg::Verify& m, const Logits& l);

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
  WorkerSpec spec_;
  std::vector<Token> cached_;  // the tokens whose KV the engine holds
  double origin_s_ = 0;
  std::vector<Span> spans_;
  double busy_s_ = 0, wasted_s_ = 0, last_end_s_ = 0;
  KvCounters kv_stats_;  // KV handoff counters of this run
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

void Worker::span(Span s, double t0, double t1) {
  if (t0 - last_end_s_ > 1e-3 && last_end_s_ > 0) {
    spans_.push_back(Span{.kind = SpanKind::kIdle,
                          .ts_us = (last_end_s_ - origin_s_) * 1e6,
                          .dur_us = (t0 - last_end_s_) * 1e6});
  }
  s.ts_us = (t0 - origin_s_) * 1e6;
  s.dur_us = (t1 - t0) * 1e6;
  spans_.push_back(s);
  last_end_s_ = t1;
}

size_t Worker::reuse_prefix(std::span<const Token> seq, size_t recompute) {
  const size_t keep = std::min(common_prefix(cached_, seq), seq.size() - recompute);
  engine_->truncate(static_cast<int>(keep));
  cached_.resize(keep);
  if (static_cast<int>(keep) <= imported_from_) imported_from_ = INT_MAX;
  return keep;
}

void Worker::configure(const msg::Configure& m) {
  origin_s_ = m.origin_s;
  spans_.clear();
  busy_s_ = wasted_s_ = 0;
  last_end_s_ = 0;
  kv_stats_ = {};
  {
    std::lock_guard lk(mu_);
    chain_active_ = false;
  }
  try {
    if (!engine_ || m.spec != spec_) {
      engine_.reset();
      engine_ = make_engine(m.spec.engine);
      spec_ = m.spec;
      cached_.clear();
      imported_from_ = INT_MAX;
    }
    sampling_ = m.spec.sampling;
    targets_ = m.spec.targets;
    if (!sampling_.greedy() && !data_) throw std::runtime_error("sampling needs a data channel");
    if (data_) data_->discard([&](const DataKey& k) { return k.run != run_; });
    reply(msg::Ready{.vocab = engine_->vocab_size(),
                     .has_data_channel = data_ != nullptr,
                     .kv_bytes_per_token = engine_->kv_bytes_per_token(),
                     .device = engine_->device_name()});
  } catch (const std::exception& e) {
    reply(msg::Error{.what = fmt::format("building the engine: {}", e.what())});
  }
}

void Worker::prefill(const msg::Prefill& m) {
  const double t0 = now_s();
  const size_t keep = reuse_prefix(m.tokens, 0);
  CancelFlag never;
  if (keep < m.tokens.size()) {
    engine_->forward(std::span(m.tokens).subspan(keep), 0, never);
  }
  cached_ = m.tokens;
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span({.kind = SpanKind::kPrefill, .tokens = static_cast<int32_t>(m.tokens.size() - keep)}, t0,
       t1);
  reply(msg::PrefillDone{.kv_len = engine_->kv_len()});
}

void Worker::verify(const msg::Verify& m) {
  const double t0 = now_s();
  const size_t n_logits = static_cast<size_t>(m.n_logits);
  const size_t keep = reuse_prefix(m.seq, n_logits);
  const auto todo = std::span(m.seq).subspan(keep);
  const Span sp{.kind = SpanKind::kVerify, .id = m.task, .drafts = m.n_logits - 1};
  try {
    Logits l = engine_->forward(todo, static_cast<int>(n_logits), cancel_);
    cached_ = m.seq;
    std::vector<Token> y = sampling_.greedy() ? argmax_rows(l) : verify_sampling(m, l);
    if (imported_from_ < static_cast<int>(keep)) ++kv_stats_.verified_on_imported;
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    Span done = sp;
    done.tokens = static_cast<int32_t>(todo.size());
    span(done, t0, t1);
    reply(msg::Result{.task = m.task,
                      .tokens = std::move(y),
                      .computed = static_cast<int32_t>(todo.size()),
                      .busy_s = t1 - t0});
  } catch (const Cancelled&) {
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    wasted_s_ += t1 - t0;
    Span cut = sp;
    cut.cancelled = true;
    span(cut, t0, t1);
    reply(msg::Cancelled{.task = m.task, .busy_s = t1 - t0});
  }
}

std::vector<Token> Worker::verify_sampling(const msg::Verify& m, const Logits& l) {
  const int end = static_cast<int>(m.seq.size());
  const int first = end - l.n + 1;
  // Probability vectors of older chains will never be asked for again.
  data_->discard([&](const DataKey& k) { return k.run != run_ || k.stream < m.chain; });
  std::vector<float> p, q;
  auto p_at = [&](int pos) {
    p = sampling_probs(l.row(pos - first), sampling_);
    return std::span<const float>(p);
  };
  auto q_at = [&](int pos) {
    std::vector<uint8_t> bytes;
    const DataKey key{run_, DataKind::kDraftProbs, m.chain, pos};
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(opts_.peer_timeout_s));
    if (!data_->recv(key, bytes, deadline, &cancel_)) {
      if (cancel_.cancelled()) throw Cancelled();
      throw std::runtime_error(fmt::format(
          "the drafter's probabilities for position {} (chain {}) did not arrive within {} s", pos,
          m.chain, opts_.peer_timeout_s));
    }
    if (bytes.size() != l.row(0).size() * sizeof(float)) {
      throw std::runtime_error(fmt::format("drafter probabilities of {} bytes for a vocabulary of {}",
                                           bytes.size(), l.vocab));
    }
    q.resize(l.vocab);
    std::memcpy(q.data(), bytes.data(), bytes.size());
    return std::span<const float>(q);
  };
  return verify_sampled(m.seq, first, p_at, q_at, BonusRule{m.bonus_anchor, m.bonus_period},
                        sampling_);
}

void Worker::start_chain(const msg::StartChain& m) {
  std::lock_guard lk(mu_);
  chain_ = m.chain;
  seq_ = m.committed;
  window_ = m.window;
  stop_len_ = m.stop_len;
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
    Logits l = engine_->forward(std::span(seq).subspan(keep), 1, cancel_);
    cached_ = seq;
    const int pos = static_cast<int>(seq.size());
    Token tok;
    if (sampling_.greedy()) {
      tok = argmax_rows(l)[0];
    } else {
      // Draw the draft from q and hand q to every target before announcing the draft.
      const auto q = sampling_probs(l.row(0), sampling_);
      tok = draft_sample(q, pos, sampling_);
      std::vector<uint8_t> bytes(q.size() * sizeof(float));
      std::memcpy(bytes.data(), q.data(), bytes.size());
      for (int r : targets_) data_->send(r, DataKey{run_, DataKind::kDraftProbs, chain, pos}, bytes);
    }
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    span({.kind = SpanKind::kDraft, .id = chain, .pos = pos}, t0, t1);
    std::lock_guard lk(mu_);
    drafting_ = false;
    if (chain == chain_ && chain_active_) {
      seq_.push_back(tok);
      if (window_ > 0) --window_;
      reply(msg::Draft{.chain = chain, .pos = pos, .token = tok});
    }
  } catch (const Cancelled&) {
    const double t1 = now_s();
    busy_s_ += t1 - t0;
    span({.kind = SpanKind::kDraft, .id = chain, .cancelled = true}, t0, t1);
    std::lock_guard lk(mu_);
    drafting_ = false;
  }
}

void Worker::kv_send(const msg::KvSend& m) {
  if (!data_) throw std::runtime_error("a KV handoff needs a data channel");
  const double t0 = now_s();
  const int begin = m.begin, end = m.end;
  // The range must still be in the cache, computed for the very tokens the coordinator
  // committed (a stale task since may have rolled it back).
  const bool ok = begin >= 0 && begin < end && static_cast<int>(m.tokens.size()) >= end &&
                  engine_->kv_len() >= end &&
                  common_prefix(cached_, m.tokens) >= static_cast<size_t>(end);
  const KvHeader h{ok ? 1u : 0u, 0, ok ? (end - begin) * engine_->kv_bytes_per_token() : 0};
  std::vector<uint8_t> hb(sizeof h);
  std::memcpy(hb.data(), &h, sizeof h);
  data_->send(m.dst, DataKey{run_, DataKind::kKvHeader, m.handoff, 0}, std::move(hb));
  if (ok) {
    engine_->send_kv(*data_, m.dst, DataKey{run_, DataKind::kKvCache, m.handoff, 0}, begin, end);
    ++kv_stats_.sent;
    kv_stats_.sent_bytes += static_cast<int64_t>(h.bytes);
  }
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span({.kind = SpanKind::kKvSend, .id = m.handoff, .tokens = end - begin, .peer = m.dst, .ok = ok},
       t0, t1);
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

void Worker::kv_expect(const msg::KvExpect& m) {
  if (!data_) throw std::runtime_error("a KV handoff needs a data channel");
  const double t0 = now_s();
  const int begin = m.begin, end = m.end;
  // Handoffs are numbered in the order the coordinator plans them: older ones that were not
  // needed will not be asked for again.
  data_->discard([&](const DataKey& k) { return is_kv(k) && k.stream < m.handoff; });
  const size_t have = common_prefix(cached_, m.tokens);
  KvOutcome outcome = KvOutcome::kImported;
  if (have >= static_cast<size_t>(end)) {
    outcome = KvOutcome::kNotNeeded;
    ++kv_stats_.not_needed;
  } else if (have < static_cast<size_t>(begin) || static_cast<int>(m.tokens.size()) < end) {
    outcome = KvOutcome::kCacheBehind;  // the next forward recomputes
    ++kv_stats_.fallbacks;
  } else {
    std::vector<uint8_t> hb;
    if (!data_->recv(DataKey{run_, DataKind::kKvHeader, m.handoff, 0}, hb, peer_deadline()) ||
        hb.size() != sizeof(KvHeader)) {
      throw std::runtime_error(fmt::format("KV handoff {} from rank {} did not arrive within {} s",
                                           m.handoff, m.src, opts_.peer_timeout_s));
    }
    KvHeader h;
    std::memcpy(&h, hb.data(), sizeof h);
    const uint64_t want = (end - begin) * engine_->kv_bytes_per_token();
    if (!h.ok) {
      outcome = KvOutcome::kSourceDropped;
      ++kv_stats_.fallbacks;
    } else if (h.bytes != want) {
      throw std::runtime_error(fmt::format(
          "KV handoff {} from rank {} carries {} bytes for {} tokens, this engine expects {} "
          "(different model or kept layers?)",
          m.handoff, m.src, h.bytes, end - begin, want));
    } else {
      engine_->truncate(begin);
      cached_.resize(begin);
      if (begin <= imported_from_) imported_from_ = INT_MAX;
      const DataKey key{run_, DataKind::kKvCache, m.handoff, 0};
      if (!(opts_.fault == "kv_corrupt" ? import_corrupted(key, begin, end)
                                        : engine_->recv_kv(*data_, key, begin, end, peer_deadline(), nullptr))) {
        throw std::runtime_error(
            fmt::format("the KV of handoff {} from rank {} did not arrive within {} s", m.handoff,
                        m.src, opts_.peer_timeout_s));
      }
      cached_.assign(m.tokens.begin(), m.tokens.begin() + end);
      imported_from_ = std::min(imported_from_, begin);
      ++kv_stats_.imported;
      kv_stats_.imported_tokens += end - begin;
    }
    data_->discard([&](const DataKey& k) { return is_kv(k) && k.stream == m.handoff; });
  }
  const double t1 = now_s();
  busy_s_ += t1 - t0;
  span({.kind = SpanKind::kKvImport,
        .id = m.handoff,
        .tokens = end - begin,
        .peer = m.src,
        .outcome = outcome},
       t0, t1);
}

void Worker::stop() {
  {
    std::lock_guard lk(mu_);
    chain_active_ = false;
  }
  reply(msg::Stopped{.busy_s = busy_s_,
                     .wasted_s = wasted_s_,
                     .kv = kv_stats_,
                     .spans = std::exchange(spans_, {})});
}

void Worker::handle(Message m) {
  if (m.is<msg::Configure>()) run_ = m.run;
  if (m.run != run_ && !m.is<msg::Exit>()) return;  // left over from an earlier run
  try {
    std::visit(
        [&](const auto& b) {
          using T = std::decay_t<decltype(b)>;
          if constexpr (std::is_same_v<T, msg::Configure>) configure(b);
          if constexpr (std::is_same_v<T, msg::Prefill>) prefill(b);
          if constexpr (std::is_same_v<T, msg::Verify>) verify(b);
          if constexpr (std::is_same_v<T, msg::StartChain>) start_chain(b);
          if constexpr (std::is_same_v<T, msg::Stop>) stop();
          if constexpr (std::is_same_v<T, msg::KvSend>) kv_send(b);
          if constexpr (std::is_same_v<T, msg::KvExpect>) kv_expect(b);
        },
        m.body);
  } catch (const std::exception& e) {
    reply(msg::Error{.what = fmt::format("{} failed: {}", msg_type_name(m.type()), e.what())});
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
      if (const auto* v = std::get_if<msg::Verify>(&m.body)) {
        current_task_ = v->task;
        cancel_.reset();
      }
    }
    if (const auto* e = std::get_if<msg::Exit>(&m.body)) {
      exit_code_ = e->code;
      exited_ = true;
      return;
    }
    handle(std::move(m));
  }
}

void Worker::route(Message m) {
  if (m.is<msg::Heartbeat>()) return;
  std::lock_guard lk(mu_);
  if (const auto* c = std::get_if<msg::Cancel>(&m.body)) {
    if (m.run != run_) return;
    if (current_task_ == c->task) {
      cancel_.cancel();
      return;
    }
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      const auto* v = std::get_if<msg::Verify>(&it->body);
      if (v && v->task == c->task) {
        inbox_.erase(it);
        reply(msg::Cancelled{.task = c->task});
        return;
      }
    }
    return;  // already finished: its Result is on its way
  }
  // A new chain, the end of the run or of the process supersedes the forward in progress.
  if (m.is<msg::StartChain>() || m.is<msg::Stop>() || m.is<msg::Exit>()) {
    if (drafting_ || current_task_ != 0) cancel_.cancel();
  }
  if (m.is<msg::KvSend>()) {
    // Serving a handoff takes a copy and another target may be waiting for it: it goes
    // ahead of queued work (behind earlier handoffs, in order).
    auto it = std::find_if(inbox_.begin(), inbox_.end(),
                           [](const Message& q) { return !q.is<msg::KvSend>(); });
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
      inbox_.push_front(Message{.body = msg::Exit{.code = 1}});
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
      ch_.send(0, Message{.run = run_, .body = msg::Heartbeat{}});
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
    const bool exit_msg = env->msg.is<msg::Exit>();
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
