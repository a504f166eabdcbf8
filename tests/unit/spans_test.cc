// A worker's WorkLog (core/spans.h): idle gaps, busy and wasted time, and the trace events the
// coordinator writes (names and args as the trace readers expect them).
#include "core/spans.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

TEST(WorkLog, RecordsIdleGapsBusyAndWastedTime) {
  WorkLog log;
  log.start(100);
  log.record({.kind = SpanKind::kPrefill, .tokens = 8}, 100.5, 100.75);
  log.record({.kind = SpanKind::kVerify, .id = 3, .drafts = 2, .cancelled = true}, 100.7505, 101.0);
  log.record({.kind = SpanKind::kDraft, .id = 1, .pos = 9}, 102.0, 102.5);
  EXPECT_NEAR(log.busy_s(), 0.25 + 0.2495 + 0.5, 1e-9);
  EXPECT_NEAR(log.wasted_s(), 0.2495, 1e-9);
  const auto spans = log.take_spans();
  ASSERT_EQ(spans.size(), 4u);  // the 0.5 ms gap is not idle time, the second is
  EXPECT_EQ(spans[0].kind, SpanKind::kPrefill);
  EXPECT_NEAR(spans[0].ts_us, 0.5e6, 1e-3);
  EXPECT_NEAR(spans[0].dur_us, 0.25e6, 1e-3);
  EXPECT_EQ(spans[2].kind, SpanKind::kIdle);
  EXPECT_NEAR(spans[2].ts_us, 1e6, 1e-3);
  EXPECT_NEAR(spans[2].dur_us, 1e6, 1e-3);
  EXPECT_TRUE(log.take_spans().empty());
  log.start(0);
  EXPECT_EQ(log.busy_s(), 0);
}

TEST(WorkLog, TraceEventsKeepTheirNamesAndArgs) {
  using json = nlohmann::json;
  auto ev = span_trace_event(
      {.kind = SpanKind::kVerify, .ts_us = 5, .dur_us = 7, .id = 4, .tokens = 3, .drafts = 2});
  EXPECT_EQ(ev, json::parse(R"({"name": "verify", "ts": 5.0, "dur": 7.0,
                                "args": {"task": 4, "drafts": 2, "tokens": 3}})"));
  ev = span_trace_event({.kind = SpanKind::kVerify, .id = 4, .drafts = 2, .cancelled = true});
  EXPECT_EQ(ev["name"], "verify (preempted)");
  EXPECT_EQ(ev["args"], json::parse(R"({"task": 4, "drafts": 2, "cancelled": true})"));
  ev = span_trace_event({.kind = SpanKind::kDraft, .id = 1, .cancelled = true});
  EXPECT_EQ(ev["name"], "draft (preempted)");
  EXPECT_FALSE(span_trace_event({.kind = SpanKind::kIdle}).contains("args"));
  ev = span_trace_event({.kind = SpanKind::kKvImport,
                         .id = 2,
                         .tokens = 6,
                         .peer = 3,
                         .outcome = KvOutcome::kCacheBehind});
  EXPECT_EQ(ev["name"], "kv import");
  EXPECT_EQ(ev["args"], json::parse(R"({"handoff": 2, "from": 3, "tokens": 6,
                                        "outcome": "cache behind the range"})"));
  ev = span_trace_event({.kind = SpanKind::kKvSend, .id = 2, .tokens = 6, .peer = 4, .ok = true});
  EXPECT_EQ(ev["args"], json::parse(R"({"handoff": 2, "to": 4, "tokens": 6, "ok": true})"));
}

}  // namespace
}  // namespace dsi
