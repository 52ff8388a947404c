"""Dev-only: PyTorch reference values for our layers, ops and optimizers.

    python tests/python/make_layer_fixtures.py

Writes tests/fixtures/torch/layers.json: for each case, the inputs, parameters, outputs and
gradients (of sum(output * proj), proj a fixed random tensor) as {"shape": [...], "data": [...]}.
Shapes are kept small so the file stays small.
"""
import json
import pathlib

import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "torch" / "layers.json"


def t(x):
    x = x.detach().contiguous()
    return {"shape": list(x.shape), "data": [round(float(v), 7) for v in x.reshape(-1)]}


def grads(y, *leaves, seed=99):
    g = torch.Generator().manual_seed(seed)
    proj = torch.rand(y.shape, generator=g) * 2 - 1
    (y * proj).sum().backward()
    return proj, [leaf.grad for leaf in leaves]


def main():
    torch.manual_seed(0)
    cases = {}

    # Conv2d with groups, dilation, stride and padding.
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    y = conv(x)
    proj, (gx, gw, gb) = grads(y, x, conv.weight, conv.bias)
    cases["conv2d"] = dict(x=t(x), weight=t(conv.weight), bias=t(conv.bias), y=t(y), proj=t(proj), gx=t(gx), gweight=t(gw), gbias=t(gb),
                           stride=2, padding=2, dilation=2, groups=2)

    # ConvTranspose2d.
    convt = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, output_padding=1, groups=2)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = convt(x)
    proj, (gx, gw, gb) = grads(y, x, convt.weight, convt.bias)
    cases["conv_transpose2d"] = dict(x=t(x), weight=t(convt.weight), bias=t(convt.bias), y=t(y), proj=t(proj), gx=t(gx), gweight=t(gw), gbias=t(gb),
                                     stride=2, padding=1, output_padding=1, groups=2)

    # Linear.
    lin = nn.Linear(5, 3)
    x = torch.randn(4, 5, requires_grad=True)
    y = lin(x)
    proj, (gx, gw, gb) = grads(y, x, lin.weight, lin.bias)
    cases["linear"] = dict(x=t(x), weight=t(lin.weight), bias=t(lin.bias), y=t(y), proj=t(proj), gx=t(gx), gweight=t(gw), gbias=t(gb))

    # BatchNorm2d, train and eval.
    for mode in ("train", "eval"):
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
        rm0, rv0 = bn.running_mean.clone(), bn.running_var.clone()
        bn.train(mode == "train")
        x = (torch.randn(4, 3, 3, 3) * 2 + 1).requires_grad_(True)
        y = bn(x)
        proj, (gx, gw, gb) = grads(y, x, bn.weight, bn.bias)
        cases[f"batchnorm2d_{mode}"] = dict(x=t(x), weight=t(bn.weight), bias=t(bn.bias), running_mean=t(rm0), running_var=t(rv0),
                                            y=t(y), proj=t(proj), gx=t(gx), gweight=t(gw), gbias=t(gb),
                                            running_mean_after=t(bn.running_mean), running_var_after=t(bn.running_var))

    # Mean-only batch norm (train: batch mean; running mean with momentum 0.1).
    x = (torch.randn(4, 3, 3, 3) + 2).requires_grad_(True)
    g = (torch.rand(3) + 0.5).requires_grad_(True)
    b = (torch.rand(3) - 0.5).requires_grad_(True)
    rm = torch.rand(3) - 0.5
    mean = x.mean(dim=(0, 2, 3))
    y = g.view(1, 3, 1, 1) * (x - mean.view(1, 3, 1, 1)) + b.view(1, 3, 1, 1)
    proj, (gx, gg, gb) = grads(y, x, g, b)
    cases["mean_only_bn_train"] = dict(x=t(x), weight=t(g), bias=t(b), running_mean=t(rm), y=t(y), proj=t(proj), gx=t(gx), gweight=t(gg), gbias=t(gb),
                                       running_mean_after=t(0.9 * rm + 0.1 * mean.detach()))

    # Spectral norm of a conv weight: one power iteration from torch's u, v, gradient through sigma.
    conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    p = conv.parametrizations.weight[0]
    u0, v0 = p._u.clone(), p._v.clone()
    w_orig = conv.parametrizations.weight.original
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    conv.train()
    y = conv(x)
    proj, (gx, gw) = grads(y, x, w_orig)
    cases["spectral_norm_conv"] = dict(x=t(x), weight=t(w_orig), bias=t(conv.bias), u=t(u0), v=t(v0), y=t(y), proj=t(proj), gx=t(gx), gweight=t(gw),
                                       u_after=t(p._u), v_after=t(p._v))

    # Cross-entropy.
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([0, 3, 1, 1, 2])
    loss = nn.functional.cross_entropy(logits, target)
    loss.backward()
    cases["cross_entropy"] = dict(logits=t(logits), target=target.tolist(), loss=float(loss), glogits=t(logits.grad))

    # One SGD step (momentum, weight decay) and one Adam step, twice so the state matters.
    for name in ("sgd", "adam"):
        w = torch.randn(3, 4, requires_grad=True)
        w0 = w.detach().clone()
        opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01) if name == "sgd" else torch.optim.Adam([w], lr=0.01, betas=(0.8, 0.99))
        gs = []
        for step in range(2):
            opt.zero_grad()
            (w * w * (step + 1)).sum().backward()
            gs.append(w.grad.clone())
            opt.step()
        cases[f"{name}_steps"] = dict(w0=t(w0), grads=[t(x) for x in gs], w_after=t(w))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
