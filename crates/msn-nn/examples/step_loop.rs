//! Runs training steps of one model in a loop, for profilers (`perf record`):
//! `cargo run --release -p msn-nn --example step_loop -- cnn3 msn 50`.

use msn_autograd::ops::elementwise::spread;
use msn_autograd::Var;
use msn_nn::models::{build, ModelConfig};
use msn_nn::optim::{zero_grad, Optimizer, Sgd};
use msn_nn::{Ctx, Module, NormKind};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `msn train` does: this thread runs each op's parallel parts from inside the pool.
    msn_autograd::kernels::join_global_pool();
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map_or("cnn3", String::as_str);
    let norm: NormKind = args
        .get(2)
        .map_or("msn", String::as_str)
        .parse()
        .expect("a norm: none, bn, sn or msn");
    let steps: usize = args.get(3).map_or(50, |s| s.parse().expect("a step count"));
    let shape = if arch == "cnn3" {
        [1, 28, 28]
    } else {
        [3, 32, 32]
    };
    let cfg = ModelConfig::classifier(arch, norm, shape);
    let model = build(&cfg, 1).expect("a known architecture");
    let params = model.parameters();
    let mut opt = Sgd::new(0.9, false, 0.0);
    let x = Var::constant(spread(&[64, shape[0], shape[1], shape[2]], -1.0, 1.0, 3));
    let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
    // Per step: total, forward, backward, optimizer (ms).
    let mut times: [Vec<f64>; 4] = Default::default();
    for _ in 0..steps {
        let start = Instant::now();
        let loss = model.forward(&x, &mut Ctx::train(0)).cross_entropy(&labels);
        let forward = start.elapsed();
        loss.backward();
        let backward = start.elapsed();
        opt.step(&params, 0.01);
        zero_grad(&params);
        let total = start.elapsed();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        for (t, v) in times.iter_mut().zip([
            ms(total),
            ms(forward),
            ms(backward - forward),
            ms(total - backward),
        ]) {
            t.push(v);
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let [t, f, b, o] = times.each_mut().map(median);
    println!(
        "{arch} {norm}: median step {t:.2} ms over {steps} (forward {f:.2}, backward {b:.2}, optimizer {o:.2})"
    );
}
