use msn_autograd::ops::elementwise::spread;
use msn_autograd::Var;
use msn_nn::models::{build, ModelConfig};
use msn_nn::optim::{zero_grad, Optimizer, Sgd};
use msn_nn::{Ctx, Module, NormKind};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).cloned().unwrap_or("vgg7".into());
    let norm: NormKind = a
        .get(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(NormKind::None);
    let iters: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let shape = if arch == "cnn3" {
        [1, 28, 28]
    } else {
        [3, 32, 32]
    };
    let cfg = ModelConfig {
        architecture: arch.clone(),
        norm,
        input_shape: shape,
        num_classes: 10,
        width: 100,
        depth: 16,
        latent: 128,
    };
    let model = build(&cfg, 1).unwrap();
    let params = model.parameters();
    let mut opt = Sgd::new(0.9, false, 0.0);
    let x = Var::constant(spread(&[64, shape[0], shape[1], shape[2]], -1.0, 1.0, 3));
    let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
    let mut ts = vec![];
    for _ in 0..iters {
        let s = Instant::now();
        let loss = model.forward(&x, &mut Ctx::train(0)).cross_entropy(&labels);
        loss.backward();
        opt.step(&params, 0.01);
        zero_grad(&params);
        ts.push(s.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{arch} {norm:?} {:?}",
        ts.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>()
    );
}
