#!/usr/bin/env python3
# Usage: python3 scripts/make_shapes_idx.py OUT_DIR   (standard library only, ~25 s)
#
# Procedural 28x28 "shapes" set: filled discs, rectangle outlines, thin strokes, with
# Gaussian pixel noise: pixel statistics unlike MNIST's (hard edges, noisy background).
import gzip, math, os, random, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else 'shapes'
os.makedirs(out, exist_ok=True)
rng = random.Random(0)
def make(n):
    imgs = bytearray(); labels = bytearray()
    for i in range(n):
        k = rng.randrange(3); labels.append(k)
        cx, cy = rng.uniform(8, 20), rng.uniform(8, 20); r = rng.uniform(3, 8)
        w, h = rng.uniform(4, 10), rng.uniform(4, 10)
        a = rng.uniform(0, math.pi); L = rng.uniform(8, 14); amp = rng.uniform(120, 255)
        ca, sa = math.cos(a), math.sin(a)
        for y in range(28):
            for x in range(28):
                if k == 0:
                    on = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
                elif k == 1:
                    inside = abs(x - cx) <= w and abs(y - cy) <= h
                    inner = abs(x - cx) <= w - 2 and abs(y - cy) <= h - 2
                    on = inside and not inner
                else:
                    d = abs((x - cx) * sa - (y - cy) * ca); t = (x - cx) * ca + (y - cy) * sa
                    on = d <= 1.2 and abs(t) <= L
                v = (amp if on else 0.0) + rng.gauss(0, 12)
                imgs.append(max(0, min(255, int(v))))
    return bytes(imgs), bytes(labels)
def idx(dims, data): return bytes([0, 0, 8, len(dims)]) + b''.join(struct.pack('>I', d) for d in dims) + data
for name, n in [('train', 12000), ('t10k', 2000)]:
    im, lb = make(n)
    open(os.path.join(out, f'{name}-images-idx3-ubyte.gz'), 'wb').write(gzip.compress(idx([n, 28, 28], im)))
    open(os.path.join(out, f'{name}-labels-idx1-ubyte'), 'wb').write(idx([n], lb))
