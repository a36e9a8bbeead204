"""The PyTorch side of unlearn's interop tests (core/api/tests/interop.rs).

  count --classes K                      parameter counts per architecture, as JSON on stdout
  export --arch A[,B..] --out DIR [...]  per arch: DIR/A.weights.safetensors (state dict, with
                                         unlearn metadata unless --plain or --prune) and
                                         DIR/A.io.safetensors (input, eval-mode logits, masks)
  run --arch A[,B..] --dir DIR           per arch: loads DIR/A.ckpt.safetensors (written by unlearn)
                                         strictly, checks its mask holds, writes DIR/A.out.safetensors
                                         with the logits of DIR/A.io.safetensors' input

Input shapes: small-cnn 1x8x8, the others 3x32x32 (--size overrides H = W).
"""

import argparse
import json
import os
import sys

try:
    import torch
    import torch.nn as nn
    import torch.nn.utils.prune as prune
    from safetensors.torch import load_file, save_file
except ImportError as e:
    sys.exit(f"interop.py: {e} under {sys.executable}; scripts/setup.sh installs torch and "
             "safetensors into .venv")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unlearn_models as um  # noqa: E402

ARCHS = ["small-cnn", "conv6", "resnet18", "resnet20", "resnet56", "vgg16-bn"]
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


def input_shape(arch, size):
    if arch == "small-cnn":
        return [1, size or 8, size or 8]
    return [3, size or 32, size or 32]


def stats(c):
    return (MEAN[:c], STD[:c]) if c == 3 else ([0.3] * c, [0.4] * c)


def realistic_batch_norms(model, shape, gen):
    """Running statistics of real activations (cumulative average over two random batches),
    then non-trivial affine parameters, so eval mode differs from train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(2):
            model(torch.rand([8] + shape, generator=gen))
        for m in bns:
            m.momentum = 0.1
            m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            # Keep the statistics the model saw, shifted a little so that they are not exact.
            m.running_mean.add_(0.05 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.mul_(0.9 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
    model.eval()


def metadata(arch, classes, shape, mean, std):
    return {
        "format_version": "1",
        "unlearn_version": "python-interop",
        "arch": arch,
        "classes": str(classes),
        "input": json.dumps(shape),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "dataset": "random",
    }


def cmd_count(args):
    out = {}
    for arch in ARCHS:
        c = input_shape(arch, None)[0]
        m = um.build(arch, args.classes, c)
        out[arch] = sum(p.numel() for p in m.parameters())
        if arch in ("resnet20", "resnet56"):
            b = um.build(arch, args.classes, c, option="conv")
            out[arch + "-option-b"] = sum(p.numel() for p in b.parameters())
    print(json.dumps(out))


def cmd_export(args):
    for arch in args.arch.split(","):
        shape = input_shape(arch, args.size)
        mean, std = stats(shape[0])
        torch.manual_seed(args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        model = um.build(arch, args.classes, shape[0], mean, std)
        realistic_batch_norms(model, shape, gen)
        io = {}
        if args.prune:
            convs = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
            prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=args.prune)
            for name, m in model.named_modules():
                if isinstance(m, nn.Conv2d):
                    io[f"mask/{name}.weight"] = m.weight_mask.clone()
        x = torch.rand([2] + shape, generator=gen)
        with torch.no_grad():
            logits = model(x)
        io["input"] = x
        io["logits"] = logits
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if args.module_prefix:
            state = {"module." + k: v for k, v in state.items()}
        meta = None if (args.plain or args.prune) else metadata(arch, args.classes, shape, mean, std)
        save_file(state, os.path.join(args.out, f"{arch}.weights.safetensors"), metadata=meta)
        save_file(io, os.path.join(args.out, f"{arch}.io.safetensors"))
        print(json.dumps({"arch": arch, "logit_std": logits.std().item(), "tensors": len(state)}))


def cmd_run(args):
    for arch in args.arch.split(","):
        model, mask, meta = um.load_checkpoint(
            os.path.join(args.dir, f"{arch}.ckpt.safetensors"), with_mask=True)
        assert meta["arch"] == arch, meta
        params = dict(model.named_parameters())
        for name, m in mask.items():
            w = params[name]
            assert m.dtype == torch.bool and m.shape == w.shape, name
            assert (w.detach()[~m] == 0).all(), f"mask of {name} does not hold"
        x = load_file(os.path.join(args.dir, f"{arch}.io.safetensors"))["input"]
        with torch.no_grad():
            logits = model(x)
        save_file({"logits": logits}, os.path.join(args.dir, f"{arch}.out.safetensors"))
        print(json.dumps({"arch": arch, "masked": len(mask), "sparsity": meta.get("sparsity")}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("--classes", type=int, default=10)
    e = sub.add_parser("export")
    e.add_argument("--arch", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--classes", type=int, default=10)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--size", type=int)
    e.add_argument("--prune", type=float, help="global L1 pruning of conv weights (no metadata)")
    e.add_argument("--plain", action="store_true", help="no unlearn metadata")
    e.add_argument("--module-prefix", action="store_true", help="DataParallel's `module.` names")
    r = sub.add_parser("run")
    r.add_argument("--arch", required=True)
    r.add_argument("--dir", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    {"count": cmd_count, "export": cmd_export, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
