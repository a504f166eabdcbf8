// The worker loop (core/worker.h): two threads take turns receiving control messages into the
// inbox and running them through the roles of core/worker_roles.h.
#include "core/worker.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>

#include "core/worker_roles.h"

namespace dsi {
namespace {

class Worker {
 public:
  Worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data)
      : ctx_(ch, opts, data), drafter_(ctx_, mu_) {}

  int serve();

 private:
  using Lock = std::unique_lock<std::mutex>;
  void loop();             // both threads
  void receive(Lock& lk);  // the receiving thread: one message, or a heartbeat's deadline
  // The working thread: one message or draft step from the inbox; `wake` wakes the other
  // thread to receive meanwhile.
  void run_next(Lock& lk, bool wake);
  void route(Message m);     // mu_ held
  void close(Message exit);  // mu_ held: nobody receives any more; `exit` ends the loop
  void handle(Message m);    // mu_ not held
  void configure(const msg::Configure& m);
  void prefill(const msg::Prefill& m);
  void stop();

  WorkerContext ctx_;
  std::mutex mu_;  // guards everything below, and the drafter's chain
  std::condition_variable cv_;
  std::deque<Message> inbox_;
  uint64_t current_task_ = 0;  // Verify being computed
  DrafterRole drafter_;
  WorkerSpec spec_;         // of the engine built
  bool receiving_ = false;  // a thread waits in link.recv
  bool working_ = false;    // a thread runs a message or a draft step
  bool closing_ = false;    // Exit received or the link failed: nobody receives
  bool exited_ = false;     // Exit taken from the inbox: both threads leave
  int exit_code_ = 0;
  std::exception_ptr fatal_;
  Clock::time_point last_heard_, next_hb_;  // the receiving thread's
};

void Worker::configure(const msg::Configure& m) {
  ctx_.log.start(m.origin_s);
  ctx_.kv = {};
  {
    std::lock_guard lk(mu_);
    drafter_.configure(m.spec.targets, m.spec.stage_tokens, m.spec.drafter_index, m.spec.followers);
  }
  try {
    // The engine (its weights and its KV cache) outlives runs that differ only in sampling
    // or in where the drafter's probabilities go: a server's requests keep the model loaded
    // and the cached prefix.
    if (!ctx_.engine || m.spec.engine != spec_.engine || m.spec.role != spec_.role) {
      ctx_.engine.reset();
      ctx_.engine = ctx_.opts.engine_factory ? ctx_.opts.engine_factory(m.spec.engine)
                                             : make_engine(m.spec.engine);
      ctx_.cached.clear();
      ctx_.imported_from = INT_MAX;
    }
    spec_ = m.spec;
    ctx_.sampling = m.spec.sampling;
    if (!ctx_.sampling.greedy() && !ctx_.data) {
      throw Error("sampling needs a data channel");
    }
    const uint32_t run = ctx_.run;
    if (ctx_.data) ctx_.data->discard([&](const DataKey& k) { return k.run != run; });
    ctx_.reply(msg::Ready{.vocab = ctx_.engine->vocab_size(),
                          .has_data_channel = ctx_.data != nullptr,
                          .kv_bytes_per_token = ctx_.engine->kv_bytes_per_token(),
                          .device = ctx_.engine->device_name()});
  } catch (const std::exception& e) {
    ctx_.reply(msg::Error{.what = fmt::format("building the engine: {}", e.what())});
  }
}

void Worker::prefill(const msg::Prefill& m) {
  const double t0 = steady_now_s();
  const size_t keep = ctx_.reuse_prefix(m.tokens, 0);
  CancelFlag never;
  if (keep < m.tokens.size()) {
    ctx_.engine->forward(std::span(m.tokens).subspan(keep), 0, never);
  }
  ctx_.cached = m.tokens;
  ctx_.log.record(
      {.kind = SpanKind::kPrefill, .tokens = static_cast<int32_t>(m.tokens.size() - keep)}, t0,
      steady_now_s());
  ctx_.reply(msg::PrefillDone{.kv_len = ctx_.engine->kv_len()});
}

void Worker::stop() {
  {
    std::lock_guard lk(mu_);
    drafter_.stop();
  }
  ctx_.reply(msg::Stopped{.busy_s = ctx_.log.busy_s(),
                          .wasted_s = ctx_.log.wasted_s(),
                          .kv = ctx_.kv,
                          .spans = ctx_.log.take_spans()});
}

void Worker::handle(Message m) {
  if (m.is<msg::Configure>()) ctx_.run = m.run;
  if (m.run != ctx_.run && !m.is<msg::Exit>()) return;  // left over from an earlier run
  try {
    std::visit(
        [&](const auto& b) {
          using T = std::decay_t<decltype(b)>;
          if constexpr (std::is_same_v<T, msg::Configure>) configure(b);
          if constexpr (std::is_same_v<T, msg::Prefill>) prefill(b);
          if constexpr (std::is_same_v<T, msg::Verify>) verify(ctx_, b);
          if constexpr (std::is_same_v<T, msg::StartChain>) {
            std::lock_guard lk(mu_);
            drafter_.start(b);
          }
          if constexpr (std::is_same_v<T, msg::Stop>) stop();
          if constexpr (std::is_same_v<T, msg::KvSend>) kv_send(ctx_, b);
          if constexpr (std::is_same_v<T, msg::KvExpect>) kv_expect(ctx_, b);
        },
        m.body);
  } catch (const std::exception& e) {
    ctx_.reply(msg::Error{.what = fmt::format("{} failed: {}", msg_type_name(m.type()), e.what())});
  }
  std::lock_guard lk(mu_);
  current_task_ = 0;
}

// Leader and follower: the two threads take turns. One waits for messages while the other
// works; when the receiving thread finds work and nobody is working, it runs the work itself
// and wakes the other to receive. A message that wakes an idle worker is thus run by the
// thread that it woke (one wake-up on the critical path, not two), and a Cancel, a heartbeat
// or the next task is still received while a forward runs.
void Worker::loop() {
  Lock lk(mu_);
  while (!exited_) {
    if (!working_ && (!inbox_.empty() || drafter_.can_draft())) {
      run_next(lk, !receiving_ && !closing_);
    } else if (!receiving_ && !closing_) {
      receive(lk);
    } else {
      cv_.wait(lk);
    }
  }
}

void Worker::run_next(Lock& lk, bool wake) {
  working_ = true;
  // Notified after the unlock: a thread woken under the lock would block on it at once.
  auto unlock = [&] {
    lk.unlock();
    if (wake) cv_.notify_one();
  };
  if (inbox_.empty()) {
    drafter_.begin_step();
    ctx_.cancel.reset();
    unlock();
    drafter_.step();
    lk.lock();
    working_ = false;
    return;
  }
  Message m = std::move(inbox_.front());
  inbox_.pop_front();
  if (const auto* e = std::get_if<msg::Exit>(&m.body)) {
    exit_code_ = e->code;
    exited_ = true;
    working_ = false;
    cv_.notify_all();
    return;
  }
  if (const auto* v = std::get_if<msg::Verify>(&m.body)) {
    current_task_ = v->task;
    ctx_.cancel.reset();
  }
  unlock();
  handle(std::move(m));
  lk.lock();
  working_ = false;
}

void Worker::receive(Lock& lk) {
  receiving_ = true;
  lk.unlock();
  std::optional<Envelope> env;
  std::exception_ptr err;
  try {
    auto now = Clock::now();
    if (now >= next_hb_) {
      ctx_.link.send(0, Message{.run = ctx_.run, .body = msg::Heartbeat{}});
      next_hb_ = now + std::chrono::milliseconds(ctx_.opts.heartbeat_ms);
    }
    try {
      env = ctx_.link.recv(next_hb_);
    } catch (const ProtocolError& e) {
      throw WorkerFatal(fmt::format("bad control message: {}", error_message(e)));
    }
    now = Clock::now();
    const auto silent = std::chrono::duration<double>(now - last_heard_);
    if (env) {
      last_heard_ = now;
    } else if (silent.count() > ctx_.opts.peer_timeout_s) {
      throw WorkerFatal(fmt::format("the coordinator (rank 0) has not been heard from for {:.1f} s",
                                    silent.count()));
    }
  } catch (...) {
    err = std::current_exception();
  }
  lk.lock();
  receiving_ = false;
  if (err) {
    fatal_ = err;
    close(Message{.body = msg::Exit{.code = 1}});
  } else if (env && !env->msg.is<msg::Heartbeat>()) {
    route(std::move(env->msg));
  }
}

void Worker::close(Message exit) {
  closing_ = true;
  if (fatal_) {
    ctx_.cancel.cancel();
    inbox_.push_front(std::move(exit));  // the link failed: drop the queued work
  } else {
    inbox_.push_back(std::move(exit));  // after the work queued before it
  }
  cv_.notify_all();
}

void Worker::route(Message m) {
  if (const auto* c = std::get_if<msg::Cancel>(&m.body)) {
    if (m.run != ctx_.run) return;
    if (current_task_ == c->task) {
      ctx_.cancel.cancel();
      return;
    }
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      const auto* v = std::get_if<msg::Verify>(&it->body);
      if (v && v->task == c->task) {
        inbox_.erase(it);
        ctx_.reply(msg::Cancelled{.task = c->task});
        return;
      }
    }
    return;  // already finished: its Result is on its way
  }
  if (const auto* f = std::get_if<msg::Follow>(&m.body)) {
    // The lead drafter's drafts: a follower's next forward reads them (no inbox turn).
    if (m.run == ctx_.run) drafter_.follow(*f);
    return;
  }
  // A new chain, the end of the run or of the process supersedes the forward in progress.
  if (m.is<msg::StartChain>() || m.is<msg::Stop>() || m.is<msg::Exit>()) {
    if (drafter_.drafting() || current_task_ != 0) ctx_.cancel.cancel();
  }
  if (m.is<msg::Exit>()) {
    close(std::move(m));
    return;
  }
  if (m.is<msg::KvSend>()) {
    // Serving a handoff takes a copy and another target may be waiting for it: it goes
    // ahead of queued work (behind earlier handoffs, in order).
    auto it = std::find_if(inbox_.begin(), inbox_.end(),
                           [](const Message& q) { return !q.is<msg::KvSend>(); });
    inbox_.insert(it, std::move(m));
    return;
  }
  inbox_.push_back(std::move(m));
}

int Worker::serve() {
  last_heard_ = next_hb_ = Clock::now();
  std::thread other([this] { loop(); });
  loop();
  other.join();
  if (fatal_) std::rethrow_exception(fatal_);
  return exit_code_;
}

}  // namespace

int run_worker(ControlChannel& ch, const WorkerOptions& opts, DataChannel* data) {
  Worker w(ch, opts, data);
  return w.serve();
}

}  // namespace dsi
