// CudaEngine (engines/llama/cuda_engine.h): the pre-norm llama block of LlamaEngine, enqueued
// on one CUDA stream per engine. Every public method first makes the engine's device current
// (several engines and ranks may share a GPU, and the calling thread may have used another).
//
// Device memory: weight matrices in the chosen dtype, (out, in) row-major as on the host
// (one allocation each; a tied head reuses the embedding table); norms and biases FP32; the
// KV cache FP32 as two arrays (n_kept_layers, max_ctx, kv_dim), so that the rows of a token
// range are contiguous per layer; activation scratch grown on demand.
//
// Errors: every CUDA and cuBLAS call is checked (kernels/cuda_check.h), and every kernel
// launcher in kernels/cuda checks its own launch, so a failure names the GPU, the call and
// the line where it happened.
#include "engines/llama/cuda_engine.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "engines/llama/llama_engine.h"
#include "kernels/argmax_cuda.h"
#include "kernels/attention_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/dequant_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/rmsnorm_cuda.h"
#include "kernels/rope_cuda.h"
#include "kernels/swiglu_cuda.h"
#include "transport/data_channel.h"

namespace dsi {
namespace {

using kernels::GemmType;

GemmType gemm_type(CudaDtype t) {
  switch (t) {
    case CudaDtype::kF32:
      return GemmType::kF32;
    case CudaDtype::kF16:
      return GemmType::kF16;
    case CudaDtype::kBF16:
      return GemmType::kBF16;
  }
  throw std::invalid_argument("unknown CudaDtype");
}

GgmlType table_type(CudaDtype t) {
  switch (t) {
    case CudaDtype::kF32:
      return GgmlType::F32;
    case CudaDtype::kF16:
      return GgmlType::F16;
    case CudaDtype::kBF16:
      return GgmlType::BF16;
  }
  throw std::invalid_argument("unknown CudaDtype");
}

size_t dtype_size(CudaDtype t) {
  return t == CudaDtype::kF32 ? 4 : 2;
}

// Owned cudaMalloc'd bytes (on the device current when allocated).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { reserve(bytes); }
  ~DeviceBuffer() { (void)cudaFree(p_); }  // best effort: a destructor cannot report
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  // At least `bytes` (contents are not kept). cudaFree of the old block waits for the work
  // that may still use it.
  void reserve(size_t bytes) {
    if (bytes <= bytes_ && p_ != nullptr) return;
    void* old = std::exchange(p_, nullptr);
    CUDA_CHECK(cudaFree(old));
    bytes_ = 0;
    CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(bytes, 1)));
    bytes_ = bytes;
  }
  // The same, stream-ordered (cudaMallocAsync): the old block is freed after the work already
  // on `st`, without the device-wide synchronisation of cudaFree, which would also wait for
  // transfers on other streams that wait for a peer.
  void reserve_on(size_t bytes, cudaStream_t st) {
    if (bytes <= bytes_ && p_ != nullptr) return;
    void* old = std::exchange(p_, nullptr);
    if (old != nullptr) CUDA_CHECK(cudaFreeAsync(old, st));
    bytes_ = 0;
    CUDA_CHECK(cudaMallocAsync(&p_, std::max<size_t>(bytes, 1), st));
    bytes_ = bytes;
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host bytes, for the copies at the ends of a forward.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { (void)cudaFreeHost(p_); }  // best effort: a destructor cannot report
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void reserve(size_t bytes) {
    if (bytes <= bytes_ && p_ != nullptr) return;
    void* old = std::exchange(p_, nullptr);
    CUDA_CHECK(cudaFreeHost(old));
    bytes_ = 0;
    CUDA_CHECK(cudaMallocHost(&p_, std::max<size_t>(bytes, 1)));
    bytes_ = bytes;
  }
  template <typename T>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s); }  // best effort: a destructor cannot report
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { (void)cudaEventDestroy(e); }  // best effort: a destructor cannot report
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

