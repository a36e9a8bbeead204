#!/usr/bin/env bash
# The main job: set up (once), build, and run `unlearn demo` on the embedded digits.
# Extra arguments go to `unlearn demo` (e.g. --out DIR, --device cpu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
cargo run --release -p unlearn -- demo "$@"
