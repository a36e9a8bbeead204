#!/usr/bin/env bash
# The GPU check: one prepared run on a GPU machine that has PyTorch but no Rust toolchain.
#
#   scripts/gpu-check.sh prepare [CIFAR10]         # here: build, copy the binary (and what it
#                                                  # needs) into gpu/, an ignored folder
#   scripts/gpu-check.sh run                       # there, in a copy of this repository with gpu/
#
# `run` prints `unlearn info`, runs `unlearn bench` (grid, sweep, PyTorch references, RTE), a short
# real CIFAR-10 training (examples/gpu-cifar10-short.toml) and then one summary table with the
# goals: ResNet-18 training >= 3x the seed-style reference and >= the tuned PyTorch, >= 60,000
# images/s in bf16 on an H100-class GPU, 182 epochs of dense training under 4 minutes, and the
# short training's test accuracy. Results go to $OUT (the device tool's folder) or runs/gpu-check.
#
# The binary's run path points at this machine's .venv; there, libtorch comes from the machine's
# own PyTorch (same version, 2.11.0) through LD_LIBRARY_PATH. Environment for `run`:
#   PYTHON (default /opt/torch/.venv/bin/python3, else python3), DEVICE (cuda), QUICK=1 (tiny
#   sizes: a smoke test of the script itself, also on a CPU), SKIP_TRAINING=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bundle=gpu

prepare() {
  # CIFAR-10 as JPEGs: a tarball of train/ and test/, or the folder they were unpacked into.
  local cifar=${1:-data/cifar10-jpeg}
  ./scripts/setup.sh
  cargo build --quiet --release -p unlearn
  rm -rf "$bundle.tmp" && mkdir -p "$bundle.tmp/lib"
  # Line tables are of no use there and triple the size.
  strip --strip-debug -o "$bundle.tmp/unlearn" target/release/unlearn
  # Libraries the binary needs besides libtorch and the C/C++ runtime (fonts for the plots), in
  # case that machine lacks them; the system's own come first when present.
  ldd target/release/unlearn | awk '/=> \// {print $3}' |
    grep -E '/lib(fontconfig|freetype|expat|png16|brotli[a-z]*|z|bz2)\.so' |
    while read -r lib; do cp -L "$lib" "$bundle.tmp/lib/"; done
  if [ -f "$cifar" ]; then
    cp "$cifar" "$bundle.tmp/cifar10-jpeg.tar.gz"
  elif [ -d "$cifar/train" ] && [ -d "$cifar/test" ]; then
    tar czf "$bundle.tmp/cifar10-jpeg.tar.gz" -C "$cifar/" train test
  else
    echo "gpu-check: no CIFAR-10 at $cifar (a tarball, or a folder with train/ and test/): the real-data training will be skipped" >&2
  fi
  rm -rf "$bundle" && mv "$bundle.tmp" "$bundle"
  grep -qx "/$bundle/" .git/info/exclude 2>/dev/null || echo "/$bundle/" >>.git/info/exclude
  du -sh "$bundle"
  echo "gpu-check: ready; on the GPU machine: bash scripts/gpu-check.sh run (carry: $bundle)"
}