struct LayerBuffers {
  DeviceBuffer attn_norm, wq, wk, wv, bq, bk, bv, wo, ffn_norm, w_gate, w_up, w_down;
};

const float* or_null(const DeviceBuffer& b) {
  return b.bytes() == 0 ? nullptr : b.get<float>();
}

// Polls `st` until the work queued on it has run (true), or until `deadline` passes or `cancel`
// is raised (false), where cudaStreamSynchronize would wait without end. The work gets at least
// 50 ms, so that copies queued just now are not refused for a deadline that passed while the
// caller waited for something else.
bool wait_stream(cudaStream_t st, std::chrono::steady_clock::time_point deadline,
                 const CancelFlag* cancel) {
  deadline = std::max(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(50));
  auto pause = std::chrono::microseconds(10);
  for (;;) {
    if (stream_done(st)) return true;
    if ((cancel != nullptr && cancel->cancelled()) ||
        std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(200));
  }
}

// keep_path's row moves, grid (kept layers, K and V): the pairs in order, each finished before
// the next (a move's destination may be an earlier move's source row, never a later one's).
__global__ void move_rows_kernel(float* k_cache, float* v_cache, const int2* moves, int n_moves,
                                 size_t layer_stride, int kv_dim) {
  float* c = (blockIdx.y == 0 ? k_cache : v_cache) + blockIdx.x * layer_stride;
  for (int m = 0; m < n_moves; ++m) {
    const float* src = c + static_cast<size_t>(moves[m].x) * kv_dim;
    float* dst = c + static_cast<size_t>(moves[m].y) * kv_dim;
    for (int d = threadIdx.x; d < kv_dim; d += blockDim.x) dst[d] = src[d];
    __syncthreads();
  }
}

}  // namespace

struct CudaEngine::State {
  // Declared first, destroyed last: every buffer below is freed while the stream still exists.
  Stream stream;
  Event layer_done[2];  // ring: layer `slot` records layer_done[slot % 2]
  kernels::CublasHandle blas{/*allow_tf32=*/false};

  DeviceBuffer token_embd, output_norm, output;  // output empty when the head is tied
  std::vector<LayerBuffers> layers;              // per kept layer, in run order
  DeviceBuffer k_cache, v_cache;

  int scratch_n = 0;
  DeviceBuffer x, xb, q, att, gate, up, xh, ids;  // xh: GEMM input in the weight dtype
  int logits_n = 0;                               // rows `logits` and `argmax` hold
  int h_logits_n = 0;                             // rows `h_logits` holds
  DeviceBuffer logits, argmax;
  PinnedBuffer h_ids, h_logits, h_argmax;
  DeviceBuffer send_buf, recv_buf;  // KV handoff staging, in the blob layout
  DeviceBuffer mask, moves;         // tree forwards: the attention mask; keep_path's row moves
  PinnedBuffer h_mask, h_moves;

  cudaStream_t s() const { return stream.s; }
};

std::unique_ptr<Engine> make_cuda_engine(const CudaEngineOptions& options) {
  if (options.model) return std::make_unique<CudaEngine>(*options.model, options);
  const auto model = load_llama_model(options.model_path, options.layers);
  return std::make_unique<CudaEngine>(*model, options);
}

