#!/usr/bin/env bash
# Builds the browser viewer into one folder (default web/dist/): index.html, the JS, the wasm.
# Publish that folder on any static web host (https), or serve it locally for testing.
#
# Needs (scripts/install-deps.sh installs them): the wasm32-unknown-unknown Rust target, a
# clang with a WebAssembly backend (ring's C code; Debian: clang-16 lld-16), and the
# wasm-bindgen CLI of exactly the version in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-web/dist}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

# .cargo/config.toml names Debian 12's clang-16; take another versioned or plain clang here.
for v in -16 -17 -18 -19 -20 ""; do
  if command -v "clang$v" >/dev/null && command -v "llvm-ar$v" >/dev/null; then
    export CC_wasm32_unknown_unknown=${CC_wasm32_unknown_unknown:-clang$v}
    export AR_wasm32_unknown_unknown=${AR_wasm32_unknown_unknown:-llvm-ar$v}
    break
  fi
done

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$want" != "$have" ]; then
  echo "build-web: need wasm-bindgen $want (found: ${have:-none}): cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

cargo build --locked -p pixelpass-web --target wasm32-unknown-unknown --profile web
rm -rf "$out"
mkdir -p "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" \
  "$target_dir/wasm32-unknown-unknown/web/pixelpass_web.wasm"
cp web/www/* "$out/"
wasm=$(stat -c %s "$out/pkg/pixelpass_web_bg.wasm")
gz=$(gzip -9 -c "$out/pkg/pixelpass_web_bg.wasm" | wc -c)
echo "build-web: $out ready (wasm $((wasm / 1024)) KiB, $((gz / 1024)) KiB gzipped)"
