"""Reads the JSON lines of bench_train (Rust), bench_train.py and reference_seed.py (PyTorch) and
prints a table, then unlearn's best rate over each PyTorch reference's best."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
print(f"{'impl':<14} {'arch':<9} {'batch':>5} {'device':<7} {'threads':>7} {'images/s':>9}")
for r in rows:
    print(f"{r['impl']:<14} {r['arch']:<9} {r['batch']:>5} {r['device']:<7} {r.get('threads', '-'):>7} {r['images_per_s']:>9.1f}")
best = {}
for r in rows:
    best[r["impl"]] = max(best.get(r["impl"], 0.0), r["images_per_s"])
# One ratio per reference (pytorch-eager, pytorch-tuned, pytorch-seed), whichever ran.
for impl in sorted(best):
    if impl != "unlearn" and "unlearn" in best:
        print(f"unlearn / {impl} (best of each): {best['unlearn'] / best[impl]:.3f}")
