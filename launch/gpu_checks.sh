#!/usr/bin/env bash
# The whole GPU check in one call, from the bundle of launch/gpu_bundle.sh, on a machine with
# NVIDIA GPUs and nothing of dsi's build dependencies (docs/gpu.md):
#   gpu-bundle/launch/gpu_checks.sh OUT_DIR      (or launch/gpu_checks.sh OUT_DIR in the repo,
#                                                 which takes ./gpu-bundle)
# Writes OUT_DIR/report.md, OUT_DIR/report.json and OUT_DIR/logs.txt (every step's output), and
# nothing else, so that the three come back from a machine that returns few files. Parts:
#   machine    GPUs, memory, clocks, driver; the NCCL and cuBLAS this machine provides
#   gpu_tests  kernel parity and CUDA engine tests (passed/failed/skipped, NMSE table; CUDA
#              greedy output against the CPU engine is among them)
#   memcheck, racecheck   the kernel parity tests under compute-sanitizer, where it exists
#   nccl       the NCCL data channel (needs 2 GPUs; skipped with one)
#   decode     tokens/s of a random 1.1B FP16 llama (made on the spot) against the HBM bound,
#              with the batch-invariant GEMMs and with cuBLAS's, and of SmolLM2 / the Qwen pair when DSI_SMOLLM2_GGUF / DSI_QWEN_CODER_*_GGUF name
#              files that travelled
#   data_plane MPI host-buffer bandwidth between two ranks
#   dsi_bench  non-SI / SI / DSI per-token latency, greedy and sampled (T 0.8, Gumbel coupling),
#              every rank sharing GPU 0, each DSI/SI run checked token for token against non-SI
# Each part has its own time limit inside a total of DSI_CHECK_BUDGET_S (default 460 s); a part
# that fails or times out is reported and the next still runs. Without a GPU every GPU part
# reports "skipped (no device)" at once. Exit 0 when no part failed, else 1.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${DSI_BUNDLE:-}" ]; then
  bundle=$(cd "$DSI_BUNDLE" && pwd)
elif [ -x "$here/bin/dsi" ]; then
  bundle=$here
elif [ -x "$here/gpu-bundle/bin/dsi" ]; then
  bundle=$here/gpu-bundle
else
  echo "gpu_checks: no bundle beside $0; make one with launch/gpu_bundle.sh" >&2
  exit 2
fi
out=${1:-gpu-results}
mkdir -p "$out"
# The bundle's libraries need this glibc or newer (MANIFEST); an older one would fail every
# part with a loader message, so say it once, plainly.
need=$(sed -n 's/.*GLIBC_\([0-9.]*\) or newer.*/\1/p' "$bundle/MANIFEST" 2>/dev/null)
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -n "$need" ] && [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "gpu_checks: this machine's glibc is $have; the bundle needs $need or newer (build it on an older distribution)" | tee "$out/report.md" >&2
  exit 2
fi
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/dsi-gpu-checks.XXXXXX")
trap 'rm -rf "$work"' EXIT
budget=${DSI_CHECK_BUDGET_S:-460}
start=$(date +%s)
bin=$bundle/bin
results=$work/results.tsv   # name \t status \t seconds \t note
: >"$results"
: >"$out/logs.txt"

# step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left of the budget), its
# output in $work/NAME.log, and records passed / failed / timed out / skipped (exit 77).
step() {
  local name=$1 limit=$2 rc=0 t0 left
  shift 2
  left=$((budget - ($(date +%s) - start)))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 5 ]; then
    record "$name" "not run" 0 "out of time (budget ${budget}s)"
    return 1
  fi
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$work/$name.log" 2>&1 || rc=$?
  local secs=$(($(date +%s) - t0)) status=passed note=""
  case $rc in
    0) ;;
    77) status=skipped note=$(grep -m1 -i skip "$work/$name.log" | cut -c1-160) ;;
    124 | 137) status="timed out" note="after ${limit}s" ;;
    *) status=failed note="exit $rc" ;;
  esac
  record "$name" "$status" "$secs" "$note"
  tail -n 4 "$work/$name.log"
  {
    echo "===== $name: $status ($secs s, exit $rc) $*"
    tail -c 2000000 "$work/$name.log"
  } >>"$out/logs.txt"
  return "$rc"
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; echo "== $1: $2 $4"; }

# The machine: GPUs, and the NCCL and cuBLAS it provides (the bundle carries neither: they must
# match the driver). Looked up on the library path, in the CUDA toolkit, then in NVIDIA's Python
# wheels; the directories found go on LD_LIBRARY_PATH for every part below.
gpus=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >"$work/gpus.txt" 2>&1; then
  gpus=$(grep -c '^GPU ' "$work/gpus.txt")
