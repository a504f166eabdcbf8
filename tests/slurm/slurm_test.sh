#!/usr/bin/env bash
# The project's own sbatch templates (cluster/slurm/) on a real one-node Slurm cluster started
# for this test: slurm_test.sh DSI_BINARY SOURCE_DIR. CPU mode, synthetic engine. Checks that
# jobs finish COMPLETED with exit 0, that DSI's tokens equal non-SI's, that srun --mpi=pmix
# and mpirun both launch inside an allocation, the GPU binding a multi-node layout computes,
# the sweep's CSV/JSON/PNG, and both refusals (outside Slurm; too few tasks). Installs
# nothing; exits 77 (skipped) without root or without the Slurm and munge packages. The
# daemons are stopped on every exit.
set -uo pipefail
dsi=$1 src=$2
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then echo "SKIP: needs root (slurmd launches the jobs)"; exit 77; fi
for b in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged; do
  [ -x "$b" ] || { echo "SKIP: $b missing (launch/setup.sh installs slurmctld slurmd slurm-client munge)"; exit 77; }
done
[ -r /etc/munge/munge.key ] || { echo "SKIP: /etc/munge/munge.key missing"; exit 77; }

tmp=$(mktemp -d /tmp/dsi-slurm-test.XXXXXX)
chmod 755 "$tmp"  # munged (user munge) must reach its folder inside
source "$here/slurm_cluster.sh"
cleanup() {
  local rc=$?
  slurm_cluster_stop
  if [ $rc -ne 0 ]; then
    echo "--- slurm logs (last lines)"
    tail -n 15 "$tmp"/cluster/log/* 2>/dev/null
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAILED: $*"; exit 1; }
t0=$SECONDS
slurm_cluster_start "$tmp/cluster" || fail "could not start the Slurm cluster"
mkdir -p "$tmp/out"

# Every job: the repository's templates, the test's binary, a fast synthetic config.
export DSI_HOME=$src DSI_BIN=$dsi DSI_OUT=$tmp/out DSI_CONFIG=$src/configs/synthetic.yaml
export DSI_ARGS="--set synthetic.t_ms=5 --set generation.max_new_tokens=40"
cd "$src"
submit() {  # NAME SBATCH-ARGS... ; prints the job id
  local name=$1; shift
  sbatch --parsable --job-name="$name" --output="$tmp/out/$name-%j.out" "$@" | cut -d';' -f1
}
declare -A job
job[dsi]=$(submit dsi --ntasks=5 cluster/slurm/one_node.sbatch)
job[nonsi]=$(submit nonsi --ntasks=2 --export=ALL,DSI_MODE=nonsi cluster/slurm/one_node.sbatch)
job[si_mpirun]=$(submit si_mpirun --ntasks=4 --export=ALL,DSI_MODE=si,DSI_LAUNCHER=mpirun cluster/slurm/one_node.sbatch)
job[multi]=$(submit multi --nodes=1 --ntasks-per-node=5 \
  --export=ALL,DSI_GPUS_PER_NODE=4,DSI_RANKS_PER_NODE=4 cluster/slurm/multi_node.sbatch)
job[sweep]=$(submit sweep --ntasks=5 --export=ALL,DSI_RANKS=2-5,DSI_K=3,DSI_TOKENS=30,DSI_ARGS=--set\ synthetic.t_ms=5 cluster/slurm/sweep.sbatch)
job[too_few]=$(submit too_few --ntasks=2 cluster/slurm/one_node.sbatch)
# Tensor-parallel groups (llama on CPUs, a tiny random model): DSI with 2 targets of 2 ranks
# each and the drafter (7 tasks, one left unused: whole groups only), against non-SI on one
# rank.
"$dsi" make-model --shape tiny --type q8_0 -o "$tmp/tiny.gguf" >/dev/null || fail "make-model"
llama_args="--set engine=llama --set model.path=$tmp/tiny.gguf --set generation.max_new_tokens=24 --set generation.chat=false"
job[tp]=$(export DSI_TP=2 DSI_ARGS="$llama_args"; submit tp --ntasks=7 cluster/slurm/one_node.sbatch)
job[tp_ref]=$(export DSI_MODE=nonsi DSI_ARGS="$llama_args"; submit tp_ref --ntasks=2 cluster/slurm/one_node.sbatch)
for n in "${!job[@]}"; do
  [[ ${job[$n]} =~ ^[0-9]+$ ]] || fail "sbatch of $n returned '${job[$n]}'"
  echo "submitted $n as job ${job[$n]}"
done

# Poll scontrol (sbatch --wait polls slowly) until every job has ended.
declare -A state exitc
deadline=$((SECONDS + 240))
while :; do
  pending=0
  for n in "${!job[@]}"; do
    [ -n "${state[$n]:-}" ] && continue
    line=$(scontrol show job "${job[$n]}" -o 2>/dev/null)
    s=$(grep -o 'JobState=[A-Z_]*' <<<"$line" | cut -d= -f2)
    case $s in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
        state[$n]=$s
        exitc[$n]=$(grep -o ' ExitCode=[0-9:]*' <<<"$line" | cut -d= -f2)
        echo "job ${job[$n]} ($n): $s, exit code ${exitc[$n]} after $((SECONDS - t0)) s" ;;
      *) pending=1 ;;
    esac
  done
  [ $pending -eq 0 ] && break
  [ $SECONDS -lt $deadline ] || { squeue; fail "jobs still running after 240 s"; }
  sleep 0.5
done

out() { cat "$tmp/out/$1-${job[$1]}.out"; }
for n in dsi nonsi si_mpirun multi sweep tp tp_ref; do
  if [ "${state[$n]}" != COMPLETED ] || [ "${exitc[$n]}" != 0:0 ]; then
    echo "--- $n output"; out "$n"
    fail "job $n ended ${state[$n]} with ${exitc[$n]}"
  fi
done

# DSI (srun --mpi=pmix, 5 ranks), SI (mpirun inside the allocation) and the multi-node layout
# produce non-SI's tokens.
python3 - "$tmp/out" "${job[dsi]}" "${job[nonsi]}" "${job[si_mpirun]}" "${job[multi]}" <<'PY' || fail "summaries"
import json, sys
d = sys.argv[1]
s = {n: json.load(open(f"{d}/dsi-{j}.json")) for n, j in zip(("dsi", "nonsi", "si", "multi"), sys.argv[2:])}
assert s["dsi"]["mode"] == "dsi" and s["dsi"]["sp"] == 3, s["dsi"]["sp"]
assert s["multi"]["sp"] == 3 and s["si"]["mode"] == "si" and s["nonsi"]["mode"] == "nonsi"
ref = s["nonsi"]["generated_ids"]
assert len(ref) == 40
for n in ("dsi", "si", "multi"):
    assert s[n]["generated_ids"] == ref, n
print("ok: dsi (SP 3, srun), si (mpirun), multi-node layout: tokens equal non-SI's;",
      ", ".join(f"{n} {s[n]['latency_per_token_ms']:.2f} ms/token" for n in s))
PY
python3 - "$tmp/out" "${job[tp]}" "${job[tp_ref]}" <<'PY' || { out tp; fail "TP summaries"; }
import json, sys
d = sys.argv[1]
tp, ref = (json.load(open(f"{d}/dsi-{j}.json")) for j in sys.argv[2:])
assert tp["mode"] == "dsi" and tp["sp"] == 2, (tp["mode"], tp["sp"])
assert tp["generated_ids"] == ref["generated_ids"] and len(ref["generated_ids"]) == 24
roles = [r["role"] for r in tp["ranks"]]
assert "target 1, world ranks 4-5" in roles, roles
print("ok: TP job (SP 2 x TP 2 from one_node.sbatch, 6 of 7 tasks): tokens equal non-SI's;", roles)
PY
grep -q "launch: 6 ranks via srun" <(out tp) || { out tp; fail "the TP job did not launch 6 ranks"; }
grep -q "launch: 5 ranks via srun" <(out dsi) || fail "dsi job did not launch through srun"
grep -q "launch: 4 ranks via mpirun" <(out si_mpirun) || fail "si job did not launch through mpirun"
# The colocated layout on a 4-GPU node: coordinator without GPU, drafter GPU 0, targets 1..3.
for want in "rank 0 \(local 0\) on [^:]*: coordinator, no GPU" "rank 1 \(local 1\) on [^:]*: GPU 0 of 4" \
            "rank 4 \(local 4\) on [^:]*: GPU 3 of 4"; do
  grep -qE "\[bind\] $want" <(out multi) || { out multi; fail "binding line /$want/ missing"; }
done
echo "ok: GPU binding by local rank (coordinator none, drafter GPU 0, target 3 GPU 3)"
python3 - "$tmp/out/dsi-sweep-${job[sweep]}" <<'PY' || { out sweep; fail "sweep outputs"; }
import csv, json, sys
p = sys.argv[1]
rows = json.load(open(p + ".json"))["rows"]
assert [r["ranks"] for r in rows] == [2, 3, 3, 4, 5] and all(r["lossless"] for r in rows), rows
assert len(list(csv.DictReader(open(p + ".csv")))) == 5
assert open(p + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
print("ok: sweep job wrote CSV, JSON and PNG for ranks 2..5 in one allocation")
PY

# Refusals: too few tasks for the mode (inside Slurm), and any template outside Slurm.
[ "${state[too_few]}" = FAILED ] || fail "too_few ended ${state[too_few]}, expected FAILED"
grep -q "mode dsi needs at least 3 tasks (MPI ranks), but this job has SLURM_NTASKS=2" <(out too_few) \
  || { out too_few; fail "too_few message"; }
grep -q "launch:" <(out too_few) && fail "too_few launched dsi"
echo "ok: job ${job[too_few]} refused 2 tasks for mode dsi before launching"
for t in one_node multi_node sweep; do
  env -u SLURM_JOB_ID bash "cluster/slurm/$t.sbatch" >"$tmp/outside" 2>&1
  rc=$?
  [ $rc -eq 2 ] && grep -q "not inside a Slurm job (SLURM_JOB_ID is unset)" "$tmp/outside" \
    || { cat "$tmp/outside"; fail "$t.sbatch outside Slurm: exit $rc"; }
done
echo "ok: every template refuses to run outside Slurm"

# The one-node template as a server (DSI_SERVE=1): it says where it listens, answers, and
# scancel's SIGTERM drains it (every rank exits 0 before Slurm ends the job).
sj=$(submit serve --ntasks=3 --export=ALL,DSI_SERVE=1,DSI_PORT=0 cluster/slurm/one_node.sbatch)
portf=$tmp/out/dsi-serve-$sj.port
for _ in $(seq 240); do [ -s "$portf" ] && break; sleep 0.25; done
[ -s "$portf" ] || { cat "$tmp/out/serve-$sj.out"; fail "the serve job wrote no port file"; }
port=$(head -1 "$portf")
for _ in $(seq 40); do grep -q "serving on http://127.0.0.1:$port" "$tmp/out/serve-$sj.out" && break; sleep 0.25; done
grep -q "serving on http://127.0.0.1:$port" "$tmp/out/serve-$sj.out" || { cat "$tmp/out/serve-$sj.out"; fail "the serve job did not log its address"; }
curl -s "http://127.0.0.1:$port/v1/completions" -d '{"prompt": [1, 2, 3], "max_tokens": 5}' \
  | grep -q '"completion_tokens":5' || fail "the served completion"
scancel "$sj"
for _ in $(seq 120); do
  s=$(scontrol show job "$sj" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
  case $s in RUNNING|PENDING|COMPLETING|"") sleep 0.25 ;; *) break ;; esac
done
grep -q "dsi serve: drained, exiting" "$tmp/out/serve-$sj.out" || { cat "$tmp/out/serve-$sj.out"; fail "scancel did not drain the server ($s)"; }
echo "ok: job $sj served on port $port and drained on scancel ($s)"
echo "PASSED in $((SECONDS - t0)) s"
