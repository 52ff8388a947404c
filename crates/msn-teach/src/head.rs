//! The head on the cached features, trained by our autograd: a linear layer, or a hidden
//! layer with a norm (MSN by default), ReLU, then the linear layer.

use msn_autograd::{no_grad, Var};
use msn_nn::layers::{BatchNorm, Layer, Linear, MeanOnlyBatchNorm, Sequential};
use msn_nn::optim::{Adam, Optimizer};
use msn_nn::{Ctx, Module, NormKind};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What head to train, and how.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadConfig {
    /// Width of the hidden layer; `None`: a linear head.
    pub hidden: Option<usize>,
    /// The hidden layer's norm.
    pub norm: NormKind,
    pub epochs: usize,
    pub batch: usize,
    /// Adam's learning rate at the start; it decays to zero on a cosine.
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            hidden: None,
            norm: NormKind::Msn,
            epochs: 30,
            batch: 64,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 1,
        }
    }
}

impl HeadConfig {
    /// A name for the head: `linear` or `hidden256-msn`.
    pub fn describe(&self) -> String {
        match self.hidden {
            None => "linear".into(),
            Some(h) => format!("hidden{h}-{}", self.norm),
        }
    }
}

/// The head's layers for `features` inputs and `classes` outputs, weights drawn from the seed.
/// As in the trainer's conv blocks, a hidden layer followed by a mean-subtracting norm (bn,
/// msn) has no bias, and sn and msn normalise its weight spectrally.
pub fn build(features: usize, classes: usize, cfg: &HeadConfig) -> Sequential {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut layers = Vec::new();
    let mut width = features;
    if let Some(h) = cfg.hidden {
        let bias = matches!(cfg.norm, NormKind::None | NormKind::Sn);
        let lin = Linear::new(features, h, bias, &mut rng);
        let lin = match cfg.norm {
            NormKind::Sn | NormKind::Msn => lin.spectral(&mut rng),
            NormKind::None | NormKind::Bn => lin,
        };
        layers.push(Layer::Linear(lin));
        match cfg.norm {
            NormKind::Bn => layers.push(Layer::BatchNorm(BatchNorm::new(h))),
            NormKind::Msn => layers.push(Layer::MeanOnlyBatchNorm(MeanOnlyBatchNorm::new(h))),
            NormKind::None | NormKind::Sn => {}
        }
        layers.push(Layer::Relu);
        width = h;
    }
    layers.push(Layer::Linear(Linear::new(width, classes, true, &mut rng)));
    Sequential::new(layers)
}

/// One epoch's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub test_accuracy: Option<f32>,
    pub seconds: f64,
}

/// Logits of feature rows, in eval mode (running statistics, no power iteration).
pub fn logits(head: &Sequential, x: &Array2<f32>) -> Array2<f32> {
    no_grad(|| {
        let mut out = Vec::new();
        for chunk in x.axis_chunks_iter(Axis(0), 256) {
            let y = head.forward(
                &Var::constant(chunk.to_owned().into_dyn()),
                &mut Ctx::eval(),
            );
            out.push(
                y.value()
                    .clone()
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("[N, classes]"),
            );
        }
        let views: Vec<_> = out.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(0), &views).expect("same width")
    })
}

/// The class of each row of logits.
pub fn predictions(logits: &Array2<f32>) -> Vec<usize> {
    logits
        .outer_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0
        })
        .collect()
}

/// The share of rows whose prediction is the label.
pub fn accuracy(head: &Sequential, x: &Array2<f32>, y: &[usize]) -> f32 {
    let p = predictions(&logits(head, x));
    p.iter().zip(y).filter(|(a, b)| a == b).count() as f32 / y.len().max(1) as f32
}

/// Trains `head` on `(x, y)` for `cfg.epochs` epochs of shuffled mini-batches (Adam, cosine
/// learning rate), measuring `test` after each epoch; `on_epoch` sees each epoch's figures.
pub fn train(
    head: &Sequential,
    (x, y): (&Array2<f32>, &[usize]),
    test: Option<(&Array2<f32>, &[usize])>,
    cfg: &HeadConfig,
    on_epoch: &mut dyn FnMut(&Epoch),
) -> Vec<Epoch> {
    let params = head.parameters();
    let mut opt = Adam::new(0.9, 0.999, cfg.weight_decay);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..x.nrows()).collect();
    let batch = cfg.batch.max(1);
    let mut out = Vec::new();
    for epoch in 0..cfg.epochs {
        let start = std::time::Instant::now();
        let lr =
            cfg.lr * 0.5 * (1.0 + (std::f32::consts::PI * epoch as f32 / cfg.epochs as f32).cos());
        order.shuffle(&mut rng);
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (step, idx) in order.chunks(batch).enumerate() {
            // A batch of one has no batch statistics: BN and MSN would see zero variance.
            if idx.len() < 2 && cfg.hidden.is_some() {
                continue;
            }
            let xb = x.select(Axis(0), idx).into_dyn();
            let yb: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
            let mut ctx = Ctx::train(cfg.seed ^ ((epoch as u64) << 32 | step as u64));
            let logits = head.forward(&Var::constant(xb), &mut ctx);
            let l = logits.cross_entropy(&yb);
            loss += l.value()[[]] as f64 * idx.len() as f64;
            let v = logits
                .value()
                .clone()
                .into_dimensionality::<ndarray::Ix2>()
                .expect("[N, classes]");
            correct += predictions(&v)
                .iter()
                .zip(&yb)
                .filter(|(a, b)| a == b)
                .count();
            msn_nn::optim::zero_grad(&params);
            l.backward();
            opt.step(&params, lr);
        }
        let n = x.nrows().max(1) as f64;
        let e = Epoch {
            epoch: epoch + 1,
            train_loss: (loss / n) as f32,
            train_accuracy: (correct as f64 / n) as f32,
            test_accuracy: test
                .filter(|(tx, _)| tx.nrows() > 0)
                .map(|(tx, ty)| accuracy(head, tx, ty)),
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&e);
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs in 8 dimensions: every head learns them.
    fn blobs(n: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Array2::zeros((n, 8));
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % 2;
            for j in 0..8 {
                x[[i, j]] =
                    rng.random_range(-1.0..1.0) + if c == 1 { 1.5 } else { -1.5 } * (j % 2) as f32;
            }
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn every_head_learns_separable_features() {
        let (x, y) = blobs(200, 1);
        let (tx, ty) = blobs(100, 2);
        for (hidden, norm) in [
            (None, NormKind::Msn),
            (Some(16), NormKind::Msn),
            (Some(16), NormKind::Bn),
            (Some(16), NormKind::None),
            (Some(16), NormKind::Sn),
        ] {
            let cfg = HeadConfig {
                hidden,
                norm,
                epochs: 20,
                batch: 16,
                lr: 1e-2,
                ..Default::default()
            };
            let head = build(8, 2, &cfg);
            let epochs = train(&head, (&x, &y), Some((&tx, &ty)), &cfg, &mut |_| {});
            let last = epochs.last().unwrap();
            assert!(
                last.test_accuracy.unwrap() > 0.95,
                "{}: {last:?}",
                cfg.describe()
            );
            assert!(last.train_loss < epochs[0].train_loss, "{}", cfg.describe());
        }
    }
}
