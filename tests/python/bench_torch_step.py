"""Dev-only: PyTorch training-step times for the benchmark in crates/msn-nn/benches/step.rs.

Prints `<arch>-<norm> <milliseconds>` per line: cnn3 (batch 64, 28x28) and vgg7 (batch 64,
32x32), forward + backward + SGD step, one net at a time, median of 41 (cnn3) or 15 (vgg7)
steps after 2 warm-up steps, the machine's thread count as PyTorch's default.

This is the fastest plain PyTorch for these nets: nn.Conv2d, nn.BatchNorm2d, and SN written by
hand as in `../shared/reference/pytorch/msn.py` (one power iteration without grad, then
`W / (u . W v)` with the gradient through sigma), which is much faster than
`torch.nn.utils.parametrizations.spectral_norm`. MSN is that SN + a mean-only batch norm.
"""
import time

import torch
from torch import nn


class MeanOnlyBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))

    def forward(self, x):
        mean = x.mean(dim=(0, 2, 3))
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * mean)
        return self.weight.view(1, -1, 1, 1) * (x - mean.view(1, -1, 1, 1)) + self.bias.view(1, -1, 1, 1)


class SNConv2d(nn.Conv2d):
    """Conv2d with W / sigma(W): one power iteration a training step, without grad."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        out = self.weight.shape[0]
        self.register_buffer("u", nn.functional.normalize(torch.randn(out), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(self.weight[0].numel()), dim=0))

    def forward(self, x):
        w = self.weight.flatten(1)
        if self.training:
            with torch.no_grad():
                self.v.copy_(nn.functional.normalize(torch.mv(w.t(), self.u), dim=0))
                self.u.copy_(nn.functional.normalize(torch.mv(w, self.v), dim=0))
        sigma = torch.dot(self.u, torch.mv(w, self.v))
        return self._conv_forward(x, self.weight / sigma, self.bias)


def block(cin, cout, k, stride, pad, norm):
    conv_type = SNConv2d if norm in ("sn", "msn") else nn.Conv2d
    conv = conv_type(cin, cout, k, stride, pad, bias=norm in ("none", "sn"))
    layers = [conv]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    if norm == "msn":
        layers.append(MeanOnlyBN(cout))
    return layers + [nn.LeakyReLU(0.1)]


def cnn3(norm):
    return nn.Sequential(*block(1, 16, 5, 1, 2, norm), *block(16, 32, 3, 1, 2, norm), *block(32, 32, 4, 2, 2, norm),
                         nn.Flatten(), nn.Linear(32 * 16 * 16, 10))


def vgg7(norm):
    layers, c = [], 3
    for item in [32, 32, "M", 64, 64, "M", 128, "M", 256, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += block(c, item, 3, 1, 1, norm)
            c = item
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 2 * 2, 10))


def step_times(nets, shape, rounds):
    """Median step time per net, one net at a time (as a training run has it), after 2
    warm-up steps; the Rust benchmark times its nets the same way."""
    x = torch.rand(64, *shape) * 2 - 1
    y = torch.arange(64) % 10
    medians = []
    for net in nets:
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        times = []
        for step in range(rounds + 2):
            start = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            if step >= 2:
                times.append((time.perf_counter() - start) * 1e3)
        medians.append(sorted(times)[len(times) // 2])
    return medians


def main():
    """All eight nets, or only `ARCH NORM` when given (the Rust benchmark times one net at a
    time, in turns with its own)."""
    import sys

    norms = ("none", "bn", "sn", "msn")
    only = tuple(sys.argv[1:3]) if len(sys.argv) >= 3 else None
    for arch, make, shape, rounds in [("cnn3", cnn3, (1, 28, 28), 41), ("vgg7", vgg7, (3, 32, 32), 15)]:
        chosen = [n for n in norms if only is None or only == (arch, n)]
        for norm, ms in zip(chosen, step_times([make(n) for n in chosen], shape, rounds)):
            print(f"{arch}-{norm} {ms:.3f}")


if __name__ == "__main__":
    main()
