use super::spectral::SpectralNorm;
use crate::{init, join, Ctx, Module, StateKind};
use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::Var;
use rand_chacha::ChaCha8Rng;

/// 2-D convolution, weight `[out, in/groups, kh, kw]`, optional bias and spectral norm.
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub sn: Option<SpectralNorm>,
    pub options: ConvOptions,
}

impl Conv2d {
    pub fn new(
        input: usize,
        output: usize,
        kernel: usize,
        options: ConvOptions,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let fan_in = input / options.groups * kernel * kernel;
        Conv2d {
            weight: Var::parameter(init::torch_default(
                &[output, input / options.groups, kernel, kernel],
                fan_in,
                rng,
            )),
            bias: bias.then(|| Var::parameter(init::torch_default(&[output], fan_in, rng))),
            sn: None,
            options,
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

impl Module for Conv2d {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        let y = x.conv2d(&self.effective_weight(ctx.training), self.options);
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

/// Transposed 2-D convolution, weight `[in, out/groups, kh, kw]`, optional bias.
pub struct ConvTranspose2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub options: ConvOptions,
}

impl ConvTranspose2d {
    pub fn new(
        input: usize,
        output: usize,
        kernel: usize,
        options: ConvOptions,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        // PyTorch computes fan_in from weight.size(1) * k * k for transposed convs.
        let fan_in = output / options.groups * kernel * kernel;
        ConvTranspose2d {
            weight: Var::parameter(init::torch_default(
                &[input, output / options.groups, kernel, kernel],
                fan_in,
                rng,
            )),
            bias: bias.then(|| Var::parameter(init::torch_default(&[output], fan_in, rng))),
            options,
        }
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Var {
        let y = x.conv_transpose2d(&self.weight, self.options);
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
    }
}
