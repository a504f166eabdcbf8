#include "core/spans.h"

#include <chrono>

namespace dsi {

double steady_now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void WorkLog::start(double origin_s) {
  origin_s_ = origin_s;
  last_end_s_ = 0;
  busy_s_ = wasted_s_ = 0;
  spans_.clear();
}

void WorkLog::record(Span s, double t0, double t1) {
  if (t0 - last_end_s_ > 1e-3 && last_end_s_ > 0) {
    spans_.push_back(Span{.kind = SpanKind::kIdle,
                          .ts_us = (last_end_s_ - origin_s_) * 1e6,
                          .dur_us = (t0 - last_end_s_) * 1e6});
  }
  s.ts_us = (t0 - origin_s_) * 1e6;
  s.dur_us = (t1 - t0) * 1e6;
  spans_.push_back(s);
  last_end_s_ = t1;
  busy_s_ += t1 - t0;
  if (s.kind == SpanKind::kVerify && s.cancelled) wasted_s_ += t1 - t0;
}

nlohmann::json span_trace_event(const Span& s) {
  using json = nlohmann::json;
  std::string name = enum_names(s.kind)[static_cast<size_t>(s.kind)];
  json args;
  switch (s.kind) {
    case SpanKind::kIdle:
      break;
    case SpanKind::kPrefill:
      args = {{"tokens", s.tokens}};
      break;
    case SpanKind::kVerify:
      args = {{"task", s.id}, {"drafts", s.drafts}};
      if (s.cancelled) {
        args["cancelled"] = true;
      } else {
        args["tokens"] = s.tokens;
      }
      break;
    case SpanKind::kDraft:
      args = {{"chain", s.id}};
      if (s.cancelled) {
        args["cancelled"] = true;
      } else {
        args["pos"] = s.pos;
        if (s.drafts > 0) args["drafts"] = s.drafts;  // a tree's nodes, a staged forward's drafts
        if (s.tokens > 0) args["tokens"] = s.tokens;  // a staged forward's length
      }
      break;
    case SpanKind::kKvSend:
      args = {{"handoff", s.id}, {"to", s.peer}, {"tokens", s.tokens}, {"ok", s.ok}};
      break;
    case SpanKind::kKvImport:
      args = {{"handoff", s.id},
              {"from", s.peer},
              {"tokens", s.tokens},
              {"outcome", enum_names(s.outcome)[static_cast<size_t>(s.outcome)]}};
      break;
  }
  if (s.cancelled) name += " (preempted)";
  json e = {{"name", name}, {"ts", s.ts_us}, {"dur", s.dur_us}};
  if (!args.is_null()) e["args"] = std::move(args);
  return e;
}

}  // namespace dsi
