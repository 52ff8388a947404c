"""Dev-only: makes a small CNN with PyTorch's ONNX exporter, and its reference outputs.

The Rust tests load it through msn-onnx (load, save, reload) and run it through msn-runtime,
comparing with the onnxruntime outputs written here. Run from the repository root:

    python tests/python/make_foreign_model.py

Writes tests/fixtures/foreign/torch_cnn.{onnx,input.f32,output.f32} (~30 KB).
"""
import pathlib

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "foreign"


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, groups=2),
            nn.BatchNorm2d(16),
            nn.LeakyReLU(0.1),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def main():
    torch.manual_seed(0)
    net = SmallNet()
    # Non-trivial BatchNorm statistics, as after training.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "torch_cnn.onnx"
    torch.onnx.export(
        net, (x,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(net(x).numpy() - y).max() < 1e-4
    x.numpy().astype("<f4").tofile(OUT / "torch_cnn.input.f32")
    y.astype("<f4").tofile(OUT / "torch_cnn.output.f32")
    print(f"wrote {path} ({path.stat().st_size} bytes), output {y.shape}")


if __name__ == "__main__":
    main()
