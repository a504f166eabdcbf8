#!/usr/bin/env bash
# The GPU bundle (launch/gpu_bundle.sh) is self-contained. It is laid out from BUILD_DIR into a
# root that holds nothing else but glibc and bash (no Open MPI, yaml-cpp, fmt, zlib, hwloc,
# libstdc++, ... of this machine), and there, under chroot in a private mount namespace:
#   - every program and library of the bundle resolves to the bundle or to that short list
#     (the root's dynamic loader lists them);
#   - dsi runs: --version, a synthetic DSI run over the bundle's mpirun, a tiny random llama
#     model on CPU (non-SI, SI and DSI, checked lossless by `dsi bench`), and the unit tests.
# usage: bundle_test.sh SOURCE_DIR BUILD_DIR. Exit 77 (skipped) where no mount namespace can be
# made (neither root nor unprivileged user namespaces).
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)

if [ "$(id -u)" -eq 0 ]; then
  ns=(unshare --mount --propagation private)
elif unshare --user --map-root-user --mount true 2>/dev/null; then
  ns=(unshare --user --map-root-user --mount --propagation private)
else
  echo "bundle_test: SKIPPED: cannot make a mount namespace (not root, no user namespaces)"
  exit 77
fi

work=$(mktemp -d /tmp/dsi-bundle-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
DSI_BUNDLE_PREBUILT=1 DSI_BUNDLE_BUILD=$build "$src/launch/gpu_bundle.sh" "$root/bundle"

# The root: glibc, bash (the bundle's mpirun is a bash script) and the files glibc reads.
system_dir=/lib/x86_64-linux-gnu
mkdir -p "$root"/{lib64,bin,etc,proc,sys,dev,tmp} "$root$system_dir"
cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
for l in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libutil.so.1 libresolv.so.2 \
         $(ldd /bin/bash | awk '/=>/ {print $1}'); do
  cp -L "$system_dir/$l" "$root$system_dir/"
done
cp /bin/bash "$root/bin/"
cp /etc/passwd /etc/group /etc/hosts "$root/etc/"
# The source tree and the outside test data at the paths compiled into the unit tests.
testdata=$(readlink -f "$src/../shared/testdata" 2>/dev/null || true)
mkdir -p "$root$src"
[ -d "$testdata" ] && mkdir -p "$root$testdata"

cat >"$work/inside.sh" <<'EOF'
set -euo pipefail
root=$1 src=$2 testdata=$3
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount --bind "$src" "$root$src"
[ -z "$testdata" ] || mount --bind "$testdata" "$root$testdata"
chroot=$(command -v chroot)
run() { env -i PATH=/bin HOME=/tmp TMPDIR=/tmp DSI_TESTDATA_DIR="$testdata" "$chroot" "$root" "$@"; }
fail() { echo "bundle_test: FAIL: $*"; exit 1; }

echo "== libraries, as the root's loader resolves them"
allowed='^(/bundle/|/lib/x86_64-linux-gnu/(libc|libm|libdl|libpthread|librt|libutil|libresolv)\.so)'
checked=0
for f in "$root"/bundle/{bin,lib,mpi/bin}/* "$root"/bundle/mpi/lib/*/*.so; do
  head -c 4 "$f" | grep -q ELF || continue
  out=$(run /lib64/ld-linux-x86-64.so.2 --list "${f#"$root"}") || fail "${f#"$root"} does not load: $out"
  bad=$(echo "$out" | awk '/=>/ {print $1, $3}' | while read -r name path; do
          [[ $path =~ $allowed ]] || echo "$name => $path"; done)
  [ -z "$bad" ] || fail "${f#"$root"} resolves outside the bundle and glibc: $bad"
  checked=$((checked + 1))
done
echo "$checked objects resolve to the bundle and glibc only"

echo "== dsi --version"
run /bundle/bin/dsi --version

echo "== synthetic DSI over the bundle's mpirun (4 ranks)"
run /bin/bash /bundle/bin/mpirun -np 4 /bundle/bin/dsi run --config /bundle/configs/synthetic.yaml \
  --set synthetic.t_ms=2 --max-new-tokens 40 >"$root/tmp/run.txt" 2>&1 ||
  { cat "$root/tmp/run.txt"; fail "dsi run (synthetic) failed"; }
tail -n 3 "$root/tmp/run.txt"

echo "== a tiny llama model on CPU: non-SI, SI and DSI, lossless"
run /bundle/bin/dsi make-model --shape tiny --type q8_0 -o /tmp/tiny.gguf
run /bin/bash /bundle/bin/mpirun -np 4 /bundle/bin/dsi bench --config /bundle/configs/default.yaml \
  --set model.path=/tmp/tiny.gguf --set model.drafter_layers=0,3 --set generation.chat=false \
  --sp 1,2 --tokens 16 --json-file /tmp/bench.json >"$root/tmp/bench.txt" 2>&1 ||
  { cat "$root/tmp/bench.txt"; fail "dsi bench (tiny llama) failed"; }
grep -E "^ *[0-9.]+ .*(nonsi|si|dsi)" "$root/tmp/bench.txt"
rows=$(grep -Eo '"check": *"yes"' "$root/tmp/bench.json" | wc -l)
[ "$rows" -eq 4 ] || fail "expected 4 lossless rows (nonsi, si, dsi SP 1 and 2), got $rows"

echo "== unit tests"
run /bundle/bin/dsi_unit_tests --gtest_brief=1 >"$root/tmp/unit.txt" 2>&1 ||
  { tail -n 40 "$root/tmp/unit.txt"; fail "unit tests failed in the bundle's root"; }
tail -n 4 "$root/tmp/unit.txt"
echo "bundle_test: ok"
EOF
"${ns[@]}" bash "$work/inside.sh" "$root" "$src" "${testdata:-}"

# The check script from the bundle, on this machine: it runs to the end within a minute, and
# without a GPU every GPU part says "skipped" with "no device" (none is run or failed).
timeout 60 "$root/bundle/launch/gpu_checks.sh" "$work/checks" >"$work/checks.txt" 2>&1 ||
  { cat "$work/checks.txt"; echo "bundle_test: FAIL: gpu_checks.sh failed or took over 60 s"; exit 1; }
python3 - "$work/checks/report.json" <<'PY'
import json, shutil, subprocess, sys
r = json.load(open(sys.argv[1]))
steps = {s["name"]: s for s in r["steps"]}
gpu_parts = ["gpu_tests", "memcheck", "racecheck", "nccl", "decode_llama1b", "dsi_bench"]
missing = [p for p in gpu_parts + ["data_plane"] if p not in steps]
assert not missing, f"report.json lacks parts {missing}"
if r["gpus"] == 0:
    for p in gpu_parts:
        assert steps[p]["status"] == "skipped" and steps[p]["note"] == "no device", steps[p]
assert steps["data_plane"]["status"] == "passed", steps["data_plane"]
print(f"gpu_checks.sh: {len(steps)} parts in {r['seconds']} s, GPUs {r['gpus']}")
PY
echo "bundle_test: check script ok"
