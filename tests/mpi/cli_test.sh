#!/usr/bin/env bash
# One `dsi` command-line case under mpirun: cli_test.sh CASE DSI_BINARY SOURCE_DIR.
# Each case checks the exit code, the message and (where it matters) how long it took.
set -u
case_name=$1 dsi=$2 src=$3
source "$(dirname "$0")/case_lib.sh"
# expect_error NP PATTERN ARGS...: non-zero exit, PATTERN in the output, under 20 s.
expect_error() {
  local np=$1 pattern=$2; shift 2
  local t0=$SECONDS
  local pre=()
  while [ "${1:-}" = "--mca" ]; do pre+=("$1" "$2" "$3"); shift 3; done
  mpi "${pre[@]}" -np "$np" "$dsi" "$@" >"$tmp/out" 2>&1
  local rc=$?
  local took=$((SECONDS - t0))
  [ $rc -ne 0 ] || fail "exit code 0, expected an error"
  [ $rc -ne 124 ] || fail "timed out (hang)"
  grep -qE "$pattern" "$tmp/out" || fail "output lacks /$pattern/"
  [ $took -le 20 ] || fail "took ${took}s"
  echo "ok: exit $rc in ${took}s, message matched /$pattern/"
}

# make_model FILE [ARGS...]: a tiny random llama (dsi make-model, Q8_0, byte-fallback SPM
# vocabulary of 1024 tokens unless ARGS say otherwise) at $tmp/FILE.
make_model() {
  local file=$1; shift
  "$dsi" make-model --shape tiny --type q8_0 "$@" -o "$tmp/$file" >/dev/null ||
    { echo "FAILED: dsi make-model $*"; exit 1; }
}
# reference_model FILE: the path of FILE in the outside test data (DSI_TESTDATA_DIR, else
# ../shared/testdata beside the source tree), or exit 77 (skipped) naming it when absent.
reference_model() {
  local path=${DSI_TESTDATA_DIR:-$src/../shared/testdata}/$1
  [ -f "$path" ] || { echo "skipped: test data missing: $path" >&2; exit 77; }
  echo "$path"
}

cfg="$src/configs/synthetic.yaml"
fast=(--set synthetic.t_ms=2 --set generation.max_new_tokens=20)
case $case_name in
  bad_yaml)
    printf 'mode: dsi\nsynthetic: [1, 2\n' >"$tmp/bad.yaml"
    expect_error 3 "bad.yaml: malformed YAML at line" run --config "$tmp/bad.yaml" ;;
  unknown_key)
    printf 'mode: dsi\nsynthetic:\n  t_ms: 5\n  acceptance: 0.5\n' >"$tmp/k.yaml"
    expect_error 3 "unknown key 'synthetic.acceptance'" run --config "$tmp/k.yaml" ;;
  bad_value)
    expect_error 3 "key 'synthetic.a' is 1.5, it must lie in \[0, 1\]" run --config "$cfg" --set synthetic.a=1.5 ;;
  world_too_small)
    expect_error 2 "mode dsi needs at least 3 ranks .* the world has 2" run --config "$cfg" ;;
  world_mismatch)
    expect_error 4 "roles.targets = 4 with mode dsi needs exactly 6 ranks .* the world has 4" \
      run --config "$cfg" --set roles.targets=4 ;;
  missing_file)
    expect_error 1 "does not exist|cannot read" run --config "$tmp/nope.yaml" ;;
  rank_exits)
    # Rank 3 dies abruptly mid-run. Plain mpirun tears the job down itself and names the
    # process as [[job,1],3]; every rank must be gone within seconds.
    expect_error 5 "\\[\\[[0-9]+,1\\],3\\]|rank 3" run --config "$cfg" --set generation.max_new_tokens=100000 \
      --fault-rank 3 --fault exit --fault-after-ms 500 ;;
  rank_exits_no_abort)
    # Same death where the launcher does not abort the job (as some srun setups): the
    # coordinator's heartbeat timeout names the rank and ends every rank.
    expect_error 5 "rank 3 \(target 1\) has not been heard from" --mca orte_abort_on_non_zero_status 0 \
      run --config "$cfg" --set generation.max_new_tokens=100000 --set runtime.peer_timeout_s=2 \
      --fault-rank 3 --fault exit --fault-after-ms 500 ;;
  rank_hangs)
    # Rank 3 is stopped (a wedged node); the coordinator's heartbeat timeout names it.
    expect_error 5 "rank 3 \(target 1\) has not been heard from" run --config "$cfg" \
      --set generation.max_new_tokens=100000 --set runtime.peer_timeout_s=2 \
      --fault-rank 3 --fault hang --fault-after-ms 500 ;;
  trace_preemption)
    mpi -np 6 "$dsi" run --config "$cfg" --set synthetic.a=0.5 --set dsi.lookahead=1 \
      --set generation.max_new_tokens=60 --trace "$tmp/trace.json" --json >"$tmp/out" 2>&1 \
      || fail "run failed"
    python3 - "$tmp/trace.json" "$tmp/out" <<'PY' || fail "trace check"
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
summary = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
cut = [e for e in ev if e.get("name") == "verify (preempted)" and e["dur"] < 0.9 * 20000]
cancels = [e for e in ev if e.get("name") == "cancel"]
names = {e.get("name") for e in ev}
assert {"draft", "verify", "idle"} <= names, names
assert len(cut) > 0, "no verify span was cut short"
assert summary["tasks"]["preempted"] > 0 and summary["wasted_target_s"] > 0, summary
assert len(cancels) == summary["tasks"]["preempted"], (len(cancels), summary["tasks"])
print(f"ok: {len(cut)} verify spans cut short, {len(cancels)} cancel messages, "
      f"{summary['tasks']['preempted']} preempted in the summary")
