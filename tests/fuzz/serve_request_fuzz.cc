// libFuzzer target for the request decoder of `dsi serve` (serve/api.h): any body, for either
// endpoint, is either a GenRequest that satisfies the limits or an ApiError with a 4xx status
// and a message; nothing else may escape, and a stop matcher fed the decoded stop strings
// never returns text past a stop. Built by tests/fuzz/run.sh (clang only).
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "serve/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsi::serve;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const ApiLimits limits;
  for (Endpoint e : {Endpoint::kCompletions, Endpoint::kChat}) {
    try {
      const GenRequest r = parse_request(body, e, limits);
      const bool ok =
          r.max_tokens == -1 || (r.max_tokens >= 1 && r.max_tokens <= limits.max_tokens);
      const bool prompt =
          e == Endpoint::kChat ? !r.messages.empty() : (!r.prompt.empty() || !r.prompt_ids.empty());
      if (!ok || !prompt || static_cast<int>(r.stop.size()) > limits.max_stop) {
        std::fprintf(stderr, "accepted a request outside the limits\n");
        std::abort();
      }
      StopMatcher m(r.stop);
      std::string out = m.push(r.prompt) + m.push(r.prompt) + m.flush();
      for (const auto& s : r.stop) {
        if (out.find(s) != std::string::npos) {
          std::fprintf(stderr, "the stop matcher let a stop string through\n");
          std::abort();
        }
      }
    } catch (const ApiError& err) {
      if (err.status < 400 || err.status > 499 || std::string_view(err.what()).empty()) {
        std::fprintf(stderr, "an ApiError without a 4xx status or a message\n");
        std::abort();
      }
    }
  }
  return 0;
}
