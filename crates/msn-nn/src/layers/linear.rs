use super::spectral::SpectralNorm;
use crate::{init, join, Ctx, Module, StateKind};
use msn_autograd::Var;
use rand_chacha::ChaCha8Rng;

/// `y = x W^T + b`, with `W` of shape `[out, in]` (PyTorch's layout); optionally spectrally
/// normalized.
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
    pub sn: Option<SpectralNorm>,
}

impl Linear {
    pub fn new(input: usize, output: usize, bias: bool, rng: &mut ChaCha8Rng) -> Self {
        Linear {
            weight: Var::parameter(init::torch_default(&[output, input], input, rng)),
            bias: bias.then(|| Var::parameter(init::torch_default(&[output], input, rng))),
            sn: None,
        }
    }

    /// Adds spectral normalization of the weight.
    pub fn spectral(mut self, rng: &mut ChaCha8Rng) -> Self {
        self.sn = Some(SpectralNorm::new(&self.weight.value(), rng));
        self
    }

    /// The weight the layer applies (normalized when SN is on).
    pub fn effective_weight(&self, training: bool) -> Var {
        match &self.sn {
            Some(sn) => sn.normalize(&self.weight, training),
            None => self.weight.clone(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        let y = x.matmul(&self.effective_weight(ctx.training).t());
        match &self.bias {
            Some(b) => y.channel_affine(None, b),
            None => y,
        }
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
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
