#include "serve/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <set>

namespace dsi::serve {

nlohmann::json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.param)},
            {"code", nullptr}}}};
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

namespace {

using json = nlohmann::json;

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "a number";
  }
}

ApiError wrong_type(const std::string& field, const char* want, const json& v) {
  return ApiError(400, fmt::format("'{}' must be {}, not {}", field, want, type_name(v)), field);
}

double number(const json& v, const std::string& field, double lo, double hi) {
  if (!v.is_number()) throw wrong_type(field, "a number", v);
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) {
    throw ApiError(400, fmt::format("'{}' must be between {} and {}, not {}", field, lo, hi, x),
                   field);
  }
  return x;
}

int64_t integer(const json& v, const std::string& field, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) throw wrong_type(field, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    throw ApiError(400, fmt::format("'{}' must be at most {}", field, hi), field);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    throw ApiError(400, fmt::format("'{}' must be between {} and {}, not {}", field, lo, hi, x),
                   field);
  }
  return x;
}

std::string text(const json& v, const std::string& field) {
  if (!v.is_string()) throw wrong_type(field, "a string", v);
  return v.get<std::string>();
}

// A chat message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string content(const json& v, const std::string& field) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) throw wrong_type(field, "a string or an array of text parts", v);
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    const std::string f = fmt::format("{}[{}]", field, i);
    if (!part.is_object()) throw wrong_type(f, "an object", part);
    if (!part.contains("type") || part["type"] != "text" || !part.contains("text")) {
      throw ApiError(400, fmt::format("'{}' must be a text part (only text is supported)", f), f);
    }
    out += text(part["text"], f + ".text");
  }
  return out;
}

}  // namespace

