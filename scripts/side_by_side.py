"""Dev-only: tract (`msn bench`) against onnxruntime, one thread and all threads, in one run.

    python scripts/side_by_side.py [--msn target/release/msn] [--rounds 3] [--iters 30]
        [MODEL.onnx...] [--torchvision mobilenet_v3_large efficientnet_b0 resnet50 ...]

`--torchvision NAME...` exports those torchvision models (random weights, 224x224, opset 17)
and folds them with `msn fold` first, as the README's figures are made; `--issue-42` is the
six networks of issue 42 (EfficientNet-Lite0 from ../shared/data and five from torchvision).
The CPU is printed with the table.

`--load` measures loading instead, one thread, in turns: `msn bench`'s `load_ms` (file to
runnable plan) against the creation of an onnxruntime session for the same file (one
intra-op thread), medians of the rounds.

For each round, each model is measured in turns: msn bench with --threads 1, onnxruntime with
one intra-op thread, msn bench with every core, onnxruntime with every core. The table gives
the median over rounds of each p50 (batch 1) and the ratios msn/onnxruntime, and tract's
speed-up from 1 thread to all. A model with symbolic input dimensions is run with them at 1.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_p50(model, threads, iters, warmup):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def msn_p50(msn, model, threads, iters, warmup):
    out = subprocess.run(
        [msn, "bench", str(model), "--threads", str(threads), "--iters", str(iters),
         "--warmup", str(warmup), "--json"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["p50_ms"]


def msn_load(msn, model):
    out = subprocess.run(
        [msn, "bench", str(model), "--threads", "1", "--iters", "1", "--warmup", "0", "--json"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["load_ms"]


def ort_load(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    t = time.perf_counter()
    ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return (time.perf_counter() - t) * 1e3


def loads(a):
    runs = {m: {"msn": [], "ort": []} for m in a.models}
    for r in range(a.rounds):
        for m in a.models:
            runs[m]["msn"].append(msn_load(a.msn, m))
            runs[m]["ort"].append(ort_load(m))
    print(f"\n{cpu_name()}: load, medians of {a.rounds} rounds (ms), one thread, onnxruntime "
          f"{ort.__version__} session creation")
    print("| model | msn load | ort session | ratio |")
    print("|---|---:|---:|---:|")
    for m in a.models:
        v = {k: statistics.median(x) for k, x in runs[m].items()}
        print(f"| {m.stem} | {v['msn']:.1f} | {v['ort']:.1f} | {v['msn'] / v['ort']:.2f} |")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torchvision_folded(msn, name, tmp):
    import torch
    import torchvision
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    raw, folded = tmp / f"{name}.raw.onnx", tmp / f"{name}.onnx"
    torch.onnx.export(m, torch.randn(1, 3, 224, 224), str(raw), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    subprocess.run([msn, "fold", str(raw), "-o", str(folded)], check=True, capture_output=True)
    return folded


ISSUE_42 = ["mobilenet_v3_large", "efficientnet_b0", "resnet50", "regnet_x_400mf", "mobilenet_v3_small"]
LITE0 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "efficientnet-lite0" / "efficientnet-lite0.onnx"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--torchvision", nargs="*", default=[])
    ap.add_argument("--issue-42", action="store_true")
    ap.add_argument("--msn", default="target/release/msn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--load", action="store_true", help="measure loading, not inference")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    names = list(a.torchvision)
    if a.issue_42:
        if LITE0.exists():
            a.models.append(LITE0.resolve())
        else:
            print(f"EfficientNet-Lite0 not found at {LITE0}: left out")
        names += [n for n in ISSUE_42 if n not in names]
    a.models += [torchvision_folded(a.msn, n, tmp) for n in names]
    if not a.models:
        ap.error("no models")
    if a.load:
        loads(a)
        return
    cores = os.cpu_count() or 1
    runs = {m: {k: [] for k in ("msn1", "ort1", "msnN", "ortN")} for m in a.models}
    for r in range(a.rounds):
        for m in a.models:
            runs[m]["msn1"].append(msn_p50(a.msn, m, 1, a.iters, a.warmup))
            runs[m]["ort1"].append(ort_p50(m, 1, a.iters, a.warmup))
            runs[m]["msnN"].append(msn_p50(a.msn, m, cores, a.iters, a.warmup))
            runs[m]["ortN"].append(ort_p50(m, cores, a.iters, a.warmup))
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    print(f"\n{cpu_name()}: medians of {a.rounds} rounds of p50 (ms), batch 1, onnxruntime "
          f"{ort.__version__}, {cores} cores")
    print(f"| model | msn 1 thread | ort 1 thread | ratio | msn {cores} threads | "
          f"ort {cores} threads | ratio | msn speed-up 1 -> {cores} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in a.models:
        v = {k: statistics.median(x) for k, x in runs[m].items()}
        print(f"| {m.stem} | {v['msn1']:.2f} | {v['ort1']:.2f} | {v['msn1'] / v['ort1']:.2f} | "
              f"{v['msnN']:.2f} | {v['ortN']:.2f} | {v['msnN'] / v['ortN']:.2f} | "
              f"{v['msn1'] / v['msnN']:.2f} |")


if __name__ == "__main__":
    main()
