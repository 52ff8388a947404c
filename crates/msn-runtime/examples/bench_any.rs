//! Median latency of any single-input models at their declared input shape, run in turns:
//! `cargo run --profile fast -p msn-runtime --example bench_any -- A.onnx B.onnx ... [--iters N] [--profile] [--tract]`
//! (`--tract`: each model also planned with tract's own kernels in place of ours, in turns)
//! (a dev tool for layer-level experiments; `msn bench` measures image classifiers).

use msn_runtime::model::{Plan, Source};
use std::time::Instant;

fn main() {
    let mut iters = 50;
    let mut profile = false;
    let mut tract = false;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--profile" {
            profile = true;
        } else if a == "--tract" {
            tract = true;
        } else if a == "--iters" {
            iters = args.next().and_then(|v| v.parse().ok()).expect("--iters N");
        } else {
            paths.push(a);
        }
    }
    msn_runtime::set_threads(1);
    let paths: Vec<(String, bool)> = paths
        .into_iter()
        .flat_map(|p| {
            let both = [(p.clone(), false), (p, true)];
            both.into_iter().take(if tract { 2 } else { 1 })
        })
        .collect();
    let models: Vec<_> = paths
        .iter()
        .map(|(p, tract)| {
            let plan = match tract {
                true => Plan::With(msn_runtime::msn_kernels::Options::none()),
                false => Plan::Optimized,
            };
            let s = Source::read(p).expect("readable model");
            let shape: Vec<usize> = s.inputs()[0]
                .dims
                .as_ref()
                .expect("declared input shape")
                .iter()
                .map(|d| d.unwrap_or(1))
                .collect();
            let m = s
                .plan(std::slice::from_ref(&shape), plan)
                .expect("plannable");
            let n: usize = shape.iter().product();
            let x = ndarray::ArrayD::<f32>::from_shape_vec(
                shape,
                (0..n)
                    .map(|i| ((i * 7919) % 17) as f32 / 8.0 - 1.0)
                    .collect(),
            )
            .expect("shape");
            (m, x)
        })
        .collect();
    if profile {
        for ((p, _), (m, x)) in paths.iter().zip(&models) {
            let input = msn_runtime::Tensor::from(x.clone());
            let mut nodes = m.profile(vec![input], iters).expect("profiles");
            nodes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
            println!("{p}: slowest nodes");
            for n in nodes.iter().take(12) {
                println!("  {:50} {:24} {:8.3} ms", n.name, n.op, n.seconds * 1e3);
            }
        }
    }
    let mut times = vec![Vec::new(); models.len()];
    for i in 0..iters + 5 {
        for (k, (m, x)) in models.iter().enumerate() {
            let t = Instant::now();
            m.run_f32(x.clone()).expect("runs");
            if i >= 5 {
                times[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let paths: Vec<String> = paths
        .into_iter()
        .map(|(p, tract)| if tract { format!("{p} [tract]") } else { p })
        .collect();
    let base = {
        let mut t = times[0].clone();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    for (p, t) in paths.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let med = t[t.len() / 2];
        println!("{p:40} {med:9.3} ms  x{:.2} of the first", med / base);
    }
}
