// The OpenAI-compatible API of `dsi serve`, without any I/O: a request body decoded into a
// GenRequest (or an ApiError naming the field and the HTTP status), and the JSON of responses
// and stream chunks. The HTTP server (serve/http_server.h) and the request decoder's fuzz
// target use it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/token.h"

namespace dsi::serve {

// An error answered to the client: the HTTP status and OpenAI's error object.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(std::move(message)),
        status(status),
        param(std::move(param)),
        type(std::move(type)) {}
  int status;
  std::string param;
  std::string type;
};
// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_json(const ApiError& e);

enum class Endpoint { kCompletions, kChat };

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

struct GenRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::string prompt;             // completions: text ...
  std::vector<Token> prompt_ids;  // ... or token ids
  std::vector<ChatMessage> messages;
  int max_tokens = -1;  // -1: the server's default
  std::optional<double> temperature, top_p;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // The prompt as the model's tokens: filled by the server's prepare step, not the client.
  std::vector<Token> tokens;
};

struct ApiLimits {
  int max_tokens = 4096;  // the most a request may ask for
  int max_stop = 4;       // stop strings
  size_t max_stop_len = 256;
};

// Decodes a request body. Throws ApiError (400) for invalid JSON or UTF-8, a wrong type, an
// out-of-range value, n other than 1, or a field this server does not know (named).
GenRequest parse_request(std::string_view body, Endpoint endpoint, const ApiLimits& limits);

// Whether `s` is valid UTF-8.
bool valid_utf8(std::string_view s);

// What a finished generation reports.
struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};
// A response, or the last chunk of a stream: the whole text (or the last delta), why it
// ended ("stop" or "length"), usage, and the `dsi` object.
struct Completion {
  std::string id;
  int64_t created = 0;
  std::string model;
  std::string text;
  std::string finish_reason;
  Usage usage;
  nlohmann::json dsi = nlohmann::json::object();
};
nlohmann::json response_json(Endpoint e, const Completion& c);
// A stream chunk with a text delta (first: the chat chunk also carries the role), or the
// final chunk with its finish_reason (finish not empty).
nlohmann::json chunk_json(Endpoint e, const Completion& c, const std::string& delta, bool first,
                          const std::string& finish);
// The usage chunk of a stream (stream_options.include_usage): no choices.
nlohmann::json usage_chunk_json(Endpoint e, const Completion& c);

// Text generated so far, with the request's stop strings: `push` adds decoded text and
// returns what may be sent now (text that could begin a stop string is held back); once a
// stop string appears, `stopped` holds and nothing after it is ever returned.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  std::string push(std::string_view text);
  std::string flush();  // the held-back text, at the end (nothing if stopped)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace dsi::serve
