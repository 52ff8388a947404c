//! The layer set: a closed enum, so that export and fold can walk any model.

mod batchnorm;
mod conv;
mod linear;
pub mod spectral;
mod weights;

pub use batchnorm::{BatchNorm, MeanOnlyBatchNorm};
pub use conv::{Conv2d, ConvTranspose2d};
pub use linear::Linear;
pub use spectral::SpectralNorm;
pub use weights::Weights;

use crate::{join, ActivationStats, Ctx, Module, StateKind};
use msn_autograd::Var;
use rand::Rng;

/// One step of a [`Sequential`] model.
pub enum Layer {
    Conv(Conv2d),
    ConvTranspose(ConvTranspose2d),
    Linear(Linear),
    BatchNorm(BatchNorm),
    MeanOnlyBatchNorm(MeanOnlyBatchNorm),
    Relu,
    LeakyRelu(f32),
    Tanh,
    Sigmoid,
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Flatten,
    Dropout(f32),
    /// Reshapes `[N, rest]` to `[N, C, H, W]` (the generator's first step).
    Unflatten([usize; 3]),
    /// `y = concat(x, f(x))` along channels: a DenseNet layer.
    Dense(Sequential),
}

/// Layers applied in order; each is named by its index, PyTorch-style (`features.0.weight`).
#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Layer>,
}

impl Sequential {
    pub fn new(layers: Vec<Layer>) -> Self {
        Sequential { layers }
    }

    pub fn push(&mut self, layer: Layer) {
        self.layers.push(layer);
    }
}

fn record(ctx: &mut Ctx, name: &str, x: &Var) {
    if let Some(rec) = ctx.record.as_mut() {
        let v = x.value();
        let v = v.as_standard_layout();
        let (sum, sq, zero) =
            msn_autograd::kernels::moments(v.as_slice().expect("standard layout"));
        let n = v.len().max(1) as f64;
        let mean = sum / n;
        let var = (sq / n - mean * mean).max(0.0);
        rec.push(ActivationStats {
            layer: name.to_string(),
            mean: mean as f32,
            std: var.sqrt() as f32,
            zero_grad_fraction: (zero as f64 / n) as f32,
        });
    }
}