fi
find_lib() {  # find_lib SONAME: prints the path of the first copy found, or nothing
  local so=$1 d py lp=${LD_LIBRARY_PATH:-}
  for d in ${lp//:/ } ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 \
           /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/$so" ] && { echo "$d/$so"; return; }
  done
  d=$(ldconfig -p 2>/dev/null | awk -v so="$so" '$1 == so {print $NF; exit}')
  [ -n "$d" ] && { echo "$d"; return; }
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null || continue
    for d in $("$py" -c 'import nvidia; print(*nvidia.__path__)' 2>/dev/null); do
      d=$(find "$d" -maxdepth 3 -name "$so" 2>/dev/null | head -n 1)
      [ -n "$d" ] && { echo "$d"; return; }
    done
  done
}
libs_json=""
for so in libnccl.so.2 libcublas.so.13; do
  path=$(find_lib "$so")
  if [ -n "$path" ]; then
    export LD_LIBRARY_PATH="$(dirname "$path")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "== $so: $(readlink -f "$path")"
  else
    echo "== $so: not found (parts that need it will fail and say so)"
  fi
  libs_json+="\"$so\": \"$( [ -n "$path" ] && readlink -f "$path")\", "
done
{
  echo "bundle: $bundle"
  cat "$bundle/MANIFEST" 2>/dev/null
  echo "GPUs: $gpus"
  cat "$work/gpus.txt" 2>/dev/null
  if [ "$gpus" -gt 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,driver_version,power.limit,temperature.gpu --format=csv
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  python3 -c 'import importlib.metadata as m
for p in ("nvidia-nccl-cu13", "nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cuda-runtime", "torch"):
    try: print(p, m.version(p))
    except Exception: pass' 2>/dev/null
} >"$work/machine.log" 2>&1
cat "$work/machine.log"
{ echo "===== machine"; cat "$work/machine.log"; } >>"$out/logs.txt"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 GTEST_COLOR=no
# The outside test data (llama.cpp-made stand-in models) where it travelled with the tree;
# without it the GPU tests on those models skip and say so.
if [ -z "${DSI_TESTDATA_DIR:-}" ]; then
  for d in "$here/../shared/testdata" "$here/shared/testdata" "$here/../../shared/testdata"; do
    [ -d "$d" ] && { export DSI_TESTDATA_DIR=$(cd "$d" && pwd); break; }
  done
fi
echo "== test data: ${DSI_TESTDATA_DIR:-none (reference-model tests will skip)}" | tee -a "$out/logs.txt"
gpu_step() {  # a step that needs a GPU: skipped without one
  if [ "$gpus" -eq 0 ]; then record "$1" skipped 0 "no device"; return 0; fi
  step "$@"
}
# Under the sanitizers kernels run 10-100 times slower: the parity cases but the largest.
parity='*KernelParity*:-*n512*:*in4096*:*kv4096*:*d4096*'

gpu_step gpu_tests 150 "$bin/dsi_gpu_tests" --gtest_output="json:$work/gpu_tests.json"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for tool in memcheck racecheck; do
  if [ "$gpus" -gt 0 ] && [ -z "$sanitizer" ]; then
    record "$tool" "not run" 0 "compute-sanitizer not found"
  else
    gpu_step "$tool" 60 "$sanitizer" --tool "$tool" --error-exitcode 3 --print-limit 20 \
      "$bin/dsi_gpu_tests" --gtest_filter="$parity"
  fi
done
if [ "$gpus" -ge 2 ]; then
  step nccl 60 "$bin/mpirun" -np 2 "$bin/gpu_nccl_data_channel"
else
  record nccl skipped 0 "$([ "$gpus" -eq 0 ] && echo "no device" || echo "needs 2 GPUs (NCCL refuses two ranks on one)")"
fi

model=${DSI_GPU_MODEL:-$work/llama-1b-f16.gguf}
if [ "$gpus" -gt 0 ] && [ ! -f "$model" ]; then
  step make_model 90 "$bin/dsi" make-model --shape llama-1b --type f16 -o "$model"
fi
for gemm in invariant cublas; do
  gpu_step "decode_llama1b$([ $gemm = cublas ] && echo _cublas)" 75 "$bin/llama_bench" "$model" \
    --device cuda --dtype f16 --prompt 128 --gen 64 --reps 3 --gemm "$gemm" \
    --hbm-gbps "${DSI_HBM_GBPS:-4800}"
done
for m in SMOLLM2 QWEN_CODER_0_5B QWEN_CODER_1_5B; do
  var=DSI_${m}_GGUF
  if [ -n "${!var:-}" ] && [ -f "${!var}" ]; then
    gpu_step "decode_${m,,}" 60 "$bin/llama_bench" "${!var}" --device cuda --dtype f16 \
      --prompt 128 --gen 64 --reps 3 --hbm-gbps "${DSI_HBM_GBPS:-4800}"
  else
    record "decode_${m,,}" skipped 0 "model file not here (set $var)"
  fi
done
step data_plane 45 "$bin/mpirun" -np 2 "$bin/data_plane_bench" all 64
export DSI_GPU_MODEL=$model
gpu_step dsi_bench 150 "$bin/mpirun" -np 5 "$bin/dsi" bench --config "$bundle/configs/gpu-1b.yaml" \
  --sp 1,2 --tokens 48 --temperatures 0,0.8 --json-file "$work/dsi_bench.json"

python3 - "$work" "$out" "$gpus" "{${libs_json%, }}" "$(($(date +%s) - start))" <<'PY'
import json, re, sys, pathlib
work, out, gpus, libs, total = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
def text(name):
    p = work / f"{name}.log"
    return p.read_text(errors="replace") if p.exists() else ""
steps = []
for line in (work / "results.tsv").read_text().splitlines():
    name, status, secs, note = (line.split("\t") + [""] * 4)[:4]
    steps.append({"name": name, "status": status, "seconds": int(secs), "note": note})
report = {"gpus": gpus, "seconds": total, "libraries": libs, "machine": text("machine"),
          "steps": steps}
tests = {}
p = work / "gpu_tests.json"
if p.exists():
    g = json.loads(p.read_text())
    cases = [c for s in g.get("testsuites", []) for c in s.get("testsuite", [])]
    skipped = [c for c in cases if c.get("result") == "SKIPPED"]
    failed = [c["classname"] + "." + c["name"] for c in cases if c.get("failures")]
    tests = {"total": len(cases), "failed": len(failed), "skipped": len(skipped),
             "passed": len(cases) - len(failed) - len(skipped), "failed_names": failed}
report["gpu_tests"] = tests
report["nmse"] = re.findall(r"\[ INFO \] (.*(?:nmse|NMSE).*)", text("gpu_tests"))
decode = {}
for s in steps:
    if s["name"].startswith("decode_"):
        t = text(s["name"])
        m = re.search(r"^(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", t, re.M)
        h = re.search(r"achieved ([\d.]+)% of it \(([\d.]+) GB/s\)", t)
        if m:
            decode[s["name"][7:]] = {"prefill_tok_s": float(m[2]), "decode_tok_s": float(m[3]),
                                     "decode_ms": float(m[4]),
                                     "hbm_fraction": float(h[1]) / 100 if h else None,
                                     "gb_s": float(h[2]) if h else None}
report["decode"] = decode
p = work / "dsi_bench.json"
report["dsi_bench"] = json.loads(p.read_text()).get("rows", []) if p.exists() else []
for tool in ("memcheck", "racecheck"):
    m = re.search(r"ERROR SUMMARY: (\d+) error", text(tool))
    report[tool] = {"errors": int(m[1])} if m else None
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")

md = [f"# dsi GPU check: {gpus} GPU(s), {total} s", "", "| part | status | s | note |", "|---|---|---|---|"]
md += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
md += ["", "## Machine", "```", report["machine"].strip(), "```"]
if tests:
    md += ["", f"## GPU tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"]
    md += [f"- FAILED {n}" for n in tests["failed_names"]]
if report["nmse"]:
    md += ["", "## CUDA engine against the CPU engine (logit NMSE)", ""] + [f"- {l}" for l in report["nmse"]]
if decode:
    md += ["", "## Decode", "", "| model | prefill tok/s | decode tok/s | ms/token | of HBM bound | GB/s |", "|---|---|---|---|---|---|"]
    for k, d in decode.items():
        f = f"{100 * d['hbm_fraction']:.0f}%" if d["hbm_fraction"] is not None else "?"
        md.append(f"| {k} | {d['prefill_tok_s']:.0f} | {d['decode_tok_s']:.0f} | {d['decode_ms']:.3f} | {f} | {d['gb_s']} |")
if report["dsi_bench"]:
    md += ["", "## Non-SI / SI / DSI on one GPU (every rank sharing it)", "", "| T | mode | SP | ms/token | vs non-SI | acceptance | equal to non-SI |", "|---|---|---|---|---|---|---|"]
    for r in report["dsi_bench"]:
        md.append(f"| {r['temperature']} | {r['mode']} | {r['sp']} | {r['latency_ms']:.3f} | {r['speedup_vs_nonsi']:.2f} | {r['acceptance_rate']:.2f} | {r['check']} |")
for tool in ("memcheck", "racecheck"):
    if report[tool] is not None:
        md.append(f"\n{tool}: {report[tool]['errors']} error(s)")
(out / "report.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
if grep -Pq '\t(failed|timed out)\t' "$results"; then
  echo "gpu_checks: failed parts: $(grep -P '\t(failed|timed out)\t' "$results" | cut -f1 | tr '\n' ' ')"
  exit 1
fi
exit 0
