#!/usr/bin/env python3
"""Write a CIFAR-10-format folder of generated colour images (no CIFAR-10 copy can be
fetched on the project machines): data_batch_1..5.bin and test_batch.bin, each record one
label byte and 3x32x32 pixel bytes (channel-major, as CIFAR-10's binary version).

    python3 scripts/make_cifar_like.py OUT_DIR [IMAGES_PER_FILE]   # default 1000

Image i: a smooth two-colour background gradient and a filled disc of a third colour at a
random place and size, plus a little pixel noise; label = which of 10 disc hues. Only for
smoke runs of the CIFAR-10 commands: its likelihoods say nothing about CIFAR-10's.
"""
import os
import random
import sys


def image(rng):
    hue = rng.randrange(10)
    c1 = [rng.randrange(256) for _ in range(3)]
    c2 = [rng.randrange(256) for _ in range(3)]
    disc = [(hue * 25 + 40 * k) % 256 for k in range(3)]
    cx, cy, r = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(3, 10)
    out = bytearray([hue])
    for ch in range(3):
        for y in range(32):
            for x in range(32):
                t = (x + y) / 62.0
                v = c1[ch] * (1 - t) + c2[ch] * t
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                    v = disc[ch]
                v += rng.gauss(0, 4)
                out.append(max(0, min(255, int(v))))
    return bytes(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    os.makedirs(out, exist_ok=True)
    rng = random.Random(0)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        with open(os.path.join(out, name), "wb") as f:
            for _ in range(n):
                f.write(image(rng))
    print(f"wrote 6 files of {n} images to {out}")


if __name__ == "__main__":
    main()
