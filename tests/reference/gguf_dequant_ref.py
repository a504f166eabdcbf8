#!/usr/bin/python3
"""Reference dequantization by the `gguf` package (PyPI, numpy), for tests/unit/gguf_dequant_test.cc.

Two modes, both writing into --out (a folder that exists):

  --random: for every type below, random blocks (random bytes, with the half-float scale fields
    set to random finite values so that the output is finite) and gguf.quants.dequantize's float32
    output of them: <name>.bin (raw blocks), <name>.f32 (little-endian float32), and one line
    "<type id> <name> <n elements>" per type in manifest.txt.

  --gguf FILE: for every tensor type in FILE, its smallest tensor, dequantized by gguf from the
    file's own bytes (gguf.GGUFReader): <i>.f32 and one line "<tensor name> <type id> <n>" per
    tensor in manifest.txt.

The C++ side compares its own dequantizer bit for bit with these files. Nothing here shares code
with dsi.
"""
import argparse
import os
import sys

import numpy as np

try:
    import gguf
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
except ImportError as e:  # the test checks for the package first; this is for a manual run
    sys.exit(f"gguf_dequant_ref: the gguf package is missing ({e}); pip install gguf")

# Byte offsets of the IEEE half scale fields inside one block of each quantised type.
HALF_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
FLOAT_TYPES = [T.F32, T.F16, T.BF16]


def random_halves(rng, n):
    """Finite halves over the whole range: normals of random exponent, a few subnormals and
    zeros, both signs."""
    exp = rng.integers(-24, 16, size=n).astype(np.float64)
    v = rng.uniform(1.0, 2.0, size=n) * np.exp2(exp) * rng.choice([-1.0, 1.0], size=n)
    v[rng.random(n) < 0.05] = 0.0
    return np.clip(v, -65504, 65504).astype(np.float16)


def random_blocks(rng, qtype, n_blocks):
    block, size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        # Random bit patterns, NaN payloads and infinities included: F32 is a plain copy.
        raw = rng.integers(0, 256, size=n_blocks * size, dtype=np.uint8)
        return raw
    if qtype in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        if qtype == T.F16:
            # No NaNs: converters may quieten a signalling NaN's payload, and no weight is NaN.
            nan = (bits & 0x7C00) == 0x7C00
            bits[nan & ((bits & 0x03FF) != 0)] &= np.uint16(0xFC00)  # NaN -> inf of that sign
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        raw[:, off:off + 2] = random_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def write_f32(path, values):
    np.ascontiguousarray(values, dtype="<f4").tofile(path)


def run_random(out, seed, n_blocks):
    rng = np.random.default_rng(seed)
    lines = []
    for qtype in FLOAT_TYPES + list(HALF_FIELDS):
        block, _ = GGML_QUANT_SIZES[qtype]
        count = n_blocks * (256 // block) if block < 256 else n_blocks  # 256 elements at least
        raw = random_blocks(rng, qtype, count)
        y = gguf.quants.dequantize(raw, qtype).reshape(-1).astype(np.float32, copy=False)
        n = count * block
        assert y.size == n, (qtype.name, y.size, n)
        name = qtype.name.lower()
        raw.tofile(os.path.join(out, name + ".bin"))
        write_f32(os.path.join(out, name + ".f32"), y)
        lines.append(f"{int(qtype)} {name} {n}\n")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.writelines(lines)


def run_file(out, path):
    reader = gguf.GGUFReader(path)
    smallest = {}
    for t in reader.tensors:
        if t.tensor_type not in smallest or t.n_elements < smallest[t.tensor_type].n_elements:
            smallest[t.tensor_type] = t
    lines = []
    for i, (qtype, t) in enumerate(sorted(smallest.items(), key=lambda kv: int(kv[0]))):
        y = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(-1)
        write_f32(os.path.join(out, f"{i}.f32"), y.astype(np.float32, copy=False))
        lines.append(f"{t.name} {int(qtype)} {y.size}\n")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.writelines(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--random", action="store_true")
    g.add_argument("--gguf")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--blocks", type=int, default=64, help="256-element groups per type")
    a = ap.parse_args()
    if a.random:
        run_random(a.out, a.seed, a.blocks)
    else:
        run_file(a.out, a.gguf)


if __name__ == "__main__":
    main()
