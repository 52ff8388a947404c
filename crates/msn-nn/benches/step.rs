//! Training-step benchmark:
//! `cargo bench -p msn-nn --bench step [-- --torch PYTHON] [--rounds N] [--kernels]`.
//!
//! Prints, in one run:
//! 1. the cnn3 (batch 64, 28x28) and vgg7 (batch 64, 32x32) training-step time
//!    (forward + backward + SGD step) per norm, one net at a time, with the ratios msn/bn and
//!    sn/none;
//! 2. forward + backward of the normalization layers alone: BatchNorm, mean-only BN, and the
//!    SN power iteration with the weight normalization;
//! 3. the conv kernels' GFLOP/s at the cnn3 and vgg7 layer shapes beside the machine's peak:
//!    the forward pass, the input gradient and the weight gradient, each alone;
//! 4. with `--torch PYTHON`, PyTorch's step times from `tests/python/bench_torch_step.py` on
//!    the same machine: each net right after (or, every other round, right before) ours, for
//!    `--rounds` rounds (3 by default), with the ratio ours/PyTorch of the medians and of
//!    each round.

use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::ops::elementwise::spread;
use msn_autograd::{no_grad, Var};
use msn_nn::layers::{BatchNorm, MeanOnlyBatchNorm, SpectralNorm};
use msn_nn::models::{build, ModelConfig};
use msn_nn::optim::{zero_grad, Optimizer, Sgd};
use msn_nn::{Ctx, Module, NormKind};
use rand::SeedableRng;
use std::time::Instant;

// The same allocator as the `msn` binary: large tensors are reused instead of being mapped
// and faulted in afresh at every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NORMS: [NormKind; 4] = [NormKind::None, NormKind::Bn, NormKind::Sn, NormKind::Msn];

