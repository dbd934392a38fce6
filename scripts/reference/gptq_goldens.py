#!/usr/bin/env python3
"""Goldens for minarc's GPTQ reader (tests/model_gptq.rs), from an independent numpy packer.

Run by hand (not by CI) with numpy and safetensors:

    python3 scripts/reference/gptq_goldens.py --out tests/golden/gptq_numpy

For each case a random weight W [out, in] (numpy, fixed seed) is quantised round-to-nearest the
way AutoGPTQ lays it out (qweight int32 [in/pack, out], low bits first over consecutive input
rows; qzeros int32 [groups, out/pack] over consecutive output columns, v1 storing zero - 1;
scales float16 [groups, out]; g_idx int32 [in]) and dequantised back in numpy:
W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]). OUT.safetensors holds
`<case>.qweight/.qzeros/.scales/.g_idx` and `<case>.dense` (the numpy dequantisation, [out, in]);
OUT.json the settings of each case.
"""
import argparse
import json

import numpy as np
from safetensors.numpy import save_file

CASES = [
    # name, bits, group_size, sym, desc_act, format, out, in
    ("sym4_g16_v1", 4, 16, True, False, "gptq", 24, 64),
    ("asym4_g32_v2_desc", 4, 32, False, True, "gptq_v2", 16, 96),
    ("sym8_all_v1", 8, -1, True, False, "gptq", 12, 40),
    ("asym4_zero0_v2", 4, 8, False, False, "gptq_v2", 8, 32),
]


def quantise(w, bits, gs, sym, desc_act, fmt, rng):
    out_dim, in_dim = w.shape
    maxq = 2 ** bits - 1
    pack = 32 // bits
    gs = in_dim if gs < 0 else gs
    groups = -(-in_dim // gs)
    order = np.arange(in_dim)
    if desc_act:
        order = rng.permutation(in_dim)
    g_idx = np.empty(in_dim, dtype=np.int32)
    g_idx[order] = np.arange(in_dim) // gs
    scales = np.zeros((groups, out_dim), dtype=np.float32)
    zeros = np.zeros((groups, out_dim), dtype=np.int64)
    for g in range(groups):
        rows = w[:, g_idx == g]  # [out, rows]
        lo = np.minimum(rows.min(axis=1), 0)
        hi = np.maximum(rows.max(axis=1), 0)
        if sym:
            hi = np.maximum(hi, -lo)
            lo = -hi
        s = (hi - lo) / maxq
        s[s == 0] = 1
        s = s.astype(np.float16).astype(np.float32)
        z = np.full(out_dim, (maxq + 1) // 2) if sym else np.clip(np.round(-lo / s), 0, maxq)
        scales[g] = s
        zeros[g] = z
    q = np.clip(np.round(w.T / scales[g_idx] + zeros[g_idx]), 0, maxq).astype(np.uint64)  # [in, out]
    qweight = np.zeros((in_dim // pack, out_dim), dtype=np.uint64)
    for j in range(pack):
        qweight |= q[j::pack] << np.uint64(bits * j)
    stored = zeros - (1 if fmt == "gptq" else 0)
    assert (stored >= 0).all(), "v1 cannot store a zero of 0"
    qzeros = np.zeros((groups, out_dim // pack), dtype=np.uint64)
    for j in range(pack):
        qzeros |= stored[:, j::pack].astype(np.uint64) << np.uint64(bits * j)
    # unpack again from the packed words alone (the golden the reader must match)
    uq = np.zeros((in_dim, out_dim), dtype=np.int64)
    for j in range(pack):
        uq[j::pack] = (qweight >> np.uint64(bits * j)) & np.uint64(maxq)
    uz = np.zeros((groups, out_dim), dtype=np.int64)
    for j in range(pack):
        uz[:, j::pack] = (qzeros >> np.uint64(bits * j)) & np.uint64(maxq)
    if fmt == "gptq":
        uz = uz + 1
    dense = (scales[g_idx] * (uq - uz[g_idx])).T.astype(np.float32)  # [out, in]
    as_i32 = lambda a: a.astype(np.uint32).view(np.int32)
    return {
        "qweight": as_i32(qweight),
        "qzeros": as_i32(qzeros),
        "scales": scales.astype(np.float16),
        "g_idx": g_idx,
        "dense": dense,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    tensors, meta = {}, {}
    for name, bits, gs, sym, desc_act, fmt, out_dim, in_dim in CASES:
        w = rng.normal(0, 0.05, size=(out_dim, in_dim)).astype(np.float32)
        if name.endswith("zero0_v2"):
            w = np.abs(w)  # every group's minimum is above 0: zero 0 everywhere
        for k, v in quantise(w, bits, gs, sym, desc_act, fmt, rng).items():
            tensors[f"{name}.{k}"] = np.ascontiguousarray(v)
        meta[name] = {"bits": bits, "group_size": gs, "sym": sym, "desc_act": desc_act,
                      "checkpoint_format": fmt, "out": out_dim, "in": in_dim}
    save_file(tensors, args.out + ".safetensors")
    with open(args.out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}.safetensors ({len(tensors)} tensors) and {args.out}.json")


if __name__ == "__main__":
    main()
