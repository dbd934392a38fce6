#!/usr/bin/env python3
"""Golden values from Hugging Face transformers for the Rust parity test (tests/model_hf_parity.rs).

Run by hand (not by CI) on a machine with torch, transformers and safetensors:

    cargo run --release -- init-model --preset tiny --seed 0 --out /tmp/tiny_s0
    python3 scripts/reference/hf_goldens.py --model /tmp/tiny_s0 --out tests/golden/tiny_s0.json

then commit tests/golden/tiny_s0.json. The model is loaded with AutoModelForCausalLM in float32
with eager attention; a fixed token id sequence (written into the golden) is run with
output_hidden_states and output_attentions. The golden holds logits at a few positions,
hidden-state rows (HF convention: index 0 = embeddings, index L = after the final norm),
attention rows, per-head outputs (each head's Σ_t a_pt·v_t through its slice of o_proj,
computed here from the attention probabilities, v_proj and o_proj) and weight checksums so the
Rust test can tell a changed fixture from a numerical mismatch.
"""
import argparse
import json

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

# Fixed token ids (avoid 0..2, the special tokens; all < 1024, the tiny fixture's vocab).
TOKEN_IDS = [1, 17, 412, 95, 233, 871, 5, 640, 12, 999, 318, 77, 450, 263, 1000, 88, 541, 3,
             702, 129, 256, 384, 47, 911]
POSITIONS = [0, 5, 11, 23]
CHECKSUM_TENSORS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
]


def row(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="fixture folder (minarc init-model --preset tiny --seed 0)")
    ap.add_argument("--out", required=True, help="output JSON (tests/golden/tiny_s0.json)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    n, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // n
    group = n // kvh

    ids = torch.tensor([TOKEN_IDS])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    hs = out.hidden_states  # L+1 tensors [1,s,e]
    att = out.attentions  # L tensors [1,n,s,s]

    golden = {
        "fixture": {"preset": "tiny", "seed": 0},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "token_ids": TOKEN_IDS,
        "positions": POSITIONS,
        "logits": [{"pos": p, "values": row(out.logits[0, p])} for p in POSITIONS],
        "hidden_states": [
            {"layer": l, "pos": p, "values": row(hs[l][0, p])}
            for l in range(len(hs))
            for p in POSITIONS
        ],
        "attentions": [],
        "head_outputs": [],
    }

    with torch.no_grad():
        for l, layer in enumerate(model.model.layers):
            xn = layer.input_layernorm(hs[l])  # [1,s,e]
            v = layer.self_attn.v_proj(xn)[0].view(len(TOKEN_IDS), kvh, d)  # [s,kvh,d]
            wo = layer.self_attn.o_proj.weight  # [e, n*d]
            for h in range(n):
                g = h // group
                for p in POSITIONS:
                    a = att[l][0, h, p]  # [s]
                    golden["attentions"].append({"layer": l, "head": h, "pos": p, "values": row(a)})
                    o = (a[:, None] * v[:, g, :]).sum(0)  # [d]
                    ho = wo[:, h * d:(h + 1) * d] @ o  # [e]
                    golden["head_outputs"].append({"layer": l, "head": h, "pos": p, "values": row(ho)})

    weights = load_file(f"{args.model}/model.safetensors")
    golden["weight_sums"] = {name: float(weights[name].double().sum()) for name in CHECKSUM_TENSORS}

    with open(args.out, "w") as f:
        json.dump(golden, f)
    print(f"wrote {args.out}: {len(golden['hidden_states'])} hidden rows, "
          f"{len(golden['attentions'])} attention rows, {len(golden['head_outputs'])} head outputs")


if __name__ == "__main__":
    main()