CudaEngine::CudaEngine(const LlamaModel& model, const CudaEngineOptions& o)
    : config_(model.config),
      layers_(llama_kept_layers(model, o.layers)),
      max_ctx_(o.max_context > 0 ? o.max_context : model.config.max_context),
      dtype_(o.dtype),
      cublas_gemm_(o.cublas_gemm),
      device_(o.device),
      after_layer_(o.after_layer) {
  if (max_ctx_ <= 0) throw std::invalid_argument("cuda engine: max context must be positive");
  CUDA_CHECK(cudaSetDevice(device_));
  // Attention holds a row of scores in shared memory: the context is what the device allows.
  // A context asked for explicitly beyond it is an error; the model's own is cut to it.
  if (const int max_kv = kernels::attention_max_kv(device_); max_ctx_ > max_kv) {
    if (o.max_context > 0) {
      throw std::invalid_argument("cuda engine: a context of " + std::to_string(max_ctx_) +
                                  " tokens; attention on this device holds at most " +
                                  std::to_string(max_kv));
    }
    max_ctx_ = max_kv;
  }
  s_ = std::make_unique<State>();
  State& s = *s_;
  const LlamaConfig& c = config_;
  const LlamaWeights& w = model.weights;
  const GemmType gt = gemm_type(dtype_);

  // Matrices go up in their file types through one staging buffer and are dequantized on the
  // device (kernels/dequant_cuda.h, the CPU reference's twin), then rounded to the GEMM dtype;
  // all copies and conversions are ordered on the stream, which is synchronised once at the end.
  DeviceBuffer raw, staging;
  size_t largest = 0, largest_bytes = 0;
  auto consider = [&](const kernels::WeightMatrix& m) {
    largest = std::max(largest, static_cast<size_t>(m.rows * m.cols));
    largest_bytes = std::max(largest_bytes, m.bytes());
  };
  consider(w.token_embd);
  if (!w.output.empty()) consider(w.output);
  for (int l : layers_) {
    const LlamaLayerWeights& L = w.layers[l];
    for (const auto* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) consider(*m);
  }
  raw.reserve(largest_bytes);
  if (gt != GemmType::kF32) staging.reserve(largest * sizeof(float));
  auto matrix = [&](const kernels::WeightMatrix& h) {
    const auto n = static_cast<int64_t>(h.rows * h.cols);
    DeviceBuffer d(static_cast<size_t>(n) * dtype_size(dtype_));
    CUDA_CHECK(cudaMemcpyAsync(raw.get(), h.data, h.bytes(), cudaMemcpyHostToDevice, s.s()));
    if (gt == GemmType::kF32) {
      kernels::dequantize_cuda(h.type, raw.get(), d.get<float>(), n, s.s());
    } else {
      kernels::dequantize_cuda(h.type, raw.get(), staging.get<float>(), n, s.s());
      kernels::convert_f32_cuda(d.get(), gt, staging.get<float>(), n, s.s());
    }
    return d;
  };
  auto vec = [&](const std::vector<float>& h) {
    DeviceBuffer d;
    if (h.empty()) return d;
    d.reserve(h.size() * sizeof(float));
    CUDA_CHECK(cudaMemcpyAsync(d.get(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice,
                               s.s()));
    return d;
  };
  s.token_embd = matrix(w.token_embd);
  s.output_norm = vec(w.output_norm);
  if (!w.output.empty()) s.output = matrix(w.output);
  s.layers.reserve(layers_.size());
  for (int l : layers_) {
    const LlamaLayerWeights& L = w.layers[l];
    LayerBuffers b;
    b.attn_norm = vec(L.attn_norm);
    b.wq = matrix(L.wq);
    b.wk = matrix(L.wk);
    b.wv = matrix(L.wv);
    b.bq = vec(L.bq);
    b.bk = vec(L.bk);
    b.bv = vec(L.bv);
    b.wo = matrix(L.wo);
    b.ffn_norm = vec(L.ffn_norm);
    b.w_gate = matrix(L.w_gate);
    b.w_up = matrix(L.w_up);
    b.w_down = matrix(L.w_down);
    s.layers.push_back(std::move(b));
  }
  const size_t cache = layers_.size() * static_cast<size_t>(max_ctx_) * c.kv_dim() * sizeof(float);
  s.k_cache.reserve(cache);
  s.v_cache.reserve(cache);
  CUDA_CHECK(cudaStreamSynchronize(s.s()));
}

CudaEngine::~CudaEngine() {
  // The buffers belong to device_; free them with it current and nothing left in flight
  // (best effort: a destructor cannot report, and a failed device fails the next call).
  (void)cudaSetDevice(device_);
  (void)cudaStreamSynchronize(s_->s());
}

size_t CudaEngine::kv_bytes_per_token() const {
  return 2 * layers_.size() * config_.kv_dim() * sizeof(float);
}

std::string CudaEngine::device_name() const {
  char bus[64] = {};
  CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, device_));
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string("cuda:") + bus + "@" + host;
}

