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

    /// `leaky_relu(conv(x) + bias, slope)` as one op
    /// ([`Var::conv2d_bias_leaky_relu`]); `None` without a bias.
    pub fn forward_leaky_relu(&self, x: &Var, slope: f32, ctx: &mut Ctx) -> Option<Var> {
        let b = self.params.bias.as_ref()?;
        let w = self.params.effective_weight(ctx.training);
        Some(x.conv2d_bias_leaky_relu(&w, b, slope, self.options))
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