impl Layer {
    fn forward_named(&self, name: &str, x: &Var, ctx: &mut Ctx) -> Var {
        match self {
            Layer::Conv(l) => l.forward(x, ctx),
            Layer::ConvTranspose(l) => l.forward(x, ctx),
            Layer::Linear(l) => l.forward(x, ctx),
            Layer::BatchNorm(l) => l.forward(x, ctx),
            Layer::MeanOnlyBatchNorm(l) => l.forward(x, ctx),
            Layer::Relu => {
                record(ctx, name, x);
                x.relu()
            }
            Layer::LeakyRelu(s) => {
                record(ctx, name, x);
                x.leaky_relu(*s)
            }
            Layer::Tanh => x.tanh(),
            Layer::Sigmoid => x.sigmoid(),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => x.max_pool2d(*kernel, *stride, *padding),
            Layer::AvgPool { kernel, stride } => x.avg_pool2d(*kernel, *stride),
            Layer::GlobalAvgPool => x.global_avg_pool(),
            Layer::Flatten => x.flatten(),
            Layer::Dropout(p) if ctx.training && *p > 0.0 => {
                let rng = &mut ctx.rng;
                x.dropout(*p, &mut || rng.random::<f32>())
            }
            Layer::Dropout(_) => x.clone(),
            Layer::Unflatten([c, h, w]) => x.reshape(&[x.shape()[0], *c, *h, *w]),
            Layer::Dense(inner) => {
                let y = inner.forward_prefixed(name, x, ctx);
                Var::concat(&[x.clone(), y], 1)
            }
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        match self {
            Layer::Conv(l) => l.visit_state(prefix, f),
            Layer::ConvTranspose(l) => l.visit_state(prefix, f),
            Layer::Linear(l) => l.visit_state(prefix, f),
            Layer::BatchNorm(l) => l.visit_state(prefix, f),
            Layer::MeanOnlyBatchNorm(l) => l.visit_state(prefix, f),
            Layer::Dense(inner) => inner.visit_state(prefix, f),
            _ => {}
        }
    }
}

/// The training forward of an MSN block, a bias-free conv followed by the mean-only batch
/// norm, `y = g * (conv(x, W_sn) - mean) + b`, computed as `conv(x, g * W_sn) - mean + b`:
/// the same function (convolution is linear in each output channel's weights), with `g` applied
/// to the weight instead of the activations, so the backward pass of the norm reads only the
/// incoming gradient. The running mean gets `mean(conv(x, g W_sn)) / g`, the mean of the
/// unscaled conv. `None` (use the two layers one by one) when the conv has a bias or a scale is
/// zero.
fn msn_train_forward(
    conv: &Conv2d,
    norm: &MeanOnlyBatchNorm,
    x: &Var,
    ctx: &mut Ctx,
) -> Option<Var> {
    let g = norm.weight.value().iter().copied().collect::<Vec<f32>>();
    if !ctx.training || conv.bias.is_some() || g.iter().any(|&v| v == 0.0 || !v.is_finite()) {
        return None;
    }
    let w = conv.effective_weight(true);
    let shape = w.shape();
    let (out, rest) = (shape[0], w.value().len() / shape[0]);
    // Scales each output channel's weights with the fused channel op ([1, out, rest] view).
    let zero = Var::constant(msn_autograd::Array::zeros(ndarray::IxDyn(&[out])));
    let scaled = w
        .reshape(&[1, out, rest])
        .channel_affine(Some(&norm.weight), &zero)
        .reshape(&shape);
    let (y, mean) = x.conv2d(&scaled, conv.options).mean_shift(&norm.bias);
    let unscaled: Vec<f32> = mean.iter().zip(&g).map(|(m, g)| m / g).collect();
    norm.update_running_mean(&unscaled);
    Some(y)
}

impl Sequential {
    fn forward_prefixed(&self, prefix: &str, x: &Var, ctx: &mut Ctx) -> Var {
        let mut x = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            if let (Layer::Conv(conv), Some(Layer::MeanOnlyBatchNorm(norm))) =
                (&self.layers[i], self.layers.get(i + 1))
            {
                if let Some(y) = msn_train_forward(conv, norm, &x, ctx) {
                    x = y;
                    i += 2;
                    continue;
                }
            }
            // A conv with a bias, then its activation, as one op; not on the steps that record
            // the activation's input (its statistics), which the fused op never makes.
            let slope = match self.layers.get(i + 1) {
                Some(Layer::LeakyRelu(s)) if *s >= 0.0 => Some(*s),
                Some(Layer::Relu) => Some(0.0),
                _ => None,
            };
            if let (Layer::Conv(conv), Some(slope), None) = (&self.layers[i], slope, &ctx.record) {
                if let Some(y) = conv.forward_leaky_relu(&x, slope, ctx) {
                    x = y;
                    i += 2;
                    continue;
                }
            }
            x = self.layers[i].forward_named(&join(prefix, &i.to_string()), &x, ctx);
            i += 1;
        }
        x
    }
}

impl Sequential {
    /// Sets the power iterations per training step of every spectral norm and the momentum of
    /// every running statistic (batch norm and mean-only batch norm), in nested blocks too.
    pub fn set_norm_options(&mut self, sn_iterations: usize, momentum: f32) {
        for layer in &mut self.layers {
            let sn = match layer {
                Layer::Conv(l) => l.params.sn.as_mut(),
                Layer::ConvTranspose(l) => l.params.sn.as_mut(),
                Layer::Linear(l) => l.params.sn.as_mut(),
                Layer::BatchNorm(l) => {
                    l.momentum = momentum;
                    None
                }
                Layer::MeanOnlyBatchNorm(l) => {
                    l.momentum = momentum;
                    None
                }
                Layer::Dense(inner) => {
                    inner.set_norm_options(sn_iterations, momentum);
                    None
                }
                _ => None,
            };
            if let Some(sn) = sn {
                sn.n_power_iterations = sn_iterations;
            }
        }
    }

