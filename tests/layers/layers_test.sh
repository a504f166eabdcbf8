#!/usr/bin/env bash
# The layer check passes on the tree, and fails on a copy where a lower layer includes a
# higher one or a folder is missing from the diagram (so that the check itself can fail).
set -euo pipefail
root=$1
check=$root/tests/layers/check_layers.py
python3 "$check" "$root"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/docs" "$tmp/common" "$tmp/core" "$tmp/extra"
cp "$root/docs/design.md" "$tmp/docs/"
for d in $(sed -n '/<!-- layers -->/,/<!-- \/layers -->/p' "$root/docs/design.md" | grep -oE '^[a-z_]+/'); do
  mkdir -p "$tmp/$d" && echo '#pragma once' > "$tmp/$d/x.h"
done
echo '#include "core/x.h"' > "$tmp/common/up.h"
echo '#include <mpi.h>' > "$tmp/core/mpi_user.cc"
echo 'int x;' > "$tmp/extra/y.cc"
if out=$(python3 "$check" "$tmp"); then
  echo "layers_test: the check passed a tree with violations:"; echo "$out"; exit 1
fi
for want in "common/up.h: includes core/x.h" "core/mpi_user.cc: includes <mpi.h>" \
            "extra/ holds sources but is not a layer"; do
  grep -qF "$want" <<<"$out" || { echo "layers_test: missed: $want"; echo "$out"; exit 1; }
done
echo "layers_test: the check passes here and catches an upward include, <mpi.h> in core/, an undrawn folder"
