#!/usr/bin/python3
"""Independent numpy reference for the llama forward pass, used by the C++ engine tests.

It reads a GGUF file with its own minimal reader (struct + numpy; F32, F16, BF16, Q8_0, Q4_0,
Q4_1), runs a plain float64 prefill of the given token ids written straight from the formulas
(RMSNorm, RoPE as complex rotation, causal grouped-query softmax attention, SwiGLU MLP) and writes
the logits of every position. It shares no code with the C++ engine.

Output file: b"DSIREF01", int32 n_tokens, int32 n_vocab, then float32 (n_tokens, n_vocab), all
little-endian.

usage: llama_ref.py --model M.gguf --tokens 1,2,3 --out logits.bin [--layers 0,2]
"""
import argparse
import struct
import sys

import numpy as np

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}


class Gguf:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.buf = f.read()
        self.pos = 0
        if self.buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        self.pos = 4
        version, n_tensors, n_kv = self._u32(), self._u64(), self._u64()
        if version not in (2, 3):
            raise ValueError("unsupported GGUF version %d" % version)
        self.kv = {}
        for _ in range(n_kv):
            key = self._str()
            self.kv[key] = self._value(self._u32())
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u32()
            ne = [self._u64() for _ in range(n_dims)]
            ttype = self._u32()
            off = self._u64()
            infos.append((name, ne, ttype, off))
        align = self.kv.get("general.alignment", 32)
        data_start = (self.pos + align - 1) // align * align
        self.tensors = {n: (ne, t, data_start + off) for n, ne, t, off in infos}

    def _take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def _u32(self):
        return self._take("<I")

    def _u64(self):
        return self._take("<Q")

    def _str(self):
        n = self._u64()
        s = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _value(self, t):
        if t in GGUF_SCALARS:
            return self._take(GGUF_SCALARS[t])
        if t == 8:
            return self._str()
        if t == 9:
            et, n = self._u32(), self._u64()
            return [self._value(et) for _ in range(n)]
        raise ValueError("bad GGUF value type %d" % t)

    def tensor(self, name):
        """The tensor as float64, shaped (ne[-1], ..., ne[0]) so that ne[0] is the last axis."""
        ne, t, off = self.tensors[name]
        n = int(np.prod(ne))
        if t == 0:
            x = np.frombuffer(self.buf, np.float32, n, off).astype(np.float64)
        elif t == 1:
            x = np.frombuffer(self.buf, np.float16, n, off).astype(np.float64)
        elif t == 30:
            u = np.frombuffer(self.buf, np.uint16, n, off).astype(np.uint32) << 16
            x = u.view(np.float32).astype(np.float64)
        elif t in (2, 3, 8):
            x = dequant_blocks(self.buf, off, n, t)
        else:
            raise ValueError("tensor %s: unsupported type %d" % (name, t))
        return x.reshape(list(reversed(ne)))


def dequant_blocks(buf, off, n, t):
    """Q8_0: x = d*q. Q4_0: x = d*(q-8). Q4_1: x = d*q + m. 32 values per block; in the 4-bit
    types byte j of a block holds value j in its low nibble and value j+16 in its high one."""
    nb = n // 32
    if t == 8:
        blk = np.dtype([("d", "<f2"), ("q", "i1", 32)])
    elif t == 2:
        blk = np.dtype([("d", "<f2"), ("q", "u1", 16)])
    else:
        blk = np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)])
    b = np.frombuffer(buf, blk, nb, off)
    d = b["d"].astype(np.float64)[:, None]
    if t == 8:
        return (d * b["q"].astype(np.float64)).reshape(-1)
    q = np.concatenate([b["q"] & 0x0F, b["q"] >> 4], axis=1).astype(np.float64)
    if t == 2:
        return (d * (q - 8.0)).reshape(-1)
    return (d * q + b["m"].astype(np.float64)[:, None]).reshape(-1)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, rot_dim, adjacent):
    """x: (T, H, D). Rotate pair i by pos*base^(-2i/rot_dim) as multiplication by e^{i theta}."""
    half = rot_dim // 2
    theta = pos[:, None] * base ** (-2.0 * np.arange(half) / rot_dim)  # (T, half)
    rot = np.exp(1j * theta)[:, None, :]
    y = x.copy()
    if adjacent:
        z = (x[..., 0:rot_dim:2] + 1j * x[..., 1:rot_dim:2]) * rot
        y[..., 0:rot_dim:2], y[..., 1:rot_dim:2] = z.real, z.imag
    else:
        z = (x[..., :half] + 1j * x[..., half:rot_dim]) * rot
        y[..., :half], y[..., half:rot_dim] = z.real, z.imag
    return y


def forward(g, tokens, layers=None):
    arch = g.kv["general.architecture"]
    p = lambda k: g.kv[arch + "." + k]
    dim, n_layers = p("embedding_length"), p("block_count")
    n_heads = p("attention.head_count")
    n_kv = p("attention.head_count_kv")
    eps = p("attention.layer_norm_rms_epsilon")
    base = g.kv.get(arch + ".rope.freq_base", 10000.0)
    hd = dim // n_heads
    rot_dim = g.kv.get(arch + ".rope.dimension_count", hd)
    adjacent = arch != "qwen2"  # llama.cpp: LLAMA_ROPE_TYPE_NORM for llama, NEOX for qwen2
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    emb = g.tensor("token_embd.weight")
    x = emb[np.array(tokens)]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for l in (range(n_layers) if layers is None else layers):
        w = lambda n: g.tensor("blk.%d.%s" % (l, n))
        b = lambda n: g.tensor("blk.%d.%s" % (l, n)) if ("blk.%d.%s" % (l, n)) in g.tensors else 0.0
        h = rmsnorm(x, w("attn_norm.weight"), eps)
        q = (h @ w("attn_q.weight").T + b("attn_q.bias")).reshape(T, n_heads, hd)
        k = (h @ w("attn_k.weight").T + b("attn_k.bias")).reshape(T, n_kv, hd)
        v = (h @ w("attn_v.weight").T + b("attn_v.bias")).reshape(T, n_kv, hd)
        q, k = rope(q, pos, base, rot_dim, adjacent), rope(k, pos, base, rot_dim, adjacent)
        rep = n_heads // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # (T, H, hd)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s = np.where(causal[None], s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = s / s.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", a, v).reshape(T, n_heads * hd)
        x = x + o @ w("attn_output.weight").T
        h = rmsnorm(x, w("ffn_norm.weight"), eps)
        gt = h @ w("ffn_gate.weight").T
        x = x + (gt / (1.0 + np.exp(-gt)) * (h @ w("ffn_up.weight").T)) @ w("ffn_down.weight").T
    h = rmsnorm(x, g.tensor("output_norm.weight"), eps)
    head = g.tensor("output.weight") if "output.weight" in g.tensors else emb
    return h @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", default=None, help="comma-separated kept layers (default all)")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",")]
    layers = None if a.layers is None else [int(t) for t in a.layers.split(",")]
    logits = forward(Gguf(a.model), tokens, layers).astype(np.float32)
    with open(a.out, "wb") as f:
        f.write(b"DSIREF01" + struct.pack("<ii", *logits.shape) + logits.tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
