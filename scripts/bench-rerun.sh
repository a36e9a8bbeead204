#!/usr/bin/env bash
# How long re-running an unchanged, finished study takes (every stage from the stage cache):
# runs the given config (default: the demo's) once to fill the cache, then times N more runs of
# the same config into the same output folder, process start to exit, and prints each.
#
#   scripts/bench-rerun.sh                           # the demo preset, 5 timed re-runs
#   scripts/bench-rerun.sh examples/cifar10-cpu.toml runs/cifar10-cpu 3
#
# Honours CARGO_TARGET_DIR. The first run of a config takes what the study takes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./scripts/setup.sh
cargo build --quiet --release -p unlearn
bin=${CARGO_TARGET_DIR:-target}/release/unlearn
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cfg=${1:-}
out=${2:-$tmp/out}
n=${3:-5}
if [ -z "$cfg" ]; then
  cfg=$tmp/demo.toml
  "$bin" demo --print-config > "$cfg"
fi
echo "filling the cache: $bin run $cfg --out $out" >&2
"$bin" --device cpu run "$cfg" --out "$out" --quiet > /dev/null
for i in $(seq "$n"); do
  start=$(date +%s%N)
  "$bin" --device cpu run "$cfg" --out "$out" --quiet > /dev/null
  ms=$((($(date +%s%N) - start) / 1000000))
  printf 're-run %d: %d.%03d s\n' "$i" $((ms / 1000)) $((ms % 1000))
done
