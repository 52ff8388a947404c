//! Several callers running one planned model at once on one two-thread pool all finish, each
//! with the values of a run alone. On aarch64, where tract's own matrix products run this
//! convolution, runs nested on one thread (a thread waiting inside one run's product took
//! another caller's run) aborted on tract's thread-local scratch space until the model let
//! one run at a time onto the pool.

use msn_onnx::builder::{attr, GraphBuilder};
use msn_runtime::model::{Plan, Source};
use msn_runtime::Tensor;
use std::path::Path;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// A 32 -> 32 channel 3x3 convolution with a ReLU on 28x28.
fn conv_model() -> Vec<u8> {
    let mut b = GraphBuilder::new("conv");
    let x = b.input("x", &[1, 32, 28, 28]);
    let w: Vec<f32> = (0..32 * 32 * 9usize)
        .map(|i| ((i * 7919) % 61) as f32 / 61.0 - 0.5)
        .collect();
    let w = ndarray::Array::from_shape_vec((32, 32, 3, 3), w).unwrap();
    let w = b.initializer_f32("w", &w.into_dyn());
    let y = b.node(
        "Conv",
        &[&x, &w],
        "conv",
        &[
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let y = b.node("Relu", &[&y], "y", &[]);
    b.output(&y, &[1, 32, 28, 28]);
    msn_onnx::io::to_bytes(&b.into_model(13))
}

#[test]
fn runs_from_several_threads_on_one_pool_finish() {
    let source = Source::from_bytes(conv_model(), Path::new("conv.onnx")).unwrap();
    let shape = vec![1, 32, 28, 28];
    let plan = std::sync::Arc::new(
        source
            .plan(std::slice::from_ref(&shape), Plan::Optimized)
            .unwrap(),
    );
    let x: Vec<f32> = (0..32 * 28 * 28usize)
        .map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0)
        .collect();
    let x = Tensor::from_shape(&shape, &x).unwrap();
    let alone = plan.run(vec![x.clone()]).unwrap().remove(0);
    const CALLERS: usize = 6;
    const RUNS: usize = 400;
    let pool = Executor::multithread(2);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..CALLERS {
        let (plan, x, pool, tx) = (plan.clone(), x.clone(), pool.clone(), tx.clone());
        std::thread::spawn(move || {
            let outs: Vec<_> = multithread_tract_scope(pool, || {
                (0..RUNS)
                    .map(|_| plan.run(vec![x.clone()]).unwrap().remove(0))
                    .collect()
            });
            tx.send(outs).unwrap();
        });
    }
    for _ in 0..CALLERS {
        let outs = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the callers' runs did not finish in 2 minutes: deadlock");
        assert!(outs.iter().all(|o| *o == alone));
    }
}