    /// The learned scales `g` of every mean-only batch norm, in order.
    pub fn msn_scales(&self) -> Vec<Var> {
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::MeanOnlyBatchNorm(l) => out.push(l.weight.clone()),
                Layer::Dense(inner) => out.extend(inner.msn_scales()),
                _ => {}
            }
        }
        out
    }

    /// Data-dependent initialisation of MSN's scales, as weight normalisation's (Salimans and
    /// Kingma, 2016): runs the batch `x` through the model in training mode, layer by layer, and
    /// sets each mean-only batch norm's `g` to 1 / the per-channel std of its input, so that
    /// every block starts with unit-std outputs instead of shrinking the signal (a spectrally
    /// normalized conv's gain on typical inputs is well under 1). Running means are left as
    /// they were. Returns the mean std of each mean-only batch norm's input before the change.
    pub fn init_msn_scales(&self, x: &Var) -> Vec<f32> {
        let mut stds = Vec::new();
        let mut ctx = Ctx::train(0);
        msn_autograd::no_grad(|| self.init_scales_walk(x, &mut ctx, &mut stds));
        stds
    }

    fn init_scales_walk(&self, x: &Var, ctx: &mut Ctx, stds: &mut Vec<f32>) -> Var {
        let mut x = x.clone();
        for layer in &self.layers {
            x = match layer {
                Layer::MeanOnlyBatchNorm(norm) => {
                    let std = channel_std(&x.value());
                    stds.push(std.iter().sum::<f32>() / std.len().max(1) as f32);
                    let g: Vec<f32> = std.iter().map(|s| 1.0 / s.max(1e-5)).collect();
                    norm.weight.set_value(
                        msn_autograd::Array::from_shape_vec(ndarray::IxDyn(&[g.len()]), g)
                            .expect("C"),
                    );
                    let running = norm.running_mean.value().clone();
                    let y = norm.forward(&x, ctx);
                    norm.running_mean.set_value(running);
                    y
                }
                Layer::Dense(inner) => {
                    let y = inner.init_scales_walk(&x, ctx, stds);
                    Var::concat(&[x.clone(), y], 1)
                }
                other => other.forward_named("", &x, ctx),
            };
        }
        x
    }
}

/// The standard deviation of each channel (axis 1) of an `[N, C, ...]` tensor.
fn channel_std(x: &msn_autograd::Array) -> Vec<f32> {
    let c = x.shape()[1];
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); c];
    for (i, lane) in x.axis_iter(ndarray::Axis(1)).enumerate() {
        for &v in lane.iter() {
            sums[i].0 += v as f64;
            sums[i].1 += (v as f64) * (v as f64);
            sums[i].2 += 1;
        }
    }
    sums.iter()
        .map(|&(s, q, n)| {
            let n = n.max(1) as f64;
            ((q / n - (s / n) * (s / n)).max(0.0)).sqrt() as f32
        })
        .collect()
}

