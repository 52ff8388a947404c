"""Dev-only PyTorch reference for issue 19: our vgg7 (32, 32, M, 64, 64, M, 128, M, 256, M, 3x3
convs with padding 1, each conv -> norm -> LeakyReLU 0.1, then a linear layer) trained on the
CIFAR-10 subset with `msn train`'s settings: per-channel mean/std from the training images, random
4-pixel crops and flips, Adam 1e-3 (or --lr), batch 64, a cosine schedule per epoch.

Run: /work/venv/bin/python scripts/torch_vgg7_cifar.py DATA_DIR --norms bn,msn --seeds 1,2,3
     --epochs 4 [--variant NAME] [--threads 2] [--json OUT.jsonl]

Variants of MSN (the ablations): `msn` (ours: g learned from 1), `msn-fixed-g` (g frozen at 1),
`msn-ddi` (g initialised from the first batch so that every layer's output has unit std, as in
weight normalisation's data-dependent init), `msn-pi5` (5 power iterations per step),
`msn-mom01` (running-mean momentum 0.01), `mbn` (mean-only batch norm without SN).
The shared reference msn.py supplies SNConv2d and MeanOnlyBatchNorm2d."""
import argparse, json, math, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "pytorch"))
import msn  # noqa: E402


def load(path):
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def conv_block(layers, cin, cout, norm, sn_iters, momentum):
    if norm in ("msn", "sn"):
        layers.append(msn.SNConv2d(cin, cout, 3, 1, 1, bias=(norm == "sn"),
                                   n_power_iterations=sn_iters, learn_renorm=False))
    else:
        layers.append(nn.Conv2d(cin, cout, 3, 1, 1, bias=norm in ("none",)))
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    elif norm in ("msn", "mbn"):
        m = msn.MeanOnlyBatchNorm2d(cout, momentum=momentum)
        layers.append(m)
    layers.append(nn.LeakyReLU(0.1))


def vgg7(norm, sn_iters=1, momentum=0.1):
    layers, c = [], 3
    for item in [32, 32, "M", 64, 64, "M", 128, "M", 256, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            conv_block(layers, c, item, norm, sn_iters, momentum)
            c = item
    layers += [nn.Flatten(1), nn.Linear(256 * 2 * 2, 10)]
    return nn.Sequential(*layers)


def batch(x, idx, mean, std, augment, gen):
    b = torch.from_numpy(x[idx]).float() / 255.0
    b = (b - mean) / std
    if augment:
        b = F.pad(b, (4, 4, 4, 4))
        out = torch.empty(len(idx), 3, 32, 32)
        dy = torch.randint(0, 9, (len(idx),), generator=gen)
        dx = torch.randint(0, 9, (len(idx),), generator=gen)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        for i in range(len(idx)):
            img = b[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
            out[i] = img.flip(2) if flip[i] else img
        b = out
    return b


@torch.no_grad()
def layer_stats(net, xb):
    """Std of every norm layer's output (or conv output for none/sn) on one batch, eval off."""
    stds, h = [], xb
    for m in net:
        h = m(h)
        if isinstance(m, nn.LeakyReLU):
            stds.append(round(h.std().item(), 4))
    return stds


@torch.no_grad()
def data_dependent_init(net, xb):
    """Set each mean-only BN's g so that its output has unit std per channel on this batch."""
    h = xb
    for m in net:
        if isinstance(m, msn.MeanOnlyBatchNorm2d):
            m.weight.copy_(1.0 / (h.std(dim=(0, 2, 3)) + 1e-5))
        h = m(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--variants", default="bn,msn")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    xtr, ytr = load(Path(a.data) / "data_batch_1.bin")
    xte, yte = load(Path(a.data) / "test_batch.bin")
    mean = torch.tensor(xtr.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1).mean(1) / 255.0).float().view(1, 3, 1, 1)
    std = torch.tensor((xtr.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255.0).std(1)).float().view(1, 3, 1, 1)
    xte_t = (torch.from_numpy(xte).float() / 255.0 - mean) / std
    yte_t, ytr_t = torch.from_numpy(yte), torch.from_numpy(ytr)
    for variant in a.variants.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            norm = variant.split("-")[0]
            sn_iters = 5 if "pi5" in variant else 1
            momentum = 0.01 if "mom01" in variant else 0.1
            net = vgg7(norm, sn_iters, momentum)
            probe = batch(xtr, np.arange(256), mean, std, False, gen)
            if "ddi" in variant:
                net.train()
                data_dependent_init(net, probe)
            if "fixed-g" in variant:
                for m in net:
                    if isinstance(m, msn.MeanOnlyBatchNorm2d):
                        m.weight.requires_grad_(False)
            init_stds = layer_stats(net.train(), probe)
            lr = a.lr * (float(variant.split("lrx")[1]) if "lrx" in variant else 1.0)
            opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
            accs = []
            for ep in range(a.epochs):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * ep / a.epochs))
                net.train()
                t = time.time()
                perm = torch.randperm(len(xtr), generator=gen).numpy()
                for i in range(0, len(xtr), 64):
                    idx = perm[i:i + 64]
                    loss = F.cross_entropy(net(batch(xtr, idx, mean, std, not a.no_augment, gen)), ytr_t[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                train_s = time.time() - t
                net.eval()
                with torch.no_grad():
                    acc = sum((net(xte_t[i:i + 500]).argmax(1) == yte_t[i:i + 500]).sum().item()
                              for i in range(0, len(xte_t), 500)) / len(xte_t)
                accs.append(acc)
                print(f"{variant} seed {seed} epoch {ep + 1}: test {acc:.4f} loss {loss.item():.3f} "
                      f"train {train_s:.1f} s ({len(xtr) / train_s:.0f} img/s)", flush=True)
            gs = [round(m.weight.abs().mean().item(), 3) for m in net if isinstance(m, (msn.MeanOnlyBatchNorm2d, nn.BatchNorm2d))]
            rec = dict(variant=variant, seed=seed, epochs=a.epochs, lr=lr, augment=not a.no_augment,
                       test_acc=accs, init_layer_std=init_stds,
                       final_layer_std=layer_stats(net.train(), probe), final_mean_abs_g=gs)
            print(json.dumps(rec), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
