use super::spectral::SpectralNorm;
use crate::{init, join, StateKind};
use msn_autograd::Var;
use rand_chacha::ChaCha8Rng;

/// Gives a layer with a `params: Weights` field `Deref` to it; with `spectral`, also the
/// builder that adds spectral normalization.
macro_rules! has_weights {
    ($layer:ty, spectral) => {
        has_weights!($layer);

        impl $layer {
            /// Adds spectral normalization of the weight.
            pub fn spectral(mut self, rng: &mut rand_chacha::ChaCha8Rng) -> Self {
                self.params.spectral(rng);
                self
            }
        }
    };
    ($layer:ty) => {
        impl std::ops::Deref for $layer {
            type Target = $crate::layers::Weights;
            fn deref(&self) -> &$crate::layers::Weights {
                &self.params
            }
        }
    };
}
pub(crate) use has_weights;

/// A layer's weight, optional bias and optional spectral norm, named as PyTorch names them
/// (`weight`, `bias`, `weight_u`, `weight_v`). Convolutions and linear layers hold one and
/// reach its fields through `Deref`.
pub struct Weights {
    pub weight: Var,
    pub bias: Option<Var>,
    pub sn: Option<SpectralNorm>,
}

impl Weights {
    /// PyTorch's default initialisation: weight and bias uniform in `±1/sqrt(fan_in)`.
    pub fn new(
        shape: &[usize],
        fan_in: usize,
        bias_len: usize,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        Weights {
            weight: Var::parameter(init::torch_default(shape, fan_in, rng)),
            bias: bias.then(|| Var::parameter(init::torch_default(&[bias_len], fan_in, rng))),
            sn: None,
        }
    }

    /// A convolution's parameters: `shape` is `[a, b, k, k]` with fan-in `b * k * k` (so for
    /// a transposed convolution, too, as PyTorch has it) and `output` channels of bias.
    pub fn conv(shape: [usize; 4], output: usize, bias: bool, rng: &mut ChaCha8Rng) -> Self {
        let fan_in = shape[1] * shape[2] * shape[3];
        Weights::new(&shape, fan_in, output, bias, rng)
    }

    /// Adds spectral normalization of the weight.
    pub fn spectral(&mut self, rng: &mut ChaCha8Rng) {
        self.sn = Some(SpectralNorm::new(&self.weight.value(), rng));
    }

    /// The weight the layer applies (normalized when SN is on).
    pub fn effective_weight(&self, training: bool) -> Var {
        match &self.sn {
            Some(sn) => sn.normalize(&self.weight, training),
            None => self.weight.clone(),
        }
    }

    /// `y + bias` per channel (axis 1), or `y` without a bias.
    pub fn add_bias(&self, y: Var) -> Var {
        match &self.bias {
            Some(b) => y.channel_affine(None, b),
            None => y,
        }
    }

    /// Names the parameters and the SN buffers under `prefix`.
    pub fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        f(join(prefix, "weight"), &self.weight, StateKind::Parameter);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b, StateKind::Parameter);
        }
        if let Some(sn) = &self.sn {
            f(join(prefix, "weight_u"), &sn.u, StateKind::Buffer);
            f(join(prefix, "weight_v"), &sn.v, StateKind::Buffer);
        }
    }
}
