"""Dev-only: the differential corpus in tests/fixtures/corpus (issue 14).

Two kinds of models, each written as NAME.onnx with NAME.inputs.npz (keyed by input name)
and NAME.expected.npz (onnxruntime's outputs, keyed by output name):

- small generated graphs covering every op msn-fold folds or the runtime guards, every fold
  rule in both operand orders, broadcasting shapes, and chains that must not fold;
- real architectures from torchvision (reduced widths, 10 classes, random weights and
  randomised BatchNorm statistics so that folding matters), exported by PyTorch.

    python tests/python/make_corpus.py [--only NAME]

tests/corpus.rs runs every model through the runtime (unfolded and folded) against the
expected outputs; tests/python/check_corpus.py redoes onnxruntime live and runs `msn run`.
"""
import argparse
import os
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "corpus")
RNG = np.random.default_rng(14)


def arr(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def save(name, model, inputs):
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, inputs)
    names = [o.name for o in sess.get_outputs()]
    np.savez(os.path.join(OUT, name + ".inputs.npz"), **inputs)
    np.savez(os.path.join(OUT, name + ".expected.npz"), **dict(zip(names, outs)))
    print(f"{name}: {len(model.graph.node)} nodes, {os.path.getsize(path)} bytes")


class G:
    """A tiny graph builder: x [1, C, H, W] in, whatever is built out."""

    def __init__(self, shape=(1, 4, 6, 6)):
        self.nodes, self.inits, self.n = [], [], 0
        self.shape = shape
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]

    def const(self, a, name=None):
        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def op(self, op, ins, **attrs):
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k=3, group=1, pads=1, bias=True, stride=1, positive=False):
        # positive: weights, bias (and the caller's input) > 0, so the output is bounded away
        # from 0 and c / conv(x) is well conditioned (else a pole amplifies rounding).
        lo = 0.1 if positive else -1.0
        w = self.const(arr(cout, cin // group, k, k, lo=lo))
        ins = [x, w] + ([self.const(arr(cout, lo=0.5 if positive else -1.0))] if bias else [])
        return self.op("Conv", ins, group=group, pads=[pads] * 4, strides=[stride, stride])

    def bn(self, x, c):
        return self.op(
            "BatchNormalization",
            [x, self.const(arr(c, lo=0.5, hi=1.5)), self.const(arr(c)),
             self.const(arr(c)), self.const(arr(c, lo=0.2, hi=2.0))],
            epsilon=1e-3,
        )

    def model(self, outs, opset=17):
        graph = helper.make_graph(
            self.nodes, "g", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)

    def feed(self, positive=False):
        return {"x": arr(*self.shape, lo=0.1 if positive else -1.0)}


def generated():
    per_channel = {
        "scalar": np.float32(0.7),
        "c11": arr(4, 1, 1, lo=0.5, hi=1.5),
        "1c11": arr(1, 4, 1, 1, lo=0.5, hi=1.5),
    }
    # Conv then an affine op, both operand orders, every broadcast shape; Div by a
    # constant only with x first (c / conv is not affine: must not fold, must run right).
    for op in ["Add", "Sub", "Mul", "Div"]:
        for shape_name, c in per_channel.items():
            for x_first in [True, False]:
                for group in [1, 2, 4]:
                    g = G()
                    pos = op == "Div" and not x_first
                    y = g.conv("x", 4, 4, group=group, positive=pos)
                    cc = g.const(c)
                    z = g.op(op, [y, cc] if x_first else [cc, y])
                    name = f"gen_conv_g{group}_{op.lower()}_{shape_name}_{'xc' if x_first else 'cx'}"
                    save(name, g.model([z]), g.feed(pos))
    # A full-shape constant after a conv must not fold (it differs per pixel).
    g = G()
    y = g.conv("x", 4, 4)
    z = g.op("Sub", [g.const(arr(1, 4, 6, 6)), y])
    save("gen_conv_sub_fullshape_cx", g.model([z]), g.feed())
    # The conv output read twice: no fold, and tract's own fusion is guarded.
    for op in ["Sub", "Div"]:
        g = G()
        y = g.conv("x", 4, 4, positive=op == "Div")
        z = g.op(op, [g.const(arr(1, 4, 1, 1, lo=1.0, hi=2.0)), y])
        w = g.op("Relu", [y])
        save(f"gen_conv_{op.lower()}_cx_two_uses", g.model([z, w]), g.feed(op == "Div"))
    # Constant-first Sub / Div after a conv whose output feeds only them (the tract bug).
    for op in ["Sub", "Div"]:
        g = G()
        y = g.conv("x", 4, 8, positive=op == "Div")
        z = g.op(op, [g.const(arr(1, 8, 1, 1, lo=2.0, hi=3.0)), y])
        z = g.op("Relu", [z])
        save(f"gen_conv_{op.lower()}_cx_relu", g.model([z]), g.feed(op == "Div"))
    # Conv + BN, groups 1, 2, depthwise, strides, no bias.
    for group, cout, bias, stride in [(1, 8, True, 1), (2, 8, False, 2), (4, 4, True, 1), (4, 8, False, 1)]:
        g = G()
        y = g.conv("x", 4, cout, group=group, bias=bias, stride=stride)
        z = g.op("Relu", [g.bn(y, cout)])
        save(f"gen_conv_bn_g{group}_o{cout}_s{stride}{'' if bias else '_nobias'}", g.model([z]), g.feed())
    # BN then Mul then Add chain after conv.
    g = G()
    y = g.conv("x", 4, 6)
    y = g.bn(y, 6)
    y = g.op("Mul", [y, g.const(arr(6, 1, 1))])
    y = g.op("Add", [g.const(arr(1, 6, 1, 1)), y])
    save("gen_conv_bn_mul_add_chain", g.model([y]), g.feed())
    # ConvTranspose + BN, groups 1 and 2.
    for group in [1, 2]:
        g = G()
        w = g.const(arr(4, 6 // group, 3, 3))
        y = g.op("ConvTranspose", ["x", w, g.const(arr(6))], group=group, strides=[2, 2], pads=[1, 1, 1, 1])
        z = g.bn(y, 6)
        save(f"gen_convtranspose_bn_g{group}", g.model([z]), g.feed())
    # Gemm with every transA / transB / alpha / beta, then BN or Mul or Sub (both orders).
    for ta in [0, 1]:
        for tb in [0, 1]:
            for after in ["bn", "mul", "sub_cx"]:
                g = G((2, 5))
                g.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])]
                a = "x" if not ta else g.op("Transpose", ["x"], perm=[1, 0])
                b = g.const(arr(3, 5) if tb else arr(5, 3))
                y = g.op("Gemm", [a, b, g.const(arr(3))], transA=ta, transB=tb, alpha=0.7, beta=1.3)
                if after == "bn":
                    y = g.bn(y, 3)
                elif after == "mul":
                    y = g.op("Mul", [y, g.const(arr(3))])
                else:
                    y = g.op("Sub", [g.const(arr(3)), y])
                save(f"gen_gemm_ta{ta}_tb{tb}_{after}", g.model([y]), g.feed())
    # MatMul + Add + BN on a flattened conv output; Flatten with a negative axis.
    g = G()
    y = g.op("Flatten", [g.conv("x", 4, 2)], axis=-3)
    y = g.op("MatMul", [y, g.const(arr(72, 5))])
    y = g.op("Add", [y, g.const(arr(5))])
    y = g.bn(y, 5)
    save("gen_flatten_neg_matmul_add_bn", g.model([y]), g.feed())
    # An affine op before a conv: scale always folds; shift only without padding.
    for op in ["Mul", "Div", "Add", "Sub"]:
        for pads in [0, 1]:
            for x_first in [True, False]:
                g = G()
                c = g.const(arr(1, 4, 1, 1, lo=0.5, hi=1.5))
                y = g.op(op, ["x", c] if x_first else [c, "x"])
                y = g.conv(y, 4, 4, pads=pads, group=2)
                save(f"gen_{op.lower()}_{'xc' if x_first else 'cx'}_before_conv_p{pads}", g.model([y]), g.feed())
    # Identity, Dropout (inference) and the spectral-norm subgraph of our exporter.
    g = G()
    w = g.const(arr(4, 4, 3, 3))
    u = g.const(arr(4))
    v = g.const(arr(36))
    wm = g.op("Reshape", [w, g.const(np.array([4, 36], dtype=np.int64))])
    wv = g.op("MatMul", [wm, v])
    sigma = g.op("MatMul", [u, wv])
    wsn = g.op("Div", [w, sigma])
    y = g.op("Conv", ["x", wsn], pads=[1, 1, 1, 1])
    y = g.op("Identity", [y])
    y = g.op("Dropout", [y])
    y = g.op("Sub", [y, g.const(arr(1, 4, 1, 1))])
    y = g.op("Mul", [y, g.const(arr(1, 4, 1, 1))])
    y = g.op("Add", [y, g.const(arr(1, 4, 1, 1))])
    save("gen_spectral_msn", g.model([y]), g.feed())


def vectors():
    """A MatMul of two vectors (numpy's dot product, as torch.dot exports it), which tract
    cannot analyse as written: y = (x . v) * x with a rank-1 input."""
    rng = np.random.default_rng(20)
    g = G(shape=(4,))
    v = g.const(rng.uniform(-1, 1, 4).astype(np.float32))
    d = g.op("MatMul", ["x", v])
    y = g.op("Mul", [d, "x"])
    save("gen_vector_dot", g.model([y]), {"x": rng.uniform(-1, 1, 4).astype(np.float32)})


def depthwise():
    """Depthwise convolutions, which the runtime computes on its own kernel (issue 17): 3x3,
    5x5 and 3x5 kernels, strides 1, 2, 3 and unequal, symmetric and TensorFlow-style
    asymmetric padding, batches, no bias, a pointwise conv first (tract then drops the batch
    axis), the Relu or Clip the kernel absorbs, and a dilated one it leaves to tract."""
    global RNG
    RNG = np.random.default_rng(17)

    def dw(g, x, c, k, stride=(1, 1), pads=(1, 1, 1, 1), bias=True, dil=None):
        kh, kw = (k, k) if isinstance(k, int) else k
        ins = [x, g.const(arr(c, 1, kh, kw))] + ([g.const(arr(c))] if bias else [])
        attrs = dict(group=c, kernel_shape=[kh, kw], pads=list(pads), strides=list(stride))
        if dil:
            attrs["dilations"] = [dil, dil]
        return g.op("Conv", ins, **attrs)

    def clip(g, y, lo=0.0, hi=6.0):
        return g.op("Clip", [y, g.const(np.float32(lo)), g.const(np.float32(hi))])

    cases = [
        ("k3_s1_clip", (1, 8, 20, 20), lambda g: clip(g, dw(g, "x", 8, 3))),
        ("k3_s2_tfpad_clip", (1, 8, 21, 21), lambda g: clip(g, dw(g, "x", 8, 3, (2, 2), (0, 0, 1, 1)))),
        ("k5_s2_tfpad_relu", (1, 6, 17, 17), lambda g: g.op("Relu", [dw(g, "x", 6, 5, (2, 2), (1, 1, 2, 2))])),
        ("k5_s1_7x7", (1, 16, 7, 7), lambda g: dw(g, "x", 16, 5, pads=(2, 2, 2, 2))),
        ("k3_batch2_nobias", (2, 4, 9, 11), lambda g: dw(g, "x", 4, 3, bias=False)),
        ("k3x5_s3x1_nopad", (1, 4, 13, 10), lambda g: dw(g, "x", 4, (3, 5), (3, 1), (0, 0, 0, 0))),
        ("pointwise_then_k3_s2", (1, 6, 15, 15),
         lambda g: clip(g, dw(g, g.conv("x", 6, 6, k=1, pads=0), 6, 3, (2, 2)))),
        ("dilated", (1, 4, 12, 12), lambda g: dw(g, "x", 4, 3, pads=(2, 2, 2, 2), dil=2)),
        ("chain", (1, 4, 16, 16),
         lambda g: clip(g, dw(g, g.op("Relu", [dw(g, "x", 4, 3)]), 4, 5, (2, 2), (2, 2, 2, 2)), -1.0, 1.0)),
    ]
    for name, shape, build in cases:
        g = G(shape=shape)
        y = build(g)
        save(f"gen_depthwise_{name}", g.model([y]), g.feed())


def randomise_bn(model):
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


def architectures(names=None):
    import torch
    import torchvision.models as tv
    from torchvision.models import resnet, regnet, convnext
    from functools import partial

    def small_resnet():
        # torchvision's BasicBlock and ResNet wiring at a quarter of the width.
        class R(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = torch.nn.Sequential(
                    torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
                down = lambda i, o: torch.nn.Sequential(torch.nn.Conv2d(i, o, 1, 2, bias=False), torch.nn.BatchNorm2d(o))
                self.layers = torch.nn.Sequential(
                    resnet.BasicBlock(16, 16), resnet.BasicBlock(16, 32, 2, down(16, 32)),
                    resnet.BasicBlock(32, 64, 2, down(32, 64)))
                self.fc = torch.nn.Linear(64, 10)

            def forward(self, x):
                x = self.layers(self.stem(x))
                return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return R()

    def small_regnet():
        params = regnet.BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
        return regnet.RegNet(params, num_classes=10)

    def small_convnext():
        cfg = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)]
        return convnext.ConvNeXt(cfg, num_classes=10)

    def small_efficientnet():
        from torchvision.models.efficientnet import _efficientnet_conf, EfficientNet
        settings, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.34)
        return EfficientNet(settings, 0.2, last_channel=last, num_classes=10)

    def small_mobilenet_v3():
        from torchvision.models.mobilenetv3 import _mobilenet_v3_conf, MobileNetV3
        settings, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
        return MobileNetV3(settings, last_channel=256, num_classes=10)

    def small_vit():
        # torchvision's VisionTransformer: class token, position embedding, nn.MultiheadAttention.
        return tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                    hidden_dim=32, mlp_dim=64, num_classes=10)

    def small_swin():
        # torchvision's Swin: windows of 4 on an 8x8 grid, so the second block of each stage
        # shifts them and computes the attention mask from shapes.
        from torchvision.models.swin_transformer import SwinTransformer
        return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                               window_size=[4, 4], num_classes=10)

    nets = {
        "arch_resnet": small_resnet,
        "arch_mobilenet_v2": lambda: tv.mobilenet_v2(width_mult=0.25, num_classes=10),
        "arch_mobilenet_v3_small": small_mobilenet_v3,
        "arch_efficientnet": small_efficientnet,
        "arch_shufflenet_v2": lambda: tv.shufflenet_v2_x0_5(num_classes=10),
        "arch_regnet": small_regnet,
        "arch_densenet": lambda: tv.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=10),
        "arch_squeezenet": lambda: tv.squeezenet1_1(num_classes=10),
        "arch_convnext": small_convnext,
        "arch_mnasnet": lambda: tv.MNASNet(0.25, num_classes=10),
        "arch_vit": small_vit,
        "arch_swin": small_swin,
    }
    for name, make in nets.items():
        if names and name not in names:
            continue
        # crc32, not hash(): str hashes change from one Python process to the next.
        torch.manual_seed(zlib.crc32(name.encode()) % 1000)
        m = make().eval()
        randomise_bn(m)
        if name in ("arch_vit", "arch_swin"):
            with torch.no_grad():
                for p in m.parameters():
                    if p.dim() > 1 and not p.any():  # a zero-initialised head outputs only zeros
                        p.normal_(0.0, 0.5)
        size = 32 if name in ("arch_vit", "arch_swin") else 64
        x = torch.rand(1, 3, size, size) * 2 - 1
        path = os.path.join(OUT, name + ".onnx")
        # PRESERVE keeps BatchNormalization nodes (EVAL would fuse them into the convs).
        torch.onnx.export(m, x, path, dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=["input"], output_names=["logits"])
        model = onnx.load(path)
        save(name, model, {"input": x.numpy()})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["generated", "vectors", "depthwise", "architectures"])
    p.add_argument("--names", nargs="*", help="only these architectures (e.g. arch_vit arch_swin)")
    args = p.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.only in (None, "generated"):
        generated()
    if args.only in (None, "vectors"):
        vectors()
    if args.only in (None, "depthwise"):
        depthwise()
    if args.only in (None, "architectures"):
        architectures(args.names)


if __name__ == "__main__":
    main()
