"""Dev-only: PyTorch-exported models with BatchNorm for the msn-fold tests.

    python tests/python/make_fold_models.py

Writes tests/fixtures/fold/<name>.onnx (exported in eval mode with constant folding off, so
BatchNormalization and the mean-only batch norm's Sub/Mul/Add stay in the graph, as a user's
export would have them) plus <name>.input.f32 / <name>.output.f32 from onnxruntime.
"""
import pathlib

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "fold"


def randomize_bn(net):
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(x + self.b2(self.c2(y)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(8), ResBlock(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()]
        c = 8
        for out in (16, 24):
            layers += [
                nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6(),
                nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6(),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)
        self.bn1d = nn.BatchNorm1d(10)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return self.bn1d(self.head(x))


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z):
        return self.net(z)


class SharedWeight(nn.Module):
    """One conv weight used by two convolutions, each followed by its own BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.b2 = nn.BatchNorm2d(6)

    def forward(self, x):
        a = self.b1(self.conv(x))
        b = self.b2(nn.functional.conv2d(torch.flip(x, dims=[3]), self.conv.weight, self.conv.bias, padding=1))
        return torch.relu(a) + b


class MeanOnlyBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.rand(c) - 0.5)
        self.register_buffer("running_mean", torch.rand(c) - 0.5)

    def forward(self, x):
        return self.weight.view(1, -1, 1, 1) * (x - self.running_mean.view(1, -1, 1, 1)) + self.bias.view(1, -1, 1, 1)


class SNConv2d(nn.Conv2d):
    """Conv2d with spectral norm computed in the forward pass from stored u, v
    (torch's own parametrization exports `vdot`, which ONNX lacks)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        w = self.weight.view(self.weight.shape[0], -1)
        self.register_buffer("u", nn.functional.normalize(torch.randn(w.shape[0]), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(w.shape[1]), dim=0))
        with torch.no_grad():
            for _ in range(15):
                self.u = nn.functional.normalize(w @ self.v, dim=0)
                self.v = nn.functional.normalize(w.t() @ self.u, dim=0)

    def forward(self, x):
        w = self.weight.view(self.weight.shape[0], -1)
        sigma = (self.u * (w @ self.v)).sum()
        return nn.functional.conv2d(x, self.weight / sigma, self.bias, self.stride, self.padding)


class MsnNet(nn.Module):
    """What a PyTorch user's MSN network exports to: SN conv, then Sub, Mul, Add."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = SNConv2d(1, 8, 3, padding=1), MeanOnlyBN(8)
        self.c2, self.n2 = SNConv2d(8, 16, 3, stride=2, padding=1), MeanOnlyBN(16)
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = nn.functional.leaky_relu(self.n1(self.c1(x)), 0.1)
        x = nn.functional.leaky_relu(self.n2(self.c2(x)), 0.1)
        return self.head(torch.flatten(x, 1))


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    models = {
        "resnet_bn": (ResNet(), (2, 3, 16, 16)),
        "mobilenet_bn": (MobileNet(), (2, 3, 32, 32)),
        "generator_bn": (Generator(), (2, 16, 1, 1)),
        "shared_weight_bn": (SharedWeight(), (2, 3, 8, 8)),
        "msn_torch": (MsnNet(), (2, 1, 16, 16)),
    }
    for name, (net, shape) in models.items():
        randomize_bn(net)
        net.train()
        with torch.no_grad():  # a few training passes so SN vectors are settled
            for _ in range(3):
                net(torch.randn(*shape))
        net.eval()
        x = torch.randn(*shape)
        path = OUT / f"{name}.onnx"
        torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.EVAL)
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(net(x).numpy() - y).max() < 1e-4, name
        x.numpy().astype("<f4").tofile(OUT / f"{name}.input.f32")
        y.astype("<f4").tofile(OUT / f"{name}.output.f32")
        print(f"{name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
