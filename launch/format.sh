#!/usr/bin/env bash
# clang-format over every tracked C++/CUDA source (.h .cc .cu .cuh) with the repository's
# .clang-format. CI runs the check (ctest `format`, label lint).
#
#   launch/format.sh           rewrite the files in place
#   launch/format.sh --check   change nothing; list the files that differ (with the number of
#                              lines that would change) and exit 1 if there are any
#
# Needs clang-format 14 (Debian 12's `clang-format` package; launch/setup.sh installs it):
# other versions format some constructs differently. CLANG_FORMAT names another binary.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: launch/format.sh [--check]" >&2; exit 2 ;;
esac

cf=${CLANG_FORMAT:-clang-format}
if ! command -v "$cf" >/dev/null; then
  echo "format: $cf not found (apt-get install clang-format, or set CLANG_FORMAT)" >&2
  exit 2
fi
version=$("$cf" --version)
if ! [[ $version =~ version\ 14\. ]]; then
  echo "format: need clang-format 14, $cf is: $version" >&2
  exit 2
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "format: $(pwd) is not a git checkout; the files to format are the tracked ones" >&2
  exit 2
fi

mapfile -t files < <(git ls-files -- '*.h' '*.cc' '*.cu' '*.cuh')
if [ ${#files[@]} -eq 0 ]; then
  echo "format: no tracked sources found" >&2
  exit 2
fi

if [ $check -eq 0 ]; then
  "$cf" -i --style=file "${files[@]}"
  echo "format: formatted ${#files[@]} files"
  exit 0
fi

bad=0
lines=0
for f in "${files[@]}"; do
  d=$("$cf" --style=file "$f" | diff -- "$f" - || true)
  if [ -n "$d" ]; then
    # Lines of the file that the formatted version replaces (at least 1: it may only add).
    n=$(grep -c '^<' <<<"$d" || true)
    [ "$n" -gt 0 ] || n=1
    echo "  $f: $n lines"
    bad=$((bad + 1))
    lines=$((lines + n))
  fi
done
if [ $bad -gt 0 ]; then
  echo "format: $bad of ${#files[@]} files differ from clang-format ($lines lines);" \
       "run launch/format.sh to fix them"
  exit 1
fi
echo "format: ${#files[@]} files are formatted"
