#!/usr/bin/env python3
"""Writes the CIFAR-10 subset in ../shared/data/cifar10 as PNG class folders, the layout
`msn teach --data` reads: OUT/train/<class>/NNNNN.png and OUT/test/<class>/NNNNN.png.

    python scripts/cifar_folders.py OUT [--train-per-class 100] [--test-per-class 50]

The first images of each class in record order are taken (the records are in a fixed
pseudo-random order; see ../shared/data/README.md). Dev-time only: needs numpy and Pillow.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "cifar10")


def records(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 0], raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write(split, path, per_class, out, classes):
    labels, images = records(path)
    counts = [0] * len(classes)
    for i, (label, img) in enumerate(zip(labels, images)):
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        d = os.path.join(out, split, classes[label])
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img).save(os.path.join(d, f"{i:05d}.png"))
    return sum(counts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--data", default=DATA)
    a = ap.parse_args()
    with open(os.path.join(a.data, "batches.meta.txt")) as f:
        classes = [l.strip() for l in f if l.strip()]
    n = write("train", os.path.join(a.data, "data_batch_1.bin"), a.train_per_class, a.out, classes)
    m = write("test", os.path.join(a.data, "test_batch.bin"), a.test_per_class, a.out, classes)
    print(f"{a.out}: {n} training and {m} test images, {len(classes)} classes", file=sys.stderr)


if __name__ == "__main__":
    main()