GenRequest parse_request(std::string_view body, Endpoint endpoint, const ApiLimits& limits) {
  if (!valid_utf8(body)) throw ApiError(400, "the request body is not valid UTF-8");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // a syntax error, or a number out of range (1e999)
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  const bool chat = endpoint == Endpoint::kChat;
  static const std::set<std::string> common = {
      "model", "max_tokens", "temperature",    "top_p", "top_k", "seed",
      "stop",  "stream",     "stream_options", "n",     "user"};
  std::vector<std::string> unknown;
  for (const auto& [k, v] : j.items()) {
    const bool known = common.count(k) ||
                       (chat ? (k == "messages" || k == "max_completion_tokens") : k == "prompt");
    if (!known) unknown.push_back(k);
  }
  if (!unknown.empty()) {
    std::string list;
    for (const auto& k : unknown) list += (list.empty() ? "'" : ", '") + k + "'";
    throw ApiError(400, fmt::format("unsupported field{} {}", unknown.size() > 1 ? "s" : "", list),
                   unknown.front());
  }

  GenRequest r;
  r.endpoint = endpoint;
  if (j.contains("model") && !j["model"].is_null()) r.model = text(j["model"], "model");
  if (chat) {
    if (!j.contains("messages")) throw ApiError(400, "'messages' is required", "messages");
    const json& m = j["messages"];
    if (!m.is_array()) throw wrong_type("messages", "an array", m);
    if (m.empty()) throw ApiError(400, "'messages' must not be empty", "messages");
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string f = fmt::format("messages[{}]", i);
      if (!m[i].is_object()) throw wrong_type(f, "an object", m[i]);
      for (const auto& [k, v] : m[i].items()) {
        if (k != "role" && k != "content" && k != "name") {
          throw ApiError(400, fmt::format("unsupported field '{}.{}'", f, k), f + "." + k);
        }
      }
      if (!m[i].contains("role")) throw ApiError(400, fmt::format("'{}.role' is required", f), f);
      if (!m[i].contains("content")) {
        throw ApiError(400, fmt::format("'{}.content' is required", f), f);
      }
      ChatMessage msg{text(m[i]["role"], f + ".role"), content(m[i]["content"], f + ".content")};
      if (msg.role == "developer") msg.role = "system";
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
        throw ApiError(
            400, fmt::format("'{}.role' must be system, user or assistant, not '{}'", f, msg.role),
            f + ".role");
      }
      r.messages.push_back(std::move(msg));
    }
  } else {
    if (!j.contains("prompt")) throw ApiError(400, "'prompt' is required", "prompt");
    const json& p = j["prompt"];
    if (p.is_string()) {
      r.prompt = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt = p[0].get<std::string>();
    } else if (p.is_array() && !p.empty() && p[0].is_number()) {
      for (size_t i = 0; i < p.size(); ++i) {
        r.prompt_ids.push_back(static_cast<Token>(
            integer(p[i], fmt::format("prompt[{}]", i), 0, std::numeric_limits<Token>::max())));
      }
    } else {
      throw ApiError(400, "'prompt' must be a string or an array of token ids (one prompt)",
                     "prompt");
    }
    if (r.prompt.empty() && r.prompt_ids.empty()) {
      throw ApiError(400, "'prompt' must not be empty", "prompt");
    }
  }
  for (const char* f : {"max_tokens", "max_completion_tokens"}) {
    if (j.contains(f) && !j[f].is_null()) r.max_tokens = integer(j[f], f, 1, limits.max_tokens);
  }
  if (j.contains("temperature") && !j["temperature"].is_null()) {
    r.temperature = number(j["temperature"], "temperature", 0, 2);
  }
  if (j.contains("top_p") && !j["top_p"].is_null()) {
    r.top_p = number(j["top_p"], "top_p", 0, 1);
    if (*r.top_p <= 0) throw ApiError(400, "'top_p' must be greater than 0", "top_p");
  }
  if (j.contains("top_k") && !j["top_k"].is_null()) {
    r.top_k = static_cast<int>(integer(j["top_k"], "top_k", 0, 1 << 20));
  }
  if (j.contains("seed") && !j["seed"].is_null()) {
    r.seed = static_cast<uint64_t>(integer(j["seed"], "seed", 0, INT64_MAX));
  }
  if (j.contains("n") && !j["n"].is_null()) {
    if (integer(j["n"], "n", 1, 1 << 20) != 1) {
      throw ApiError(400, "'n' must be 1: one completion per request", "n");
    }
  }
  if (j.contains("user") && !j["user"].is_null()) (void)text(j["user"], "user");
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& s = j["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (size_t i = 0; i < s.size(); ++i)
        r.stop.push_back(text(s[i], fmt::format("stop[{}]", i)));
    } else {
      throw wrong_type("stop", "a string or an array of strings", s);
    }
    if (static_cast<int>(r.stop.size()) > limits.max_stop) {
      throw ApiError(400, fmt::format("'stop' holds at most {} strings", limits.max_stop), "stop");
    }
    for (const auto& s : r.stop) {
      if (s.empty() || s.size() > limits.max_stop_len) {
        throw ApiError(
            400, fmt::format("a stop string must hold 1 to {} bytes", limits.max_stop_len), "stop");
      }
    }
  }
  if (j.contains("stream") && !j["stream"].is_null()) {
    if (!j["stream"].is_boolean()) throw wrong_type("stream", "a boolean", j["stream"]);
    r.stream = j["stream"].get<bool>();
  }
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const json& o = j["stream_options"];
    if (!o.is_object()) throw wrong_type("stream_options", "an object", o);
    for (const auto& [k, v] : o.items()) {
      if (k != "include_usage") {
        throw ApiError(400, fmt::format("unsupported field 'stream_options.{}'", k),
                       "stream_options." + k);
      }
      if (!v.is_boolean()) throw wrong_type("stream_options.include_usage", "a boolean", v);
      r.include_usage = v.get<bool>();
    }
  }
  return r;
}

namespace {

json base(Endpoint e, const Completion& c, bool chunk) {
  const char* object = e == Endpoint::kChat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                            : "text_completion";
  return {{"id", c.id}, {"object", object}, {"created", c.created}, {"model", c.model}};
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

json response_json(Endpoint e, const Completion& c) {
  json j = base(e, c, false);
  json choice = {{"index", 0}, {"finish_reason", c.finish_reason}, {"logprobs", nullptr}};
  if (e == Endpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", c.text}};
  } else {
    choice["text"] = c.text;
  }
  j["choices"] = json::array({choice});
  j["usage"] = usage_json(c.usage);
  j["dsi"] = c.dsi;
  return j;
}

json chunk_json(Endpoint e, const Completion& c, const std::string& delta, bool first,
                const std::string& finish) {
  json j = base(e, c, true);
  json choice = {{"index", 0},
                 {"finish_reason", finish.empty() ? json(nullptr) : json(finish)},
                 {"logprobs", nullptr}};
  if (e == Endpoint::kChat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || finish.empty()) d["content"] = delta;
    choice["delta"] = d;
  } else {
    choice["text"] = delta;
  }
  j["choices"] = json::array({choice});
  if (!finish.empty()) j["dsi"] = c.dsi;
  return j;
}

json usage_chunk_json(Endpoint e, const Completion& c) {
  json j = base(e, c, true);
  j["choices"] = json::array();
  j["usage"] = usage_json(c.usage);
  return j;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return "";
  held_ += text;
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that begins some stop string.
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = stopped_ ? "" : held_;
  held_.clear();
  return out;
}

}  // namespace dsi::serve