PY
    ;;
  json_summary)
    for mode in nonsi si dsi; do
      mpi -np 4 "$dsi" run --config "$cfg" "${fast[@]}" --mode $mode --json >"$tmp/$mode.json" 2>"$tmp/out" \
        || fail "$mode run failed"
    done
    python3 - "$tmp" <<'PY' || fail "summary check"
import json, sys
r = {m: json.loads(open(f"{sys.argv[1]}/{m}.json").read().strip().splitlines()[-1]) for m in ("nonsi", "si", "dsi")}
for m, s in r.items():
    for key in ("tokens", "latency_per_token_ms", "acceptance_rate", "tasks", "ranks", "wasted_target_s",
                "prompt_ids", "generated_ids"):
        assert key in s, (m, key)
    assert s["tokens"] == 20 and len(s["generated_ids"]) == 20, s
assert r["si"]["generated_ids"] == r["nonsi"]["generated_ids"] == r["dsi"]["generated_ids"]
print("ok: summaries complete, tokens identical across modes")
PY
    ;;
  idle_no_spin)
    # 8 ranks on this machine's cores, 6 of them idle for the whole run: the job must use
    # far less CPU than ranks that spin (which would take every core for the whole run).
    python3 - "$mpirun" "$dsi" "$cfg" <<'PY' >"$tmp/out" 2>&1 || fail "CPU check"
import os, resource, subprocess, sys, time
mpirun, dsi, cfg = sys.argv[1:4]
t0 = time.monotonic()
subprocess.run([mpirun, "--oversubscribe", "--mca", "btl", "self,vader", "-np", "8", dsi, "run",
                "--config", cfg, "--mode", "nonsi", "--max-new-tokens", "150"],
               check=True, stdout=subprocess.DEVNULL, timeout=40)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cores = (ru.ru_utime + ru.ru_stime) / wall
print(f"8 ranks: {wall:.2f} s wall, {ru.ru_utime + ru.ru_stime:.2f} s CPU = {cores:.2f} cores "
      f"of {os.cpu_count()}")
