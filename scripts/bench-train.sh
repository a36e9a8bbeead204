#!/usr/bin/env bash
# Training throughput: unlearn's loop vs the same loop in PyTorch eager (same libtorch, same
# machine, same run), on random CIFAR-sized data with crop + flip augmentation on the device.
# The two runs alternate (unlearn, PyTorch, unlearn, PyTorch) so both see the same machine load.
#
#   scripts/bench-train.sh                                  # ResNet-20, batch 256
#   scripts/bench-train.sh --arch resnet18 --batch 64 --samples 640
#   scripts/bench-train.sh --device cuda --samples 25600
#
# Arguments go to both sides: --arch --batch --samples --epochs --size --classes --threads --device
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./scripts/setup.sh
cargo build --quiet --release -p unlearn-api --example bench_train
target=${CARGO_TARGET_DIR:-target}
for round in 1 2; do
  "$target/release/examples/bench_train" "$@"
  .venv/bin/python bench/train/bench_train.py "$@"
done | .venv/bin/python bench/train/summarize.py
