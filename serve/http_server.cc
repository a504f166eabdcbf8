#include "serve/http_server.h"

#include <fmt/format.h>

#include <sys/resource.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <csignal>
#include <future>
#include <optional>
#include <sstream>

#include "common/error.h"

namespace dsi::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;

struct HttpServer::Impl {
  Impl(ServerOptions o, Metrics& m, Prepare p)
      : opts(std::move(o)), metrics(m), prepare(std::move(p)) {}
  ServerOptions opts;
  Metrics& metrics;
  Prepare prepare;
  // Declared before the io_context: destroying it destroys pending handlers, and with them
  // sessions that still count themselves out here.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;
  std::atomic<bool> draining{false}, running{false};
  std::atomic<int> connections{0}, writing{0};
  std::atomic<uint64_t> next_id{0};
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  net::signal_set signals{ioc};
  net::steady_timer accept_retry{ioc};
  std::thread thread;

  // Takes a job out of the queue if it still waits there (its client left, or its deadline
  // passed): it will not run, and its slot is free at once.
  bool unqueue(const Job* j) {
    std::lock_guard lk(mu);
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (it->get() == j) {
        queue.erase(it);
        metrics.set_queue(static_cast<int>(queue.size()), running);
        return true;
      }
    }
    return false;
  }

  void accept();
  void publish_queue() {
    std::lock_guard lk(mu);
    metrics.set_queue(static_cast<int>(queue.size()), running);
  }
};