impl Module for Sequential {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        self.forward_prefixed("", x, ctx)
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit(&join(prefix, &i.to_string()), f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_autograd::ops::conv::ConvOptions;
    use msn_autograd::ops::elementwise::spread;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn msn_block() -> Sequential {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let options = ConvOptions::default().padding(1).stride(2);
        let conv = Conv2d::new(3, 4, 3, options, false, &mut rng).spectral(&mut rng);
        let norm = MeanOnlyBatchNorm::new(4);
        norm.weight.set_value(spread(&[4], 0.5, 1.5, 2));
        norm.bias.set_value(spread(&[4], -0.5, 0.5, 3));
        Sequential::new(vec![Layer::Conv(conv), Layer::MeanOnlyBatchNorm(norm)])
    }

    fn max_rel(a: &msn_autograd::Array, b: &msn_autograd::Array) -> f32 {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// The fused MSN training path (g folded into the conv weight) against the conv and the
    /// mean-only batch norm run one after the other: outputs, every gradient, running mean
    /// and the SN vectors agree.
    #[test]
    fn fused_msn_training_forward_equals_the_two_layers() {
        let (fused, plain) = (msn_block(), msn_block());
        let x_f = Var::parameter(spread(&[3, 3, 7, 6], -1.0, 1.0, 4));
        let x_p = Var::parameter(spread(&[3, 3, 7, 6], -1.0, 1.0, 4));
        let r = Var::constant(spread(&[3, 4, 4, 3], -1.0, 1.0, 6));
        for _ in 0..2 {
            let (Layer::Conv(conv), Layer::MeanOnlyBatchNorm(norm)) =
                (&fused.layers[0], &fused.layers[1])
            else {
                unreachable!()
            };
            let y_f = msn_train_forward(conv, norm, &x_f, &mut Ctx::train(0))
                .expect("the fused path applies");
            let mut ctx = Ctx::train(0);
            let h = plain.layers[0].forward_named("0", &x_p, &mut ctx);
            let y_p = plain.layers[1].forward_named("1", &h, &mut ctx);
            assert!(max_rel(&y_f.value(), &y_p.value()) < 1e-5);
            y_f.mul(&r).sum().backward();
            y_p.mul(&r).sum().backward();
        }
        assert!(max_rel(&x_f.grad().unwrap(), &x_p.grad().unwrap()) < 1e-5);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fused.visit_state("", &mut |n, v, _| a.push((n, v.clone())));
        plain.visit_state("", &mut |n, v, _| b.push((n, v.clone())));
        let mut grads = 0;
        for ((name, va), (_, vb)) in a.iter().zip(&b) {
            let err = max_rel(&va.value(), &vb.value());
            assert!(err < 1e-5, "{name}: value differs by {err}");
            if let (Some(ga), Some(gb)) = (va.grad(), vb.grad()) {
                let err = max_rel(&ga, &gb);
                assert!(err < 1e-5, "{name}: gradient differs by {err}");
                grads += 1;
            }
        }
        assert_eq!(a.len(), 6, "weight, u, v, g, b, running mean");
        assert_eq!(grads, 3, "weight, g and b have gradients");
        // The fused path is the one a model takes when training.
        let y = fused.forward(&x_f, &mut Ctx::train(0));
        let mut ctx = Ctx::train(0);
        let h = plain.layers[0].forward_named("0", &x_p, &mut ctx);
        let y_p = plain.layers[1].forward_named("1", &h, &mut ctx);
        assert!(max_rel(&y.value(), &y_p.value()) < 1e-5);
    }

    /// A model's conv + bias + leaky ReLU blocks as one op (steps that record no statistics)
    /// against the three ops one by one (steps that do): the same outputs and gradients, for
    /// cnn3 (direct and phase convolutions) and vgg7 (pooling between, 4x4 rows), with and
    /// without SN.
    #[test]
    fn fused_conv_activation_equals_the_layers_one_by_one() {
        for (arch, input, norm) in [
            ("cnn3", [1, 28, 28], crate::NormKind::None),
            ("cnn3", [1, 28, 28], crate::NormKind::Sn),
            ("vgg7", [3, 32, 32], crate::NormKind::None),
        ] {
            let config = crate::models::ModelConfig::classifier(arch, norm, input);
            let [c, h, w] = input;
            let x = Var::constant(spread(&[4, c, h, w], -2.0, 2.0, 7));
            let run = |record: bool| {
                let model = crate::models::build(&config, 3).unwrap();
                let mut ctx = Ctx::train(0);
                ctx.record = record.then(Vec::new);
                let y = model.forward(&x, &mut ctx);
                assert_eq!(ctx.record.map(|r| r.is_empty()), record.then_some(false));
                let r = Var::constant(spread(&y.shape(), -1.0, 1.0, 8));
                y.mul(&r).sum().backward();
                let mut grads = Vec::new();
                model.visit_state("", &mut |n, v, _| grads.extend(v.grad().map(|g| (n, g))));
                let out = y.value().clone();
                (out, grads)
            };
            let ((y_f, g_f), (y_p, g_p)) = (run(false), run(true));
            assert!(
                max_rel(&y_f, &y_p) < 1e-5,
                "{arch} {norm:?}: outputs differ"
            );
            assert_eq!(g_f.len(), g_p.len());
            assert!(g_f.len() >= 8, "{arch}: conv weights and biases, linear");
            for ((name, a), (_, b)) in g_f.iter().zip(&g_p) {
                let err = max_rel(a, b);
                assert!(
                    err < 1e-4,
                    "{arch} {norm:?} {name}: gradient differs by {err}"
                );
            }
        }
    }

    /// A classifier of the paper's family with MSN, ten classes.
    fn msn_model(
        arch: &str,
        input: [usize; 3],
        width: usize,
        depth: usize,
        seed: u64,
    ) -> Sequential {
        let config = crate::models::ModelConfig {
            architecture: arch.into(),
            norm: crate::NormKind::Msn,
            input_shape: input,
            num_classes: 10,
            width,
            depth,
            latent: 128,
        };
        crate::models::build(&config, seed).unwrap()
    }

    #[test]
    fn data_dependent_init_gives_every_msn_block_unit_std() {
        let model = msn_model("vgg7", [3, 16, 16], 25, 16, 3);
        let x = Var::constant(spread(&[8, 3, 16, 16], -2.0, 2.0, 5));
        let before = model.init_msn_scales(&x);
        assert_eq!(before.len(), 6);
        // Spectral normalization shrinks the signal block after block at the start.
        assert!(before[5] < before[1], "{before:?}");
        // Running means were left alone.
        for layer in &model.layers {
            if let Layer::MeanOnlyBatchNorm(n) = layer {
                assert!(n.running_mean.value().iter().all(|&m| m == 0.0));
            }
        }
        // After the init, each norm's output (the batch mean removed, times g) has std 1 per
        // channel on the same batch: check it at every MSN layer by walking the model again
        // (within 1e-2: this walk's power iterations move each sigma a little).
        let mut h = x.clone();
        let mut ctx = Ctx::train(0);
        let mut checked = 0;
        for layer in &model.layers {
            h = layer.forward_named("", &h, &mut ctx);
            if matches!(layer, Layer::MeanOnlyBatchNorm(_)) {
                for s in channel_std(&h.value()) {
                    assert!((s - 1.0).abs() < 1e-2, "channel std {s}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn norm_options_reach_every_layer() {
        let mut model = msn_model("densenet-bc", [3, 8, 8], 100, 10, 1);
        model.set_norm_options(3, 0.01);
        let mut seen = (0, 0);
        fn walk(s: &Sequential, seen: &mut (usize, usize)) {
            for l in &s.layers {
                match l {
                    Layer::Conv(c) if c.params.sn.is_some() => {
                        assert_eq!(c.params.sn.as_ref().unwrap().n_power_iterations, 3);
                        seen.0 += 1;
                    }
                    Layer::MeanOnlyBatchNorm(n) => {
                        assert_eq!(n.momentum, 0.01);
                        seen.1 += 1;
                    }
                    Layer::Dense(inner) => walk(inner, seen),
                    _ => {}
                }
            }
        }
        walk(&model, &mut seen);
        assert!(seen.0 > 4 && seen.1 == seen.0, "{seen:?}");
        assert_eq!(model.msn_scales().len(), seen.1);
    }
}
