"""`msn info`'s counts against onnxruntime's shapes, on the corpus's torchvision models.

Parameters are the initializers' element counts; multiply-accumulates are counted here from
the shapes onnxruntime computes (independent of tract's shape inference, which `msn info` uses).

    python tests/python/check_info.py --msn target/debug/msn
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def shapes(model, inputs):
    """Every value's shape, from onnxruntime running the model with all values as outputs."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
                known.add(o)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, (list(v.shape) for v in sess.run(names, inputs))))
    for k, v in inputs.items():
        out[k] = list(v.shape)
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def macs(model, inputs):
    s = shapes(model, inputs)
    total = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv",
                             "ConvInteger", "MatMulInteger", "QLinearMatMul"):
            continue
        out = int(np.prod(s[n.output[0]]))
        w = s[n.input[3 if n.op_type == "QLinearConv" else 1]]
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            total += out * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(s[n.input[0]])) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i == 1 for a in n.attribute)
            total += out * s[n.input[0]][0 if trans_a else 1]
        else:
            total += out * s[n.input[0]][-1]
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msn", required=True)
    args = ap.parse_args()
    failed = 0
    models = sorted(CORPUS.glob("arch_*.onnx"))
    for path in models:
        model = onnx.load(str(path))
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        out = subprocess.run([args.msn, "info", "--json", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{path.name}: msn info failed: {out.stderr.strip()}")
            failed += 1
            continue
        v = json.loads(out.stdout)
        inputs = dict(np.load(str(path).replace(".onnx", ".inputs.npz")))
        want = (macs(model, inputs), params)
        got = (v["macs"], v["parameters"])
        ok = want == got
        failed += not ok
        print(f"{path.stem:<28} macs {got[0]:>12} params {got[1]:>9}"
              f"{'' if ok else f'  MISMATCH: onnx says {want}'}")
    print(f"msn info against onnxruntime's shapes: {len(models) - failed}/{len(models)} agree")
    sys.exit(1 if failed or not models else 0)


if __name__ == "__main__":
    main()