/// Median wall time of `f` over `iters` runs after `warmup` runs, in milliseconds.
fn median_ms(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Training-step times of one architecture for every norm, in milliseconds: one net at a
/// time (as a training run has it: its weights and activations warm in cache), the median of
/// `rounds` steps after two warm-up steps. The PyTorch side times its nets the same way.
fn step_ms(arch: &str, norm: NormKind, shape: [usize; 3], rounds: usize) -> f64 {
    let x = Var::constant(spread(&[64, shape[0], shape[1], shape[2]], -1.0, 1.0, 3));
    let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
    let cfg = ModelConfig::classifier(arch, norm, shape);
    let model = build(&cfg, 1).unwrap();
    let params = model.parameters();
    let mut opt = Sgd::new(0.9, false, 0.0);
    let mut times = Vec::new();
    for step in 0..rounds + 2 {
        let start = Instant::now();
        let loss = model.forward(&x, &mut Ctx::train(0)).cross_entropy(&labels);
        loss.backward();
        opt.step(&params, 0.01);
        zero_grad(&params);
        // The first two steps warm up the allocator and caches.
        if step >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn fwd_bwd_ms(iters: usize, f: impl Fn(&Var) -> Var, shape: &[usize]) -> f64 {
    let x = Var::parameter(spread(shape, -1.0, 1.0, 4));
    median_ms(3, iters, || {
        x.zero_grad();
        f(&x).sum().backward();
    })
}

/// Peak single-precision GFLOP/s: cores x clock x 32 (two 8-wide FMA units, 2 FLOP each).
fn peak_gflops() -> (f64, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let fma = info.contains(" fma ") && info.contains(" avx2 ");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    // Two FMA units of 16 (AVX-512) or 8 (AVX2) lanes, 2 FLOPs each.
    let per_cycle = match (fma, info.contains(" avx512f ")) {
        (true, true) => 64.0,
        (true, false) => 32.0,
        _ => 8.0,
    };
    (
        cores * mhz / 1e3 * per_cycle,
        format!("{cores} cores x {mhz:.0} MHz x {per_cycle} FLOP/cycle"),
    )
}

fn conv_gflops(name: &str, n: usize, c: usize, hw: usize, o: usize, k: usize, opts: ConvOptions) {
    let xv = spread(&[n, c, hw, hw], -1.0, 1.0, 5);
    let wv = spread(&[o, c, k, k], -1.0, 1.0, 6);
    let y = no_grad(|| Var::constant(xv.clone()).conv2d(&Var::constant(wv.clone()), opts));
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    let flops = 2.0 * (n * o * oh * ow * c * k * k) as f64;
    // The forward pass, then each gradient alone (the other operand a constant): forward and
    // backward minus the forward. A first layer (one input channel) takes no input gradient
    // in training. Rounds in turns, medians.
    let time = |x: Var, w: Var, backward: bool| {
        median_ms(1, 3, || {
            x.zero_grad();
            w.zero_grad();
            let y = x.conv2d(&w, opts);
            if backward {
                y.sum().backward();
            }
        })
    };
    let (p, k_) = (Var::parameter, Var::constant);
    let (mut fwd, mut dx, mut dw) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        let f = no_grad(|| time(k_(xv.clone()), k_(wv.clone()), false));
        fwd.push(f);
        dx.push(time(p(xv.clone()), k_(wv.clone()), true) - f);
        dw.push(time(k_(xv.clone()), p(wv.clone()), true) - f);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2].max(1e-9)
    };
    let (f, dx, dw) = (med(fwd), med(dx), med(dw));
    let rate = |ms: f64| flops / ms / 1e6;
    let dx = if c == 1 {
        "     (not needed)     ".to_string()
    } else {
        format!("{dx:6.2} ms {:6.1} GFLOP/s", rate(dx))
    };
    println!(
        "  {name:<28} fwd {f:6.2} ms {:6.1} GFLOP/s | dx {dx} | dw {dw:6.2} ms {:6.1} GFLOP/s",
        rate(f),
        rate(dw),
    );
}

fn main() {
    // As `msn train` does: this thread runs each op's parallel parts from inside the pool.
    msn_autograd::kernels::join_global_pool();
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let torch = value("--torch");
    // Ours and PyTorch's take turns for this many rounds; each figure is the median of the
    // rounds' medians (the machine's speed drifts from minute to minute).
    let rounds: usize = value("--rounds").map_or(if torch.is_some() { 3 } else { 1 }, |r| {
        r.parse().expect("--rounds takes a number")
    });
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("msn training-step benchmark ({threads} threads for sgemm)\n");

    // `--kernels`: only the conv kernels (section 3).
    let kernels_only = args.iter().any(|a| a == "--kernels");
    let archs: &[(&str, [usize; 3], usize)] = if kernels_only {
        &[]
    } else {
        &[("cnn3", [1, 28, 28], 41), ("vgg7", [3, 32, 32], 15)]
    };
    // name -> (ours per round, PyTorch's per round)
    let mut table: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for &(arch, shape, steps) in archs {
            println!(
                "round {}/{rounds}: {arch}, batch 64, {}x{}: forward + backward + SGD step, \
                 median of {steps} steps, one net at a time",
                round + 1,
                shape[1],
                shape[2]
            );
            let mut times = Vec::new();
            for &norm in &NORMS {
                let name = format!("{arch}-{norm}");
                // Each net runs here and in PyTorch back to back, and the side that goes
                // first alternates between rounds, so drift falls on both alike.
                let torch_first = round % 2 == 1;
                let mut theirs = None;
                if let (Some(py), true) = (&torch, torch_first) {
                    theirs = torch_step(py, arch, norm);
                }
                let t = step_ms(arch, norm, shape, steps);
                if let (Some(py), false) = (&torch, torch_first) {
                    theirs = torch_step(py, arch, norm);
                }
                match theirs {
                    Some(p) => println!("  {norm:<5} {t:8.2} ms   PyTorch {p:8.2} ms"),
                    None => println!("  {norm:<5} {t:8.2} ms"),
                }
                times.push(t);
                match table.iter_mut().find(|(k, _, _)| *k == name) {
                    Some(row) => row.1.push(t),
                    None => table.push((name.clone(), vec![t], Vec::new())),
                }
                if let (Some(p), Some(row)) =
                    (theirs, table.iter_mut().find(|(k, _, _)| *k == name))
                {
                    row.2.push(p);
                }
            }
            println!(
                "  ratio msn/bn = {:.3}   sn/none = {:.3}\n",
                times[3] / times[1],
                times[2] / times[0]
            );
        }
    }

    if !kernels_only {
        norm_layers();
    }
    conv_kernels();

    if torch.is_some() && !kernels_only {
        println!(
            "\nPyTorch on the same machine (tests/python/bench_torch_step.py: nn.Conv2d, \
             nn.BatchNorm2d, hand-written SN), each net in turns with ours, {rounds} rounds; \
             medians of the rounds"
        );
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        for (name, o, t) in &table {
            let per_round: Vec<String> = o
                .iter()
                .zip(t)
                .map(|(a, b)| format!("{:.2}", a / b))
                .collect();
            println!(
                "  {name:<12} ours {:8.2} ms  torch {:8.2} ms  ours/torch {:.2}  (rounds: {})",
                med(o),
                med(t),
                med(o) / med(t),
                per_round.join(", ")
            );
        }
    }
}

