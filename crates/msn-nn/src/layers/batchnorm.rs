//! BatchNorm and the mean-only batch norm of MSN, over `[N, C]` or `[N, C, H, W]`.

use crate::{join, Ctx, Module, StateKind};
use msn_autograd::ops::norm::channel_vector;
use msn_autograd::{Array, Var};
use ndarray::IxDyn;

/// `running = (1 - momentum) * running + momentum * batch`.
fn update_running(running: &Var, batch: &Array, momentum: f32) {
    running.update(|r| {
        r.zip_mut_with(batch, |r, &b| *r = (1.0 - momentum) * *r + momentum * b);
    });
}

/// A per-channel vector filled with `value`: a parameter, or a buffer when not `learned`.
fn filled(channels: usize, value: f32, learned: bool) -> Var {
    let a = Array::from_elem(IxDyn(&[channels]), value);
    if learned {
        Var::parameter(a)
    } else {
        Var::constant(a)
    }
}

/// Names a norm layer's state: `weight` and `bias`, then its running statistics.
fn visit_norm(
    prefix: &str,
    f: &mut dyn FnMut(String, &Var, StateKind),
    (weight, bias): (&Var, &Var),
    buffers: &[(&str, &Var)],
) {
    f(join(prefix, "weight"), weight, StateKind::Parameter);
    f(join(prefix, "bias"), bias, StateKind::Parameter);
    for (name, v) in buffers {
        f(join(prefix, name), v, StateKind::Buffer);
    }
}

/// Batch normalization: `y = g * (x - mean) / sqrt(var + eps) + b`, batch statistics when
/// training (running ones updated with momentum, the variance unbiased as in PyTorch), running
/// statistics in eval mode.
pub struct BatchNorm {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm {
    pub fn new(channels: usize) -> Self {
        BatchNorm {
            weight: filled(channels, 1.0, true),
            bias: filled(channels, 0.0, true),
            running_mean: filled(channels, 0.0, false),
            running_var: filled(channels, 1.0, false),
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        if ctx.training {
            let (y, mean, var) = x.batch_norm(&self.weight, &self.bias, self.eps);
            let count = x.value().len() / x.shape()[1];
            let unbiased: Vec<f32> = var
                .iter()
                .map(|v| v * count as f32 / (count.max(2) - 1) as f32)
                .collect();
            update_running(&self.running_mean, &channel_vector(mean), self.momentum);
            update_running(&self.running_var, &channel_vector(unbiased), self.momentum);
            y
        } else {
            // y = x * s + (b - mean * s), s = g / sqrt(var + eps): one fused pass over x.
            let inv_std = Var::constant(
                self.running_var
                    .value()
                    .mapv(|v| 1.0 / (v + self.eps).sqrt()),
            );
            let scale = self.weight.mul(&inv_std);
            let shift = self.bias.sub(&self.running_mean.mul(&scale));
            x.channel_affine(Some(&scale), &shift)
        }
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        let buffers = [
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ];
        visit_norm(prefix, f, (&self.weight, &self.bias), &buffers);
    }
}

/// The mean-only batch norm of MSN: `y = g * (x - mean) + b` per channel; the batch mean when
/// training (the running mean updated with momentum 0.1), the running mean in eval mode.
pub struct MeanOnlyBatchNorm {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub momentum: f32,
}

impl MeanOnlyBatchNorm {
    pub fn new(channels: usize) -> Self {
        MeanOnlyBatchNorm {
            weight: filled(channels, 1.0, true),
            bias: filled(channels, 0.0, true),
            running_mean: filled(channels, 0.0, false),
            momentum: 0.1,
        }
    }
}

impl MeanOnlyBatchNorm {
    /// Moves the running mean towards a batch's per-channel means, with the momentum.
    pub fn update_running_mean(&self, mean: &[f32]) {
        update_running(
            &self.running_mean,
            &channel_vector(mean.to_vec()),
            self.momentum,
        );
    }
}

impl Module for MeanOnlyBatchNorm {
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Var {
        if ctx.training {
            let (y, mean) = x.mean_only_batch_norm(&self.weight, &self.bias);
            self.update_running_mean(&mean);
            y
        } else {
            // y = g * (x - running_mean) + b = x * g + (b - g * running_mean).
            let shift = self.bias.sub(&self.weight.mul(&self.running_mean));
            x.channel_affine(Some(&self.weight), &shift)
        }
    }

