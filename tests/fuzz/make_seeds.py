#!/usr/bin/env python3
"""Writes small, valid GGUF seeds for the fuzzer from the test data files: every array is cut
to its first 24 elements and every tensor to its first two rows of one block (data copied from
the original), so the seeds keep the real key names, value types and tensor types while staying
a few KiB each. Also writes the first 16 KiB of each vocab file (a truncated seed).

    make_seeds.py TESTDATA_DIR OUT_DIR
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


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
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
