#!/usr/bin/env python3
"""Writes small, valid GGUF seeds for the fuzzer. One is built here: every key value type
(scalars, strings, arrays, a byte-fallback SPM vocabulary) and a tensor of each supported type
(F32, F16, BF16, Q8_0, Q4_0, Q4_1). The others come from the GGUF files of the outside test
data when the folder exists: every array is cut to its first 24 elements and every tensor to
its first two rows of one block (data copied from the original), so the seeds keep the real
key names, value types and tensor types while staying a few KiB each; plus the first 16 KiB of
each vocab file (a truncated seed).

    make_seeds.py TESTDATA_DIR OUT_DIR      (TESTDATA_DIR may be absent: built seed only)
"""
import os
import struct
import sys

SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
          12: "d"}
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}


class Reader:
    def __init__(self, b):
        self.b, self.o = b, 0

    def get(self, fmt):
        v = struct.unpack_from("<" + fmt, self.b, self.o)
        self.o += struct.calcsize(fmt)
        return v[0]

    def raw(self, n):
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def string(self):
        return self.raw(self.get("Q"))

    def value(self, t, cut):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.get("I"), self.get("Q")
            items = [self.value(et, cut) for _ in range(n)]
            return (et, items[:cut])
        return self.get(SCALAR[t])


def put_value(out, t, v):
    if t == 8:
        out += struct.pack("<Q", len(v)) + v
    elif t == 9:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for x in items:
            put_value(out, et, x)
    else:
        out += struct.pack("<" + SCALAR[t], v)


def shrink(src, dst, cut=24):
    r = Reader(open(src, "rb").read())
    assert r.raw(4) == b"GGUF"
    version, n_t, n_kv = r.get("I"), r.get("Q"), r.get("Q")
    kvs = []
    for _ in range(n_kv):
        k = r.string()
        t = r.get("I")
        kvs.append((k, t, r.value(t, cut)))
    align = next((v for k, t, v in kvs if k == b"general.alignment"), 32)
    infos = []
    for _ in range(n_t):
        name = r.string()
        nd = r.get("I")
        ne = [r.get("Q") for _ in range(nd)]
        infos.append((name, ne, r.get("I"), r.get("Q")))
    data_start = (r.o + align - 1) // align * align
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, min(len(infos), 6), len(kvs)))
    for k, t, v in kvs:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t)
        put_value(out, t, v)
    blobs, off = [], 0
    for name, ne, t, o in infos[:6]:
        bs, ts = BLOCK.get(t, (1, 4))
        ne2 = [bs] + ([2] if len(ne) > 1 else [])
        nbytes = ts * (2 if len(ne) > 1 else 1)
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(ne2))
        out += b"".join(struct.pack("<Q", d) for d in ne2) + struct.pack("<IQ", t, off)
        blobs.append(r.b[data_start + o:data_start + o + nbytes])
        off += (nbytes + align - 1) // align * align
    for blob in blobs:
        while len(out) % align:
            out.append(0)
        out += blob
    open(dst, "wb").write(out)


def built_seed(dst):
    """A GGUF v3 file with every value type and one tensor per supported type."""
    def s(x):
        return x.encode()
    tokens = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)]
    tokens += [s("\u2581"), s("\u2581a"), b"a", b"b", s("\u2581ab")]
    kvs = [
        (b"general.architecture", 8, b"llama"),
        (b"general.alignment", 4, 32),
        (b"general.name", 8, b"fuzz seed"),
        (b"llama.context_length", 4, 64),
        (b"llama.embedding_length", 4, 32),
        (b"llama.block_count", 4, 1),
        (b"llama.feed_forward_length", 4, 64),
        (b"llama.attention.head_count", 4, 4),
        (b"llama.attention.head_count_kv", 4, 2),
        (b"llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        (b"llama.rope.freq_base", 6, 10000.0),
        (b"seed.u8", 0, 7), (b"seed.i8", 1, -7), (b"seed.u16", 2, 700), (b"seed.i16", 3, -700),
        (b"seed.i32", 5, -70000), (b"seed.u64", 10, 1 << 40), (b"seed.i64", 11, -(1 << 40)),
        (b"seed.f64", 12, 0.5), (b"seed.bool", 7, True),
        (b"seed.nested", 9, (9, [(4, [1, 2]), (8, [b"x"])])),
        (b"tokenizer.ggml.model", 8, b"llama"),
        (b"tokenizer.ggml.pre", 8, b"default"),
        (b"tokenizer.ggml.tokens", 9, (8, tokens)),
        (b"tokenizer.ggml.scores", 9, (6, [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)])),
        (b"tokenizer.ggml.token_type", 9, (5, [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))),
        (b"tokenizer.ggml.bos_token_id", 4, 1),
        (b"tokenizer.ggml.eos_token_id", 4, 2),
        (b"tokenizer.ggml.add_bos_token", 7, True),
    ]
    # (name, ggml type): two rows of 32 elements each, arbitrary bytes of the right length.
    tensors = [(b"t.f32", 0), (b"t.f16", 1), (b"t.bf16", 30), (b"t.q8_0", 8), (b"t.q4_0", 2),
               (b"t.q4_1", 3)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    for k, t, v in kvs:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t)
        put_value(out, t, v)
    blobs, off = [], 0
    for name, t in tensors:
        bs, ts = BLOCK[t]
        nbytes = 2 * (32 // bs) * ts
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", 2)
        out += struct.pack("<QQ", 32, 2) + struct.pack("<IQ", t, off)
        blobs.append(bytes((i * 37 + 11) % 251 for i in range(nbytes)))
        off += (nbytes + 31) // 32 * 32
    for blob in blobs:
        while len(out) % 32:
            out.append(0)
        out += blob
    open(os.path.join(dst, "built.gguf"), "wb").write(out)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    built_seed(dst)
    if not os.path.isdir(src):
        print(f"make_seeds: test data missing: {src}; only the built seed is used")
        return
    for f in sorted(os.listdir(src)):
        if not f.endswith(".gguf"):
            continue
        shrink(os.path.join(src, f), os.path.join(dst, "small-" + f))
        if f.startswith("ggml-vocab"):
            with open(os.path.join(src, f), "rb") as fin:
                head = fin.read(16384)
            open(os.path.join(dst, "head-" + f), "wb").write(head)


if __name__ == "__main__":
    main()
