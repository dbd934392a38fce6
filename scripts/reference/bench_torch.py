#!/usr/bin/env python3
"""Times the decoder body of a model folder with Hugging Face transformers (sdpa attention) on
the CPU, for side-by-side ratios with `minarc bench forward --model DIR` (run by hand; needs
`pip install torch transformers`). Alternate it with minarc (A B A B) so drift hits both.

    python scripts/reference/bench_torch.py --model DIR [--tokens 600] [--reps 3] --json hf.json
        [--threads 2] [--dtypes f32,bf16]
    minarc bench forward --model DIR --dtype bf16 --torch hf.json   # ratios

The prompt is `tokens` token ids 0..tokens mod vocab (as `minarc bench forward` uses ids, not
text); the body is `Qwen2Model` (no lm_head), as minarc's plain forward without logits.
"""
import argparse, json, statistics, time

import torch
from transformers import AutoConfig, AutoModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = AutoConfig.from_pretrained(a.model)
    ids = torch.arange(a.tokens).remainder(cfg.vocab_size).unsqueeze(0)
    out = {"model": a.model, "tokens": a.tokens, "threads": a.threads, "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "body": {}}
    for name in a.dtypes.split(","):
        dt = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
        m = AutoModel.from_pretrained(a.model, dtype=dt, attn_implementation="sdpa").eval()
        with torch.inference_mode():
            m(ids)  # warm-up
            ts = []
            for _ in range(a.reps):
                t = time.perf_counter()
                m(ids)
                ts.append(time.perf_counter() - t)
        out["body"][name] = {"median_s": statistics.median(ts), "times_s": ts}
        print(f"HF {type(m).__name__} sdpa {name}: median {statistics.median(ts):.3f} s "
              f"({', '.join(f'{x:.3f}' for x in ts)})")
        del m
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
