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
            Box::new(move |g, _| {
                let g = &g;
                let times_df = |at: &Array| map2(g, at, |g, v| g * df(v));
                let dx = match &saved {
                    Saved::Input(x) => times_df(&x.value()),
                    Saved::Output(y) => times_df(y),
                };
                vec![Some(dx)]
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

/// Used by tests: an array of the given shape with values spread over `[lo, hi)`.
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

/// `f(a, b)` of the values of two same-shape tensors, on all threads for large ones.
fn map2(a: &Array, b: &Array, f: impl Fn(f32, f32) -> f32 + Sync) -> Array {
    match (a.as_slice(), b.as_slice()) {
        (Some(av), Some(bv)) if a.shape() == b.shape() => {
            // SAFETY: the closure writes each value of its chunk once.
            let out = unsafe {
                par_fill(av.len(), PARALLEL_MIN, |at, o| {
                    o.iter_mut()
                        .zip(av[at..].iter().zip(&bv[at..]))
                        .for_each(|(o, (&x, &y))| {
                            o.write(f(x, y));
                        })
                })
            };
            Array::from_shape_vec(a.raw_dim(), out).expect("same size")
        }
        _ => ndarray::Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)),
    }
}

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
