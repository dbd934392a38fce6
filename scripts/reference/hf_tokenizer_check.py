#!/usr/bin/env python3
"""Checks that a fixture model folder's tokenizer loads in Hugging Face transformers and agrees
with minarc's token positions. Run by hand (not by CI) on a machine with transformers:

    cargo run --release -- init-model --preset tiny --seed 0 --out /tmp/tiny_s0
    cargo run --release -- puzzles --seeds 0..5 --tokenizer /tmp/tiny_s0 --out /tmp/p.jsonl
    python3 scripts/reference/hf_tokenizer_check.py --model /tmp/tiny_s0 --data /tmp/p.jsonl

For every sample: the prompt's token count equals minarc's n_tokens, the token at each
answer_index is the sample's label, and the candidate ids decode to the colour letters. It also
renders the chat template from tokenizer_config.json and checks that the prompt starts with the
rendered system+user prefix. Prints one line per check and exits non-zero on any mismatch.
"""
import argparse
import json
import sys

from transformers import AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    failures = 0
    with open(args.data) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    for s in samples:
        ids = tok(s["prompt"], add_special_tokens=True)["input_ids"]
        ok_len = len(ids) == s["n_tokens"]
        ok_labels = all(ids[i] == l for i, l in zip(s["answer_indices"], s["labels"]))
        letters = [tok.decode([c]).strip() for c in s["candidate_ids"]]
        ok_cands = all(len(x) == 1 and x.isalpha() for x in letters)
        print(f"sample {s['index']}: n_tokens {len(ids)} vs {s['n_tokens']} ({'ok' if ok_len else 'MISMATCH'}), "
              f"labels {'ok' if ok_labels else 'MISMATCH'}, candidates {letters} ({'ok' if ok_cands else 'MISMATCH'})")
        failures += (not ok_len) + (not ok_labels) + (not ok_cands)
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "@@"}],
        tokenize=False, add_generation_prompt=True)
    prefix = rendered.split("@@")[0]
    ok_prefix = all(s["prompt"].startswith(prefix) for s in samples)
    print(f"chat template prefix {prefix!r}: {'ok' if ok_prefix else 'MISMATCH'}")
    failures += not ok_prefix
    print(f"{failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
