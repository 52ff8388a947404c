"""The PyTorch MSN module (python/msn_torch.py) round trip: trained a little in PyTorch,
exported, folded by msn-fold to plain convolutions, classified by msn-classify with PyTorch's
predictions. Dev-only (needs torch, which CI does not install):

    python tests/python/torch_round_trip.py --msn-fold target/debug/msn-fold \
        --msn-classify target/debug/msn-classify [--steps 300] [--images 1000]
"""
import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
from msn_torch import cnn3, export  # noqa: E402

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
          "Bag", "Ankle boot"]
MEAN, STD = 0.2860406, 0.35302424


def idx(path):
    with gzip.open(path) as f:
        raw = f.read()
    if raw[2] == 8 and raw[3] == 3:
        n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)
    return np.frombuffer(raw, np.uint8, offset=8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msn-fold", required=True)
    ap.add_argument("--msn-classify", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=1000)
    a = ap.parse_args()
    d = Path(a.data)
    x = idx(d / "train-images-idx3-ubyte.gz")
    y = idx(d / "train-labels-idx1-ubyte.gz")
    tx = idx(d / "t10k-images-idx3-ubyte.gz")[: a.images]
    ty = idx(d / "t10k-labels-idx1-ubyte.gz")[: a.images]
    norm = lambda im: (torch.from_numpy(im.copy()).float()[:, None] / 255 - MEAN) / STD

    torch.manual_seed(1)
    model = cnn3("msn")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    t = time.time()
    model.train()
    for step in range(a.steps):
        i = torch.randint(0, len(x), (64,), generator=g).numpy()
        loss = F.cross_entropy(model(norm(x[i])), torch.from_numpy(y[i].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.time() - t
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(norm(tx)), 1).numpy()
    acc = float((probs.argmax(1) == ty).mean())

    tmp = Path(tempfile.mkdtemp())
    raw, folded = tmp / "torch-msn.onnx", tmp / "torch-msn.folded.onnx"
    export(model, str(raw), labels=LABELS, mean=(MEAN,), std=(STD,))
    report = subprocess.run([a.msn_fold, str(raw), "-o", str(folded), "--verify", "10"],
                            check=True, capture_output=True, text=True)
    before = sorted({n.op_type for n in onnx.load(raw).graph.node})
    after = sorted({n.op_type for n in onnx.load(folded).graph.node})
    plain = {"Conv", "LeakyRelu", "Flatten", "Gemm", "Reshape"}
    assert set(after) <= plain, f"not folded to plain ops: {after}"

    images = tmp / "images"
    images.mkdir()
    for i, im in enumerate(tx):
        Image.fromarray(im).save(images / f"{i:05d}.png")
    lines = subprocess.run([a.msn_classify, "--model", str(folded), "--json", "--top-k", "10",
                            str(images)], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    agree, worst = 0, 0.0
    for line in lines:
        v = json.loads(line)
        i = int(Path(v["file"]).stem)
        agree += v["top"][0]["index"] == int(probs[i].argmax())
        for t in v["top"]:
            worst = max(worst, abs(t["prob"] - float(probs[i][t["index"]])))
    n = len(lines)
    print(f"torch_round_trip: PyTorch MSN cnn3, {a.steps} steps ({train_s:.1f} s), test accuracy "
          f"{acc:.4f} on {n} images; exported ops {before} -> folded {after}; msn-classify "
          f"agrees on {agree}/{n} top-1, max |dp| {worst:.2e}")
    if agree != n or worst > 1e-4:
        sys.exit("torch_round_trip: msn-classify disagrees with PyTorch")


if __name__ == "__main__":
    main()