namespace {

std::chrono::steady_clock::duration secs(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

const char* reason(int status) {
  return http::obsolete_reason(static_cast<http::status>(status)).data();
}

class Session;

// The Job of one request: its calls (on the backend's thread) are posted to the session.
class GenJob final : public Job {
 public:
  GenJob(GenRequest r, std::weak_ptr<Session> s, net::io_context& ioc, double timeout_s)
      : session_(std::move(s)), ioc_(ioc) {
    req_ = std::move(r);
    deadline_ = arrived_ + secs(timeout_s);
  }
  void abort() { cancel_.cancel(); }
  void text(std::string delta) override;
  void done(Completion c) override;
  void fail(const ApiError& e) override;

 private:
  std::weak_ptr<Session> session_;
  net::io_context& ioc_;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket s, HttpServer::Impl& srv) : stream_(std::move(s)), srv_(srv) {
    ++srv_.connections;
  }
  ~Session() { --srv_.connections; }

  void start() { read(); }

  // From the job (on the I/O thread).
  void on_text(const std::string& delta) {
    if (!streaming_ || gone_ || delta.empty()) return;
    Completion c = meta();
    send(sse(chunk_json(endpoint_, c, delta, first_chunk_, "")));
    first_chunk_ = false;
  }
  void on_done(Completion c) {
    fill(c);
    if (gone_) return finish_job();
    srv_.metrics.request(path_, 200);
    if (streaming_) {
      std::string out;
      if (first_chunk_) out += sse(chunk_json(endpoint_, c, "", true, ""));
      out += sse(chunk_json(endpoint_, c, "", false, c.finish_reason));
      if (job_->request().include_usage) out += sse(usage_chunk_json(endpoint_, c));
      out += "data: [DONE]\n\n";
      finish_job();
      close_after_ = true;
      send(std::move(out));
    } else {
      finish_job();
      respond(200,
              response_json(endpoint_, c).dump(-1, ' ', false, json::error_handler_t::replace));
    }
  }
  void on_fail(const ApiError& e) {
    if (gone_) return finish_job();
    srv_.metrics.request(path_, e.status);
    if (streaming_) {
      finish_job();
      close_after_ = true;
      send(sse(error_json(e)) + "data: [DONE]\n\n");
    } else {
      finish_job();
      respond(e.status, error_json(e).dump(-1, ' ', false, json::error_handler_t::replace));
    }
  }

 private:
  static std::string sse(const json& j) {
    return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
  }
  Completion meta() const {
    Completion c;
    fill(c);
    return c;
  }
  void fill(Completion& c) const {
    c.id = id_;
    c.created = created_;
    c.model = srv_.opts.model;
  }

  void read() {
    parser_.emplace();
    parser_->body_limit(srv_.opts.max_body);
    parser_->header_limit(16 * 1024);
    stream_.expires_after(secs(srv_.opts.read_timeout_s));
    http::async_read(
        stream_, buf_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset ||
        ec == net::error::eof) {
      return close();
    }
    close_after_ = true;  // a request that did not parse ends the connection
    linger_ = true;
    if (ec == http::error::body_limit) {
      path_ = "other";
      return error(413, fmt::format("the request body is over {} bytes", srv_.opts.max_body));
    }
    if (ec == http::error::header_limit) {
      path_ = "other";
      return error(431, "the request's headers are too large");
    }
    if (ec) {
      path_ = "other";
      return error(400, fmt::format("malformed HTTP request: {}", ec.message()));
    }
    close_after_ = false;
    linger_ = false;
    handle(parser_->release());
  }

  void handle(http::request<http::string_body> req) {
    keep_alive_ = req.keep_alive();
    close_after_ = !keep_alive_;
    std::string target(req.target());
    path_ = target.substr(0, target.find('?'));
    const auto method = req.method();
    const bool gen = path_ == "/v1/completions" || path_ == "/v1/chat/completions";
    const bool known = gen || path_ == "/v1/models" || path_ == "/health" || path_ == "/metrics";
    if (!known) {
      path_ = "other";
      return error(404, fmt::format("no endpoint {}", target));
    }
    if (!srv_.opts.api_key.empty() && path_ != "/health") {
      const auto auth = req[http::field::authorization];
      const std::string want = "Bearer " + srv_.opts.api_key;
      bool ok = auth.size() == want.size();
      unsigned diff = 0;  // the same time for every wrong key of the right length
      for (size_t i = 0; ok && i < want.size(); ++i) diff |= auth[i] ^ want[i];
      if (!ok || diff != 0) {
        return error(401, "invalid API key: send 'Authorization: Bearer <key>'", "",
                     "authentication_error");
      }
    }
    if (gen ? method != http::verb::post : method != http::verb::get) {
      return error(405, fmt::format("{} takes {}", path_, gen ? "POST" : "GET"));
    }
    if (path_ == "/health") {
      const bool d = srv_.draining;
      srv_.metrics.request(path_, d ? 503 : 200);
      return respond(d ? 503 : 200, json{{"status", d ? "draining" : "ok"}}.dump());
    }
    if (path_ == "/metrics") {
      srv_.metrics.request(path_, 200);
      return respond(200, srv_.metrics.render(), "text/plain; version=0.0.4");
    }
    if (path_ == "/v1/models") {
      srv_.metrics.request(path_, 200);
      json m = {{"id", srv_.opts.model}, {"object", "model"}, {"created", 0}, {"owned_by", "dsi"}};
      return respond(200, json{{"object", "list"}, {"data", json::array({m})}}.dump(
                              -1, ' ', false, json::error_handler_t::replace));
    }
    generate(req.body());
  }

  void generate(const std::string& body) {
    endpoint_ = path_ == "/v1/chat/completions" ? Endpoint::kChat : Endpoint::kCompletions;
    if (srv_.draining) return error(503, "the server is shutting down", "", "server_error");
    GenRequest r;
    try {
      r = parse_request(body, endpoint_, srv_.opts.limits);
      srv_.prepare(r);
    } catch (const ApiError& e) {
      return error(e.status, e.what(), e.param, e.type);
    } catch (const std::exception& e) {  // a bug: answer it, never end the I/O thread
      return error(500, fmt::format("the request could not be handled: {}", e.what()), "",
                   "server_error");
    }
    id_ = fmt::format("{}-{}", endpoint_ == Endpoint::kChat ? "chatcmpl" : "cmpl", ++srv_.next_id);
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    streaming_ = r.stream;
    first_chunk_ = true;
    job_ = std::make_shared<GenJob>(std::move(r), weak_from_this(), srv_.ioc,
                                    srv_.opts.request_timeout_s);
    bool full = false;
    {
      std::lock_guard lk(srv_.mu);
      full = static_cast<int>(srv_.queue.size()) >= srv_.opts.queue;
      if (!full) srv_.queue.push_back(job_);
    }
    if (full) {
      job_.reset();
      streaming_ = false;
      extra_headers_ = "Retry-After: 1\r\n";
      return error(429, fmt::format("{} requests are waiting; retry later", srv_.opts.queue), "",
                   "server_error");
    }
    srv_.cv.notify_all();
    srv_.publish_queue();
    // The answer's deadline.
    deadline_.emplace(stream_.get_executor());
    deadline_->expires_at(job_->deadline());
    deadline_->async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->job_) return;
      self->job_->abort();
      if (self->srv_.unqueue(self->job_.get())) {
        self->on_fail(
            ApiError(504, "the request's deadline passed while it waited", "", "server_error"));
      }
    });
    if (streaming_) {
      send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
           "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n");
    }
    watch();
  }

  // While a job is queued or runs, a readable socket with nothing to read is a client that
  // left: its job is cancelled.
  void watch() {
    stream_.expires_never();
    watching_ = true;
    stream_.socket().async_wait(tcp::socket::wait_read,
                                [self = shared_from_this()](beast::error_code ec) {
                                  self->watching_ = false;
                                  if (ec == net::error::operation_aborted || !self->job_) return;
                                  beast::error_code e2;
                                  const size_t n = self->stream_.socket().available(e2);
                                  if (ec || e2 || n == 0) self->left();
                                });
  }

  void left() {
    if (gone_) return;
    gone_ = true;
    srv_.metrics.request(path_, 499);  // nginx's "client closed request"
    if (job_) {
      job_->abort();
      if (srv_.unqueue(job_.get())) finish_job();  // it never runs
    }
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  }

  void finish_job() {
    job_.reset();
    if (deadline_) deadline_->cancel();
    if (watching_ && !streaming_) {
      // Ends the watch before the answer is written (nothing else is pending); a stream
      // closes after its last write, which ends the watch too.
      beast::error_code ec;
      stream_.socket().cancel(ec);
    }
  }

  void error(int status, const std::string& message, const std::string& param = "",
             const std::string& type = "invalid_request_error") {
    srv_.metrics.request(path_, status);
    respond(status, error_json(ApiError(status, message, param, type))
                        .dump(-1, ' ', false, json::error_handler_t::replace));
  }

  void respond(int status, const std::string& body,
               const std::string& content_type = "application/json") {
    std::string head = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                                   status, reason(status), content_type, body.size());
    if (status == 401) head += "WWW-Authenticate: Bearer\r\n";
    if (status == 405)
      head += fmt::format("Allow: {}\r\n", path_.rfind("/v1/c", 0) == 0 ? "POST" : "GET");
    head += extra_headers_;
    extra_headers_.clear();
    head += close_after_ ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
    send(head + body);
  }

  void send(std::string data) {
    out_.push_back(std::move(data));
    if (!writing_) write_next();
  }

  void write_next() {
    if (out_.empty()) {
      writing_ = false;
      --srv_.writing;
      if (close_after_) return close();
      if (!job_) read();  // keep-alive: the next request
      return;
    }
    if (!writing_) ++srv_.writing;
    writing_ = true;
    stream_.expires_after(secs(srv_.opts.read_timeout_s));
    net::async_write(stream_, net::buffer(out_.front()),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->out_.pop_front();
                       if (ec) {
                         self->out_.clear();
                         self->writing_ = false;
                         --self->srv_.writing;
                         if (self->job_) self->left();
                         return self->close();
                       }
                       if (self->job_) self->stream_.expires_never();
                       self->write_next();
                     });
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (linger_) {
      linger_ = false;
      return drop_unread();
    }
    stream_.socket().close(ec);
  }

  // A request refused before its body was read (413, 431, 400): what the client still sends
  // is read and dropped, for up to a second and 1 MiB, so that it sees the answer rather than
  // a reset.
  void drop_unread() {
    discard_.resize(16 * 1024);
    stream_.expires_after(std::chrono::seconds(1));
    stream_.async_read_some(net::buffer(discard_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->dropped_ += n;
                              if (ec || self->dropped_ > (1u << 20)) {
                                beast::error_code e2;
                                self->stream_.socket().close(e2);
                                return;
                              }
                              self->drop_unread();
                            });
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& srv_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string path_ = "other";
  bool keep_alive_ = true, close_after_ = false, linger_ = false;
  std::vector<char> discard_;
  size_t dropped_ = 0;
  std::string extra_headers_;
  // The generation in progress.
  std::shared_ptr<GenJob> job_;
  Endpoint endpoint_ = Endpoint::kCompletions;
  std::string id_;
  int64_t created_ = 0;
  bool streaming_ = false, first_chunk_ = true, gone_ = false, watching_ = false;
  std::optional<net::steady_timer> deadline_;
  std::deque<std::string> out_;
  bool writing_ = false;
};

