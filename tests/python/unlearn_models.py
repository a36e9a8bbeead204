"""unlearn's architectures in PyTorch, with the same module trees and state-dict names.

`build(arch, classes, input_channels, mean, std)` returns an `nn.Module` whose `state_dict()`
matches an unlearn checkpoint tensor for tensor (plus `num_batches_tracked`, which unlearn writes as
0 and ignores on reading). The names follow the reference code (OPTML-Group/Unlearn-Sparse):
`normalize.mean`/`normalize.std` of shape [C] first, torchvision's tree for ResNet-18, He et al.'s
CIFAR ResNets with option A shortcuts (no parameters) for ResNet-20/56, and the reference's CIFAR
VGG-16-BN (`features.*`, `classifier.0/2/4`).

`load_checkpoint(path)` reads an unlearn checkpoint into such a module (mask tensors dropped, or
returned with `with_mask=True`).
"""

import json

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers of shape [C]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class PadShortcut(nn.Module):
    """Option A: subsample by 2, pad `pad` zero channels before and after."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    def __init__(self, cin, planes, stride, option):
        super().__init__()
        self.conv1 = conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        self.shortcut = None
        if stride != 1 or cin != planes:
            if option == "conv":
                self.downsample = nn.Sequential(conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))
            else:
                self.shortcut = PadShortcut(planes // 4)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.downsample is not None:
            x = self.downsample(x)
        elif self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(out + x)


class ResNet(nn.Module):
    def __init__(self, stages, option, classes, cin, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        width = stages[0][0]
        self.conv1 = conv(cin, width, 3)
        self.bn1 = nn.BatchNorm2d(width)
        for i, (planes, stride, n) in enumerate(stages):
            blocks = []
            for b in range(n):
                blocks.append(Block(width, planes, stride if b == 0 else 1, option))
                width = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(stages)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        for i in range(self.n_stages):
            h = getattr(self, f"layer{i + 1}")(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class Vgg(nn.Module):
    def __init__(self, classes, cin, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers = []
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [conv(cin, v, 3), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 4, 256), nn.ReLU(True), nn.Linear(256, 256), nn.ReLU(True),
            nn.Linear(256, classes),
        )

    def forward(self, x):
        h = F.adaptive_avg_pool2d(self.features(self.normalize(x)), (2, 2))
        return self.classifier(torch.flatten(h, 1))


class PlainCnn(nn.Module):
    """small-cnn and conv6: 3x3 conv - BN - ReLU layers (width, stride), an optional 2x2
    max-pool after one of them, global average pooling, fc."""

    def __init__(self, classes, cin, mean, std, layers, pool_after):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.n, self.pool_after = len(layers), pool_after
        width = cin
        for i, (out, stride) in enumerate(layers):
            setattr(self, f"conv{i + 1}", conv(width, out, 3, stride))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(out))
            width = out
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = self.normalize(x)
        for i in range(self.n):
            h = F.relu(getattr(self, f"bn{i + 1}")(getattr(self, f"conv{i + 1}")(h)))
            if i == self.pool_after:
                h = F.max_pool2d(h, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def build(arch, classes, cin=3, mean=None, std=None, option=None):
    """The module for an unlearn architecture name; `option` overrides the CIFAR ResNets'
    shortcut ("pad" = option A, unlearn's; "conv" = option B, for comparing counts)."""
    mean = mean if mean is not None else [0.5] * cin
    std = std if std is not None else [0.25] * cin
    if arch == "resnet18":
        stages = [(64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
        return ResNet(stages, "conv", classes, cin, mean, std)
    if arch in ("resnet20", "resnet56"):
        n = {"resnet20": 3, "resnet56": 9}[arch]
        return ResNet([(16, 1, n), (32, 2, n), (64, 2, n)], option or "pad", classes, cin, mean, std)
    if arch == "vgg16-bn":
        return Vgg(classes, cin, mean, std)
    if arch == "small-cnn":
        return PlainCnn(classes, cin, mean, std, [(32, 1), (64, 1), (128, 1)], 1)
    if arch == "conv6":
        layers = [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]
        return PlainCnn(classes, cin, mean, std, layers, None)
    raise ValueError(f"unknown architecture {arch}")


MASK_PREFIX = "mask/"


def load_checkpoint(path, with_mask=False):
    """An unlearn checkpoint as a PyTorch module in eval mode (and its mask by parameter name)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    c, _, _ = json.loads(meta["input"])
    model = build(meta["arch"], json.loads(meta["classes"]), c,
                  json.loads(meta["mean"]), json.loads(meta["std"]))
    tensors = load_file(path)
    mask = {k[len(MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    model.load_state_dict(state, strict=True)
    model.eval()
    return (model, mask, meta) if with_mask else model
