"""Dev-only / CI: the differential corpus against onnxruntime, live.

For every tests/fixtures/corpus/NAME.onnx: onnxruntime runs it on NAME.inputs.npz; `msn run`
runs it as written; `msn-fold` folds it and `msn run` runs the result (which onnxruntime also
runs, so a fold that onnxruntime disagrees with is caught too). Every output must agree with
onnxruntime's on the original within 1e-4 of its largest magnitude.

    python tests/python/check_corpus.py --msn target/debug/msn --msn-fold target/debug/msn-fold
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "fixtures", "corpus")
TOL = 1e-4


def rel(want, got):
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-6)
    return float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))) / scale


def ort_run(path, inputs):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, inputs)
    return dict(zip([o.name for o in sess.get_outputs()], outs))


def msn_run(msn, model, inputs_npz, out):
    subprocess.run([msn, "run", model, "--input", inputs_npz, "-o", out], check=True,
                   stdout=subprocess.DEVNULL)
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--msn", required=True)
    p.add_argument("--msn-fold", required=True)
    args = p.parse_args()
    models = sorted(glob.glob(os.path.join(CORPUS, "*.onnx")))
    if not models:
        sys.exit("no corpus models in " + CORPUS)
    worst = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            name = os.path.basename(path)[:-5]
            inputs_npz = path[:-5] + ".inputs.npz"
            with np.load(inputs_npz) as z:
                inputs = {k: z[k] for k in z.files}
            want = ort_run(path, inputs)
            got = msn_run(args.msn, path, inputs_npz, os.path.join(tmp, "out.npz"))
            folded = os.path.join(tmp, name + ".folded.onnx")
            subprocess.run([args.msn_fold, path, "-o", folded], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            got_folded = msn_run(args.msn, folded, inputs_npz, os.path.join(tmp, "out.npz"))
            ort_folded = ort_run(folded, inputs)
            e_unf = max(rel(want[k], got[k]) for k in want)
            e_fold = max(rel(want[k], got_folded[k]) for k in want)
            e_ort = max(rel(want[k], ort_folded[k]) for k in want)
            family = name if name.startswith("arch_") else "_".join(name.split("_")[:2])
            w = worst[family]
            w[0] += 1
            w[1], w[2], w[3] = max(w[1], e_unf), max(w[2], e_fold), max(w[3], e_ort)
            if max(e_unf, e_fold, e_ort) > TOL:
                failed.append(f"{name}: msn {e_unf:.2e}, msn folded {e_fold:.2e}, ort folded {e_ort:.2e}")
    print("family: models, worst relative error vs onnxruntime: msn run / msn-fold + msn run / ort on the fold")
    for family, (n, a, b, c) in sorted(worst.items()):
        print(f"  {family}: {n}, {a:.2e} / {b:.2e} / {c:.2e}")
    level = os.environ.get("MSN_CPU") or "the CPU's best"
    print(f"corpus: {len(models)} models, {len(failed)} over {TOL} (kernels at MSN_CPU={level})")
    if failed:
        print("\n".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
