//! Fused per-channel ops over `[N, C, ...]` tensors: one pass over memory instead of a chain
//! of broadcasting ops. They make batch norm, the mean-only batch norm of MSN and conv biases
//! cheap; their gradients are checked against finite differences like every other op.

use crate::{Array, Var};
use ndarray::IxDyn;

/// `(N, C, L)`: batch, channels, elements per channel per sample.
fn dims(x: &Array) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2..].iter().product())
}

/// Per-channel sums of `f(i)` over every element of channel `c`, for a standard-layout slice.
fn per_channel(
    data: &[f32],
    (n, c, l): (usize, usize, usize),
    mut f: impl FnMut(usize, f32) -> f32,
) -> Vec<f32> {
    let mut out = vec![0.0f64; c];
    for ni in 0..n {
        for (ci, acc) in out.iter_mut().enumerate() {
            let base = (ni * c + ci) * l;
            let mut s = 0.0f32;
            for (k, &v) in data[base..base + l].iter().enumerate() {
                s += f(base + k, v);
            }
            *acc += s as f64;
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// Applies `f(value, channel)` to every element.
fn map_channels(
    data: &[f32],
    (n, c, l): (usize, usize, usize),
    mut f: impl FnMut(usize, f32, usize) -> f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for ni in 0..n {
        for ci in 0..c {
            let base = (ni * c + ci) * l;
            out.extend(
                data[base..base + l]
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| f(base + k, v, ci)),
            );
        }
    }
    out
}

fn vec1(v: &Var) -> Vec<f32> {
    v.value().iter().copied().collect()
}

impl Var {
    /// `y = x * scale[c] + shift[c]` (scale optional): eval-mode batch norms and conv biases.
    pub fn channel_affine(&self, scale: Option<&Var>, shift: &Var) -> Var {
        let x = self.value().as_standard_layout().into_owned();
        let d = dims(&x);
        let s = scale.map(vec1);
        let t = vec1(shift);
        let xs = x.as_slice().expect("standard layout");
        let y = map_channels(xs, d, |_, v, c| v * s.as_ref().map_or(1.0, |s| s[c]) + t[c]);
        let y = Array::from_shape_vec(x.raw_dim(), y).expect("same size");
        let mut parents = vec![self.clone(), shift.clone()];
        parents.extend(scale.cloned());
        let shift_shape = shift.value().raw_dim();
        let scale_shape = scale.map(|s| s.value().raw_dim());
        Var::from_op(
            y,
            parents,
            Box::new(move |g, needs| {
                let g = g.as_standard_layout();
                let gs = g.as_slice().expect("standard layout");
                let xs = x.as_slice().expect("standard layout");
                let dx = needs[0].then(|| {
                    let v = map_channels(gs, d, |_, gv, c| gv * s.as_ref().map_or(1.0, |s| s[c]));
                    Array::from_shape_vec(x.raw_dim(), v).expect("same size")
                });
                let dt = needs[1].then(|| {
                    Array::from_shape_vec(shift_shape, per_channel(gs, d, |_, gv| gv)).expect("C")
                });
                let mut out = vec![dx, dt];
                if let Some(shape) = scale_shape {
                    out.push(needs[2].then(|| {
                        Array::from_shape_vec(shape, per_channel(gs, d, |i, gv| gv * xs[i]))
                            .expect("C")
                    }));
                }
                out
            }),
        )
    }

    /// Training-mode mean-only batch norm: `y = g[c] * (x - mean[c]) + b[c]` with the batch
    /// mean; returns `y` and the per-channel means (for the running mean).
    pub fn mean_only_batch_norm(&self, weight: &Var, bias: &Var) -> (Var, Vec<f32>) {
        let x = self.value().as_standard_layout().into_owned();
        let d = dims(&x);
        let count = (d.0 * d.2) as f32;
        let xs = x.as_slice().expect("standard layout");
        let mean: Vec<f32> = per_channel(xs, d, |_, v| v)
            .into_iter()
            .map(|s| s / count)
            .collect();
        let (g, b) = (vec1(weight), vec1(bias));
        let y = map_channels(xs, d, |_, v, c| g[c] * (v - mean[c]) + b[c]);
        let y = Array::from_shape_vec(x.raw_dim(), y).expect("same size");
        let m = mean.clone();
        let shape = weight.value().raw_dim();
        let out = Var::from_op(
            y,
            vec![self.clone(), weight.clone(), bias.clone()],
            Box::new(move |gy, needs| {
                let gy = gy.as_standard_layout();
                let gs = gy.as_slice().expect("standard layout");
                let xs = x.as_slice().expect("standard layout");
                let gsum = per_channel(gs, d, |_, v| v);
                // d/dx of g * (x - mean(x)) applied to dy: g * (dy - mean(dy)).
                let dx = needs[0].then(|| {
                    let v = map_channels(gs, d, |_, gv, c| g[c] * (gv - gsum[c] / count));
                    Array::from_shape_vec(x.raw_dim(), v).expect("same size")
                });
                let dg = needs[1].then(|| {
                    Array::from_shape_vec(
                        shape.clone(),
                        per_channel(gs, d, |i, gv| gv * (xs[i] - m[i / d.2 % d.1])),
                    )
                    .expect("C")
                });
                let db = needs[2]
                    .then(|| Array::from_shape_vec(shape.clone(), gsum.clone()).expect("C"));
                vec![dx, dg, db]
            }),
        );
        (out, mean)
    }

    /// Training-mode batch norm: `y = g[c] * (x - mean[c]) / sqrt(var[c] + eps) + b[c]` with the
    /// batch mean and biased variance; returns `y`, the means and the biased variances.
    pub fn batch_norm(&self, weight: &Var, bias: &Var, eps: f32) -> (Var, Vec<f32>, Vec<f32>) {
        let x = self.value().as_standard_layout().into_owned();
        let d = dims(&x);
        let count = (d.0 * d.2) as f32;
        let xs = x.as_slice().expect("standard layout");
        let mean: Vec<f32> = per_channel(xs, d, |_, v| v)
            .into_iter()
            .map(|s| s / count)
            .collect();
        let var: Vec<f32> = per_channel(xs, d, |i, v| {
            let c = i / d.2 % d.1;
            (v - mean[c]) * (v - mean[c])
        })
        .into_iter()
        .map(|s| s / count)
        .collect();
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (g, b) = (vec1(weight), vec1(bias));
        let xhat = map_channels(xs, d, |_, v, c| (v - mean[c]) * inv[c]);
        let y = map_channels(&xhat, d, |_, v, c| g[c] * v + b[c]);
        let y = Array::from_shape_vec(x.raw_dim(), y).expect("same size");
        let shape = weight.value().raw_dim();
        let xshape = x.raw_dim();
        let out = Var::from_op(
            y,
            vec![self.clone(), weight.clone(), bias.clone()],
            Box::new(move |gy, needs| {
                let gy = gy.as_standard_layout();
                let gs = gy.as_slice().expect("standard layout");
                let gsum = per_channel(gs, d, |_, v| v);
                let gxhat = per_channel(gs, d, |i, v| v * xhat[i]);
                let dx = needs[0].then(|| {
                    let v = map_channels(gs, d, |i, gv, c| {
                        g[c] * inv[c] * (gv - gsum[c] / count - xhat[i] * gxhat[c] / count)
                    });
                    Array::from_shape_vec(xshape.clone(), v).expect("same size")
                });
                let dg = needs[1]
                    .then(|| Array::from_shape_vec(shape.clone(), gxhat.clone()).expect("C"));
                let db = needs[2]
                    .then(|| Array::from_shape_vec(shape.clone(), gsum.clone()).expect("C"));
                vec![dx, dg, db]
            }),
        );
        (out, mean, var)
    }
}

/// A `[C]` vector from per-channel statistics.
pub fn channel_vector(v: Vec<f32>) -> Array {
    let c = v.len();
    Array::from_shape_vec(IxDyn(&[c]), v).expect("1-D")
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;

    #[test]
    fn fused_channel_ops_match_finite_differences() {
        let x = spread(&[3, 4, 3, 2], -1.0, 2.0, 50);
        let g = spread(&[4], 0.5, 1.5, 51);
        let b = spread(&[4], -0.5, 0.5, 52);
        check("channel_affine", &[&x, &g, &b], |v| {
            v[0].channel_affine(Some(&v[1]), &v[2])
        })
        .unwrap();
        check("channel bias", &[&x, &b], |v| {
            v[0].channel_affine(None, &v[1])
        })
        .unwrap();
        check("mean_only_batch_norm", &[&x, &g, &b], |v| {
            v[0].mean_only_batch_norm(&v[1], &v[2]).0
        })
        .unwrap();
        check("batch_norm", &[&x, &g, &b], |v| {
            v[0].batch_norm(&v[1], &v[2], 1e-5).0
        })
        .unwrap();
        let x2 = spread(&[5, 3], -1.0, 2.0, 53);
        let g2 = spread(&[3], 0.5, 1.5, 54);
        let b2 = spread(&[3], -0.5, 0.5, 55);
        check("batch_norm 1d", &[&x2, &g2, &b2], |v| {
            v[0].batch_norm(&v[1], &v[2], 1e-5).0
        })
        .unwrap();
    }

    #[test]
    fn fused_ops_equal_the_composed_ones() {
        use crate::Var;
        let x = Var::constant(spread(&[4, 3, 5, 5], -1.0, 2.0, 56));
        let g = Var::constant(spread(&[3], 0.5, 1.5, 57));
        let b = Var::constant(spread(&[3], -0.5, 0.5, 58));
        let (y, _) = x.mean_only_batch_norm(&g, &b);
        let composed = x
            .sub(&x.channel_mean())
            .mul(&g.reshape(&[1, 3, 1, 1]))
            .add(&b.reshape(&[1, 3, 1, 1]));
        let diff = (&*y.value() - &*composed.value())
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(diff < 1e-5, "{diff}");
    }
}
