//! Weight initialisation: PyTorch's defaults (Kaiming-uniform with a = sqrt(5)), Kaiming and
//! Xavier normal, and the N(0, 0.02) of DCGAN.

use msn_autograd::Array;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Uniform in `[-bound, bound)`.
pub fn uniform(shape: &[usize], bound: f32, rng: &mut ChaCha8Rng) -> Array {
    Array::from_shape_simple_fn(ndarray::IxDyn(shape), || rng.random_range(-bound..bound))
}

/// Normal with the given standard deviation.
pub fn normal(shape: &[usize], std: f32, rng: &mut ChaCha8Rng) -> Array {
    let d = Normal::new(0.0f32, std).expect("finite std");
    Array::from_shape_simple_fn(ndarray::IxDyn(shape), || d.sample(rng))
}

/// PyTorch's default for Conv and Linear weights: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn torch_default(shape: &[usize], fan_in: usize, rng: &mut ChaCha8Rng) -> Array {
    uniform(shape, 1.0 / (fan_in as f32).sqrt(), rng)
}

/// Kaiming (He) normal for a leaky ReLU of the given slope: `std = gain / sqrt(fan_in)`.
pub fn kaiming_normal(shape: &[usize], fan_in: usize, slope: f32, rng: &mut ChaCha8Rng) -> Array {
    let gain = (2.0 / (1.0 + slope * slope)).sqrt();
    normal(shape, gain / (fan_in as f32).sqrt(), rng)
}

/// Xavier (Glorot) normal: `std = sqrt(2 / (fan_in + fan_out))`.
pub fn xavier_normal(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    rng: &mut ChaCha8Rng,
) -> Array {
    normal(shape, (2.0 / (fan_in + fan_out) as f32).sqrt(), rng)
}
