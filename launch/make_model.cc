// `dsi make-model`: a random-weight llama GGUF of a named or explicit shape. A plain process:
// no MPI_Init.
#include <fmt/format.h>

#include <chrono>
#include <exception>

#include "launch/commands.h"
#include "model/random_model.h"

namespace dsi::cli {

int cmd_make_model(const MakeModelOptions& o) {
  try {
    RandomModelSpec s = o.shape.empty() ? RandomModelSpec{} : random_model_shape(o.shape);
    if (o.shape.empty()) s.name = "random";
    auto set = [](int v, int& field) {
      if (v >= 0) field = v;
    };
    set(o.dim, s.dim);
    set(o.layers, s.n_layers);
    set(o.heads, s.n_heads);
    set(o.kv_heads, s.n_kv_heads);
    if (o.heads >= 0 && o.kv_heads < 0) s.n_kv_heads = o.heads;
    set(o.ffn, s.ffn_dim);
    set(o.vocab, s.n_vocab);
    set(o.context, s.context);
    const std::pair<const char*, GgmlType> kTypes[] = {
        {"f32", GgmlType::F32},   {"f16", GgmlType::F16},   {"bf16", GgmlType::BF16},
        {"q8_0", GgmlType::Q8_0}, {"q4_0", GgmlType::Q4_0}, {"q4_1", GgmlType::Q4_1}};
    for (const auto& [n, t] : kTypes) {
      if (o.type == n) s.type = t;
    }
    if (o.untied) s.tied_head = false;
    s.seed = static_cast<uint64_t>(o.seed);
    const auto t0 = std::chrono::steady_clock::now();
    const GgufWriter w = random_model_writer(s);
    w.write(o.out_path);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("wrote {}: llama dim {} layers {} heads {}/{} ffn {} vocab {} {} ({:.1f} M params, "
               "{} tensors, seed {}) in {:.1f} s\n",
               o.out_path, s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.ffn_dim, s.n_vocab,
               ggml_type_name(s.type), random_model_params(s) / 1e6, w.n_tensors(), s.seed, secs);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "dsi make-model: {}\n", e.what());
    return 2;
  }
}

}  // namespace dsi::cli
