"""Mean Spectral Normalization for PyTorch, in a form `msn-fold` folds to plain convolutions.

Training at scale belongs to PyTorch on GPUs (DDP and all); deployment belongs to msn:

    from msn_torch import MSNConv2d, cnn3, export
    model = cnn3(norm="msn")              # or build your own from MSNConv2d
    ...train with any PyTorch loop, DDP included...
    export(model, "model.onnx", labels=[...])   # standard ONNX with msn.* metadata
    # then:  msn-fold model.onnx -o model.folded.onnx --verify 10
    #        msn-classify --model model.folded.onnx photo.png

The math is msn's (see the README): spectral norm `W_sn = W / sigma`, sigma of W reshaped to
(out, in*kh*kw) by one power iteration per training step (u, v persistent, no gradient through
them); then a mean-only batch norm `y = g * (x - mean) + b`, the batch mean in training (the
running mean updated with momentum 0.1) and the running mean in eval mode. The export (eval
mode) is a Conv, then Sub / Mul / Add by per-channel constants, which msn-fold folds into
`W' = g * W / sigma`, `b' = g * (bias - running_mean) + b`.

Plain PyTorch, no dependency besides torch (and onnx for the metadata in `export`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SpectralConv2d(nn.Conv2d):
    """nn.Conv2d whose weight is divided by its largest singular value (one power iteration per
    training step; u and v are buffers, saved with the model)."""

    def __init__(self, *args, n_power_iterations=1, eps=1e-12, **kwargs):
        super().__init__(*args, **kwargs)
        out = self.weight.shape[0]
        cols = self.weight[0].numel()
        self.n_power_iterations, self.eps = n_power_iterations, eps
        self.register_buffer("u", F.normalize(torch.randn(out), dim=0, eps=eps))
        self.register_buffer("v", F.normalize(torch.randn(cols), dim=0, eps=eps))

    def normalized_weight(self):
        w = self.weight.flatten(1)
        if self.training:
            with torch.no_grad():
                u, v = self.u, self.v
                for _ in range(self.n_power_iterations):
                    v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
                    u = F.normalize(w @ v, dim=0, eps=self.eps)
                self.u.copy_(u)
                self.v.copy_(v)
        # u^T (W v) as 2-D products: tract 0.23 cannot run a MatMul of two vectors (msn-fold
        # --verify runs the unfolded model in tract).
        sigma = self.u[None, :] @ (w @ self.v[:, None])
        return self.weight / sigma.reshape(())

    def forward(self, x):
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class MeanOnlyBatchNorm2d(nn.Module):
    """y = g * (x - mean) + b per channel: the batch mean when training, else the running mean."""

    def __init__(self, channels, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
        else:
            mean = self.running_mean
        shape = (1, -1, 1, 1)
        return self.weight.view(shape) * (x - mean.view(shape)) + self.bias.view(shape)


class MSNConv2d(nn.Sequential):
    """MSN: a spectrally normalized convolution (no bias: the mean is subtracted right after),
    then the mean-only batch norm."""

    def __init__(self, in_channels, out_channels, kernel_size, **kwargs):
        kwargs["bias"] = False
        super().__init__(
            SpectralConv2d(in_channels, out_channels, kernel_size, **kwargs),
            MeanOnlyBatchNorm2d(out_channels),
        )


def conv_block(cin, cout, k, norm, **kw):
    """conv -> norm -> LeakyReLU(0.1), as msn's trainer builds it."""
    if norm == "msn":
        layers = [MSNConv2d(cin, cout, k, **kw)]
    elif norm == "sn":
        layers = [SpectralConv2d(cin, cout, k, **kw)]
    elif norm == "bn":
        layers = [nn.Conv2d(cin, cout, k, bias=False, **kw), nn.BatchNorm2d(cout)]
    elif norm == "none":
        layers = [nn.Conv2d(cin, cout, k, **kw)]
    else:
        raise ValueError(f"unknown norm {norm!r} (none, bn, sn, msn)")
    return layers + [nn.LeakyReLU(0.1)]


def cnn3(norm="msn", in_channels=1, classes=10, size=28):
    """msn's cnn3: conv5x5 ->16 p2, conv3x3 ->32 p2, conv4x4 ->32 s2 p2, then a linear layer."""
    side = ((size + 2) + 2 * 2 - 4) // 2 + 1  # the padded 3x3 adds 2, then the strided 4x4
    return nn.Sequential(
        *conv_block(in_channels, 16, 5, norm, padding=2),
        *conv_block(16, 32, 3, norm, padding=2),
        *conv_block(32, 32, 4, norm, stride=2, padding=2),
        nn.Flatten(),
        nn.Linear(32 * side * side, classes),
    )


def export(model, path, input_shape=(1, 28, 28), labels=None, scale=1 / 255,
           mean=(0.2860406,), std=(0.35302424,), opset=17):
    """Standard ONNX (eval mode, dynamic batch) with the msn.* metadata msn-classify reads."""
    import onnx
    was_training = model.training
    model.eval()
    torch.onnx.export(model, torch.zeros(1, *input_shape), path, input_names=["input"],
                      output_names=["logits"], opset_version=opset, dynamo=False,
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    model.train(was_training)
    m = onnx.load(path)
    c, h, w = input_shape
    meta = {
        "msn.input_layout": "NCHW",
        "msn.input_shape": f"{c},{h},{w}",
        "msn.color": "gray" if c == 1 else "rgb",
        "msn.resize": "exact",
        "msn.scale": repr(float(scale)),
        "msn.mean": ",".join(repr(float(v)) for v in mean),
        "msn.std": ",".join(repr(float(v)) for v in std),
        "msn.architecture": "pytorch",
    }
    if labels:
        meta["msn.labels"] = "\n".join(labels)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, path)
