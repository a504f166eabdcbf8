// `dsi serve`: rank 0 answers the OpenAI API over HTTP (serve/http_server.h) and runs the
// requests one at a time over the whole rank pool, which stays loaded between them; the other
// ranks serve as workers. SIGTERM (or SIGINT) drains: the running and queued requests finish,
// new ones get 503, and every rank exits 0.
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstdio>
#include <random>
#include <sstream>

#include <unistd.h>

#include "launch/commands.h"
#include "launch/session.h"
#include "model/text_model.h"
#include "model/tokenizer/tokenizer.h"
#include "serve/http_server.h"

namespace dsi::cli {

namespace {

// The synthetic engine has no tokenizer: its prompts are token ids, given as JSON ids or as
// text of whitespace-separated integers, and its text is the ids (" 12 7 33").
std::vector<Token> parse_ids(const std::string& text, const std::string& field, int vocab) {
  std::istringstream in(text);
  std::vector<Token> out;
  std::string w;
  while (in >> w) {
    size_t used = 0;
    long v = -1;
    try {
      v = std::stol(w, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != w.size() || v < 0 || v >= vocab) {
      throw serve::ApiError(400,
                            fmt::format("the synthetic engine takes token ids below {}: '{}' in "
                                        "'{}' is not one",
                                        vocab, w, field),
                            field);
    }
    out.push_back(static_cast<Token>(v));
  }
  return out;
}

struct Backend {
  Session& s;
  Coordinator& coord;
  int n_targets;
  const ServeOptions& opts;
  std::shared_ptr<const TextModel> text;  // llama; null for the synthetic engine
  serve::Metrics& metrics;
  int context = 0;  // 0: unknown

  int vocab() const { return text ? text->tokenizer().vocab_size() : s.cfg.vocab; }

  // On the I/O thread: the prompt's tokens and the request's limits.
  void prepare(serve::GenRequest& r) const {
    const bool chat = r.endpoint == serve::Endpoint::kChat;
    if (!r.prompt_ids.empty()) {
      r.tokens = r.prompt_ids;
    } else if (text && chat) {
      std::vector<TextModel::Turn> turns;
      for (const auto& m : r.messages) turns.push_back({m.role, m.content});
      r.tokens = text->chat_tokens(turns);
    } else if (text) {
      r.tokens = text->tokenizer().encode(r.prompt, /*add_special=*/true);
    } else if (chat) {
      for (size_t i = 0; i < r.messages.size(); ++i) {
        const auto ids =
            parse_ids(r.messages[i].content, fmt::format("messages[{}].content", i), vocab());
        r.tokens.insert(r.tokens.end(), ids.begin(), ids.end());
      }
    } else {
      r.tokens = parse_ids(r.prompt, "prompt", vocab());
    }
    if (r.tokens.empty()) throw serve::ApiError(400, "the prompt holds no tokens", "prompt");
    for (Token t : r.tokens) {
      if (t < 0 || t >= vocab()) {
        throw serve::ApiError(
            400, fmt::format("prompt token {} is outside the vocabulary of {}", t, vocab()),
            "prompt");
      }
    }
    const int room = context > 0 ? context - static_cast<int>(r.tokens.size()) : INT_MAX;
    // Unasked, the default shrinks to what the context leaves.
    if (r.max_tokens < 0) r.max_tokens = std::min(opts.max_tokens, std::max(room, 1));
    if (r.max_tokens > room) {
      throw serve::ApiError(400,
                            fmt::format("the prompt's {} tokens and max_tokens {} exceed the "
                                        "model's context of {} tokens",
                                        r.tokens.size(), r.max_tokens, context),
                            "max_tokens");
    }
  }

  // On the coordinator's thread: one generation.
  void run(serve::Job& job) {
    const serve::GenRequest& r = job.request();
    if (job.cancel().cancelled()) return gone(job);  // left (or expired) while queued
    RunConfig cfg = s.cfg;
    cfg.prompt_ids = r.tokens;
    cfg.max_new_tokens = r.max_tokens;
    if (r.temperature) cfg.temperature = *r.temperature;
    if (r.top_p) cfg.top_p = *r.top_p;
    if (r.top_k) cfg.top_k = *r.top_k;
    // Without a seed a sampled request draws one (and reports it): the same prompt twice
    // gives two samples, either of which the seed in its `dsi` object reproduces.
    if (r.seed) {
      cfg.sampling_seed = static_cast<int64_t>(*r.seed);  // at most INT64_MAX (parse_request)
    } else if (cfg.temperature > 0) {
      std::random_device rd;
      cfg.sampling_seed = static_cast<int64_t>(((uint64_t{rd()} << 32) | rd()) >> 2);
    }
    // The residual sampler's text depends on k: the policy may not change k under it.
    if (cfg.temperature > 0 && cfg.coupling == "residual") cfg.adapt = false;

    std::unique_ptr<StreamDecoder> decoder;
    if (text) decoder = std::make_unique<StreamDecoder>(text->tokenizer());
    serve::StopMatcher stops(r.stop);
    std::string all;
    bool first = true;
    Clock::time_point last = job.arrived();
    auto emit = [&](const std::string& piece) {
      const std::string out = stops.push(piece);
      if (out.empty()) return;
      all += out;
      if (r.stream) job.text(out);
    };
    auto on_commit = [&](std::span<const Token> toks) {
      const auto now = Clock::now();
      const double gap = std::chrono::duration<double>(now - last).count();
      if (first) {
        metrics.first_token(gap);
      } else {
        metrics.inter_token(gap);
      }
      for (size_t i = 1; i < toks.size(); ++i) metrics.inter_token(0);
      first = false;
      last = now;
      for (Token t : toks) {
        if (text && text->tokenizer().is_eog(t)) continue;
        emit(decoder ? decoder->push(t) : fmt::format(" {}", t));
      }
      if (stops.stopped()) job.cancel().cancel();  // a stop string: no need to go on
    };
    RunReport rep;
    try {
      rep = coord.run(cfg, n_targets, on_commit, &job.cancel());
    } catch (const ConfigError& e) {
      return job.fail(serve::ApiError(400, e.what()));
    } catch (const std::exception& e) {
      // A dead rank or a failed engine ends the server (every rank exits non-zero).
      job.fail(
          serve::ApiError(500, fmt::format("generation failed: {}", e.what()), "", "server_error"));
      throw;
    }
    metrics.generation(rep);
    if (rep.stopped && !stops.stopped()) return gone(job);
    if (!stops.stopped()) {
      if (decoder) emit(decoder->flush());
      const std::string rest = stops.flush();
      all += rest;
      if (r.stream && !rest.empty()) job.text(rest);
    }
    const bool eog = text && !rep.tokens.empty() && text->tokenizer().is_eog(rep.tokens.back());
    serve::Completion c;
    c.text = all;
    c.finish_reason = stops.stopped() || eog ? "stop" : "length";
    c.usage = {.prompt_tokens = static_cast<int>(rep.prompt.size()),
               .completion_tokens = static_cast<int>(rep.tokens.size())};
    const double checked =
        static_cast<double>(rep.stats.drafts_accepted + rep.stats.drafts_rejected);
    c.dsi = {{"mode", mode_name(cfg.mode)},
             {"sp", rep.n_targets},
             {"k", cfg.lookahead},
             {"adapt", cfg.adapt && cfg.mode != Mode::kNonSi},
             {"drafts_accepted", rep.stats.drafts_accepted},
             {"drafts_rejected", rep.stats.drafts_rejected},
             {"acceptance_rate", checked > 0 ? rep.stats.drafts_accepted / checked : 0},
             {"tasks_launched", rep.stats.tasks_launched},
             {"tasks_preempted", rep.stats.tasks_preempted},
             {"latency_per_token_ms", rep.latency_per_token_ms}};
    if (cfg.temperature > 0) c.dsi["seed"] = cfg.sampling_seed;
    job.done(std::move(c));
  }

  void gone(serve::Job& job) const {
    if (job.expired()) {
      job.fail(serve::ApiError(504, "the request's deadline passed", "", "server_error"));
    } else {
      job.fail(serve::ApiError(499, "the client closed the request"));  // nobody reads it
    }
  }
};

}  // namespace

int cmd_serve(const CommonOptions& common, const ServeOptions& opts) {
  int n_targets = 0;
  return with_session(
      common,
      [&](Session& s) {
        n_targets = s.cfg.n_targets(s.world);
        check_model_paths(s.cfg);
        if (opts.max_tokens < 1) throw ConfigError("--max-tokens must be at least 1");
        // Workers end when the coordinator says so (after a drain), not on the signal a
        // launcher sends to every rank.
        if (s.rank != 0) {
          std::signal(SIGTERM, SIG_IGN);
          std::signal(SIGINT, SIG_IGN);
        }
      },
      [&](Session& s, Coordinator& coord) {
        serve::Metrics metrics;
        Backend b{.s = s, .coord = coord, .n_targets = n_targets, .opts = opts, .metrics = metrics};
        if (s.cfg.engine == "llama") b.text = coord.text_model(s.cfg.model_path);
        b.context = s.cfg.max_context > 0 ? s.cfg.max_context
                    : b.text              ? b.text->context_length()
                                          : 0;
        serve::ServerOptions so{.host = opts.host,
                                .port = opts.port,
                                .api_key = opts.api_key,
                                .model = opts.model_name,
                                .max_body = opts.max_body,
                                .queue = opts.queue,
                                .read_timeout_s = opts.read_timeout_s,
                                .request_timeout_s = opts.request_timeout_s,
                                .max_connections = opts.max_connections};
        so.limits.max_tokens = b.context > 0 ? b.context : 1 << 20;
        serve::HttpServer server(so, metrics, [&b](serve::GenRequest& r) { b.prepare(r); });
        server.start();
        fmt::print("dsi serve: listening on http://{}:{} ({} ranks: 1 coordinator, {} drafter, "
                   "{} targets; mode {}, k {}, adapt {})\n",
                   opts.host, server.port(), s.world, s.cfg.n_drafters(), n_targets,
                   mode_name(s.cfg.mode), s.cfg.lookahead, s.cfg.adapt ? "on" : "off");
        std::fflush(stdout);
        if (!opts.port_file.empty()) {
          std::FILE* f = std::fopen(opts.port_file.c_str(), "w");
          if (!f) throw UsageError(fmt::format("cannot write '{}'", opts.port_file));
          fmt::print(f, "{}\n{}\n", server.port(), static_cast<long>(getpid()));
          std::fclose(f);
        }
        while (!server.drained()) {
          auto job = server.next_job(std::chrono::milliseconds(20));
          if (!job) {
            coord.idle(Clock::now());  // heartbeats; a dead worker ends the server
            continue;
          }
          server.set_running(true);
          b.run(*job);
          server.set_running(false);
        }
        fmt::print("dsi serve: drained, exiting\n");
        std::fflush(stdout);
        server.stop();
        return 0;
      });
}

}  // namespace dsi::cli
