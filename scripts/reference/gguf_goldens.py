#!/usr/bin/env python3
"""Golden values from Hugging Face transformers for a GGUF checkpoint (tests/model_gguf.rs).

Run by hand (not by CI) in an environment with torch, transformers, gguf and accelerate:

    python3 -m pip install torch transformers gguf accelerate safetensors
    GGUF=$(scripts/fetch-smollm2.sh)
    python3 scripts/reference/gguf_goldens.py --gguf "$GGUF" --out tests/golden/smollm2_gguf

transformers dequantises the file with the gguf package, undoes llama.cpp's q/k permutation and
builds the tokenizer from the metadata (AutoTokenizer / AutoModelForCausalLM with gguf_file=).
The model runs in float32 with eager attention. Writes OUT.safetensors (logits at a few
positions, hidden-state rows in HF's convention: index 0 = embeddings, index L = after the final
norm, attention rows) and OUT.json (the prompts, their token ids and offsets, the positions,
layers and heads of the tensors, package versions).
"""
import argparse
import json
import os

import gguf
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# Prompts: a plain sentence, a ChatML conversation, a grid in the puzzles' dict style, and text
# that exercises the byte-level pre-tokenizer (digits, unicode, whitespace runs).
PROMPTS = [
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "{(0, 0): 'B', (0, 1): 'R', (1, 0): 'G', (1, 1): 'B'}\nWhat is the color of the cell (1,0)? Answer:",
]
TOKENIZE_ONLY = [
    "Grüße aus Zürich, 東京 🙂 — naïve café",
    "  two  spaces\n\n\ttab 2026-12-07 3.14159 x=-42",
    "<|endoftext|>it's we'll they've I'M",
]
LAYERS = [0, 1, 15, 29, 30]
ATTN = [(0, 0), (7, 4), (29, 8)]  # (layer, head): the last query row of every prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tensors = {}
    meta = {
        "gguf_file": name,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": getattr(gguf, "__version__", "?"),
        },
        "prompts": [],
        "tokenize_only": [],
        "layers": LAYERS,
        "attn": ATTN,
    }
    for p, text in enumerate(PROMPTS):
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"]
        s = len(ids)
        positions = sorted({0, s // 2, s - 1})
        with torch.no_grad():
            out = model(
                torch.tensor([ids]), output_hidden_states=True, output_attentions=True
            )
        tensors[f"logits.{p}"] = out.logits[0, positions].contiguous()
        for l in LAYERS:
            tensors[f"hidden.{p}.{l}"] = out.hidden_states[l][0].contiguous()
        for l, h in ATTN:
            tensors[f"attn.{p}.{l}.{h}"] = out.attentions[l][0, h, s - 1].contiguous()
        meta["prompts"].append(
            {"text": text, "ids": ids, "offsets": enc["offset_mapping"], "positions": positions}
        )
    for text in TOKENIZE_ONLY:
        meta["tokenize_only"].append(
            {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}
        )
    save_file(tensors, args.out + ".safetensors", metadata={"source": "transformers"})
    with open(args.out + ".json", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}.safetensors ({len(tensors)} tensors) and {args.out}.json")


if __name__ == "__main__":
    main()
