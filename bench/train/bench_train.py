"""The same training loop as unlearn's (core/api/examples/bench_train.rs) in PyTorch eager: random
CIFAR-sized u8 data on the device, per-batch index_select, /255, random crop (4-pixel zero padding)
and horizontal flip on the device, forward, cross-entropy, backward, SGD (momentum 0.9, wd 5e-4,
lr 0.1). The first epoch is a warm-up and is not timed. Prints one JSON line."""

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
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.samples, 3, a.size, a.size), dtype=torch.uint8, device=dev)
    labels = (torch.arange(a.samples, device=dev) % a.classes)
    model = build(a.arch, a.classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def epoch():
        model.train()
        order = torch.randperm(a.samples, device=dev)
        total = torch.zeros((), device=dev)
        for start in range(0, a.samples, a.batch):
            idx = order[start:start + a.batch]
            x = augment(images.index_select(0, idx).float() / 255.0)
            loss = F.cross_entropy(model(x), labels.index_select(0, idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        return total.item()  # one sync per epoch, as unlearn's loop

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    epoch()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        epoch()
    sync()
    seconds = time.perf_counter() - t0
    images_done = a.samples * a.epochs
    print(json.dumps({
        "impl": "pytorch-eager", "arch": a.arch, "batch": a.batch, "device": str(dev),
        "threads": torch.get_num_threads(), "images": images_done, "seconds": seconds,
        "images_per_s": images_done / seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
