"""Dev-only: whole training epochs, `msn train` against a plain PyTorch loop, in turns.

For each architecture and norm, one epoch of ours then one of PyTorch's with the same settings
(Adam 1e-3, batch 64, the machine's threads), training time only (no evaluation), as images
per second; then the ratio PyTorch / ours (above 1: ours is slower). Rounds repeat the whole
sweep; the table gives medians.

- cnn3: MNIST, the full 60,000 training images; PyTorch is
  ../shared/reference/pytorch/train_1epoch.py (hand-written SN, nn.Conv2d, nn.BatchNorm2d).
- vgg7: the 10,000-image CIFAR-10 subset without augmentation (PyTorch's crops and flips run
  as a Python loop, which would time the loop, not the network); PyTorch is
  scripts/torch_vgg7_cifar.py.

Run: python3 scripts/epoch_speed.py --msn target/release/msn --python /work/venv/bin/python
     [--archs cnn3,vgg7] [--norms none,bn,sn,msn] [--rounds 1] [--mnist-limit N]
Rounds alternate which side goes first. On a machine whose speed drifts, shorter epochs
(--mnist-limit 12800) over more rounds give steadier ratios than one long pair.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"


def ours(msn, arch, norm, out, limit):
    data = {"cnn3": ["--dataset", "mnist", "--data-dir", str(SHARED / "data" / "mnist"),
                     *(["--train-limit", str(limit), "--test-limit", "1000"] if limit else [])],
            "vgg7": ["--dataset", "cifar10", "--data-dir", str(SHARED / "data" / "cifar10"),
                     "--augment", "false"]}[arch]
    run = Path(out) / f"{arch}-{norm}"
    subprocess.run([msn, "train", "--model", arch, "--norm", norm, *data, "--epochs", "1",
                    "--batch", "64", "--optimizer", "adam", "--lr", "1e-3", "--seed", "1",
                    "--out", str(run)], check=True, capture_output=True)
    line = (run / "metrics.jsonl").read_text().splitlines()[0]
    return json.loads(line)["images_per_second"]


def torch(python, arch, norm, limit):
    if arch == "cnn3":
        ref = SHARED / "reference" / "pytorch"
        cmd = [python, str(ref / "train_1epoch.py"), str(SHARED / "data" / "mnist"), norm,
               *(["--limit", str(limit)] if limit else [])]
        cwd = ref
    else:
        cmd = [python, str(ROOT / "scripts" / "torch_vgg7_cifar.py"), str(SHARED / "data" / "cifar10"),
               "--variants", norm, "--epochs", "1", "--no-augment"]
        cwd = ROOT
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout
    return float(re.search(r"\((\d+) img/s\)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msn", default=str(ROOT / "target" / "release" / "msn"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--archs", default="cnn3,vgg7")
    ap.add_argument("--norms", default="none,bn,sn,msn")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--mnist-limit", type=int, default=0,
                    help="cnn3 epochs on the first N MNIST training images (0: all 60,000)")
    a = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for arch in a.archs.split(","):
                for norm in a.norms.split(","):
                    limit = a.mnist_limit if arch == "cnn3" else 0
                    # Alternate which side goes first, so drift favours neither.
                    if r % 2 == 0:
                        o = ours(a.msn, arch, norm, f"{tmp}/{r}", limit)
                        t = torch(a.python, arch, norm, limit)
                    else:
                        t = torch(a.python, arch, norm, limit)
                        o = ours(a.msn, arch, norm, f"{tmp}/{r}", limit)
                    runs.setdefault((arch, norm), []).append((o, t))
                    print(f"round {r + 1} {arch} {norm}: ours {o:.0f} img/s, PyTorch {t:.0f} img/s, "
                          f"ours/PyTorch time {t / o:.2f}", flush=True)
    print("\n| model | norm | msn train (img/s) | PyTorch (img/s) | ours / PyTorch (time) |")
    print("|---|---|---:|---:|---:|")
    for (arch, norm), v in runs.items():
        o = statistics.median(x[0] for x in v)
        t = statistics.median(x[1] for x in v)
        print(f"| {arch} | {norm} | {o:.0f} | {t:.0f} | {t / o:.2f} |")


if __name__ == "__main__":
    main()
