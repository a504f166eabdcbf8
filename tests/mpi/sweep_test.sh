#!/usr/bin/env bash
# `dsi sweep` under mpirun and `dsi simulate` / `dsi profile` as plain processes:
# sweep_test.sh CASE DSI_BINARY SOURCE_DIR. Each case checks exit code, message and outputs.
set -u
case_name=$1 dsi=$2 src=$3
MPI_CASE_TIMEOUT=120
source "$(dirname "$0")/case_lib.sh"

# expect_error NP PATTERN ARGS...: a sweep that must fail before any run, naming the value.
expect_sweep_error() {
  local np=$1 pattern=$2; shift 2
  local t0=$SECONDS
  mpi -np "$np" "$dsi" sweep "$@" --out "$tmp/s" >"$tmp/out" 2>&1
  local rc=$?
  [ $rc -ne 0 ] || fail "exit code 0, expected an error"
  [ $rc -ne 124 ] || fail "timed out (hang)"
  grep -qE -- "$pattern" "$tmp/out" || fail "output lacks /$pattern/"
  ! grep -q '^\[ *1/' "$tmp/out" || fail "a run started before the input was refused"
  [ ! -e "$tmp/s.csv" ] || fail "wrote a CSV"
  echo "ok: exit $rc in $((SECONDS - t0))s, message matched /$pattern/, no run started"
}

cfg="$src/configs/synthetic.yaml"
case $case_name in
  sweep_small)
    mpi -np 5 "$dsi" sweep --config "$cfg" --ranks 2-5 -k 2,4 --tokens 30 --set synthetic.t_ms=5 \
      --out "$tmp/s" >"$tmp/out" 2>&1 || fail "sweep failed"
    cat "$tmp/out"
    [ "$(grep -c '^\[ *[0-9]*/9\]' "$tmp/out")" = 9 ] || fail "expected 9 progress lines"
    python3 - "$tmp/s" <<'PY' || fail "output check"
import csv, json, sys
p = sys.argv[1]
d = json.load(open(p + ".json"))
rows = d["rows"]
assert d["format"] == "dsi-sweep" and d["lookaheads"] == [2, 4] and d["sp"] == [1, 2, 3], d
assert [r["mode"] for r in rows] == ["nonsi", "si", "dsi", "dsi", "dsi", "si", "dsi", "dsi", "dsi"]
assert all(r["lossless"] and r["tokens"] == 30 for r in rows), rows
assert sorted({r["ranks"] for r in rows if r["mode"] == "dsi"}) == [3, 4, 5]
for r in rows:
    for key in ("latency_ms", "formula_ms", "sim_same_tokens_ms", "sim_iid_ms"):
        assert r[key] > 0, (key, r)
c = list(csv.DictReader(open(p + ".csv")))
assert len(c) == 9 and c[0]["mode"] == "nonsi" and float(c[2]["latency_ms"]) > 0, c
png = open(p + ".png", "rb").read()
assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000, len(png)
print(f"ok: 9 lossless runs, CSV + JSON + PNG ({len(png)} bytes)")
PY
    ;;
  sweep_trees)
    # Token trees beside chains: SI and DSI with each shape, lossless, the tree column filled,
    # and (a wrong drafter ranking the target's token second) more tokens per verification.
    mpi -np 4 "$dsi" sweep --config "$cfg" --sp 1,2 -k 4 --tokens 60 --trees "3,2,1,1;2,1,1,1" \
      --set synthetic.t_ms=5 --set synthetic.a=0.6 --set synthetic.second=0.7 \
      --out "$tmp/s" >"$tmp/out" 2>&1 || fail "sweep failed"
    cat "$tmp/out"
    python3 - "$tmp/s" <<'PY' || fail "output check"
import csv, json, sys
p = sys.argv[1]
rows = json.load(open(p + ".json"))["rows"]
assert [(r["mode"], r["tree"]) for r in rows] == [
    ("nonsi", ""), ("si", ""), ("dsi", ""), ("dsi", ""), ("si", "3,2,1,1"), ("dsi", "3,2,1,1"),
    ("dsi", "3,2,1,1"), ("si", "2,1,1,1"), ("dsi", "2,1,1,1"), ("dsi", "2,1,1,1")], rows
