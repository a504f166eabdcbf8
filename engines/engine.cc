// The Engine defaults (engines/engine.h): KV handoff staged through host memory.
#include "engines/engine.h"

#include <unistd.h>

#include "kernels/argmax.h"
#include "transport/data_channel.h"

namespace dsi {

std::vector<Token> Logits::argmax() const {
  std::vector<Token> out(n);
  if (n > 0) kernels::argmax_cpu(out.data(), data.data(), n, vocab);
  return out;
}

std::string Engine::device_name() const {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string("cpu@") + host;
}

void Engine::send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const {
  ch.send(dst, key, export_kv(begin, end).bytes);
}

bool Engine::recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
                     std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel) {
  KvBlob kv{begin, end, {}};
  if (!ch.recv(key, kv.bytes, deadline, cancel)) return false;
  import_kv(kv);
  return true;
}

}  // namespace dsi
