#!/usr/bin/env bash
# Benchmark unlearn-svm's C-SVC against scikit-learn's SVC(C=3, gamma="auto") on deterministic
# CIFAR-scale membership-inference features (10,000 members + 10,000 non-members to fit, 4,500
# targets to predict; features conf, entropy, mentr, correct and the 10-D softmax vector).
# Inputs and results go to bench/out/svc/ (git-ignored); prints a table of fit/predict seconds,
# prediction agreement and decision-value differences.
#
#   scripts/bench-svc.sh                      # all feature sets
#   scripts/bench-svc.sh --features conf      # a subset (comma-separated)
#
# Uses the project's .venv (made by scripts/setup.sh), installing scikit-learn and numpy into it
# if missing. Honours CARGO_TARGET_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=.venv/bin/python
./scripts/setup.sh
if ! "$PY" -c "import sklearn, numpy" 2>/dev/null; then
  echo "bench-svc: installing scikit-learn and numpy into .venv" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check scikit-learn numpy
fi
cargo build --quiet --release -p unlearn-svm --example svc_bench
"$PY" bench/svc/bench.py --out bench/out/svc "$@"
