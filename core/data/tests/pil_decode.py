"""Decodes image files with PIL as torchvision's ImageFolder does (Image.open(f).convert("RGB")).

Usage: pil_decode.py OUT [--time] < paths (one a line). Writes to OUT, for each path in order:
width and height (u32, little-endian), then the RGB bytes row-major. With --time, prints the
decode rate (images/s, one thread, from bytes in memory, the best of five passes) to stdout.
"""
import io
import struct
import sys
import time

from PIL import Image

out_path = sys.argv[1]
paths = [line.rstrip("\n") for line in sys.stdin if line.strip()]
blobs = []
for p in paths:
    with open(p, "rb") as f:
        blobs.append(f.read())
seconds = float("inf")
for _ in range(5 if "--time" in sys.argv[2:] else 1):
    t = time.perf_counter()
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    seconds = min(seconds, time.perf_counter() - t)
with open(out_path, "wb") as out:
    for img in images:
        out.write(struct.pack("<II", img.width, img.height))
        out.write(img.tobytes())
if "--time" in sys.argv[2:]:
    print(f"pil {len(images)} images in {seconds:.3f} s: {len(images) / seconds:.0f} images/s")
