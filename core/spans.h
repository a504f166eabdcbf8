// Trace spans: what a worker rank spent its time on during a run. A worker records them in a
// WorkLog and sends them in its Stopped report (core/protocol.h); the coordinator turns them
// into Chrome / Perfetto trace events (span_trace_event).
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "core/wire.h"

namespace dsi {

enum class SpanKind : uint8_t { kIdle, kPrefill, kVerify, kDraft, kKvSend, kKvImport };
constexpr std::array<const char*, 6> enum_names(SpanKind) {
  return {"idle", "prefill", "verify", "draft", "kv send", "kv import"};
}
constexpr WireInfo wire_info(const SpanKind*) {
  return {"SpanKind", "what a span's time went to"};
}

// What became of a KV import (the destination side of a handoff).
enum class KvOutcome : uint8_t { kImported, kNotNeeded, kCacheBehind, kSourceDropped };
constexpr std::array<const char*, 4> enum_names(KvOutcome) {
  return {"imported", "not needed", "cache behind the range", "source no longer held it"};
}
constexpr WireInfo wire_info(const KvOutcome*) {
  return {"KvOutcome", "what became of a KV import"};
}

struct Span {
  SpanKind kind = SpanKind::kIdle;
  double ts_us = 0;  // start, from the run's clock origin
  double dur_us = 0;
  uint64_t id = 0;     // verify: task; draft: chain; kv send / kv import: handoff
  int32_t tokens = 0;  // prefill, verify, staged draft: tokens computed; kv: of the range
  int32_t drafts = 0;  // verify: drafts checked; draft: a tree's nodes, a staged forward's drafts
  int32_t pos = 0;     // draft: the position drafted
  int32_t peer = -1;   // kv send: destination rank; kv import: source rank
  bool cancelled = false;                    // verify, draft: preempted before it finished
  bool ok = false;                           // kv send: the range was held and sent
  KvOutcome outcome = KvOutcome::kImported;  // kv import
  bool operator==(const Span&) const = default;
};

constexpr WireInfo wire_info(const Span*) {
  return {
      "Span",
      "one stretch of a worker's time; fields that do not apply to its kind keep their defaults"};
}
template <Is<Span> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.kind, "kind", "what the time went to");
  v(s.ts_us, "ts_us", "start (µs from the run's clock origin)");
  v(s.dur_us, "dur_us", "duration (µs)");
  v(s.id, "id", "verify: task; draft: chain; kv send, kv import: handoff");
  v(s.tokens, "tokens",
    "prefill, verify: tokens computed; kv send, kv import: tokens of the range");
  v(s.drafts, "drafts", "verify: drafts checked; draft of a token tree: its nodes");
  v(s.pos, "pos", "draft: the position drafted");
  v(s.peer, "peer", "kv send: destination rank; kv import: source rank");
  v(s.cancelled, "cancelled", "verify, draft: preempted before it finished");
  v(s.ok, "ok", "kv send: the range was held and sent");
  v(s.outcome, "outcome", "kv import: what became of it");
}

// The span as a Chrome trace event without ph/pid/tid: {name, ts, dur, args}.
nlohmann::json span_trace_event(const Span& s);

// What a worker did during one run: its spans, with the idle gaps between them, and the time
// they took. Times are seconds on the steady clock; spans are stamped from the run's origin.
class WorkLog {
 public:
  // Starts a new run whose clock origin is origin_s; forgets the last one.
  void start(double origin_s);
  // Records s from t0 to t1 (after an idle span when the worker was idle for more than a
  // millisecond) and counts its time as busy; a preempted verification's time as wasted too.
  void record(Span s, double t0, double t1);
  double busy_s() const { return busy_s_; }
  double wasted_s() const { return wasted_s_; }
  // The spans recorded since start(), handed over once.
  std::vector<Span> take_spans() { return std::exchange(spans_, {}); }

 private:
  double origin_s_ = 0;
  double last_end_s_ = 0;
  double busy_s_ = 0;
  double wasted_s_ = 0;
  std::vector<Span> spans_;
};

// Seconds on the steady clock (the time base of WorkLog and of Configure's origin_s).
double steady_now_s();

}  // namespace dsi
