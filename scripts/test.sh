#!/usr/bin/env bash
# The test suite: set up (once), then every crate's tests (release: the SVC and the training
# loops are much faster optimised, and the demo's build is reused).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
cargo test --release --workspace "$@"
