#!/usr/bin/env bash
# Training throughput on this machine: `unlearn bench` with the PyTorch references (the seed's way
# and a tuned way, same machine, same run), written to runs/bench/bench.{md,json}.
#
#   scripts/bench-train.sh                                     # ResNet-20, fp32, batch 256, CPU-sized
#   scripts/bench-train.sh --archs resnet18 --batch 64 --samples 640
#   scripts/bench-train.sh --device cuda --samples 25600 --precisions fp32,bf16
#
# Arguments go to `unlearn bench` after the defaults below (later ones win).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./scripts/setup.sh
cargo build --quiet --release -p unlearn
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/unlearn" bench --archs resnet20 --precisions fp32 --contiguous-only \
  --sweep none --references bench/train --python .venv/bin/python "$@"
