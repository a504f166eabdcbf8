#!/usr/bin/env python3
"""Checks that the source folders form the layers drawn in docs/design.md and that every
include points down (or sideways within a layer).

The layer list is read from the block between the markers `<!-- layers -->` and
`<!-- /layers -->` in docs/design.md: one line per layer, the top one first as drawn, each
starting with `name/`. A lower layer never includes a higher one. Besides: only transport/
and launch/ may include <mpi.h>, and not the interfaces (transport/control_channel.h,
transport/data_channel.h) that the engines and the DSI logic see; CUDA, cuBLAS and NCCL
headers appear only in .cu files, files named *cuda* or *nccl*, or DSI_WITH_CUDA blocks.

Usage: check_layers.py REPO_ROOT   (exit 1 with one line per violation)
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
design = (root / "docs" / "design.md").read_text()
m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", design, re.S)
if not m:
    sys.exit("check_layers: docs/design.md has no <!-- layers --> block")
drawn = [re.match(r"\s*([a-z_]+)/", line) for line in m.group(1).splitlines()]
top_first = [d.group(1) for d in drawn if d]
rank = {name: len(top_first) - i for i, name in enumerate(top_first)}  # bottom = 1

errors = []
sources = [p for p in root.rglob("*")
           if p.suffix in (".h", ".cc", ".cu", ".cuh") and p.is_file()
           and not any(part.startswith(("build", ".")) for part in p.relative_to(root).parts)]
folders = {p.relative_to(root).parts[0] for p in sources if len(p.relative_to(root).parts) > 1}
for f in sorted(folders - set(rank) - {"tests"}):
    errors.append(f"{f}/ holds sources but is not a layer in docs/design.md")
for f in sorted(set(rank) - folders):
    errors.append(f"docs/design.md draws layer {f}/, which holds no sources")

include = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
for p in sorted(sources):
    rel = p.relative_to(root)
    layer = rel.parts[0]
    if layer == "tests" or layer not in rank:
        continue  # tests may use every layer
    text = p.read_text(errors="replace")
    for kind, inc in include.findall(text):
        if kind == '"':
            target = inc.split("/")[0]
            if target in rank and rank[target] > rank[layer]:
                errors.append(f"{rel}: includes {inc}: {layer}/ (layer {rank[layer]}) "
                              f"must not include {target}/ (layer {rank[target]}, higher)")
        else:
            interface = str(rel) in ("transport/control_channel.h", "transport/data_channel.h")
            if inc == "mpi.h" and (layer not in ("transport", "launch") or interface):
                errors.append(f"{rel}: includes <mpi.h>: only transport/ and launch/ may, "
                              f"and not the channel interfaces")
            gpu = inc.startswith(("cuda", "cublas", "nccl", "cub/"))
            if gpu and not (p.suffix in (".cu", ".cuh") or "cuda" in p.name or "nccl" in p.name
                            or "#ifdef DSI_WITH_CUDA" in text or "#if DSI_WITH_CUDA" in text
                            or "defined(DSI_WITH_CUDA)" in text):
                errors.append(f"{rel}: includes <{inc}> outside a CUDA file or a "
                              f"DSI_WITH_CUDA block")

for e in errors:
    print(e)
print(f"check_layers: {len(sources)} files, layers (bottom up) "
      f"{' < '.join(reversed(top_first))}: {len(errors)} violation(s)")
sys.exit(1 if errors else 0)