void GenJob::text(std::string delta) {
  net::post(ioc_, [w = session_, d = std::move(delta)] {
    if (auto s = w.lock()) s->on_text(d);
  });
}
void GenJob::done(Completion c) {
  net::post(ioc_, [w = session_, c = std::move(c)]() mutable {
    if (auto s = w.lock()) s->on_done(std::move(c));
  });
}
void GenJob::fail(const ApiError& e) {
  net::post(ioc_, [w = session_, e] {
    if (auto s = w.lock()) s->on_fail(e);
  });
}

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket s) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // Out of descriptors (or another transient failure): try again shortly, not at once.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    {
      if (connections >= opts.max_connections) {
        beast::error_code e2;
        s.close(e2);
      } else {
        std::make_shared<Session>(std::move(s), *this)->start();
      }
    }
    accept();
  });
}

HttpServer::HttpServer(ServerOptions opts, Metrics& metrics, Prepare prepare)
    : impl_(std::make_unique<Impl>(std::move(opts), metrics, std::move(prepare))) {}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::start() {
  Impl& s = *impl_;
  beast::error_code ec;
  const auto addr = net::ip::make_address(s.opts.host, ec);
  if (ec) throw Error(fmt::format("--host '{}' is not an IP address", s.opts.host));
  if (s.opts.port < 0 || s.opts.port > 65535) {
    throw Error(fmt::format("--port {} is not a port", s.opts.port));
  }
  const tcp::endpoint ep(addr, static_cast<unsigned short>(s.opts.port));
  s.acceptor.open(ep.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(ep, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    throw Error(fmt::format("cannot listen on {}:{}: {}", s.opts.host, s.opts.port, ec.message()));
  }
  port_ = s.acceptor.local_endpoint().port();
  // Every connection is a descriptor: take the hard limit, so that --max-connections rather
  // than the soft limit (often 1024) decides.
  rlimit fds{};
  if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < fds.rlim_max) {
    fds.rlim_cur = fds.rlim_max;
    setrlimit(RLIMIT_NOFILE, &fds);
  }
  s.signals.add(SIGTERM);
  s.signals.add(SIGINT);
  s.signals.async_wait([this, &s](beast::error_code e, int) {
    if (e) return;
    drain();
    beast::error_code ec;
    s.signals.clear(ec);  // a second signal ends the process the default way
  });
  s.accept();
  s.thread = std::thread([&s] { s.ioc.run(); });
}

