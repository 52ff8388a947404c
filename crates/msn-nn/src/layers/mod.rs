//! The layer set: a closed enum, so that export and fold can walk any model.

mod batchnorm;
mod conv;
mod linear;
pub mod spectral;

pub use batchnorm::{BatchNorm, MeanOnlyBatchNorm};
pub use conv::{Conv2d, ConvTranspose2d};
pub use linear::Linear;
pub use spectral::SpectralNorm;

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
        let n = v.len() as f32;
        let mean = v.sum() / n;
        let var = v.iter().map(|&a| (a - mean) * (a - mean)).sum::<f32>() / n;
        let zero = v.iter().filter(|&&a| a <= 0.0).count() as f32 / n;
        rec.push(ActivationStats {
            layer: name.to_string(),
            mean,
            std: var.sqrt(),
            zero_grad_fraction: zero,
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

impl Sequential {
    fn forward_prefixed(&self, prefix: &str, x: &Var, ctx: &mut Ctx) -> Var {
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_named(&join(prefix, &i.to_string()), &x, ctx);
        }
        x
    }
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
