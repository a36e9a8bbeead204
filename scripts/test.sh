#!/usr/bin/env bash
# The test suite: set up (once), then every crate's tests (release: the SVC and the training
# loops are much faster optimised, and the demo's build is reused).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
# Tests run in parallel on tiny tensors: one libtorch thread each avoids oversubscribing the cores
# (10-20x faster on 2 cores). Set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo test --release --workspace "$@"
