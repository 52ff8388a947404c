"""`msn teach` against onnxruntime: the taught model, run by onnxruntime on images
preprocessed here from the model's own metadata, gives msn-classify's top-1.

    python tests/python/check_teach.py --msn target/debug/msn [--msn-classify target/debug/msn-classify]
        [--backbone B.onnx --data DIR [-- extra msn teach flags]]

Without --data, the shipped Fashion-MNIST model is the backbone and the shipped images,
sorted into three classes, are the photos (28x28 gray: the preprocessing here is then exact,
and probabilities must agree within 1e-4). With --data (e.g. scripts/cifar_folders.py's
output and EfficientNet-Lite0), the top-1 agreement is reported; Pillow's resize differs
slightly from ours, so a few borderline images may differ.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {
    "tops": ["0001-pullover", "0004-shirt", "0006-coat", "0013-dress", "0019-t-shirt"],
    "shoes": ["0000-ankle-boot", "0008-sandal", "0009-sneaker"],
    "other": ["0002-trouser", "0018-bag"],
}


def preprocess(path, meta):
    c, h, w = (int(v) for v in meta["msn.input_shape"].split(","))
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    resize = meta.get("msn.resize", "exact")
    if resize == "exact":
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
    else:
        n = int(resize.split(":")[1])
        s = n / min(img.size)
        nw, nh = max(round(img.size[0] * s), w), max(round(img.size[1] * s), h)
        img = img.resize((nw, nh), Image.BILINEAR)
        x, y = (nw - w) // 2, (nh - h) // 2
        img = img.crop((x, y, x + w, y + h))
    a = np.asarray(img, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1)
    scale = float(meta.get("msn.scale", 1 / 255))
    mean = np.array([float(v) for v in meta.get("msn.mean", "0").split(",")], np.float32)
    std = np.array([float(v) for v in meta.get("msn.std", "1").split(",")], np.float32)
    return ((a * scale - mean[:, None, None]) / std[:, None, None])[None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msn", required=True)
    ap.add_argument("--msn-classify", help="default: msn classify")
    ap.add_argument("--backbone")
    ap.add_argument("--data")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    exact = a.data is None
    if exact:
        data, backbone = tmp / "photos", ROOT / "models" / "fashion-cnn3-msn.folded.onnx"
        for cls, files in CLASSES.items():
            (data / "train" / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(ROOT / "models" / "images" / f"{f}.png", data / "train" / cls)
        extra = ["--hidden", "16", "--epochs", "25", "--lr", "0.01", "--batch-size", "4",
                 "--test-fraction", "0"]
    else:
        data, backbone, extra = Path(a.data), Path(a.backbone), a.extra
    out = tmp / "taught.onnx"
    summary = json.loads(subprocess.run(
        [a.msn, "teach", "--backbone", str(backbone), "--data", str(data), "-o", str(out),
         "--json", *extra], check=True, capture_output=True, text=True).stdout)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    labels = meta["msn.labels"].split("\n")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    images = sorted(p for p in data.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    classify = [a.msn_classify] if a.msn_classify else [a.msn, "classify"]

    def agreement(files):
        """msn-classify on `files` against onnxruntime on Pillow's preprocessing of them."""
        lines = subprocess.run([*classify, "--model", str(out), "--json", "--top-k",
                                str(len(labels)), *map(str, files)],
                               check=True, capture_output=True, text=True).stdout.splitlines()
        agree, worst = 0, 0.0
        for path, line in zip(files, lines):
            got = json.loads(line)
            logits = sess.run(None, {name: preprocess(path, meta)})[0][0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            agree += int(np.argmax(p)) == got["top"][0]["index"]
            for t in got["top"]:
                worst = max(worst, abs(p[t["index"]] - t["prob"]))
        return agree, worst

    n = len(images)
    if not exact:
        # The images as Pillow resizes and crops them, so both runtimes see the same pixels.
        same = tmp / "same-pixels"
        same.mkdir()
        resized = []
        for i, path in enumerate(images):
            x = preprocess(path, {"msn.input_shape": meta["msn.input_shape"],
                                  "msn.resize": meta.get("msn.resize", "exact"),
                                  "msn.scale": "1"})[0]
            f = same / f"{i:05d}.png"
            Image.fromarray(x.transpose(1, 2, 0).squeeze().astype(np.uint8)).save(f)
            resized.append(f)
        agree, worst = agreement(resized)
        print(f"check_teach: same pixels: top-1 agreement {agree}/{n} ({agree / n:.4f}), "
              f"max |dp| {worst:.2e}")
        if agree != n or worst > 1e-3:
            sys.exit("check_teach: onnxruntime disagrees with msn-classify on the same pixels")
    agree, worst = agreement(images)
    n = len(images)
    print(f"check_teach: {n} images, top-1 agreement msn-classify / onnxruntime {agree}/{n} "
          f"({agree / n:.4f}), max |dp| {worst:.2e}; test accuracy {summary['test_accuracy']}, "
          f"{summary['total_seconds']:.1f} s")
    if exact and (agree != n or worst > 1e-4):
        sys.exit("check_teach: onnxruntime disagrees with msn-classify")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
