"""Cross-checks exported models with onnxruntime and onnx.checker (run by .ci/run).

`cargo test -p msn-e2e --test export_parity` writes, for every architecture and norm kind,
target/export-check/<name>.onnx with the input batch and our trainer's eval-mode output. This
script checks each file with `onnx.checker.check_model(full_check=True)` and runs it in
onnxruntime, which must agree with the trainer within 1e-5 (relative to the logits' size
beyond 1), and prints one line per model.
"""
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIR = ROOT / "target" / "export-check"


def main():
    models = sorted(DIR.glob("*.onnx"))
    if not models:
        print(f"no exported models in {DIR}; run cargo test first", file=sys.stderr)
        return 1
    failed = 0
    for path in models:
        name = path.stem
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        ours = np.fromfile(DIR / f"{name}.output.f32", dtype="<f4")
        x = np.fromfile(DIR / f"{name}.input.f32", dtype="<f4")
        shape = [d if isinstance(d, int) else -1 for d in inp.shape]
        x = x.reshape(shape)
        y = sess.run(None, {inp.name: x})[0].reshape(-1)
        diff = float(np.abs(y - ours).max())
        scale = float(np.abs(ours).max())
        ok = diff <= 1e-5 * max(1.0, scale)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<20} checker ok, max |onnxruntime - trainer| = {diff:.2e} (logits up to {scale:.2f})")
    print(f"{len(models) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