std::shared_ptr<Job> HttpServer::next_job(std::chrono::milliseconds wait) {
  Impl& s = *impl_;
  std::unique_lock lk(s.mu);
  s.cv.wait_for(lk, wait, [&] { return !s.queue.empty() || s.draining; });
  if (s.queue.empty()) return nullptr;
  auto j = std::move(s.queue.front());
  s.queue.pop_front();
  s.metrics.set_queue(static_cast<int>(s.queue.size()), s.running);
  return j;
}

bool HttpServer::drained() const {
  std::lock_guard lk(impl_->mu);
  return impl_->draining && impl_->queue.empty();
}

void HttpServer::drain() {
  impl_->draining = true;
  impl_->cv.notify_all();
}

void HttpServer::set_running(bool running) {
  impl_->running = running;
  impl_->publish_queue();
}

void HttpServer::stop() {
  Impl& s = *impl_;
  if (!s.thread.joinable()) return;
  // Posted after the backend's last done() or fail(): once it runs, their writes have begun.
  std::promise<void> posted;
  net::post(s.ioc, [&s, &posted] {
    beast::error_code ec;
    s.acceptor.close(ec);
    s.signals.cancel(ec);
    s.accept_retry.cancel();
    posted.set_value();
  });
  const auto until = Clock::now() + std::chrono::seconds(2);
  posted.get_future().wait_until(until);
  // The last answers go out before the connections close.
  while (s.writing > 0 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  s.ioc.stop();
  s.thread.join();
}

}  // namespace dsi::serve