Logits CudaEngine::forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) {
  check_llama_forward(tokens, n_logits, kv_len_, max_ctx_, config_.n_vocab);
  tree_ = {};
  if (tokens.empty()) return Logits{n_logits, config_.n_vocab, {}};
  CUDA_CHECK(cudaSetDevice(device_));
  enqueue_forward_or_drain(tokens, n_logits, cancel);
  Logits out = fetch_logits(n_logits);
  kv_len_ += static_cast<int>(tokens.size());
  return out;
}

Logits CudaEngine::fetch_logits(int n_logits) {
  State& s = *s_;
  Logits out{n_logits, config_.n_vocab, {}};
  const size_t count = static_cast<size_t>(n_logits) * config_.n_vocab;
  if (n_logits > 0) {
    if (n_logits > s.h_logits_n) {
      s.h_logits.reserve(count * sizeof(float));
      s.h_logits_n = n_logits;
    }
    CUDA_CHECK(cudaMemcpyAsync(s.h_logits.get<float>(), s.logits.get(), count * sizeof(float),
                               cudaMemcpyDeviceToHost, s.s()));
  }
  CUDA_CHECK(cudaStreamSynchronize(s.s()));
  if (n_logits > 0) out.data.assign(s.h_logits.get<float>(), s.h_logits.get<float>() + count);
  return out;
}

Logits CudaEngine::forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) {
  check_tree_forward(tree_, tree, from);
  check_llama_forward(tree.tokens, 0, kv_len_, max_ctx_, config_.n_vocab);
  tree_ = {};
  const int n = tree.size() - from;
  if (n == 0) {
    tree_ = tree;
    return Logits{0, config_.n_vocab, {}};
  }
  std::vector<int> depth;
  tree_attention_mask(tree, from, kv_len_, mask_, depth);
  CUDA_CHECK(cudaSetDevice(device_));
  const TreeRows rows{depth, kv_len_ + from, &mask_};
  enqueue_forward_or_drain(std::span(tree.tokens).subspan(from), n, cancel, &rows);
  Logits out = fetch_logits(n);
  tree_ = tree;
  return out;
}

std::vector<Token> CudaEngine::forward_argmax(std::span<const Token> tokens, int n_logits,
                                              const CancelFlag& cancel) {
  check_llama_forward(tokens, n_logits, kv_len_, max_ctx_, config_.n_vocab);
  tree_ = {};
  std::vector<Token> out(n_logits);
  if (tokens.empty()) return out;
  CUDA_CHECK(cudaSetDevice(device_));
  enqueue_forward_or_drain(tokens, n_logits, cancel);
  State& s = *s_;
  if (n_logits > 0) {
    kernels::argmax_cuda(s.argmax.get<int32_t>(), s.logits.get<float>(), n_logits, config_.n_vocab,
                         s.s());
    CUDA_CHECK(cudaMemcpyAsync(s.h_argmax.get<int32_t>(), s.argmax.get(),
                               static_cast<size_t>(n_logits) * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, s.s()));
  }
  CUDA_CHECK(cudaStreamSynchronize(s.s()));
  std::copy_n(s.h_argmax.get<int32_t>(), n_logits, out.begin());
  kv_len_ += static_cast<int>(tokens.size());
  return out;
}

void CudaEngine::enqueue_forward_or_drain(std::span<const Token> tokens, int n_logits,
                                          const CancelFlag& cancel, const TreeRows* tree) {
  try {
    enqueue_forward(tokens, n_logits, cancel, tree);
  } catch (...) {
    // What was enqueued before the error still runs and reads the pinned inputs: let it
    // finish before the next forward rewrites them.
    (void)cudaStreamSynchronize(s_->s());
    throw;
  }
}

