// The llama engine on one CUDA GPU: dsi::Engine over a LlamaModel whose weights are uploaded
// once as FP32, FP16 or BF16 (cuBLAS, FP32 accumulation) with an FP32 KV cache in device
// memory. It computes the function of LlamaEngine (engines/llama/llama_engine.h), including the
// layer-skip drafter, and exchanges KV blobs of the same layout with it. Plain C++ (no CUDA
// types) so that the engine factory, built by the host compiler, can include it; the class
// itself is built only when CUDA is (engines/llama/cuda_engine.cu, library dsi_cuda).
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engines/engine.h"
#include "engines/llama/llama_model.h"

namespace dsi {

// Element type of the weight matrices on the device (norms and biases stay FP32). kF32 runs
// with plain FP32 GEMMs (no TF32) so that its greedy output can be compared with the CPU
// engine's token for token.
enum class CudaDtype { kF32, kF16, kBF16 };

// "f32" | "f16" | "bf16"; throws std::invalid_argument naming the value otherwise.
inline CudaDtype parse_cuda_dtype(const std::string& name) {
  if (name == "f32") return CudaDtype::kF32;
  if (name == "f16") return CudaDtype::kF16;
  if (name == "bf16") return CudaDtype::kBF16;
  throw std::invalid_argument("unknown dtype '" + name + "' (expected f32, f16 or bf16)");
}

struct CudaEngineOptions {
  std::shared_ptr<const LlamaModel> model;  // used when set (shared, e.g. by tests); else:
  std::string model_path;                   // GGUF file or Hugging Face folder, as LlamaEngine
  std::vector<int> layers;                  // kept layers (layer-skip drafter); empty = all
  int max_context = 0;                      // 0 = model's
  CudaDtype dtype = CudaDtype::kF16;
  int device = 0;  // CUDA device index (the factory picks it with bound_cuda_device)
  // GEMMs by cuBLAS instead of the batch-invariant kernel (kernels/gemm_cuda.h): faster
  // prefills, but a position's logits then depend on how many tokens share its forward, so
  // DSI and SI are no longer bit-identical to non-SI. For benchmarks (llama_bench --gemm).
  bool cublas_gemm = false;
  // Test hook: called on the forward's thread each time a layer's kernels are enqueued, with
  // its slot (0 .. kept layers - 1, in run order). Left empty outside tests.
  std::function<void(int slot)> after_layer;
};

// Builds the engine (loading options.model_path when options.model is empty, only the kept
// layers). Throws ModelError / std::invalid_argument as make_llama_engine, GpuError for a CUDA
// failure (no device, out of memory).
std::unique_ptr<Engine> make_cuda_engine(const CudaEngineOptions& options);

class CudaEngine final : public Engine {
 public:
  // The model must hold every kept layer; its host weights are only read here (the engine
  // keeps the config, not the model).
  CudaEngine(const LlamaModel& model, const CudaEngineOptions& options);
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // Same contract and exceptions as LlamaEngine::forward. Nothing crosses to the host inside
  // a forward but the final logits (forward_argmax: the final tokens); the cancel flag is read
  // between layers while the host keeps at most about one layer ahead of the GPU.
  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override;
  // The greedy tokens chosen on the device (kernels::argmax_cuda, bit-exact with the CPU's
  // argmax): only n_logits token ids cross to the host.
  std::vector<Token> forward_argmax(std::span<const Token> tokens, int n_logits,
                                    const CancelFlag& cancel) override;
  // One forward under a tree attention mask (uploaded with the token ids); the nodes' KV waits
  // in the cache rows after kv_len() until keep_path moves a path's rows into place on the
  // device (one kernel for every layer).
  Logits forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) override;
  void keep_path(const TokenTree& tree, std::span<const int> path,
                 const CancelFlag& cancel) override;
  void truncate(int n) override;
  int kv_len() const override { return kv_len_; }
  int vocab_size() const override { return config_.n_vocab; }

  // Blob layout as LlamaEngine's (native-endian float32; per kept layer the K rows of
  // [begin, end) then the V rows, kv_dim floats each), so blobs move between the CPU and the
  // GPU engine of the same model and layers.
  KvBlob export_kv(int begin, int end) const override;
  void import_kv(const KvBlob& kv) override;
  size_t kv_bytes_per_token() const override;
  // "cuda:PCI_BUS_ID@HOST".
  std::string device_name() const override;
  // Device-to-device when the channel moves device memory (the range is packed into a device
  // buffer in the blob layout on the engine's stream); through host memory otherwise.
  void send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const override;
  bool recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
               std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel) override;

  const LlamaConfig& config() const { return config_; }
  const std::vector<int>& layers() const { return layers_; }
  int max_context() const { return max_ctx_; }
  int device() const { return device_; }
  CudaDtype dtype() const { return dtype_; }

 private:
  struct State;  // device buffers, stream, events, cuBLAS handle (cuda_engine.cu)
  // A tree forward's rows: node i at cache row row0 + i and position kv_len_ + depth[i],
  // seeing the keys `mask` (n, row0 + n) marks.
  struct TreeRows {
    std::span<const int> depth;
    int row0 = 0;
    const std::vector<uint8_t>* mask = nullptr;
  };

  void check_kv_import(int begin, int end, size_t bytes) const;
  // Enqueues a checked forward on the engine's stream, up to the logits of the last n_logits
  // positions in device memory; the caller copies what it needs, synchronises and then moves
  // kv_len_. Throws Cancelled (after synchronising) when `cancel` is raised between layers.
  void enqueue_forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel,
                       const TreeRows* tree = nullptr);
  // enqueue_forward; on an error, waits for what it had enqueued before rethrowing.
  void enqueue_forward_or_drain(std::span<const Token> tokens, int n_logits,
                                const CancelFlag& cancel, const TreeRows* tree = nullptr);
  // Copies the last forward's n_logits rows of logits to the host (synchronises).
  Logits fetch_logits(int n_logits);

  LlamaConfig config_;
  std::vector<int> layers_;  // file layer numbers, in run order
  int max_ctx_;
  CudaDtype dtype_;
  bool cublas_gemm_;
  int device_;
  int kv_len_ = 0;
  TokenTree tree_;  // the nodes forward_tree ran, while their KV waits after kv_len_
  std::vector<uint8_t> mask_;
  std::function<void(int)> after_layer_;
  std::unique_ptr<State> s_;
};

}  // namespace dsi
