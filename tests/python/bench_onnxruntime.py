"""Dev-only: p50 latency of a model in onnxruntime (one thread) and in `msn bench`, in one run.

    python tests/python/bench_onnxruntime.py MODEL.onnx [--batch 1] [--iters 100] [--msn target/release/msn]

Both run on the same random input shape with one intra-op thread; the script prints both p50s
and the ratio msn/onnxruntime.
"""
import argparse
import json
import subprocess
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--msn", default="target/release/msn")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [a.batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(a.warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1e3)
    ort_p50 = float(np.percentile(times, 50, method="inverted_cdf"))

    out = subprocess.run(
        [a.msn, "bench", a.model, "--batch", str(a.batch), "--iters", str(a.iters),
         "--warmup", str(a.warmup), "--json"],
        check=True, capture_output=True, text=True,
    )
    msn = json.loads(out.stdout)
    print(f"model: {a.model} batch {a.batch}")
    print(f"onnxruntime {ort.__version__} (1 thread) p50: {ort_p50:.3f} ms")
    print(f"msn bench (tract)         p50: {msn['p50_ms']:.3f} ms")
    print(f"ratio msn/onnxruntime: {msn['p50_ms'] / ort_p50:.3f}")


if __name__ == "__main__":
    main()