run() {
  local py=${PYTHON:-}
  if [ -z "$py" ]; then
    if [ -x /opt/torch/.venv/bin/python3 ]; then py=/opt/torch/.venv/bin/python3; else py=python3; fi
  fi
  local out=${OUT:-runs/gpu-check}
  mkdir -p "$out"
  local torch_lib
  torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib:$root/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local bin="$root/$bundle/unlearn"
  [ -x "$bin" ] || { echo "gpu-check: no $bin: run 'scripts/gpu-check.sh prepare' first" >&2; exit 1; }
  local device=${DEVICE:-cuda}
  local log="$out/gpu-check.log"
  : >"$log"
  step() { echo "== $*" | tee -a "$log"; }

  step "unlearn info"
  "$bin" --device "$device" info 2>&1 | tee "$out/info.txt" | tee -a "$log"

  local bench_args=(--device "$device" bench --references bench/train --python "$py" --rte --out "$out/bench")
  if [ "${QUICK:-0}" = 1 ]; then
    bench_args+=(--archs small-cnn,resnet20 --samples 64 --epochs 1 --batch 32 --sweep 16,64
      --workers 1 --rte-samples 450 --rte-arch small-cnn)
  else
    bench_args+=(--samples 10240 --epochs 2 --workers 4)
  fi
  step "unlearn ${bench_args[*]}"
  "$bin" "${bench_args[@]}" 2>&1 | tee -a "$log" >/dev/null
  cp "$out/bench/bench.md" "$out/bench.md" 2>/dev/null || true

  local train_json=""
  if [ "${SKIP_TRAINING:-0}" != 1 ] && [ -f "$bundle/cifar10-jpeg.tar.gz" ]; then
    step "real CIFAR-10: examples/gpu-cifar10-short.toml"
    mkdir -p data/cifar10-jpeg
    [ -d data/cifar10-jpeg/train ] || tar xzf "$bundle/cifar10-jpeg.tar.gz" -C data/cifar10-jpeg
    local cfg=examples/gpu-cifar10-short.toml
    if [ "${QUICK:-0}" = 1 ]; then
      cfg=$out/short.toml
      sed -e 's/^arch = .*/arch = "small-cnn"/' -e 's/^epochs = .*/epochs = 2/' \
        -e 's/^milestones = .*/milestones = []/' -e 's/^warmup_epochs = .*/warmup_epochs = 0/' \
        -e 's|^dir = .*|dir = "'"$root"'/data/cifar10-jpeg"|' examples/gpu-cifar10-short.toml >"$cfg"
    fi
    local t0=$SECONDS
    "$bin" --device "$device" run "$cfg" --out "$out/train" 2>&1 | tee -a "$log" | tail -3
    echo "wall seconds: $((SECONDS - t0))" | tee -a "$log"
    train_json=$out/train/results.json
  fi

  step "summary"
  "$py" - "$out/bench/bench.json" "$train_json" <<'PY' | tee "$out/summary.md" | tee -a "$log"
import json, sys

bench = json.load(open(sys.argv[1]))
train = json.load(open(sys.argv[2])) if len(sys.argv) > 2 and sys.argv[2] else None
rows = bench["rows"]


def pick(kind, imp, arch, **kw):
    c = [r for r in rows if r["kind"] == kind and r["implementation"] == imp and r["arch"] == arch
         and all(r[k] == v for k, v in kw.items())]
    return max(c, key=lambda r: r["images_per_s"]) if c else None


arch = "resnet18" if any(r["arch"] == "resnet18" for r in rows) else rows[0]["arch"]
best = pick("train", "unlearn", arch)
seed = pick("reference", "pytorch-seed", arch)
tuned = pick("reference", "pytorch-tuned", arch)
bf16 = pick("train", "unlearn", arch, precision="bf16")
out = []
out.append(f"# GPU check: {bench['device_name']} ({bench['device']}), unlearn {bench['unlearn']}\n")
out.append("| measure | value | goal | met |")
out.append("|---|---|---|---|")


def line(what, value, goal="", met=None):
    out.append(f"| {what} | {value} | {goal} | {'' if met is None else ('yes' if met else 'NO')} |")


if best:
    setting = f"{best['precision']}{', channels-last' if best['channels_last'] else ''}, batch {best['batch']}"
    line(f"{arch} training, unlearn (fastest: {setting})", f"{best['images_per_s']:,.0f} images/s")
    if seed:
        r = best["images_per_s"] / seed["images_per_s"]
        line("vs seed-style PyTorch (fp32, CPU DataLoader)", f"{r:.2f}x ({seed['images_per_s']:,.0f} images/s)", ">= 3x", r >= 3)
    if tuned:
        r = best["images_per_s"] / tuned["images_per_s"]
        s = f"{tuned['precision']}{', channels-last' if tuned['channels_last'] else ''}"
        line(f"vs tuned PyTorch (fastest: {s})", f"{r:.2f}x ({tuned['images_per_s']:,.0f} images/s)", ">= 1x", r >= 1)
    if bf16:
        line(f"{arch} bf16 training", f"{bf16['images_per_s']:,.0f} images/s",
             ">= 60,000 on an H100-class GPU", bf16["images_per_s"] >= 60000)
    epoch = best["cifar10_epoch_s"]
    line("one CIFAR-10 epoch (50,000 images) at that rate", f"{epoch:.1f} s")
    line("182 epochs of dense training at that rate", f"{182 * epoch:.0f} s", "< 240 s", 182 * epoch < 240)
    if best.get("peak_percent") is not None:
        line("share of peak FLOP/s", f"{best['peak_percent']:.1f}% ({best['tflops']:.3g} TFLOP/s)")
for t in bench.get("rte", []):
    line(f"RTE {t['method']} at paper scale", f"{t['seconds_paper']:.1f} s")
if train:
    m = train["models"][0]
    line(f"real CIFAR-10 {train['config']['model']['arch']}, {train['config']['train']['epochs']} epochs: training time",
         f"{m['train_seconds']:.0f} s")
    full = train["config"]["train"]["epochs"] >= 18 and train["config"]["model"]["arch"] == "resnet18"
    line("real CIFAR-10 test accuracy", f"{m['test_accuracy']:.2f}%", ">= 90%" if full else "(quick run)",
         m["test_accuracy"] >= 90 if full else None)
print("\n".join(out))
PY
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh prepare [CIFAR10_TARBALL_OR_FOLDER] | run" >&2; exit 2 ;;
esac
