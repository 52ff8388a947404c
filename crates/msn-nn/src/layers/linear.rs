use super::weights::{has_weights, Weights};
use crate::{Ctx, Module, StateKind};
use msn_autograd::Var;
use rand_chacha::ChaCha8Rng;

/// `y = x W^T + b`, with `W` of shape `[out, in]` (PyTorch's layout); optionally spectrally
/// normalized.
pub struct Linear {
    pub params: Weights,
}

has_weights!(Linear, spectral);

impl Linear {
    pub fn new(input: usize, output: usize, bias: bool, rng: &mut ChaCha8Rng) -> Self {
        let params = Weights::new(&[output, input], input, output, bias, rng);
        Linear { params }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        let w = self.effective_weight(ctx.training);
        self.add_bias(x.linear(&w))
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        self.params.visit_state(prefix, f)
    }
}
