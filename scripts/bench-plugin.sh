#!/usr/bin/env bash
# The cost of the plugin boundary: RL (or SalUn) from the example cdylib vs the same code linked
# as a built-in, runs alternated, same start and seed (weights must be identical).
#   scripts/bench-plugin.sh [--method SalUn] [--arch small-cnn] [--samples 1280] [--epochs 2]
#                           [--batch 128] [--repeats 3] [--threads N] [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release --quiet -p unlearn-rl-salun --lib --example bench_abi
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/examples/bench_abi" --library "$target/release/libunlearn_rl_salun.so" "$@"
