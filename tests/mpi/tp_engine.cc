// MPI test (np 4): the llama engine sharded over MPI rank groups (transport/mpi_collective.h),
// TP 4 over all ranks and TP 2 over two pairs: every shard's logits (prefill, decode steps, a
// verification block) lie within float tolerance of the whole model, which each rank also
// computes alone, and the shards of a group agree bit for bit.
#include <fmt/format.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engines/llama/llama_engine.h"
#include "tests/llama_test_model.h"
#include "transport/mpi_collective.h"

namespace {

std::vector<float> script(dsi::Engine& e) {
  dsi::CancelFlag never;
  std::vector<float> out;
  const std::vector<dsi::Token> prompt = {3, 14, 15, 9, 26, 53, 58, 9, 7, 32};
  dsi::Logits l = e.forward(prompt, static_cast<int>(prompt.size()), never);
  out.insert(out.end(), l.data.begin(), l.data.end());
  dsi::Token next = l.argmax().back();
  for (int i = 0; i < 5; ++i) {
    l = e.forward(std::span(&next, 1), 1, never);
    out.insert(out.end(), l.data.begin(), l.data.end());
    next = l.argmax()[0];
  }
  const std::vector<dsi::Token> block = {next, 5, 11};
  l = e.forward(block, 3, never);
  out.insert(out.end(), l.data.begin(), l.data.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank, size, failed = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      fmt::print("FAIL rank {}: {}\n", rank, what);
      ++failed;
    }
  };
  // The same random model on every rank (a seed), 8 heads over 4 KV heads.
  auto m = std::make_shared<dsi::LlamaModel>();
  dsi::LlamaConfig& c = m->config;
  c.n_vocab = 89;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 8;
  c.rope_dim = 8;
  c.ffn_dim = 128;
  c.qkv_bias = true;
  c.max_context = 32;
  dsi::fill_random_llama(*m, 11);
  dsi::LlamaEngine whole(m, dsi::LlamaEngineOptions{});
  const std::vector<float> ref = script(whole);

  for (int tp : {size, 2}) {
    if (size % tp != 0) continue;
    MPI_Comm group;
    MPI_Comm_split(MPI_COMM_WORLD, rank / tp, rank, &group);
    auto coll = dsi::make_mpi_collective(group, 30);
    dsi::LlamaEngineOptions o;
    o.tp = coll.get();
    dsi::LlamaEngine shard(m, o);
    std::vector<float> got = script(shard);
    double scale = 1e-6, diff = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      scale = std::max(scale, static_cast<double>(std::fabs(ref[i])));
      diff = std::max(diff, static_cast<double>(std::fabs(ref[i] - got[i])));
    }
    check(got.size() == ref.size() && diff / scale < 1e-4,
          fmt::format("TP {}: relative difference {} from the whole model", tp, diff / scale));
    // The group's shards agree bit for bit: compare with the group's rank 0.
    std::vector<float> first = got;
    MPI_Bcast(first.data(), static_cast<int>(first.size()), MPI_FLOAT, 0, group);
    check(std::memcmp(first.data(), got.data(), got.size() * sizeof(float)) == 0,
          fmt::format("TP {}: this shard's logits differ from its group's rank 0", tp));
    if (rank == 0)
      fmt::print("TP {}: relative difference {:.2e} from the whole model\n", tp, diff / scale);
    MPI_Comm_free(&group);
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) fmt::print("{}\n", failed == 0 ? "ok" : "FAIL");
  MPI_Finalize();
  return failed == 0 ? 0 : 1;
}