assert all(r["lossless"] and r["tokens"] == 60 for r in rows), rows
si = {r["tree"]: r for r in rows if r["mode"] == "si"}
assert si["3,2,1,1"]["tokens_per_verification"] > si[""]["tokens_per_verification"], si
assert all(r["sim_same_tokens_ms"] > 0 for r in rows), rows
c = list(csv.DictReader(open(p + ".csv")))
assert len(c) == 10 and c[4]["tree"] == "3,2,1,1" and float(c[4]["tokens_per_verification"]) > 1, c
print("ok: 10 lossless runs, trees", {t: r["tokens_per_verification"] for t, r in si.items()})
PY
    ;;
  sweep_bad_trees)
    expect_sweep_error 3 "--trees: tree '2,0': the branching factor at depth 1 is 0" --config "$cfg" \
      --trees "3,1;2,0" ;;
  bench_drafters)
    # dsi bench with --drafters 2: merged-drafter rows (SI, DSI at SP 1-2), every one lossless,
    # and the second drafter's siblings commit tokens the lead's chain missed.
    mpi -np 5 "$dsi" bench --config "$cfg" --t-ms 5 --grid 0.1:0.6:4 --sp 1,2 --tokens 60 \
      --drafters 2 --json-file "$tmp/b.json" >"$tmp/out" 2>&1 || fail "bench failed"
    cat "$tmp/out"
    python3 - "$tmp/b.json" <<'PY' || fail "output check"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
assert [(r["mode"], r["drafters"], r["sp"]) for r in rows] == [
    ("nonsi", 0, 1), ("si", 1, 1), ("dsi", 1, 1), ("dsi", 1, 2), ("si", 2, 1), ("dsi", 2, 1),
    ("dsi", 2, 2)], rows
assert all(r["check"] == "yes" and r["tokens"] == 60 for r in rows), rows
assert sum(r["siblings_committed"] for r in rows if r["drafters"] == 2) > 0, rows
print("ok: bench merged rows", [round(r["tokens_per_verification"], 2) for r in rows])
PY
    ;;
  bench_bad_drafters)
    # A world too small for the drafters and targets asked for: refused before any run.
    mpi -np 4 "$dsi" bench --config "$cfg" --sp 1,2 --tokens 20 --drafters 2 >"$tmp/out" 2>&1
    rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "exit code $rc, expected an error"
    grep -q -- "--drafters 2 with --sp 2 needs 5 ranks" "$tmp/out" || fail "message"
    ! grep -q "nonsi" "$tmp/out" || fail "a run started"
    echo "ok: refused" ;;
  bench_trees)
    # dsi bench with --trees: chain and tree rows (SI, DSI at SP 1-2), every one lossless.
    mpi -np 4 "$dsi" bench --config "$cfg" --t-ms 5 --grid 0.1:0.6:4 --sp 1,2 --tokens 40 \
      --trees "3,2,1,1" --set synthetic.second=0.7 --json-file "$tmp/b.json" >"$tmp/out" 2>&1 \
      || fail "bench failed"
    cat "$tmp/out"
    python3 - "$tmp/b.json" <<'PY' || fail "output check"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
assert [(r["mode"], r["tree"], r["sp"]) for r in rows] == [
    ("nonsi", "", 1), ("si", "", 1), ("dsi", "", 1), ("dsi", "", 2), ("si", "3,2,1,1", 1),
    ("dsi", "3,2,1,1", 1), ("dsi", "3,2,1,1", 2)], rows
assert all(r["check"] == "yes" and r["tokens"] == 40 for r in rows), rows
print("ok: bench tree rows", [round(r["tokens_per_verification"], 2) for r in rows])
PY
    mpi -np 3 "$dsi" bench --config "$cfg" --sp 1 --trees "4,4,4" >"$tmp/out" 2>&1 && fail "84 nodes accepted"
    grep -q -- "--trees: tree '4,4,4': the tree has 84 nodes" "$tmp/out" || fail "no message naming --trees"
    echo "ok: a tree over the node budget refused" ;;
  sweep_ranks_too_small)
    expect_sweep_error 4 "--ranks 1: a run needs at least 2 ranks" --config "$cfg" --ranks 1-3 ;;
  sweep_ranks_above_world)
    expect_sweep_error 4 "--ranks 6 needs 6 ranks .* the world has 4" --config "$cfg" --ranks 3,6 ;;
  sweep_sp_above_world)
    expect_sweep_error 4 "--sp 3 needs 5 ranks .* the world has 4" --config "$cfg" --sp 1,3 ;;
  sweep_bad_range)
    expect_sweep_error 3 "--ranks range '5-3' is empty" --config "$cfg" --ranks 5-3 ;;
  sweep_bad_lookahead)
    expect_sweep_error 3 "-k 0: a lookahead must lie in" --config "$cfg" -k 0 ;;
  sweep_sampling)
    expect_sweep_error 3 "sampling.temperature = 0.8: dsi sweep measures greedy decoding" --config "$cfg" \
      --set sampling.temperature=0.8 ;;
  sweep_missing_config)
    expect_sweep_error 3 "does not exist: .*nope.yaml" --config "$tmp/nope.yaml" ;;
  simulate)
    timeout 120 "$dsi" simulate -t 20 --c 0.1 -a 0.9 -k 3,5 --sp 1,2,4 --runs 10 --max-k 4 --max-sp 6 \
      >"$tmp/out" 2>&1 || fail "simulate failed"
    cat "$tmp/out"
    grep -q "recommendation" "$tmp/out" || fail "no recommendation"
    timeout 120 "$dsi" simulate -t 20 --c 0.1 -a 0.9 -k 5 --sp 1,8 --runs 20 --max-k 3 --max-sp 4 --json \
      >"$tmp/sim.json" 2>"$tmp/out" || fail "simulate --json failed"
    python3 - "$tmp/sim.json" <<'PY' || fail "JSON check"
