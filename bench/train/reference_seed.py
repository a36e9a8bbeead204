"""Seed-style PyTorch reference: the training step as the paper's code (OPTML-Group/Unlearn-Sparse)
runs it, so `unlearn bench` can report how fast that baseline is on the same machine.

What it copies from the seed, on purpose (each is a cost the seed pays):
- the data set lives on the CPU as torchvision's CIFAR10 holds it: a uint8 array N x H x W x 3 and
  int labels; `__getitem__` makes one PIL image and runs the transforms on it, per image;
- RandomCrop(size, padding=4), RandomHorizontalFlip(), ToTensor() (torchvision's when it imports,
  else the same three steps on PIL images here); normalisation is the model's first layer;
- DataLoader(batch_size, shuffle=True, num_workers=--workers, pin_memory=True on CUDA);
- `.cuda()` (here `.to(device)`) per batch, fp32, default memory format, torch's default TF32
  flags (not touched), cudnn.deterministic=True (the seed's setup_seed sets it);
- forward, cross-entropy, zero_grad, backward, SGD step (lr 0.1, momentum 0.9, wd 5e-4), then
  `loss.item()` and a top-1 `.item()` per batch (the seed's AverageMeter updates: a host sync
  per batch).

The first epoch is a warm-up (workers start, cudnn picks kernels) and is not timed. Prints one
JSON line on stdout; everything else goes to stderr.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "python"))
from unlearn_models import build  # noqa: E402


# --- Transforms: torchvision's when available (the GPU machine has it), else built-in equivalents.

class BuiltinRandomCrop:
    """torchvision's RandomCrop(size, padding) on a PIL image: zero padding, then a uniformly random
    size x size window (offsets drawn with torch, so DataLoader's per-worker seeding applies)."""

    def __init__(self, size, padding):
        self.size, self.padding = size, padding

    def __call__(self, img):
        img = ImageOps.expand(img, border=self.padding, fill=0)
        w, h = img.size
        i = int(torch.randint(0, h - self.size + 1, (1,)))
        j = int(torch.randint(0, w - self.size + 1, (1,)))
        return img.crop((j, i, j + self.size, i + self.size))


class BuiltinRandomHorizontalFlip:
    def __call__(self, img):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < 0.5 else img


class BuiltinToTensor:
    """HWC uint8 PIL image -> CHW float32 tensor in [0, 1], as torchvision's ToTensor."""

    def __call__(self, img):
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)


class BuiltinCompose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, img):
        for step in self.steps:
            img = step(img)
        return img


def train_transform(size):
    try:
        from torchvision import transforms as T
    except ImportError:
        return BuiltinCompose([BuiltinRandomCrop(size, 4), BuiltinRandomHorizontalFlip(), BuiltinToTensor()]), "builtin"
    return T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor()]), "torchvision"


# --- Data: held on the CPU like torchvision's CIFAR10 (data: uint8 N x H x W x 3, targets: ints).

class ArrayImages(torch.utils.data.Dataset):
    def __init__(self, data, targets, transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        # One PIL image per sample, as CIFAR10.__getitem__ does.
        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def synthetic(samples, size, classes):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (samples, size, size, 3), dtype=np.uint8)
    return data, np.arange(samples) % classes


def image_folder(root, samples, size):
    """`root/train/<class>/*` (classes sorted by name), PIL-loaded into one array. `samples` caps the
    count with a fixed random subset (so a small cap still spans the classes); 0 = all."""
    train = os.path.join(root, "train")
    classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    files = [(os.path.join(train, name, f), label) for label, name in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(train, name)))]
    if not files:
        sys.exit(f"no images under {train}")
    if 0 < samples < len(files):
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[:samples])
        files = [files[i] for i in keep]
    images = []
    for path, _ in files:
        img = Image.open(path).convert("RGB")
        if img.size != (size, size):
            sys.exit(f"{path}: {img.size[0]}x{img.size[1]}, expected {size}x{size} (--size)")
        images.append(np.asarray(img, dtype=np.uint8))
    return np.stack(images), np.array([label for _, label in files]), len(classes)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--samples", type=int, default=2560, help="synthetic count, or cap with --data")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs, after one warm-up epoch")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # The seed's arg_parser has `--workers` default 4 (its cifar10_no_val loaders use it; its main
    # cifar10 loaders hard-code num_workers=0, pin_memory=False: pass --workers 0 for those).
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--precision", default="fp32", help="only fp32: the seed trains in fp32")
    p.add_argument("--channels-last", action="store_true", help="rejected: the seed does not")
    p.add_argument("--data", help="real images: DIR/train/<class>/*.jpg instead of random data")
    a = p.parse_args()
    if a.epochs < 1:
        p.error("--epochs must be at least 1 (one more, untimed, runs first)")
    if a.precision != "fp32":
        p.error(f"--precision {a.precision}: the seed trains in fp32 only (use bench_train.py)")
    if a.channels_last:
        p.error("--channels-last: the seed uses the default memory format (use bench_train.py)")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    torch.backends.cudnn.deterministic = True  # the seed's setup_seed

    if a.data:
        data, targets, classes = image_folder(a.data, a.samples, a.size)
        classes = max(classes, a.classes)
    else:
        data, targets = synthetic(a.samples, a.size, a.classes)
        classes = a.classes
    transform, transforms_from = train_transform(a.size)
    loader = torch.utils.data.DataLoader(
        ArrayImages(data, targets, transform), batch_size=a.batch, shuffle=True,
        num_workers=a.workers, pin_memory=dev.type == "cuda",
        persistent_workers=False)  # the seed's default: workers restart each epoch
    model = build(a.arch, classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def epoch():
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # The seed's per-batch bookkeeping: two host syncs per batch.
            loss_sum += loss.item() * x.size(0)
            correct += int((out.argmax(1) == y).sum().item())
            seen += x.size(0)
        return loss_sum / seen, correct / seen

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    epoch()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        final_loss, accuracy = epoch()
    sync()
    seconds = time.perf_counter() - t0
    images_done = len(data) * a.epochs
    print(json.dumps({
        "impl": "pytorch-seed", "arch": a.arch, "batch": a.batch, "device": str(dev),
        "precision": "fp32", "channels_last": False, "images": images_done, "seconds": seconds,
        "images_per_s": images_done / seconds, "final_loss": final_loss,
        "train_accuracy": accuracy, "threads": torch.get_num_threads(), "workers": a.workers,
        "transforms": transforms_from, "data": "folder" if a.data else "synthetic",
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "parameters": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
