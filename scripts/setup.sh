#!/usr/bin/env bash
# One-time, idempotent set-up: a project-local Python environment that provides libtorch
# (torch==2.11.0, the build tch 0.24 expects) and a cargo config that points torch-sys at it, so
# `cargo build|test|run` work with no exports (build/link_libtorch.rs embeds the library path).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
TORCH_VERSION=2.11.0
# Pillow: the JPEG tests compare pixels with PIL's (core/data/tests/pil_jpeg.rs). Pinned, as its
# wheel bundles the libjpeg-turbo whose pixels are the reference.
PILLOW_VERSION=13.0.0
PY=${PYTHON:-python3}

# numpy and safetensors: the PyTorch interop tests save and load checkpoints from Python.
if ! .venv/bin/python -c "import torch, numpy, safetensors, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION, numpy, safetensors, pillow==$PILLOW_VERSION into .venv (one time, a few minutes)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir "torch==$TORCH_VERSION" numpy safetensors "pillow==$PILLOW_VERSION"
fi
# A .venv made before Pillow was needed (or with another version) gets just Pillow.
if ! .venv/bin/python -c "import PIL, sys; sys.exit(PIL.__version__ != '$PILLOW_VERSION')" 2>/dev/null; then
  echo "setup: installing pillow==$PILLOW_VERSION into .venv" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir "pillow==$PILLOW_VERSION"
fi

torch_dir=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))" 2>/dev/null)
lib="$torch_dir/lib"
[ -f "$lib/libtorch_cpu.so" ] || { echo "setup: no libtorch_cpu.so under $lib" >&2; exit 1; }

mkdir -p .cargo
cfg=$(cat <<CFG
# Written by scripts/setup.sh; do not edit (re-run the script instead).
[env]
LIBTORCH = "$torch_dir"
UNLEARN_PYTHON = "$root/.venv/bin/python"
CFG
)
if [ "$(cat .cargo/config.toml 2>/dev/null)" != "$cfg" ]; then
  printf '%s\n' "$cfg" > .cargo/config.toml.tmp && mv .cargo/config.toml.tmp .cargo/config.toml
fi
