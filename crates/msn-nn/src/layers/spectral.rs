//! Spectral normalization as a reparameterization of a weight: `W_sn = W / sigma`, with
//! `sigma = u . (W_mat v)` and `W_mat` the weight reshaped to `(out, in*kh*kw)`.
//!
//! `u` and `v` persist across steps. Each training forward runs the power iteration
//! (PyTorch order: `u = normalize(W v)`, then `v = normalize(W^T u)`) without gradient, then
//! computes sigma with gradient flowing through `W` only, as in Miyato et al. Eval mode uses
//! the stored vectors unchanged.

use msn_autograd::{no_grad, Array, Var};
use ndarray::{Array1, Array2, Ix1};
use rand_chacha::ChaCha8Rng;

/// `x / max(||x||, eps)`, as torch.nn.functional.normalize.
fn normalize(x: Array1<f32>, eps: f32) -> Array1<f32> {
    let n = x.dot(&x).sqrt().max(eps);
    x / n
}

/// The persistent state of spectral normalization for one weight.
pub struct SpectralNorm {
    /// Left singular vector estimate, `[out]`.
    pub u: Var,
    /// Right singular vector estimate, `[in*kh*kw]`.
    pub v: Var,
    pub n_power_iterations: usize,
    pub eps: f32,
}

fn weight_matrix(w: &Array) -> Array2<f32> {
    let out = w.shape()[0];
    w.as_standard_layout()
        .into_owned()
        .into_shape_with_order((out, w.len() / out))
        .expect("contiguous weight")
}

impl SpectralNorm {
    /// Random unit `u`, `v`, then 15 power iterations, as PyTorch does at registration.
    pub fn new(weight: &Array, rng: &mut ChaCha8Rng) -> Self {
        let out = weight.shape()[0];
        let cols = weight.len() / out;
        let as1 = |a: Array| a.into_dimensionality::<Ix1>().expect("1-D");
        let sn = SpectralNorm {
            u: Var::constant(
                normalize(as1(crate::init::normal(&[out], 1.0, rng)), 1e-12).into_dyn(),
            ),
            v: Var::constant(
                normalize(as1(crate::init::normal(&[cols], 1.0, rng)), 1e-12).into_dyn(),
            ),
            n_power_iterations: 1,
            eps: 1e-12,
        };
        sn.power_iteration(weight, 15);
        sn
    }

    /// Runs `n` power iterations on the stored vectors.
    pub fn power_iteration(&self, weight: &Array, n: usize) {
        let w = weight_matrix(weight);
        let as1 = |v: &Var| v.value().clone().into_dimensionality::<Ix1>().expect("1-D");
        let (mut u, mut v) = (as1(&self.u), as1(&self.v));
        for _ in 0..n {
            u = normalize(w.dot(&v), self.eps);
            v = normalize(w.t().dot(&u), self.eps);
        }
        self.u.set_value(u.into_dyn());
        self.v.set_value(v.into_dyn());
    }

    /// The current estimate of the largest singular value of the weight matrix.
    pub fn sigma(&self, weight: &Array) -> f32 {
        let w = weight_matrix(weight);
        let u = self
            .u
            .value()
            .clone()
            .into_dimensionality::<Ix1>()
            .expect("1-D");
        let v = self
            .v
            .value()
            .clone()
            .into_dimensionality::<Ix1>()
            .expect("1-D");
        u.dot(&w.dot(&v))
    }

    /// `W / sigma(W)`, updating `u` and `v` first when training.
    pub fn normalize(&self, weight: &Var, training: bool) -> Var {
        if training {
            no_grad(|| self.power_iteration(&weight.value(), self.n_power_iterations));
        }
        let (u, v) = (self.u.value(), self.v.value());
        let (u, v) = (u.as_slice().expect("1-D u"), v.as_slice().expect("1-D v"));
        weight.divide_by_sigma(u, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sigma_converges_to_the_largest_singular_value() {
        // diag(3, 2, 1) padded: largest singular value 3.
        let mut w = Array::zeros(ndarray::IxDyn(&[3, 4]));
        for (i, s) in [3.0, 2.0, 1.0].into_iter().enumerate() {
            w[[i, i]] = s;
        }
        let sn = SpectralNorm::new(&w, &mut ChaCha8Rng::seed_from_u64(1));
        sn.power_iteration(&w, 50);
        assert!((sn.sigma(&w) - 3.0).abs() < 1e-4, "{}", sn.sigma(&w));
    }

    #[test]
    fn gradient_flows_through_sigma() {
        let w0 = msn_autograd::ops::elementwise::spread(&[4, 2, 3, 3], -1.0, 1.0, 3);
        let sn = SpectralNorm::new(&w0, &mut ChaCha8Rng::seed_from_u64(2));
        // Eval mode keeps u, v fixed, so W / (u . W v) is a plain differentiable function.
        msn_autograd::gradcheck::check("spectral norm", &[&w0], |v| sn.normalize(&v[0], false))
            .unwrap();
    }
}
