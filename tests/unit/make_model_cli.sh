#!/usr/bin/env bash
# `dsi make-model` as a plain process (no mpirun): writes a small random model that the llama
# benchmark loads and runs, and refuses an inconsistent shape with a message and exit code 2.
# usage: make_model_cli.sh DSI LLAMA_BENCH
set -euo pipefail
dsi=$1
bench=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$dsi" make-model --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --vocab 300 --type q4_1 \
  --seed 7 -o "$tmp/m.gguf" | tee "$tmp/out.txt"
grep -q "dim 64 layers 2 heads 4/2 ffn 96 vocab 300 q4_1" "$tmp/out.txt"
"$bench" "$tmp/m.gguf" --prompt 4 --gen 4 --threads 1 --reps 1 > "$tmp/bench.txt"
grep -q "vocab 300, dim 64, layers 2, heads 4/2, ffn 96" "$tmp/bench.txt"
set +e
"$dsi" make-model --dim 100 --heads 3 -o "$tmp/bad.gguf" 2> "$tmp/err.txt"
rc=$?
set -e
[[ $rc -eq 2 ]] || { echo "expected exit 2 for a bad shape, got $rc"; exit 1; }
grep -q "heads must divide dim" "$tmp/err.txt"
[[ ! -e "$tmp/bad.gguf" ]]
echo "make-model CLI ok"
