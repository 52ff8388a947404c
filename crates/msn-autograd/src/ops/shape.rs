//! Shape ops: reshape, flatten, concatenation, and dropout (which only masks).

use crate::{Array, Var};
use ndarray::{Axis, IxDyn};

impl Var {
    /// The same elements in a new shape (row-major order).
    pub fn reshape(&self, shape: &[usize]) -> Var {
        let old = self.value().raw_dim();
        let y = self
            .value()
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(shape))
            .expect("reshape keeps the element count");
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                // The gradient is owned: in standard layout (as every op makes them) it is
                // reshaped where it lies, not copied.
                let g = match g.is_standard_layout() {
                    true => g,
                    false => g.as_standard_layout().into_owned(),
                };
                vec![Some(g.into_shape_with_order(old).expect("same count"))]
            }),
        )
    }

    /// The transpose of a 2-D tensor.
    pub fn t(&self) -> Var {
        let y = self.value().t().as_standard_layout().into_owned();
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(|g, _| vec![Some(g.t().as_standard_layout().into_owned())]),
        )
    }

    /// `[N, ...] -> [N, rest]`.
    pub fn flatten(&self) -> Var {
        let s = self.shape();
        self.reshape(&[s[0], s[1..].iter().product()])
    }

    /// Concatenates along `axis` (channels are axis 1).
    pub fn concat(parts: &[Var], axis: usize) -> Var {
        let values: Vec<Array> = parts.iter().map(|p| p.value().clone()).collect();
        let views: Vec<_> = values.iter().map(|v| v.view()).collect();
        let y =
            ndarray::concatenate(Axis(axis), &views).expect("concat: shapes agree off the axis");
        let sizes: Vec<usize> = values.iter().map(|v| v.shape()[axis]).collect();
        Var::from_op(
            y,
            parts.to_vec(),
            Box::new(move |g, needs| {
                let g = &g;
                let mut start = 0;
                sizes
                    .iter()
                    .zip(needs)
                    .map(|(&n, &need)| {
                        let part = g
                            .slice_axis(Axis(axis), (start..start + n).into())
                            .to_owned();
                        start += n;
                        need.then_some(part)
                    })
                    .collect()
            }),
        )
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales the rest by
    /// `1 / (1 - p)`; `uniform` draws numbers in `[0, 1)`.
    pub fn dropout(&self, p: f32, uniform: &mut impl FnMut() -> f32) -> Var {
        assert!((0.0..1.0).contains(&p), "dropout: p must be in [0, 1)");
        let keep = 1.0 / (1.0 - p);
        let mask = Array::from_shape_simple_fn(self.value().raw_dim(), || {
            if uniform() >= p {
                keep
            } else {
                0.0
            }
        });
        self.mul(&Var::constant(mask))
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;
    use crate::Var;

    #[test]
    fn shape_gradients_match_finite_differences() {
        let x = spread(&[2, 3, 4], -1.0, 1.0, 40);
        let y = spread(&[2, 2, 4], -1.0, 1.0, 41);
        check("reshape", &[&x], |v| v[0].reshape(&[6, 4])).unwrap();
        check("flatten", &[&x], |v| v[0].flatten()).unwrap();
        check("transpose", &[&spread(&[3, 5], -1.0, 1.0, 42)], |v| {
            v[0].t()
        })
        .unwrap();
        check("concat", &[&x, &y], |v| {
            Var::concat(&[v[0].clone(), v[1].clone()], 1)
        })
        .unwrap();
    }

    #[test]
    fn dropout_masks_and_rescales() {
        let x = Var::parameter(ndarray::Array::ones(ndarray::IxDyn(&[1000])));
        let mut s = 7u32;
        let mut uniform = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32
        };
        let y = x.dropout(0.25, &mut uniform);
        let kept = y.value().iter().filter(|&&v| v > 0.0).count();
        assert!((700..800).contains(&kept), "{kept}");
        assert!(y
            .value()
            .iter()
            .all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        y.sum().backward();
        assert_eq!(x.grad().unwrap(), *y.value());
    }
}
