// The KV handoff role (core/worker_roles.h): a target sends a range of its KV cache to another
// target, which imports it when its own cache is where the range begins. Neither trusts the
// coordinator's view of its cache: a wrong guess costs a recomputation, never a token.
#include <fmt/format.h>

#include <cstring>

#include "core/worker_roles.h"

namespace dsi {
namespace {

// The first transfer of a KV handoff, always in host memory: whether the blob follows.
struct KvHeader {
  uint32_t ok;  // 0: the source no longer holds the range; recompute
  uint32_t reserved;
  uint64_t bytes;
};

bool is_kv(const DataKey& k) {
  return k.kind == DataKind::kKvHeader || k.kind == DataKind::kKvCache;
}

}  // namespace

void kv_send(WorkerContext& ctx, const msg::KvSend& m) {
  if (!ctx.data) throw Error("a KV handoff needs a data channel");
  const double t0 = steady_now_s();
  const int begin = m.begin, end = m.end;
  const uint32_t run = ctx.run;
  // The range must still be in the cache, computed for the very tokens the coordinator
  // committed (a stale task since may have rolled it back).
  const bool ok = begin >= 0 && begin < end && static_cast<int>(m.tokens.size()) >= end &&
                  ctx.engine->kv_len() >= end &&
                  common_prefix(ctx.cached, m.tokens) >= static_cast<size_t>(end);
  const KvHeader h{ok ? 1u : 0u, 0, ok ? (end - begin) * ctx.engine->kv_bytes_per_token() : 0};
  std::vector<uint8_t> hb(sizeof h);
  std::memcpy(hb.data(), &h, sizeof h);
  ctx.data->send(m.dst, DataKey{run, DataKind::kKvHeader, m.handoff, 0}, std::move(hb));
  if (ok) {
    ctx.engine->send_kv(*ctx.data, m.dst, DataKey{run, DataKind::kKvCache, m.handoff, 0}, begin,
                        end);
    ++ctx.kv.sent;
    ctx.kv.sent_bytes += static_cast<int64_t>(h.bytes);
  }
  ctx.log.record(
      {.kind = SpanKind::kKvSend, .id = m.handoff, .tokens = end - begin, .peer = m.dst, .ok = ok},
      t0, steady_now_s());
}

void kv_expect(WorkerContext& ctx, const msg::KvExpect& m) {
  if (!ctx.data) throw Error("a KV handoff needs a data channel");
  const double t0 = steady_now_s();
  const int begin = m.begin, end = m.end;
  const uint32_t run = ctx.run;
  // Handoffs are numbered in the order the coordinator plans them: older ones that were not
  // needed will not be asked for again.
  ctx.data->discard([&](const DataKey& k) { return is_kv(k) && k.stream < m.handoff; });
  const size_t have = common_prefix(ctx.cached, m.tokens);
  KvOutcome outcome = KvOutcome::kImported;
  if (have >= static_cast<size_t>(end)) {
    outcome = KvOutcome::kNotNeeded;
    ++ctx.kv.not_needed;
  } else if (have < static_cast<size_t>(begin) || static_cast<int>(m.tokens.size()) < end) {
    outcome = KvOutcome::kCacheBehind;  // the next forward recomputes
    ++ctx.kv.fallbacks;
  } else {
    std::vector<uint8_t> hb;
    if (!ctx.data->recv(DataKey{run, DataKind::kKvHeader, m.handoff, 0}, hb, ctx.peer_deadline()) ||
        hb.size() != sizeof(KvHeader)) {
      throw Error(fmt::format("KV handoff {} from rank {} did not arrive within {} s", m.handoff,
                              m.src, ctx.opts.peer_timeout_s));
    }
    KvHeader h;
    std::memcpy(&h, hb.data(), sizeof h);
    const uint64_t want = (end - begin) * ctx.engine->kv_bytes_per_token();
    if (!h.ok) {
      outcome = KvOutcome::kSourceDropped;
      ++ctx.kv.fallbacks;
    } else if (h.bytes != want) {
      throw Error(fmt::format(
          "KV handoff {} from rank {} carries {} bytes for {} tokens, this engine expects {} "
          "(different model or kept layers?)",
          m.handoff, m.src, h.bytes, end - begin, want));
    } else {
      ctx.truncate(begin);
      const DataKey key{run, DataKind::kKvCache, m.handoff, 0};
      if (!ctx.engine->recv_kv(*ctx.data, key, begin, end, ctx.peer_deadline(), nullptr)) {
        throw Error(fmt::format("the KV of handoff {} from rank {} did not arrive within {} s",
                                m.handoff, m.src, ctx.opts.peer_timeout_s));
      }
      ctx.cached.assign(m.tokens.begin(), m.tokens.begin() + end);
      ctx.imported_from = std::min(ctx.imported_from, begin);
      ++ctx.kv.imported;
      ctx.kv.imported_tokens += end - begin;
    }
    ctx.data->discard([&](const DataKey& k) { return is_kv(k) && k.stream == m.handoff; });
  }
  ctx.log.record({.kind = SpanKind::kKvImport,
                  .id = m.handoff,
                  .tokens = end - begin,
                  .peer = m.src,
                  .outcome = outcome},
                 t0, steady_now_s());
}

}  // namespace dsi