void CudaEngine::enqueue_forward(std::span<const Token> tokens, int n_logits,
                                 const CancelFlag& cancel, const TreeRows* tree) {
  const LlamaConfig& c = config_;
  const int n = static_cast<int>(tokens.size());
  State& s = *s_;
  const cudaStream_t st = s.s();
  const GemmType gt = gemm_type(dtype_);
  const size_t un = n;
  if (n > s.scratch_n) {
    s.x.reserve(un * c.dim * sizeof(float));
    s.xb.reserve(un * c.dim * sizeof(float));
    s.q.reserve(un * c.q_dim() * sizeof(float));
    s.att.reserve(un * c.q_dim() * sizeof(float));
    s.gate.reserve(un * c.ffn_dim * sizeof(float));
    s.up.reserve(un * c.ffn_dim * sizeof(float));
    if (gt != GemmType::kF32) {
      s.xh.reserve(un * std::max({c.dim, c.q_dim(), c.ffn_dim}) * dtype_size(dtype_));
    }
    s.ids.reserve(2 * un * sizeof(int32_t));
    s.h_ids.reserve(2 * un * sizeof(int32_t));
    s.scratch_n = n;
  }
  if (n_logits > s.logits_n) {
    s.logits.reserve(static_cast<size_t>(n_logits) * c.n_vocab * sizeof(float));
    s.argmax.reserve(static_cast<size_t>(n_logits) * sizeof(int32_t));
    s.h_argmax.reserve(static_cast<size_t>(n_logits) * sizeof(int32_t));
    s.logits_n = n_logits;
  }
  // GEMM inputs: FP32 activations as they are, or rounded to the weight dtype.
  auto gemm_in = [&](const float* a, size_t count) -> const void* {
    if (gt == GemmType::kF32) return a;
    kernels::convert_f32_cuda(s.xh.get(), gt, a, static_cast<int64_t>(count), st);
    return s.xh.get();
  };
  // Every product of the forward: batch-invariant unless cuBLAS was asked for (options).
  auto dense = [&](float* y, const void* x, const void* w, const float* bias, int rows, int in,
                   int out_dim) {
    if (cublas_gemm_) {
      kernels::gemm_cuda(s.blas, y, x, w, bias, gt, rows, in, out_dim, st);
    } else {
      kernels::gemm_invariant_cuda(y, x, w, bias, gt, rows, in, out_dim, st);
    }
  };
  auto gemm = [&](float* y, const void* x, const DeviceBuffer& w, const float* bias, int in,
                  int out_dim) { dense(y, x, w.get(), bias, n, in, out_dim); };
  const float one = 1.0f;
  auto add_into_x = [&](const float* y) {  // x += y, exact in FP32 as the CPU's loop
    CUBLAS_CHECK(cublas().set_stream(s.blas.get(), st));
    // In pieces that an int counts (n * dim can pass 2^31 for long prefills of wide models).
    const int64_t total = static_cast<int64_t>(n) * c.dim;
    constexpr int64_t kPiece = int64_t{1} << 30;
    for (int64_t at = 0; at < total; at += kPiece) {
      const int len = static_cast<int>(std::min(kPiece, total - at));
      CUBLAS_CHECK(cublas().saxpy(s.blas.get(), len, &one, y + at, 1, s.x.get<float>() + at, 1));
    }
  };
  // A cancelled forward waits for what it enqueued (the scratch and cache rows are then free)
  // and leaves kv_len_ as it was.
  auto stop_if_cancelled = [&] {
    if (!cancel.cancelled()) return;
    CUDA_CHECK(cudaStreamSynchronize(st));
    throw Cancelled();
  };

  // One upload: token ids then positions (and a tree's mask). The pinned buffers are free
  // (every forward ends with a stream synchronisation).
  const int start = tree ? tree->row0 : kv_len_;
  int32_t* hid = s.h_ids.get<int32_t>();
  for (int i = 0; i < n; ++i) {
    hid[i] = tokens[i];
    hid[n + i] = tree ? kv_len_ + tree->depth[i] : start + i;
  }
  const int32_t* d_tokens = s.ids.get<int32_t>();
  const int32_t* d_pos = d_tokens + n;
  CUDA_CHECK(
      cudaMemcpyAsync(s.ids.get(), hid, 2 * un * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  const uint8_t* d_mask = nullptr;
  if (tree) {
    const size_t bytes = tree->mask->size();
    s.h_mask.reserve(bytes);
    s.mask.reserve(bytes);
    std::memcpy(s.h_mask.get<uint8_t>(), tree->mask->data(), bytes);
    CUDA_CHECK(
        cudaMemcpyAsync(s.mask.get(), s.h_mask.get<uint8_t>(), bytes, cudaMemcpyHostToDevice, st));
    d_mask = s.mask.get<uint8_t>();
  }
  float* x = s.x.get<float>();
  float* xb = s.xb.get<float>();
  float* q = s.q.get<float>();
  float* att = s.att.get<float>();
  float* gate = s.gate.get<float>();
  float* up = s.up.get<float>();
  kernels::embedding_cuda(x, table_type(dtype_), s.token_embd.get(), d_tokens, n, c.dim, st);

  // K and V of the new tokens go straight into the cache rows [start, start + n); kv_len_
  // moves only after the last layer, so the rows of a cancelled forward are never read.
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    // Keep the host at most one layer ahead: wait for layer slot-2, then look at the flag.
    if (slot >= 2) CUDA_CHECK(cudaEventSynchronize(s.layer_done[slot % 2].e));
    stop_if_cancelled();
    const LayerBuffers& L = s.layers[slot];
    const size_t cache_off = (slot * static_cast<size_t>(max_ctx_)) * c.kv_dim();
    float* k0 = s.k_cache.get<float>() + cache_off;
    float* v0 = s.v_cache.get<float>() + cache_off;
    float* kc = k0 + static_cast<size_t>(start) * c.kv_dim();
    float* vc = v0 + static_cast<size_t>(start) * c.kv_dim();

    kernels::rmsnorm_cuda(xb, x, L.attn_norm.get<float>(), n, c.dim, c.norm_eps, st);
    const void* in = gemm_in(xb, un * c.dim);
    gemm(q, in, L.wq, or_null(L.bq), c.dim, c.q_dim());
    gemm(kc, in, L.wk, or_null(L.bk), c.dim, c.kv_dim());
    gemm(vc, in, L.wv, or_null(L.bv), c.dim, c.kv_dim());
    kernels::rope_cuda(q, d_pos, n, c.n_heads, c.head_dim, c.rope_dim, c.rope_base, c.rope_layout,
                       st);
    kernels::rope_cuda(kc, d_pos, n, c.n_kv_heads, c.head_dim, c.rope_dim, c.rope_base,
                       c.rope_layout, st);
    kernels::attention_cuda(att, q, k0, v0, d_mask, n, start + n, start, c.n_heads, c.n_kv_heads,
                            c.head_dim, c.kv_dim(), 0, c.n_heads, st);
    gemm(xb, gemm_in(att, un * c.q_dim()), L.wo, nullptr, c.q_dim(), c.dim);
    add_into_x(xb);

    kernels::rmsnorm_cuda(xb, x, L.ffn_norm.get<float>(), n, c.dim, c.norm_eps, st);
    in = gemm_in(xb, un * c.dim);
    gemm(gate, in, L.w_gate, nullptr, c.dim, c.ffn_dim);
    gemm(up, in, L.w_up, nullptr, c.dim, c.ffn_dim);
    kernels::swiglu_cuda(gate, gate, up, static_cast<int64_t>(n) * c.ffn_dim, st);
    gemm(xb, gemm_in(gate, un * c.ffn_dim), L.w_down, nullptr, c.ffn_dim, c.dim);
    add_into_x(xb);
    CUDA_CHECK(cudaEventRecord(s.layer_done[slot % 2].e, st));
    if (after_layer_) after_layer_(static_cast<int>(slot));
  }
  stop_if_cancelled();

  if (n_logits > 0) {
    const float* last = x + static_cast<size_t>(n - n_logits) * c.dim;
    kernels::rmsnorm_cuda(xb, last, s.output_norm.get<float>(), n_logits, c.dim, c.norm_eps, st);
    const DeviceBuffer& head = s.output.bytes() == 0 ? s.token_embd : s.output;
    dense(s.logits.get<float>(), gemm_in(xb, size_t(n_logits) * c.dim), head.get(), nullptr,
          n_logits, c.dim, c.n_vocab);
  }
}

void CudaEngine::keep_path(const TokenTree& tree, std::span<const int> path,
                           const CancelFlag& cancel) {
  (void)cancel;  // one short kernel
  if (!check_keep_path(tree_, tree, path)) return;
  std::vector<int2> moves;  // (from, to) rows, in path order: row to <= from, see below
  for (size_t d = 0; d < path.size(); ++d) {
    if (path[d] != static_cast<int>(d)) {
      moves.push_back({kv_len_ + path[d], kv_len_ + static_cast<int>(d)});
    }
  }
  if (!moves.empty()) {
    CUDA_CHECK(cudaSetDevice(device_));
    State& s = *s_;
    const size_t bytes = moves.size() * sizeof(int2);
    s.h_moves.reserve(bytes);
    s.moves.reserve(bytes);
    std::memcpy(s.h_moves.get<int2>(), moves.data(), bytes);
    CUDA_CHECK(cudaMemcpyAsync(s.moves.get(), s.h_moves.get<int2>(), bytes, cudaMemcpyHostToDevice,
                               s.s()));
    const dim3 grid(static_cast<unsigned>(layers_.size()), 2);
    move_rows_kernel<<<grid, 256, 0, s.s()>>>(s.k_cache.get<float>(), s.v_cache.get<float>(),
                                              s.moves.get<int2>(), static_cast<int>(moves.size()),
                                              static_cast<size_t>(max_ctx_) * config_.kv_dim(),
                                              config_.kv_dim());
    CUDA_CHECK_LAUNCH("move_rows_kernel");
    CUDA_CHECK(cudaStreamSynchronize(s.s()));
  }
  kv_len_ += static_cast<int>(path.size());
  tree_ = {};
}

void CudaEngine::truncate(int n) {
  if (n < 0 || n > kv_len_) throw std::out_of_range("truncate beyond the KV cache");
  kv_len_ = n;
  tree_ = {};
}

KvBlob CudaEngine::export_kv(int begin, int end) const {
  if (begin < 0 || end > kv_len_ || begin > end) throw std::out_of_range("KV range");
  CUDA_CHECK(cudaSetDevice(device_));
  const size_t row = static_cast<size_t>(config_.kv_dim()) * sizeof(float);
  const size_t span = (end - begin) * row;
  KvBlob kv{begin, end, std::vector<uint8_t>(2 * layers_.size() * span)};
  if (span == 0) return kv;
  const cudaStream_t st = s_->s();
  uint8_t* dst = kv.bytes.data();
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + begin) * row;
    CUDA_CHECK(
        cudaMemcpyAsync(dst, s_->k_cache.get<uint8_t>() + off, span, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaMemcpyAsync(dst + span, s_->v_cache.get<uint8_t>() + off, span,
                               cudaMemcpyDeviceToHost, st));
    dst += 2 * span;
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
  return kv;
}

void CudaEngine::check_kv_import(int begin, int end, size_t bytes) const {
  if (begin != kv_len_) throw std::invalid_argument("KV import must start at kv_len()");
  if (end < begin || end > max_ctx_) throw std::out_of_range("KV import range");
  const size_t want = 2 * layers_.size() * (end - begin) * config_.kv_dim() * sizeof(float);
  if (bytes != want) {
    throw std::invalid_argument("KV blob has " + std::to_string(bytes) + " bytes, expected " +
                                std::to_string(want) + " (different model or kept layers?)");
  }
}

void CudaEngine::import_kv(const KvBlob& kv) {
  check_kv_import(kv.begin, kv.end, kv.bytes.size());
  tree_ = {};
  CUDA_CHECK(cudaSetDevice(device_));
  const size_t row = static_cast<size_t>(config_.kv_dim()) * sizeof(float);
  const size_t span = (kv.end - kv.begin) * row;
  const cudaStream_t st = s_->s();
  const uint8_t* src = kv.bytes.data();
  for (size_t slot = 0; span > 0 && slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + kv.begin) * row;
    CUDA_CHECK(
        cudaMemcpyAsync(s_->k_cache.get<uint8_t>() + off, src, span, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(s_->v_cache.get<uint8_t>() + off, src + span, span,
                               cudaMemcpyHostToDevice, st));
    src += 2 * span;
  }
  CUDA_CHECK(cudaStreamSynchronize(st));  // the blob may go as soon as this returns
  kv_len_ = kv.end;
}

void CudaEngine::send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const {
  if (!ch.moves_device_memory()) {
    Engine::send_kv(ch, dst, key, begin, end);
    return;
  }
  if (begin < 0 || end > kv_len_ || begin > end) throw std::out_of_range("KV range");
  CUDA_CHECK(cudaSetDevice(device_));
  const size_t row = static_cast<size_t>(config_.kv_dim()) * sizeof(float);
  const size_t span = (end - begin) * row;
  const size_t bytes = 2 * layers_.size() * span;
  const cudaStream_t st = s_->s();
  DeviceBuffer& buf = s_->send_buf;
  // The channel's copy out of the old buffer is ordered before this stream's later work
  // (send_device makes the caller's stream wait for it), so a stream-ordered free is enough
  // (rare: the buffer only grows).
  buf.reserve_on(bytes, st);
  uint8_t* dst_p = buf.get<uint8_t>();
  for (size_t slot = 0; span > 0 && slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + begin) * row;
    CUDA_CHECK(cudaMemcpyAsync(dst_p, s_->k_cache.get<uint8_t>() + off, span,
                               cudaMemcpyDeviceToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(dst_p + span, s_->v_cache.get<uint8_t>() + off, span,
                               cudaMemcpyDeviceToDevice, st));
    dst_p += 2 * span;
  }
  ch.send_device(dst, key, buf.get(), bytes, st);
}

bool CudaEngine::recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
                         std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel) {
  if (!ch.moves_device_memory()) return Engine::recv_kv(ch, key, begin, end, deadline, cancel);
  const size_t row = static_cast<size_t>(config_.kv_dim()) * sizeof(float);
  const size_t span = end >= begin ? (end - begin) * row : 0;
  const size_t bytes = 2 * layers_.size() * span;
  check_kv_import(begin, end, bytes);
  CUDA_CHECK(cudaSetDevice(device_));
  const cudaStream_t st = s_->s();
  DeviceBuffer& buf = s_->recv_buf;
  buf.reserve_on(bytes, st);  // recv_device copies out on st: as in send_kv
  if (!ch.recv_device(key, buf.get(), bytes, st, deadline, cancel)) return false;
  const uint8_t* src = buf.get<uint8_t>();
  for (size_t slot = 0; span > 0 && slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + begin) * row;
    CUDA_CHECK(
        cudaMemcpyAsync(s_->k_cache.get<uint8_t>() + off, src, span, cudaMemcpyDeviceToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(s_->v_cache.get<uint8_t>() + off, src + span, span,
                               cudaMemcpyDeviceToDevice, st));
    src += 2 * span;
  }
  // The receive buffer is free for the next transfer once the copies ran; transfer errors
  // surface here rather than in a later forward. recv_device returns once the header is in,
  // so the payload may still be on its way, or never come (a sender that failed or died):
  // the wait keeps the caller's deadline and cancel flag. Past them, kv_len_ stays where it
  // was; the copies stay queued on the stream (they land if the payload comes, before any
  // later work on the stream, which rewrites rows from kv_len_ on anyway).
  if (!wait_stream(st, deadline, cancel)) return false;
  kv_len_ = end;
  tree_ = {};
  return true;
}

}  // namespace dsi
