//! Losses, each fused with its final activation for numerical stability.

use crate::{Array, Var};
use ndarray::{Axis, IxDyn};

impl Var {
    /// Row-wise log-softmax of `[N, K]` logits.
    pub fn log_softmax(&self) -> Var {
        let x = self.value().to_owned();
        let mut y = x.clone();
        for mut row in y.axis_iter_mut(Axis(0)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            row.mapv_inplace(|v| v - lse);
        }
        let saved = y.clone();
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                // d/dx = g - softmax * sum(g)
                let mut dx = g.to_owned();
                for (mut drow, lrow) in dx.axis_iter_mut(Axis(0)).zip(saved.axis_iter(Axis(0))) {
                    let s: f32 = drow.sum();
                    drow.zip_mut_with(&lrow, |d, &l| *d -= l.exp() * s);
                }
                vec![Some(dx)]
            }),
        )
    }

    /// Mean cross-entropy of `[N, K]` logits against class indices.
    pub fn cross_entropy(&self, targets: &[usize]) -> Var {
        let shape = self.shape();
        assert_eq!(shape[0], targets.len(), "cross_entropy: one target per row");
        let n = targets.len();
        let mut pick = Array::zeros(IxDyn(&shape));
        for (i, &t) in targets.iter().enumerate() {
            assert!(t < shape[1], "cross_entropy: target {t} out of range");
            pick[[i, t]] = -1.0 / n as f32;
        }
        self.log_softmax().mul(&Var::constant(pick)).sum()
    }

    /// Mean binary cross-entropy of logits against targets in `[0, 1]` (same shape):
    /// `max(x, 0) - x * t + log(1 + exp(-|x|))`.
    pub fn bce_with_logits(&self, targets: &Array) -> Var {
        let x = self.value().to_owned();
        let t = targets.clone();
        assert_eq!(x.shape(), t.shape(), "bce_with_logits: shapes differ");
        let n = x.len() as f32;
        let mut loss = 0.0f32;
        ndarray::Zip::from(&x).and(&t).for_each(|&x, &t| {
            loss += x.max(0.0) - x * t + (1.0 + (-x.abs()).exp()).ln();
        });
        Var::from_op(
            Array::from_elem(IxDyn(&[]), loss / n),
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                let g = g[[]] / n;
                let mut dx = x;
                ndarray::Zip::from(&mut dx).and(&t).for_each(|x, &t| {
                    *x = g * (1.0 / (1.0 + (-*x).exp()) - t);
                });
                vec![Some(dx)]
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;
    use crate::Var;

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_k() {
        let x = Var::constant(ndarray::Array::zeros(ndarray::IxDyn(&[2, 4])));
        let l = x.cross_entropy(&[0, 3]);
        assert!((l.value()[[]] - 4f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        let x = spread(&[4, 5], -2.0, 2.0, 30);
        check("log_softmax", &[&x], |v| v[0].log_softmax()).unwrap();
        check("cross_entropy", &[&x], |v| {
            v[0].cross_entropy(&[0, 4, 2, 2])
        })
        .unwrap();
        let t = spread(&[4, 5], 0.0, 1.0, 31);
        check("bce_with_logits", &[&x], move |v| v[0].bce_with_logits(&t)).unwrap();
    }
}
