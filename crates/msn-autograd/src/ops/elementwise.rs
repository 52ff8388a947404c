//! Elementwise ops: each is a value function `f` and a derivative `df(x, y)`, given the input
//! and the output.

use crate::kernels::par_fill;
use crate::ops::norm::PARALLEL_MIN;
use crate::{Array, Var};

/// What an elementwise op's derivative is a function of.
enum Saved {
    Input(Var),
    Output(Array),
}

impl Var {
    /// An elementwise op whose derivative is a function of the input: the input is read from
    /// the parent during the backward pass, nothing is copied.
    fn unary(
        &self,
        f: impl Fn(f32) -> f32 + Sync,
        df: impl Fn(f32) -> f32 + Sync + 'static,
    ) -> Var {
        let y = map(&self.value(), f);
        self.pointwise(y, Saved::Input(self.clone()), df)
    }

    /// An elementwise op whose derivative is a function of the output (tanh, sigmoid, exp,
    /// sqrt): the output is kept for the backward pass.
    fn unary_y(
        &self,
        f: impl Fn(f32) -> f32 + Sync,
        df: impl Fn(f32) -> f32 + Sync + 'static,
    ) -> Var {
        let y = map(&self.value(), f);
        let saved = Saved::Output(y.clone());
        self.pointwise(y, saved, df)
    }

    /// `y` with the backward pass `dx = g * df(saved)`.
    fn pointwise(&self, y: Array, saved: Saved, df: impl Fn(f32) -> f32 + Sync + 'static) -> Var {
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |mut g, _| {
                // In place: the output gradient becomes the input's, with no new tensor.
                match &saved {
                    Saved::Input(x) => times_df(&mut g, &x.value(), &df),
                    Saved::Output(y) => times_df(&mut g, y, &df),
                }
                vec![Some(g)]
            }),
        )
    }

    pub fn relu(&self) -> Var {
        self.unary(|x| x.max(0.0), |x| if x > 0.0 { 1.0 } else { 0.0 })
    }

    pub fn leaky_relu(&self, slope: f32) -> Var {
        self.unary(
            move |x| if x > 0.0 { x } else { slope * x },
            move |x| if x > 0.0 { 1.0 } else { slope },
        )
    }

    pub fn tanh(&self) -> Var {
        self.unary_y(f32::tanh, |y| 1.0 - y * y)
    }

    pub fn sigmoid(&self) -> Var {
        self.unary_y(|x| 1.0 / (1.0 + (-x).exp()), |y| y * (1.0 - y))
    }

    pub fn exp(&self) -> Var {
        self.unary_y(f32::exp, |y| y)
    }

    pub fn sqrt(&self) -> Var {
        self.unary_y(f32::sqrt, |y| 0.5 / y)
    }

    pub fn square(&self) -> Var {
        self.unary(|x| x * x, |x| 2.0 * x)
    }

    /// Multiplies by a constant.
    pub fn scale(&self, c: f32) -> Var {
        self.unary(move |x| c * x, move |_| c)
    }

    /// Adds a constant.
    pub fn add_scalar(&self, c: f32) -> Var {
        self.unary(move |x| x + c, |_| 1.0)
    }

    pub fn neg(&self) -> Var {
        self.scale(-1.0)
    }
}

/// `f` of every value of `x`, on all threads for large standard-layout tensors.
fn map(x: &Array, f: impl Fn(f32) -> f32 + Sync) -> Array {
    match x.as_slice() {
        Some(xs) => {
            // SAFETY: the closure writes each value of its chunk once.
            let out = unsafe {
                par_fill(xs.len(), PARALLEL_MIN, |at, o| {
                    o.iter_mut().zip(&xs[at..]).for_each(|(o, &v)| {
                        o.write(f(v));
                    })
                })
            };
            Array::from_shape_vec(x.raw_dim(), out).expect("same size")
        }
        None => x.mapv(f),
    }
}

/// `g *= df(at)`, value by value (same shapes), on all threads for large standard-layout
/// tensors.
fn times_df(g: &mut Array, at: &Array, df: &(impl Fn(f32) -> f32 + Sync)) {
    use rayon::prelude::*;
    debug_assert_eq!(g.shape(), at.shape());
    match (g.as_slice_mut(), at.as_slice()) {
        (Some(gs), Some(vs)) if gs.len() >= PARALLEL_MIN => {
            let per = gs.len().div_ceil(crate::kernels::threads().max(1));
            gs.par_chunks_mut(per)
                .zip(vs.par_chunks(per))
                .for_each(|(g, v)| g.iter_mut().zip(v).for_each(|(g, &v)| *g *= df(v)));
        }
        (Some(gs), Some(vs)) => gs.iter_mut().zip(vs).for_each(|(g, &v)| *g *= df(v)),
        _ => g.zip_mut_with(at, |g, &v| *g *= df(v)),
    }
}

/// Used by tests: an array of the given shape with values spread over `[lo, hi)`.
pub fn spread(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Array {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array::from_shape_simple_fn(ndarray::IxDyn(shape), || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
    })
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;

    /// Large tensors take the threaded in-place backward: each value's gradient still pairs
    /// with its own input.
    #[test]
    fn large_backward_pairs_each_value_with_its_input() {
        let x = spread(&[3, 50_001], -2.0, 2.0, 2);
        let g = spread(&[3, 50_001], -1.0, 1.0, 3);
        let xv = crate::Var::parameter(x.clone());
        let y = xv.leaky_relu(0.1).tanh();
        y.mul(&crate::Var::constant(g.clone())).sum().backward();
        let got = xv.grad().unwrap();
        for ((gx, &xi), &gi) in got.iter().zip(&x).zip(&g) {
            let l = if xi > 0.0 { xi } else { 0.1 * xi };
            let want = gi * (1.0 - l.tanh().powi(2)) * if xi > 0.0 { 1.0 } else { 0.1 };
            assert!((gx - want).abs() <= 1e-5, "{gx} vs {want} at x = {xi}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Values kept away from relu's kink so central differences are valid.
        let x = spread(&[3, 4], -2.0, 2.0, 1).mapv(|v| if v.abs() < 0.1 { v + 0.3 } else { v });
        check("relu", &[&x], |v| v[0].relu()).unwrap();
        check("leaky_relu", &[&x], |v| v[0].leaky_relu(0.1)).unwrap();
        check("tanh", &[&x], |v| v[0].tanh()).unwrap();
        check("sigmoid", &[&x], |v| v[0].sigmoid()).unwrap();
        check("exp", &[&x], |v| v[0].exp()).unwrap();
        check("square", &[&x], |v| v[0].square()).unwrap();
        check("scale", &[&x], |v| v[0].scale(-3.0).add_scalar(1.0)).unwrap();
        check("sqrt", &[&x.mapv(|v| v.abs() + 0.5)], |v| v[0].sqrt()).unwrap();
    }
}
