"""The same training loop as unlearn's (core/pipeline/src/bench.rs, `unlearn bench`) in PyTorch eager: random
CIFAR-sized u8 data on the device, per-batch index_select, /255, random crop (4-pixel zero padding)
and horizontal flip on the device, forward, cross-entropy, backward, SGD (momentum 0.9, wd 5e-4,
lr 0.1). The first epoch is a warm-up and is not timed. Prints one JSON line.

Without --precision / --channels-last this is "pytorch-eager", the same loop as unlearn's with
torch's default flags. With either it is "pytorch-tuned", the fastest
ordinary PyTorch setup of the same step that `unlearn bench` compares against:
  --precision fp32  TF32 off for matmuls and cuDNN (true fp32)
  --precision tf32  TF32 on for both (Ampere and later; no effect on CPU)
  --precision bf16  forward and loss under torch.autocast(bfloat16) (CUDA or CPU)
  --channels-last   model and each batch in NHWC, which cuDNN's tensor-core kernels prefer
Data stay on the device as u8 and augmentation runs there in every mode, so no loader cost."""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "python"))
from unlearn_models import build  # noqa: E402


def augment(x, pad=4):
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--samples", type=int, default=2560)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                   help="default: torch's own TF32 flags untouched (pytorch-eager)")
    p.add_argument("--channels-last", action="store_true")
    # Accepted so `unlearn bench` can pass one command line to every reference; unused here
    # because the data never leave the device (there is no loader).
    p.add_argument("--workers", type=int, default=0, help="ignored: no data loader")
    a = p.parse_args()
    tuned = a.precision is not None or a.channels_last
    if a.epochs < 1:
        p.error("--epochs must be at least 1 (one more, untimed, runs first)")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # report "cuda:0", not "cuda"
    if a.precision in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    # bf16 leaves the flags alone: autocast covers convs and matmuls; the rest stays fp32.
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.samples, 3, a.size, a.size), dtype=torch.uint8, device=dev)
    labels = (torch.arange(a.samples, device=dev) % a.classes)
    model = build(a.arch, a.classes).to(dev, memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def epoch():
        model.train()
        order = torch.randperm(a.samples, device=dev)
        total = torch.zeros((), device=dev)
        for start in range(0, a.samples, a.batch):
            idx = order[start:start + a.batch]
            x = augment(images.index_select(0, idx).float() / 255.0)
            x = x.contiguous(memory_format=memory_format)
            with autocast:
                loss = F.cross_entropy(model(x), labels.index_select(0, idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        return total.item() / -(-a.samples // a.batch)  # mean batch loss; one sync per epoch, as unlearn's loop

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    epoch()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        final_loss = epoch()
    sync()
    seconds = time.perf_counter() - t0
    images_done = a.samples * a.epochs
    print(json.dumps({
        "impl": "pytorch-tuned" if tuned else "pytorch-eager", "arch": a.arch, "batch": a.batch,
        "device": str(dev), "precision": a.precision or "fp32", "channels_last": a.channels_last,
        "threads": torch.get_num_threads(), "images": images_done, "seconds": seconds,
        "images_per_s": images_done / seconds, "final_loss": final_loss,
        # The real TF32 state: without --precision, torch's default lets cuDNN convs use TF32.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "parameters": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