import json, sys
d = json.loads(open(sys.argv[1]).read())
one, eight = d["rows"]
assert one["sp"] == 1 and eight["sp"] == 8
assert abs(eight["dsi_sim_ms"] / eight["dsi_formula_ms"] - 1) < 0.03, eight
assert one["queue_slowdown"] > 1.1 and abs(eight["queue_slowdown"] - 1) < 0.01, (one, eight)
r = d["recommendation"]
assert 1 <= r["k"] <= 3 and 1 <= r["sp"] <= 4 and r["dsi_ms"] < r["si_ms"] < r["nonsi_ms"], r
print("ok: JSON rows and recommendation", r["k"], r["sp"])
PY
    ;;
  simulate_trees)
    # Trees in the i.i.d. model: with siblings that catch 70% of the misses (ranks 0.28 at a =
    # 0.6), DSI with the tree beats the chain of its depth and the planner chooses the tree;
    # with no ranks it keeps the chains.
    # (300 tokens x 6 runs: a fraction of a second here, seconds under ASan.)
    timeout 120 "$dsi" simulate -t 5 --c 0.1 -a 0.6 --ranks 0.28 -k 4 --sp 1,4 --trees "3,2,1,1" \
      --tokens 300 --runs 6 --max-k 3 --max-sp 4 --json >"$tmp/sim.json" 2>"$tmp/out" \
      || fail "simulate failed"
    timeout 120 "$dsi" simulate -t 5 --c 0.1 -a 0.6 -k 4 --sp 4 --trees "3,2,1,1" --tokens 300 \
      --runs 6 --max-k 3 --max-sp 4 --json >"$tmp/none.json" 2>"$tmp/out" \
      || fail "simulate without ranks failed"
    python3 - "$tmp/sim.json" "$tmp/none.json" <<'PY' || fail "JSON check"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["inputs"]["ranks"] == [0.28], d["inputs"]
chain = {r["sp"]: r for r in d["rows"]}
tree = {r["sp"]: r for r in d["tree_rows"]}
assert sorted(tree) == [1, 4] and all(r["tree"] == "3,2,1,1" and r["k"] == 4 for r in tree.values())
assert tree[4]["dsi_sim_ms"] < 0.9 * chain[4]["dsi_sim_ms"], (tree[4], chain[4])
assert tree[1]["si_tokens_per_verification"] > 3, tree[1]
assert d["recommendation"]["choice"] == "tree 3,2,1,1", d["recommendation"]
n = json.load(open(sys.argv[2]))
assert n["recommendation"]["choice"] == "chains", n["recommendation"]
print("ok: tree", tree[4]["dsi_sim_ms"], "chain", chain[4]["dsi_sim_ms"], d["recommendation"]["trees"])
PY
    "$dsi" simulate -a 0.6 --ranks 0.5 --trees "2,1" >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q "ranks. probabilities sum to .*, more than 1" "$tmp/out" || fail "ranks summing above 1 accepted (rc $rc)"
    "$dsi" simulate --trees "2,x" >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q -- "--trees: 'x' in '2,x' is not a branching factor" "$tmp/out" \
      || fail "a bad shape accepted (rc $rc)"
    echo "ok: bad ranks and shapes refused" ;;
  simulate_tp)
    # Tensor-parallel targets: t per group. A TP-2 group at 11.5 ms (vs 20 ms on one rank) takes
    # 1 + 1 + SP x 2 ranks, is faster per token at equal SP, and the best split at 6 ranks is
    # reported; TP 1 reproduces the plain rows.
    timeout 120 "$dsi" simulate -t 20 --c 0.1 -a 0.8 -k 3 --sp 1,2 --tp "1:20,2:11.5" \
      --tokens 300 --runs 6 --max-k 3 --max-sp 2 --json >"$tmp/tp.json" 2>"$tmp/out" || fail "simulate --tp failed"
    python3 - "$tmp/tp.json" <<'PY' || fail "JSON check"
