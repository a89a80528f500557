#!/usr/bin/env bash
# The project's test command: formatting, lints, every test, a protocol fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every test must really run: a missing tool or privilege fails it instead of skipping it.
export PIXELPASS_REQUIRE_ALL=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The window (`--features gui`) is linted and tested in the same run as everything else: one
# test build with the feature instead of a second one without it.
cargo clippy --workspace --all-targets --features pixelpass/gui -- -D warnings
# The browser viewer's code outside its pure parts exists in the wasm32 build only: lint it
# there, and build the page the browser test opens (web/dist).
cargo clippy -p pixelpass-web --target wasm32-unknown-unknown -- -D warnings
bash scripts/build-web.sh
cargo test --workspace --features pixelpass/gui

# Fuzz the wire-format decoders briefly (needs a nightly toolchain; cargo-fuzz is installed
# from crates.io when missing). FUZZ_RUNS=0 skips it.
runs=${FUZZ_RUNS:-1000000}
if [ "$runs" != 0 ]; then
  if cargo +nightly --version >/dev/null 2>&1; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
    (cd protocol && cargo +nightly fuzz run protocol -- -runs="$runs" -rss_limit_mb=4096 2>&1 | tail -n 1)
  else
    echo "fuzz: SKIPPED (no nightly toolchain)"
  fi
fi
