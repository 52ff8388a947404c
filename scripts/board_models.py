"""Dev-time: the torchvision models scripts/board_cost.sh is quoted on, exported to ONNX.

    .ci-venv/bin/python scripts/board_models.py OUT_DIR

writes OUT_DIR/resnet18.onnx and OUT_DIR/mobilenet_v2.onnx (opset 17, 1x3x224x224, random
weights: the count does not depend on them; BatchNorm left in, as users bring them). Fold them
(`msn fold X.onnx -o X.folded.onnx`) to count what a folded model costs.
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
for name in ["resnet18", "mobilenet_v2"]:
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = os.path.join(out, name + ".onnx")
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamo=False)
    print(path)
