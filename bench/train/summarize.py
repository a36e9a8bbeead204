"""Reads the JSON lines of bench_train (Rust) and bench_train.py (PyTorch) and prints a table."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
print(f"{'impl':<14} {'arch':<9} {'batch':>5} {'device':<7} {'threads':>7} {'images/s':>9}")
for r in rows:
    print(f"{r['impl']:<14} {r['arch']:<9} {r['batch']:>5} {r['device']:<7} {r['threads']:>7} {r['images_per_s']:>9.1f}")
best = {}
for r in rows:
    best[r["impl"]] = max(best.get(r["impl"], 0.0), r["images_per_s"])
if len(best) == 2:
    print(f"unlearn / PyTorch eager (best of each): {best['unlearn'] / best['pytorch-eager']:.3f}")