import json, sys
d = json.load(open(sys.argv[1]))
rows = {(r["tp"], r["sp"]): r for r in d["tp_rows"]}
plain = {r["sp"]: r for r in d["rows"]}
assert rows[(2, 2)]["ranks"] == 6 and rows[(1, 2)]["ranks"] == 4, rows
assert abs(rows[(1, 2)]["dsi_sim_ms"] - plain[2]["dsi_sim_ms"]) < 1e-9, (rows[(1, 2)], plain[2])
for sp in (1, 2):
    assert rows[(2, sp)]["dsi_sim_ms"] < 0.8 * rows[(1, sp)]["dsi_sim_ms"], sp
    assert rows[(2, sp)]["nonsi_sim_ms"] == 11.5
print("ok:", {k: round(v["dsi_sim_ms"], 3) for k, v in rows.items()})
PY
    "$dsi" simulate --tp "2:x" >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q -- "--tp: '2:x' must read N:T" "$tmp/out" || fail "a bad --tp accepted (rc $rc)"
    echo "ok: bad --tp refused" ;;
  simulate_bad_input)
    "$dsi" simulate -a 1.5 >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q "a must lie in \[0, 1\], got 1.5" "$tmp/out" || fail "a = 1.5 accepted (rc $rc)"
    "$dsi" simulate -k 0 >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q "\-k 0" "$tmp/out" || fail "k = 0 accepted (rc $rc)"
    echo '{"x": 1}' >"$tmp/p.json"
    "$dsi" simulate --profile "$tmp/p.json" >"$tmp/out" 2>&1; rc=$?
    [ $rc -eq 2 ] && grep -q "is not a dsi profile" "$tmp/out" || fail "bad profile accepted (rc $rc)"
    echo "ok: bad simulate input refused" ;;
  profile_then_simulate)
    timeout 120 "$dsi" profile --config "$cfg" --set synthetic.t_ms=5 --set synthetic.a=0.7 \
      --prompts 2 --tokens 40 --max-draft 4 --out "$tmp/prof.json" >"$tmp/out" 2>&1 || fail "profile failed"
    cat "$tmp/out"
    python3 - "$tmp/prof.json" <<'PY' || fail "profile check"
import json, sys
p = json.load(open(sys.argv[1]))
s = p["simulate"]
assert p["format"] == "dsi-profile" and len(p["target"]["forward_ms_by_tokens"]) == 5, p
assert 4.9 < s["t_ms"] + s["per_token_ms"] < 6.5 and 0.45 < s["c_ms"] < 0.9, s
assert 0.5 < s["a"] < 0.9 and 4.9 < p["target"]["ttft_ms"] < 7, p
print("ok: profile", s)
PY
    timeout 120 "$dsi" simulate --profile "$tmp/prof.json" -k 3 --sp 2 --runs 5 --max-k 3 --max-sp 3 \
      >"$tmp/out" 2>&1 || fail "simulate --profile failed"
    cat "$tmp/out"
    grep -q "from $tmp/prof.json" "$tmp/out" || fail "profile not used"
    # With sampling, a is the expected speculative-sampling acceptance, below the greedy rate.
    timeout 120 "$dsi" profile --config "$cfg" --set synthetic.t_ms=2 --set sampling.temperature=1 \
      --prompts 2 --tokens 30 --max-draft 2 --json >"$tmp/ps.json" 2>"$tmp/out" || fail "sampled profile failed"
    python3 -c "
import json, sys
p = json.load(open('$tmp/ps.json'))
assert p['sampling']['temperature'] == 1 and 0 < p['simulate']['a'] == p['acceptance_rate'] < p['acceptance_rate_greedy'], p
print('ok: sampled acceptance', p['acceptance_rate'], 'greedy', p['acceptance_rate_greedy'])
" || fail "sampled profile check" ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
