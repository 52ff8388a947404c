//! Sums and means, over everything or over chosen axes (kept as size-1 axes, so the result
//! broadcasts back: a per-channel batch mean of `[N, C, H, W]` is `[1, C, 1, 1]`).

use crate::{Array, Var};
use ndarray::{Axis, IxDyn};

impl Var {
    /// The sum of all elements, as a tensor of shape `[]`.
    pub fn sum(&self) -> Var {
        let shape = self.value().raw_dim();
        let y = Array::from_elem(IxDyn(&[]), self.value().sum());
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| vec![Some(Array::from_elem(shape, g[[]]))]),
        )
    }

    /// The mean of all elements.
    pub fn mean(&self) -> Var {
        let n = self.value().len() as f32;
        self.sum().scale(1.0 / n)
    }

    /// Sums over `axes`, keeping them with size 1.
    pub fn sum_axes(&self, axes: &[usize]) -> Var {
        let x = self.value();
        let shape = x.raw_dim();
        let mut y = x.to_owned();
        for &a in axes {
            y = y.sum_axis(Axis(a)).insert_axis(Axis(a));
        }
        drop(x);
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                vec![Some(
                    g.broadcast(shape.clone())
                        .expect("kept axes broadcast")
                        .to_owned(),
                )]
            }),
        )
    }

    /// Means over `axes`, keeping them with size 1.
    pub fn mean_axes(&self, axes: &[usize]) -> Var {
        let shape = self.shape();
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        self.sum_axes(axes).scale(1.0 / count as f32)
    }

    /// Per-channel mean over batch and space of an `[N, C, ...]` tensor: `[1, C, 1, ...]`.
    pub fn channel_mean(&self) -> Var {
        let axes: Vec<usize> = (0..self.shape().len()).filter(|&a| a != 1).collect();
        self.mean_axes(&axes)
    }

    /// Per-channel (biased) variance over batch and space, as batch norm uses it.
    pub fn channel_var(&self) -> Var {
        self.sub(&self.channel_mean()).square().channel_mean()
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;

    #[test]
    fn reduction_gradients_match_finite_differences() {
        let x = spread(&[3, 2, 4, 5], -1.0, 1.0, 20);
        check("sum", &[&x], |v| v[0].sum()).unwrap();
        check("mean", &[&x], |v| v[0].mean()).unwrap();
        check("sum_axes", &[&x], |v| v[0].sum_axes(&[0, 2])).unwrap();
        check("channel_mean", &[&x], |v| v[0].channel_mean()).unwrap();
        check("channel_var", &[&x], |v| v[0].channel_var()).unwrap();
    }

    #[test]
    fn channel_statistics_have_known_values() {
        let x = crate::Var::constant(ndarray::array![[[1.0f32, 3.0]], [[5.0, 7.0]]].into_dyn());
        assert_eq!(x.channel_mean().value().as_slice().unwrap(), &[4.0]);
        assert_eq!(x.channel_var().value().as_slice().unwrap(), &[5.0]);
    }
}
