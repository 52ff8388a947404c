"""Dev-only: `msn info`'s multiply-accumulate counts against torchvision's published ones.

torchvision lists each model's GFLOPS (multiply-accumulates, as fvcore counts them: Conv and
Linear only) in its weights' metadata (`meta["_ops"]`). This exports each model at 224x224
with random weights (no download), runs `msn info --json` and compares.

    /work/venv/bin/python tests/python/check_macs.py --msn target/debug/msn
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision.models as tvm

MODELS = [
    ("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1),
    ("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1),
    ("mobilenet_v2", tvm.MobileNet_V2_Weights.IMAGENET1K_V1),
    ("mobilenet_v3_small", tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    ("efficientnet_b0", tvm.EfficientNet_B0_Weights.IMAGENET1K_V1),
    ("regnet_y_400mf", tvm.RegNet_Y_400MF_Weights.IMAGENET1K_V1),
    ("shufflenet_v2_x1_0", tvm.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1),
    ("squeezenet1_1", tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1),
    ("densenet121", tvm.DenseNet121_Weights.IMAGENET1K_V1),
    ("mnasnet1_0", tvm.MNASNet1_0_Weights.IMAGENET1K_V1),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msn", required=True)
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative")
    args = ap.parse_args()
    failed = 0
    print(f"{'model':<22} {'torchvision GMACs':>18} {'msn info GMACs':>15} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights in MODELS:
            model = getattr(tvm, name)(weights=None).eval()
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(path),
                              input_names=["input"], output_names=["logits"],
                              opset_version=17, dynamo=False)
            out = subprocess.run([args.msn, "info", "--json", str(path)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name}: msn info failed: {out.stderr.strip()}")
                failed += 1
                continue
            ours = json.loads(out.stdout)["macs"] / 1e9
            published = weights.meta["_ops"]
            ratio = ours / published
            # torchvision rounds to three decimals.
            ok = abs(ours - published) <= max(args.tolerance * published, 0.0005)
            failed += not ok
            print(f"{name:<22} {published:>18.3f} {ours:>15.4f} {ratio:>7.4f}"
                  f"{'' if ok else '  MISMATCH'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
