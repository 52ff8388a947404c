"""Dev-only / CI: the files users have, written by the libraries that write them, against
onnxruntime.

For the corpus's ten torchvision families (tests/fixtures/corpus/arch_*.onnx):
- the model saved by `onnx.save_model(..., save_as_external_data=True)` (its weights in a data
  file beside it, as torch's exporter writes large models) runs in `msn run`, and its outputs
  agree with onnxruntime's on the same file within 1e-4 of their largest magnitude;
- its inputs saved by `np.savez_compressed` give `msn run` the same outputs as the stored
  `.npz` (byte for byte).

    python tests/python/check_files.py --msn target/debug/msn
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "fixtures", "corpus")
TOL = 1e-4


def outputs(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--msn", required=True)
    args = p.parse_args()
    models = sorted(glob.glob(os.path.join(CORPUS, "arch_*.onnx")))
    if not models:
        sys.exit("no corpus models in " + CORPUS)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            name = os.path.basename(path)[:-5]
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            external = os.path.join(folder, "model.onnx")
            onnx.save_model(onnx.load(path), external, save_as_external_data=True,
                            all_tensors_to_one_file=True, location="weights.bin",
                            size_threshold=256)
            with np.load(path[:-5] + ".inputs.npz") as z:
                inputs = {k: z[k] for k in z.files}
            compressed = os.path.join(folder, "inputs.npz")
            np.savez_compressed(compressed, **inputs)
            want = dict(zip(
                [o.name for o in ort.InferenceSession(external).get_outputs()],
                ort.InferenceSession(external, providers=["CPUExecutionProvider"]).run(None, inputs),
            ))
            a, b = os.path.join(folder, "a.npz"), os.path.join(folder, "b.npz")
            subprocess.run([args.msn, "run", external, "-i", compressed, "-o", a], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([args.msn, "run", path, "-i", path[:-5] + ".inputs.npz", "-o", b],
                           check=True, stdout=subprocess.DEVNULL)
            got, inline = outputs(a), outputs(b)
            worst = 0.0
            for k, w in want.items():
                scale = max(float(np.max(np.abs(w))), 1e-6)
                worst = max(worst, float(np.max(np.abs(w.astype(np.float64) - got[k]))) / scale)
                if not np.array_equal(got[k], inline[k]):
                    failed.append(f"{name}: output '{k}' differs from the inline model's")
            if worst > TOL:
                failed.append(f"{name}: {worst:.2e} from onnxruntime")
            data = os.path.getsize(os.path.join(folder, "weights.bin"))
            print(f"{name}: external data {data} bytes, compressed inputs; "
                  f"{worst:.1e} from onnxruntime")
    if failed:
        sys.exit("check_files: FAILED\n" + "\n".join(failed))
    print(f"check_files: {len(models)} external-data models with compressed inputs agree with "
          f"onnxruntime and with the inline models")


if __name__ == "__main__":
    main()
