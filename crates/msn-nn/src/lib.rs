//! # msn-nn: the layers the MSN paper compares, the models built from them, and optimizers
//!
//! Every layer implements [`Module`]: `forward` in train or eval mode (given by [`Ctx`]), and
//! `visit_state`, which names each parameter and buffer (`features.0.weight`,
//! `features.1.running_mean`) for checkpoints and export.
//!
//! Normalization kinds ([`NormKind`]):
//! - `none`: plain conv.
//! - `bn`: conv, then BatchNorm.
//! - `sn`: spectral norm, `W_sn = W / sigma(W)`, sigma the largest singular value of `W`
//!   reshaped to `(out, in*kh*kw)`, tracked by one power iteration per training step.
//! - `msn`: SN conv followed by a mean-only batch norm: `y = g * (x - mean) + b`.
//!
//! Models are [`Sequential`] lists of [`Layer`]s, a closed set, so the exporter and the folder
//! can walk them.

pub mod init;
pub mod layers;
pub mod models;
pub mod optim;

pub use layers::{Layer, Sequential};

use msn_autograd::Var;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Whether a tensor is trained by the optimizer or is running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Parameter,
    Buffer,
}

/// The normalization a model uses after (or inside) each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    None,
    Bn,
    Sn,
    Msn,
}

impl std::str::FromStr for NormKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NormKind::None),
            "bn" => Ok(NormKind::Bn),
            "sn" => Ok(NormKind::Sn),
            "msn" => Ok(NormKind::Msn),
            _ => Err(format!("unknown norm '{s}' (expected none, bn, sn or msn)")),
        }
    }
}

impl std::fmt::Display for NormKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NormKind::None => "none",
            NormKind::Bn => "bn",
            NormKind::Sn => "sn",
            NormKind::Msn => "msn",
        })
    }
}

/// Statistics of one layer's pre-activations in one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationStats {
    pub layer: String,
    pub mean: f32,
    pub std: f32,
    /// Fraction of the activation's outputs whose gradient is exactly zero (inputs at or
    /// below zero for ReLU): the gradient sparsity the paper studies.
    pub zero_grad_fraction: f32,
}

/// What a forward pass needs besides its input: train or eval mode, randomness for dropout,
/// and an optional recorder of per-layer statistics.
pub struct Ctx {
    pub training: bool,
    pub rng: ChaCha8Rng,
    pub record: Option<Vec<ActivationStats>>,
}

impl Ctx {
    pub fn train(seed: u64) -> Self {
        Ctx {
            training: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
            record: None,
        }
    }

    pub fn eval() -> Self {
        Ctx {
            training: false,
            rng: ChaCha8Rng::seed_from_u64(0),
            record: None,
        }
    }
}

/// A layer or a model.
pub trait Module {
    /// Computes the output; in training mode it also updates running statistics and
    /// power-iteration vectors.
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var;

    /// Calls `f` with the full name, tensor and kind of every parameter and buffer.
    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind));

    /// The trainable parameters, in a stable order.
    fn parameters(&self) -> Vec<Var> {
        let mut out = Vec::new();
        self.visit_state("", &mut |_, v, k| {
            if k == StateKind::Parameter {
                out.push(v.clone());
            }
        });
        out
    }

    /// Every named tensor (parameters and buffers).
    fn named_state(&self) -> Vec<(String, Var, StateKind)> {
        let mut out = Vec::new();
        self.visit_state("", &mut |n, v, k| out.push((n, v.clone(), k)));
        out
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.value().len()).sum()
    }
}

/// Joins a prefix and a name with a dot.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
