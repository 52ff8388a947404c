use super::weights::{has_weights, Weights};
use crate::{Ctx, Module, StateKind};
use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::Var;
use rand_chacha::ChaCha8Rng;

/// 2-D convolution, weight `[out, in/groups, kh, kw]`, optional bias and spectral norm.
pub struct Conv2d {
    pub params: Weights,
    pub options: ConvOptions,
}

has_weights!(Conv2d, spectral);

impl Conv2d {
    pub fn new(
        input: usize,
        output: usize,
        kernel: usize,
        options: ConvOptions,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let shape = [output, input / options.groups, kernel, kernel];
        let params = Weights::conv(shape, output, bias, rng);
        Conv2d { params, options }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        let w = self.effective_weight(ctx.training);
        self.add_bias(x.conv2d(&w, self.options))
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        self.params.visit_state(prefix, f)
    }
}

/// Transposed 2-D convolution, weight `[in, out/groups, kh, kw]`, optional bias.
pub struct ConvTranspose2d {
    pub params: Weights,
    pub options: ConvOptions,
}

has_weights!(ConvTranspose2d);

impl ConvTranspose2d {
    pub fn new(
        input: usize,
        output: usize,
        kernel: usize,
        options: ConvOptions,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let shape = [input, output / options.groups, kernel, kernel];
        ConvTranspose2d {
            params: Weights::conv(shape, output, bias, rng),
            options,
        }
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Var {
        self.add_bias(x.conv_transpose2d(&self.weight, self.options))
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        self.params.visit_state(prefix, f)
    }
}
