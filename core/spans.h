// Trace spans: what a worker rank spent its time on during a run. Workers send them in their
// Stopped report (core/protocol.h); the coordinator turns them into Chrome / Perfetto trace
// events (span_trace_event).
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>

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
  uint64_t id = 0;         // verify: task; draft: chain; kv send / kv import: handoff
  int32_t tokens = 0;      // prefill, verify: tokens computed; kv: tokens of the range
  int32_t drafts = 0;      // verify: drafts checked
  int32_t pos = 0;         // draft: the position drafted
  int32_t peer = -1;       // kv send: destination rank; kv import: source rank
  bool cancelled = false;  // verify, draft: preempted before it finished
  bool ok = false;         // kv send: the range was held and sent
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
  v(s.drafts, "drafts", "verify: drafts checked");
  v(s.pos, "pos", "draft: the position drafted");
  v(s.peer, "peer", "kv send: destination rank; kv import: source rank");
  v(s.cancelled, "cancelled", "verify, draft: preempted before it finished");
  v(s.ok, "ok", "kv send: the range was held and sent");
  v(s.outcome, "outcome", "kv import: what became of it");
}

// The span as a Chrome trace event without ph/pid/tid: {name, ts, dur, args}.
nlohmann::json span_trace_event(const Span& s);

}  // namespace dsi