assert cores < 0.6 * os.cpu_count(), "ranks spin while waiting"
PY
    cat "$tmp/out" ;;
  tp_world_mismatch)
    expect_error 5 "the world of 5 ranks does not fit mode dsi: 1 coordinator \+ 1 drafter leave 3 ranks, not a whole number of targets of 2 ranks \(roles.target_tp\); launch with mpirun -np 4 or 6" \
      run --config "$cfg" --set engine=llama --set model.path=/unused.gguf --set roles.target_tp=2 ;;
  tp_bad_heads)
    # Refused before any model loads (read from the GGUF header), naming the numbers.
    make_model m.gguf
    expect_error 5 "roles.target_tp = 3: tensor parallelism of 3 does not divide the 8 attention heads \\(model '.*m.gguf'\\)" \
      run --config "$cfg" --set engine=llama --set model.path="$tmp/m.gguf" --set roles.target_tp=3 ;;
  tp_bad_blocks)
    # Heads that split, columns that do not: 8 shards of a Q8_0 model of 8 heads of 16 take 16
    # columns each of the attention output, not whole blocks of 32; refused before the run.
    make_model k.gguf --dim 128 --heads 8 --kv-heads 8
    expect_error 9 "roles.target_tp = 8: tensor parallelism of 8: a shard's 16 columns of the attention output \\(layer 0\\) are not whole q8_0 blocks of 32" \
      run --config "$cfg" --set engine=llama --set model.path="$tmp/k.gguf" --set roles.target_tp=8 --set mode=nonsi ;;
  tp_synthetic)
    expect_error 5 "roles.target_tp = 2 needs engine llama" run --config "$cfg" --set roles.target_tp=2 ;;
  tp_leader_hangs)
    # The leader of target 1 (ranks 4-5) is stopped: the coordinator's heartbeat timeout names
    # it by its world rank and group, and every rank (its member too) is taken down.
    make_model m.gguf
    expect_error 6 "rank 4 \(target 1, world ranks 4-5\) has not been heard from" run --config "$cfg" \
      --set engine=llama --set model.path="$tmp/m.gguf" --set roles.target_tp=2 \
      --set generation.max_new_tokens=100000 --set model.max_context=100000 \
      --set generation.chat=false --set runtime.peer_timeout_s=2 \
      --fault-rank 4 --fault hang --fault-after-ms 500 ;;
  tp_member_hangs|tp_member_exits)
    # Rank 3, the second shard of target 0 (ranks 2-3), stops or dies mid-run. A stopped one
    # leaves its leader waiting in an all-reduce, which times out (runtime.peer_timeout_s) and
    # names the group; a dead one is torn down by mpirun, naming the process.
    make_model m.gguf
    if [ "$case_name" = tp_member_hangs ]; then
      # (under load the stop may come while the shards are still being built)
      fault=hang pattern="rank 2 on [^ :]+: target 0 \(world ranks 2-3\): (building the shards: )?all-reduce"
    else
      fault=exit pattern="\\[\\[[0-9]+,1\\],3\\]|target 0 \\(world ranks 2-3\\)"
    fi
    expect_error 6 "$pattern" run --config "$cfg" --set engine=llama --set model.path="$tmp/m.gguf" \
      --set roles.target_tp=2 --set generation.max_new_tokens=100000 --set model.max_context=100000 \
      --set generation.chat=false --set runtime.peer_timeout_s=2 \
      --fault-rank 3 --fault $fault --fault-after-ms 500 ;;
  missing_model)
    expect_error 3 "model.path '/nonexistent/m.gguf' does not exist" run --config "$cfg" \
      --set engine=llama --set model.path=/nonexistent/m.gguf ;;
  cuda_without_gpu)
    # device: cuda where there is no GPU (or no CUDA in the build): the engine build fails
    # on the worker with the reason, naming the rank and host that raised it (common/error.h),
    # every rank exits non-zero, nothing hangs.
    make_model m.gguf
    expect_error 3 "rank [0-9]+ on [^ :]+: device 'cuda' (asked for, but|is not supported)" run --config "$cfg" --set engine=llama \
      --set model.path="$tmp/m.gguf" --set model.device=cuda ;;
  bad_device)
    expect_error 3 "key 'model.device' must be one of cpu, cuda, got 'tpu'" run --config "$cfg" \
      --set model.device=tpu ;;
  truncated_model)
    # Cut after the header (about 24 kB) but shorter than the largest tensors (190-280 kB).
    make_model m.gguf
    head -c 150000 "$tmp/m.gguf" >"$tmp/cut.gguf"
    expect_error 3 "rank [0-9]+ on [^ :]+: .*cut.gguf: tensor .* cannot fit in the file" run --config "$cfg" --set engine=llama \
      --set model.path="$tmp/cut.gguf" --set generation.chat=false ;;
  corrupt_model)
    make_model bad.gguf
    printf 'GGUX' | dd of="$tmp/bad.gguf" conv=notrunc status=none
    expect_error 3 "bad.gguf.*magic" run --config "$cfg" --set engine=llama \
      --set model.path="$tmp/bad.gguf" --set generation.chat=false ;;
  vocab_mismatch)
    make_model m.gguf
    make_model other.gguf --vocab 2048
    expect_error 3 "vocabulary of rank .* differs" run --config "$cfg" --set engine=llama \
      --set model.path="$tmp/m.gguf" --set model.drafter_path="$tmp/other.gguf" \
      --set generation.chat=false ;;
  text_json)
    # Real text in, ids out: the nonsi JSON carries the prompt's ids and the generated ids. In
    # the written vocabulary (model/random_model.h) digits have no piece: "123" is BOS, the
    # word-start piece "▁" (259) and the byte tokens <0x31> <0x32> <0x33> (3 + byte).
    make_model m.gguf
    mpi -np 2 "$dsi" run --config "$cfg" --mode nonsi --set engine=llama \
      --set model.path="$tmp/m.gguf" --set generation.chat=false \
      --prompt "123" --max-new-tokens 8 --json >"$tmp/out" 2>&1 || fail "run failed"
    python3 - "$tmp/out" <<'PY' || fail "json check"
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert s["prompt_ids"] == [1, 259, 52, 53, 54], s["prompt_ids"]
assert len(s["generated_ids"]) == 8 and isinstance(s["text"], str), s
assert all(0 <= t < 1024 for t in s["generated_ids"]), s["generated_ids"]
print("ok: prompt ids", s["prompt_ids"], "generated", s["generated_ids"])
PY
    ;;
  text_json_llama2)
    # The same with the Llama 2 tokenizer of the outside test data's stand-in model.
    model=$(reference_model tiny-llama-spm-q8_0.gguf) || exit 77
    mpi -np 2 "$dsi" run --config "$cfg" --mode nonsi --set engine=llama \
      --set model.path="$model" --set generation.chat=false \
      --prompt "Hello world" --max-new-tokens 8 --json >"$tmp/out" 2>&1 || fail "run failed"
    python3 - "$tmp/out" <<'PY' || fail "json check"
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert s["prompt_ids"] == [1, 15043, 3186], s["prompt_ids"]   # <s> "▁Hello" "▁world" (Llama 2 SPM)
assert len(s["generated_ids"]) == 8 and isinstance(s["text"], str), s
print("ok: prompt ids", s["prompt_ids"], "generated", s["generated_ids"])
PY
    ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
