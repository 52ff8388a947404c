"""Compares msn-fold with onnxoptimizer's fusion passes, onnxsim and onnxruntime's basic graph
optimization on the same models: node counts, and onnxruntime outputs before and after.

    python tests/python/compare_folders.py [--msn-fold target/debug/msn-fold] [MODEL.onnx ...]
        [--torchvision swin_t vit_b_16 ...] [--time ROUNDS]

Without models it uses tests/fixtures/fold/*.onnx (PyTorch exports with BatchNorm and a
PyTorch MSN network). `--torchvision` adds torchvision models exported at 224 (opset 17,
random weights; a zero-initialised head is randomised so the outputs say something).
`--time N` also times msn-fold and onnxsim as whole processes, in turns, N rounds, and
prints the medians and their ratio (the CPU is printed with them). Fails (exit 1) if msn-fold leaves a BatchNormalization that folds
exactly (one right after a Conv, ConvTranspose or Gemm whose output only it reads), if its output
differs from the original by more than 1e-4 relative in onnxruntime, or if it ends with more
nodes than onnxsim.
"""
import argparse
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(path, x):
    # onnxruntime's own fusions off, so the reference computes the graph as written.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def count(path):
    return len(onnx.load(str(path)).graph.node)


def foldable_bns(path):
    """BatchNormalizations a fold would remove exactly: right after a Conv, ConvTranspose or
    Gemm whose output nothing else reads (a BN after a Concat or a ReLU, as in DenseNet's
    pre-activation layers, has no weight to go into)."""
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    uses = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    count = 0
    for n in g.node:
        if n.op_type != "BatchNormalization":
            continue
        p = producer.get(n.input[0])
        if p is not None and p.op_type in ("Conv", "ConvTranspose", "Gemm") \
                and uses.get(n.input[0], 0) == 1 and n.input[0] not in outputs:
            count += 1
    return count


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))


def export_torchvision(name, out):
    import torch
    import torchvision
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    torch.onnx.export(m, torch.randn(1, 3, 224, 224), str(out), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--msn-fold", default=str(ROOT / "target" / "debug" / "msn-fold"))
    ap.add_argument("--torchvision", nargs="*", default=[])
    ap.add_argument("--time", type=int, default=0, metavar="ROUNDS")
    a = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    models = [pathlib.Path(m) for m in a.models]
    for name in a.torchvision:
        models.append(tmp / f"{name}.onnx")
        export_torchvision(name, models[-1])
    if not models:
        models = sorted((ROOT / "tests" / "fixtures" / "fold").glob("*.onnx"))
    tools = {}
    try:
        import onnxoptimizer
        tools["onnxoptimizer"] = lambda m, out: onnx.save(onnxoptimizer.optimize(onnx.load(str(m)), [
            "eliminate_identity", "eliminate_nop_dropout", "fuse_bn_into_conv", "fuse_add_bias_into_conv",
            "fuse_matmul_add_bias_into_gemm", "eliminate_deadend", "eliminate_unused_initializer"]), str(out))
    except ImportError:
        print("onnxoptimizer not installed: skipped")
    try:
        import onnxsim
        tools["onnxsim"] = lambda m, out: onnx.save(onnxsim.simplify(onnx.load(str(m)))[0], str(out))
    except ImportError:
        print("onnxsim not installed: skipped")

    def ort_basic(m, out):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(m), so, providers=["CPUExecutionProvider"])
    tools["ort-basic"] = ort_basic

    failed = 0
    header = f"{'model':<18} {'nodes':>5} {'msn-fold':>8} " + " ".join(f"{t:>13}" for t in tools) + "   msn-fold rel err"
    if a.time:
        header += f"   fold s, onnxsim s (ratio) on {cpu_name()}, medians of {a.time}"
    print(header)
    for m in models:
        x = np.random.default_rng(0).standard_normal(
            [d.dim_value or 1 for d in onnx.load(str(m)).graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
        ref = run(m, x)
        ours = tmp / f"{m.stem}.msn.onnx"
        subprocess.run([a.msn_fold, str(m), "-o", str(ours)], check=True, capture_output=True)
        err = rel(ref, run(ours, x))
        bn_left = foldable_bns(ours)
        counts = {}
        for name, tool in tools.items():
            out = tmp / f"{m.stem}.{name}.onnx"
            tool(m, out)
            counts[name] = count(out)
            e = rel(ref, run(out, x))
            assert e < 1e-3, f"{name} changed {m.stem} by {e}"
        ok = bn_left == 0 and err <= 1e-4 and count(ours) <= counts.get("onnxsim", count(ours))
        failed += not ok
        line = f"{m.stem:<18} {count(m):>5} {count(ours):>8} " + " ".join(f"{counts[t]:>13}" for t in tools) \
            + f"   {err:.1e}{'' if ok else '  FAIL'}"
        if a.time:
            ours_s, sim_s = [], []
            for _ in range(a.time):  # in turns
                ours_s.append(timed([a.msn_fold, str(m), "-o", str(tmp / "t.msn.onnx")]))
                sim_s.append(timed([sys.executable, "-m", "onnxsim", str(m), str(tmp / "t.sim.onnx")]))
            o, s_ = statistics.median(ours_s), statistics.median(sim_s)
            line += f"   {o:.2f} s, {s_:.2f} s ({o / s_:.2f}x)"
        print(line)
    print(f"{len(models) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
