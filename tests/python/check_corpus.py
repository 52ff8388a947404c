"""Dev-only / CI: the differential corpus against onnxruntime, live.

For every tests/fixtures/corpus/NAME.onnx: onnxruntime runs it on NAME.inputs.npz; `msn run`
runs it as written; `msn-fold` folds it and `msn run` runs the result (which onnxruntime also
runs, so a fold that onnxruntime disagrees with is caught too). Every output must agree with
onnxruntime's on the original within 1e-4 of its largest magnitude.

    python tests/python/check_corpus.py --msn target/debug/msn --msn-fold target/debug/msn-fold \
        [--levels best,avx2,generic]

`--levels` runs `msn run` with the kernels capped at each level (`MSN_CPU`; `best`: no cap)
against one fold and one onnxruntime run per model. Models are checked in parallel, one per
core.
"""
import argparse
import concurrent.futures
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
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, inputs)
    return dict(zip([o.name for o in sess.get_outputs()], outs))


def msn_run(msn, model, inputs_npz, out, level):
    env = dict(os.environ)
    env.pop("MSN_CPU", None)
    if level != "best":
        env["MSN_CPU"] = level
    subprocess.run([msn, "run", model, "--input", inputs_npz, "-o", out], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def check(args, levels, path, tmp):
    """[(level, error of msn run, error of msn run on the fold)], error of onnxruntime on the fold."""
    name = os.path.basename(path)[:-5]
    inputs_npz = path[:-5] + ".inputs.npz"
    with np.load(inputs_npz) as z:
        inputs = {k: z[k] for k in z.files}
    want = ort_run(path, inputs)
    folded = os.path.join(tmp, name + ".folded.onnx")
    subprocess.run([args.msn_fold, path, "-o", folded], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ort_folded = ort_run(folded, inputs)
    out = os.path.join(tmp, name + ".out.npz")
    errors = []
    for level in levels:
        got = msn_run(args.msn, path, inputs_npz, out, level)
        got_folded = msn_run(args.msn, folded, inputs_npz, out, level)
        errors.append((level, max(rel(want[k], got[k]) for k in want),
                       max(rel(want[k], got_folded[k]) for k in want)))
    return errors, max(rel(want[k], ort_folded[k]) for k in want)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--msn", required=True)
    p.add_argument("--msn-fold", required=True)
    p.add_argument("--levels", default=None,
                   help="comma-separated MSN_CPU levels, `best` for no cap (default: MSN_CPU "
                        "as set, else best)")
    args = p.parse_args()
    levels = (args.levels or os.environ.get("MSN_CPU") or "best").split(",")
    models = sorted(glob.glob(os.path.join(CORPUS, "*.onnx")))
    if not models:
        sys.exit("no corpus models in " + CORPUS)
    worst = {level: defaultdict(lambda: [0, 0.0, 0.0, 0.0]) for level in levels}
    failed = {level: [] for level in levels}
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        jobs = [(path, pool.submit(check, args, levels, path, tmp)) for path in models]
        for path, job in jobs:
            name = os.path.basename(path)[:-5]
            errors, e_ort = job.result()
            family = name if name.startswith("arch_") else "_".join(name.split("_")[:2])
            for level, e_unf, e_fold in errors:
                w = worst[level][family]
                w[0] += 1
                w[1], w[2], w[3] = max(w[1], e_unf), max(w[2], e_fold), max(w[3], e_ort)
                if max(e_unf, e_fold, e_ort) > TOL:
                    failed[level].append(f"{name}: msn {e_unf:.2e}, msn folded {e_fold:.2e}, "
                                         f"ort folded {e_ort:.2e}")
    for level in levels:
        print(f"family: models, worst relative error vs onnxruntime: msn run / msn-fold + msn run "
              f"/ ort on the fold (MSN_CPU={level})")
        for family, (n, a, b, c) in sorted(worst[level].items()):
            print(f"  {family}: {n}, {a:.2e} / {b:.2e} / {c:.2e}")
    for level in levels:
        shown = "the CPU's best" if level == "best" else level
        print(f"corpus: {len(models)} models, {len(failed[level])} over {TOL} "
              f"(kernels at MSN_CPU={shown})")
        if failed[level]:
            print("\n".join(failed[level]))
    if any(failed.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