    fn visit_state(&self, prefix: &str, f: &mut dyn FnMut(String, &Var, StateKind)) {
        let buffers = [("running_mean", &self.running_mean)];
        visit_norm(prefix, f, (&self.weight, &self.bias), &buffers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_autograd::gradcheck::check;
    use msn_autograd::ops::elementwise::spread;

    fn flat(v: &Var) -> Array {
        let n = v.value().len();
        v.value()
            .clone()
            .into_shape_with_order(IxDyn(&[n]))
            .unwrap()
    }

    #[test]
    fn batchnorm_normalizes_in_training_and_tracks_running_stats() {
        let bn = BatchNorm::new(3);
        let x = Var::constant(spread(&[8, 3, 4, 4], -2.0, 6.0, 1));
        let y = bn.forward(&x, &mut Ctx::train(0));
        let m = y.channel_mean();
        let v = y.channel_var();
        assert!(m.value().iter().all(|&m| m.abs() < 1e-5));
        assert!(v.value().iter().all(|&v| (v - 1.0).abs() < 1e-3));
        let batch_mean = flat(&x.channel_mean());
        let rm = bn.running_mean.value().clone();
        for (r, b) in rm.iter().zip(batch_mean.iter()) {
            assert!((r - 0.1 * b).abs() < 1e-6);
        }
    }

    #[test]
    fn layer_gradients_match_finite_differences_in_both_modes() {
        let x = spread(&[4, 3, 3, 3], -1.0, 1.0, 2);
        let g = spread(&[3], 0.5, 1.5, 3);
        let b = spread(&[3], -0.5, 0.5, 4);
        let running_mean = spread(&[3], -0.5, 0.5, 5);
        let running_var = spread(&[3], 0.5, 1.5, 6);
        for training in [true, false] {
            let ctx = || if training { Ctx::train(0) } else { Ctx::eval() };
            let bn = |v: &[Var]| {
                let bn = BatchNorm {
                    weight: v[1].clone(),
                    bias: v[2].clone(),
                    running_mean: Var::constant(running_mean.clone()),
                    running_var: Var::constant(running_var.clone()),
                    ..BatchNorm::new(3)
                };
                bn.forward(&v[0], &mut ctx())
            };
            let mean_only = |v: &[Var]| {
                let mo = MeanOnlyBatchNorm {
                    weight: v[1].clone(),
                    bias: v[2].clone(),
                    running_mean: Var::constant(running_mean.clone()),
                    momentum: 0.1,
                };
                mo.forward(&v[0], &mut ctx())
            };
            check(&format!("batchnorm training={training}"), &[&x, &g, &b], bn).unwrap();
            let what = format!("mean-only bn training={training}");
            check(&what, &[&x, &g, &b], mean_only).unwrap();
        }
    }

    #[test]
    fn mean_only_bn_subtracts_the_batch_mean_then_scales_and_shifts() {
        let mo = MeanOnlyBatchNorm::new(1);
        mo.weight.set_value(ndarray::array![2.0f32].into_dyn());
        mo.bias.set_value(ndarray::array![1.0f32].into_dyn());
        let x = Var::constant(ndarray::array![[1.0f32], [3.0]].into_dyn());
        let y = mo.forward(&x, &mut Ctx::train(0));
        assert_eq!(y.value().as_slice().unwrap(), &[-1.0, 3.0]);
        assert_eq!(mo.running_mean.value().as_slice().unwrap(), &[0.2]);
        let y = mo.forward(&x, &mut Ctx::eval());
        assert_eq!(
            y.value().as_slice().unwrap(),
            &[2.0 * 0.8 + 1.0, 2.0 * 2.8 + 1.0]
        );
    }
}
