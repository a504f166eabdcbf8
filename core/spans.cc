#include "core/spans.h"

namespace dsi {

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
