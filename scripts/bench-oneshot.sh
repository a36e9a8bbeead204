#!/usr/bin/env bash
# Benchmark the one-shot unlearners FF and IU (plugins/unlearn-fisher) on the embedded digits and
# on a CIFAR-sized synthetic set (3x32x32, 10 classes), class-wise forgetting, 90% sparse small
# CNN. Prints seconds per method and per stage (Fisher accumulation, g_f + g_r, per-sample
# gradients, recursion), FF's backward-pass count (one per (batch, class): batched), and
# accuracies on the forget / retain / test sets before and after.
#
#   scripts/bench-oneshot.sh                          # CPU, libtorch's default thread count
#   scripts/bench-oneshot.sh --threads 1              # steadier on a machine shared with builds
#   scripts/bench-oneshot.sh --cifar-samples 2000 --device cuda
#   scripts/bench-oneshot.sh --skip-cifar --ff-alpha 1e-5 --iu-alpha 5 --samples 500
#
# Honours CARGO_TARGET_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./scripts/setup.sh
cargo build --quiet --release -p unlearn-fisher --example bench_oneshot
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/examples/bench_oneshot" "$@"
