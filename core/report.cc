#include "core/report.h"

#include <fmt/format.h>

namespace dsi {

using json = nlohmann::json;

double RunReport::wasted_target_s() const {
  double w = 0;
  for (const auto& r : ranks) w += r.wasted_s;
  return w;
}

json trace_json(const RunReport& r) {
  json ev = json::array();
  auto meta = [&](int pid, const std::string& name) {
    ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}});
    ev.push_back({{"name", "process_sort_index"},
                  {"ph", "M"},
                  {"pid", pid},
                  {"args", {{"sort_index", pid}}}});
  };
  meta(0, "rank 0 (coordinator)");
  for (json e : r.events) {
    e["pid"] = 0;
    e["tid"] = 0;
    ev.push_back(std::move(e));
  }
  for (const auto& rk : r.ranks) {
    meta(rk.rank, fmt::format("rank {} ({})", rk.rank, rk.role));
    for (const Span& sp : rk.spans) {
      json s = span_trace_event(sp);
      s["ph"] = "X";
      s["pid"] = rk.rank;
      s["tid"] = 0;
      ev.push_back(std::move(s));
    }
  }
  return json{{"traceEvents", ev}, {"displayTimeUnit", "ms"}};
}

json adapt_json(const AdaptDecision& d) {
  const auto& e = d.est;
  return {{"at_s", d.at_s},
          {"generated", d.generated},
          {"why", d.why},
          {"mode", mode_name(d.plan.mode)},
          {"k", d.plan.lookahead},
          {"sp", d.plan.sp},
          {"predicted_ms", d.predicted_ms},
          {"a", e.a},
          {"c_ms", e.c_ms},
          {"t0_ms", e.t0_ms},
          {"t1_ms", e.t1_ms},
          {"speed", e.speed}};
}

json summary_json(const RunReport& r) {
  json ranks = json::array();
  for (const auto& rk : r.ranks) {
    ranks.push_back(
        {{"rank", rk.rank}, {"role", rk.role}, {"busy_s", rk.busy_s}, {"wasted_s", rk.wasted_s}});
  }
  const auto& s = r.stats;
  json out = {
      {"mode", mode_name(r.cfg.mode)},
      {"sp", r.n_targets},
      {"lookahead", r.cfg.lookahead},
      {"engine", r.cfg.engine},
      {"temperature", r.cfg.temperature},
      {"prompt_ids", r.prompt},
      {"generated_ids", r.tokens},
      {"text", r.text},
      {"tokens", r.tokens.size()},
      {"setup_s", r.setup_s},
      {"elapsed_s", r.elapsed_s},
      {"latency_per_token_ms", r.latency_per_token_ms},
      {"acceptance_rate", r.acceptance_rate()},
      {"chains", s.chains},
      {"drafts",
       {{"received", s.drafts_received},
        {"accepted", s.drafts_accepted},
        {"rejected", s.drafts_rejected}}},
      {"tasks",
       {{"launched", s.tasks_launched},
        {"completed", s.tasks_completed},
        {"preempted", s.tasks_preempted},
        {"cancelled_queued", s.tasks_cancelled_queued}}},
      {"wasted_target_s", r.wasted_target_s()},
      {"kv_handoff",
       {{"mode", r.cfg.kv_handoff},
        {"prompt", r.kv.prompt},
        {"planned", r.kv.planned},
        {"imported", r.kv.imported},
        {"imported_tokens", r.kv.imported_tokens},
        {"sent_bytes", r.kv.sent_bytes},
        {"fallbacks", r.kv.fallbacks},
        {"not_needed", r.kv.not_needed},
        {"verified_on_imported", r.kv.verified_on_imported}}},
      {"ranks", ranks},
  };
  if (r.cfg.n_drafters() > 1) {
    out["merged_drafters"] = {{"drafters", r.cfg.n_drafters()},
                              {"proposals", s.proposals_received},
                              {"siblings_verified", s.siblings_verified},
                              {"siblings_committed", s.siblings_committed},
                              {"waits_given_up", r.proposal_waits_given_up}};
  }
  if (r.cfg.adapt && r.cfg.mode != Mode::kNonSi) {
    json decisions = json::array();
    for (const auto& d : r.adapt) decisions.push_back(adapt_json(d));
    json per_pos = json::array();
    for (int i = 0; i < SchedulerStats::kPositions; ++i) {
      const int64_t n = s.accepted_at[i] + s.rejected_at[i];
      per_pos.push_back(n > 0 ? static_cast<double>(s.accepted_at[i]) / n : 0.0);
    }
    out["adapt"] = {{"decisions", decisions},
                    {"plan_changes", s.plan_changes},
                    {"tokens_by_mode",
                     {{"nonsi", r.tokens_by_mode[static_cast<int>(Mode::kNonSi)]},
                      {"si", r.tokens_by_mode[static_cast<int>(Mode::kSi)]},
                      {"dsi", r.tokens_by_mode[static_cast<int>(Mode::kDsi)]}}},
                    {"acceptance_by_position", per_pos},
                    {"final", adapt_json({.plan = {}, .est = r.adapt_final, .why = "end"})}};
  }
  return out;
}