/// PyTorch's step time of one net (ms) from `tests/python/bench_torch_step.py`; none, with
/// a message, when it cannot run.
fn torch_step(py: &str, arch: &str, norm: NormKind) -> Option<f64> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/bench_torch_step.py"
    );
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(arch)
        .arg(norm.to_string())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| line.split_whitespace().nth(1)?.parse().ok()),
        Ok(out) => {
            println!("  PyTorch failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Err(e) => {
            println!("  cannot run {py}: {e}");
            None
        }
    }
}

/// Section 2: the normalization layers alone.
fn norm_layers() {
    println!("normalization layers alone, forward + backward, x = [64, 32, 16, 16]");

    let shape = [64, 32, 16, 16];
    let bn = BatchNorm::new(32);
    let bn_ms = fwd_bwd_ms(20, |x| bn.forward(x, &mut Ctx::train(0)), &shape);
    let mo = MeanOnlyBatchNorm::new(32);
    let mo_ms = fwd_bwd_ms(20, |x| mo.forward(x, &mut Ctx::train(0)), &shape);
    let w = spread(&[32, 32, 4, 4], -1.0, 1.0, 7);
    let sn = SpectralNorm::new(&w, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let sn_ms = fwd_bwd_ms(20, |wv| sn.normalize(wv, true), &[32, 32, 4, 4]);
    println!("  BatchNorm        {bn_ms:7.3} ms");
    println!(
        "  mean-only BN     {mo_ms:7.3} ms   (MSN/BN = {:.3})",
        mo_ms / bn_ms
    );
    println!("  SN power iter.   {sn_ms:7.3} ms   (weight [32, 32, 4, 4])\n");
}

/// Section 3: the conv kernels at the cnn3 and vgg7 layer shapes.
fn conv_kernels() {
    let (peak, how) = peak_gflops();
    println!("conv2d kernels, batch 64 (peak {peak:.0} GFLOP/s = {how})");
    let p = |pad| ConvOptions::default().padding(pad);
    conv_gflops("cnn3 conv1 1->16 5x5 28", 64, 1, 28, 16, 5, p(2));
    conv_gflops("cnn3 conv2 16->32 3x3 28", 64, 16, 28, 32, 3, p(2));
    conv_gflops(
        "cnn3 conv3 32->32 4x4 s2 30",
        64,
        32,
        30,
        32,
        4,
        p(2).stride(2),
    );
    conv_gflops("vgg7 32->32 3x3 32", 64, 32, 32, 32, 3, p(1));
    conv_gflops("vgg7 64->64 3x3 16", 64, 64, 16, 64, 3, p(1));
    conv_gflops("vgg7 128->256 3x3 4", 64, 128, 4, 256, 3, p(1));
}