std::string summary_text(const RunReport& r) {
  const auto& s = r.stats;
  std::string out = fmt::format(
      "mode {}  SP {}  k {}  engine {}  temperature {}\n"
      "tokens {}  latency/token {:.3f} ms  elapsed {:.3f} s  (setup {:.3f} s not counted)\n"
      "acceptance rate {:.3f}  ({} drafts accepted, {} rejected, {} chains)\n"
      "tasks: launched {}  completed {}  preempted {}  cancelled while queued {}\n"
      "wasted (preempted) target time {:.3f} s\n",
      mode_name(r.cfg.mode), r.n_targets, r.cfg.lookahead, r.cfg.engine, r.cfg.temperature,
      r.tokens.size(), r.latency_per_token_ms, r.elapsed_s, r.setup_s, r.acceptance_rate(),
      s.drafts_accepted, s.drafts_rejected, s.chains, s.tasks_launched, s.tasks_completed,
      s.tasks_preempted, s.tasks_cancelled_queued, r.wasted_target_s());
  if (r.cfg.adapt && r.cfg.mode != Mode::kNonSi) {
    const auto& e = r.adapt_final;
    out += fmt::format(
        "adaptive: {} plan changes; tokens by mode: non-SI {}, SI {}, DSI {}; final estimates "
        "a {:.3f}, c {:.3f} ms, t {:.3f} + {:.3f}/token ms\n",
        s.plan_changes, r.tokens_by_mode[static_cast<int>(Mode::kNonSi)],
        r.tokens_by_mode[static_cast<int>(Mode::kSi)],
        r.tokens_by_mode[static_cast<int>(Mode::kDsi)], e.a, e.c_ms, e.t0_ms, e.t1_ms);
  }
  if (r.cfg.n_drafters() > 1) {
    out += fmt::format(
        "merged drafters: {} drafters, {} proposals, {} verified as siblings, {} committed "
        "(tokens the lead's chain missed); SI gave up waiting {} times\n",
        r.cfg.n_drafters(), s.proposals_received, s.siblings_verified, s.siblings_committed,
        r.proposal_waits_given_up);
  }
  if (r.kv.planned > 0) {
    out += fmt::format(
        "kv handoff: {} planned{}, {} imported ({} tokens, {:.2f} MB), {} fell back to "
        "recomputing, {} not needed; {} verifications attended to imported KV\n",
        r.kv.planned, r.kv.prompt ? " (prompt included)" : "", r.kv.imported, r.kv.imported_tokens,
        r.kv.sent_bytes / 1e6, r.kv.fallbacks, r.kv.not_needed, r.kv.verified_on_imported);
  }
  for (const auto& rk : r.ranks) {
    out += fmt::format(
        "  rank {:3} {:12} busy {:8.3f} s ({:5.1f}%)  wasted {:.3f} s\n", rk.rank, rk.role,
        rk.busy_s, r.elapsed_s > 0 ? 100 * rk.busy_s / (r.elapsed_s + r.setup_s) : 0, rk.wasted_s);
  }
  return out;
}

}  // namespace dsi
