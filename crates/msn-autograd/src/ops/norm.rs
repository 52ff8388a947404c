//! Fused per-channel ops over `[N, C, ...]` tensors: one pass over memory instead of a chain
//! of broadcasting ops. They make batch norm, the mean-only batch norm of MSN and conv biases
//! cheap; their gradients are checked against finite differences like every other op.

use crate::kernels::par_fill;
use crate::{Array, Var};
use ndarray::IxDyn;

/// `(N, C, L)`: batch, channels, elements per channel per sample.
fn dims(x: &Array) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2..].iter().product())
}

/// Sum of a slice with eight independent accumulators, so the loop vectorizes.
fn lane_sum(s: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = s.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Dot product of two equally long slices, vectorized like [`lane_sum`].
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    // `y - 0.0` is `y` exactly.
    lane_dot_dev(a, b, 0.0)
}

/// Per-channel sums of `a`, and of `a * b` when `b` is given (standard-layout slices);
/// per-sample partial sums are accumulated in f64, on all threads for large tensors (each
/// thread's images in order, the threads' totals in order: reproducible for a thread count).
fn channel_sums(a: &[f32], b: Option<&[f32]>, d: (usize, usize, usize)) -> [Vec<f32>; 2] {
    channel_reduce(d, b.is_some(), |r, _| match b {
        Some(b) => [lane_sum(&a[r.clone()]), lane_dot(&a[r.clone()], &b[r])],
        None => [lane_sum(&a[r]), 0.0],
    })
}

/// Per-channel sums of the two values `f(run, channel)` gives for each run of one channel
/// of one sample (the second only when `two`), accumulated as [`channel_sums`] does.
fn channel_reduce(
    (n, c, l): (usize, usize, usize),
    two: bool,
    f: impl Fn(std::ops::Range<usize>, usize) -> [f32; 2] + Sync,
) -> [Vec<f32>; 2] {
    let parts = par_batch(n, c * l, |imgs| {
        let mut sum = vec![0.0f64; c];
        let mut dot = vec![0.0f64; if two { c } else { 0 }];
        for ni in imgs {
            for ci in 0..c {
                let [s, t] = f((ni * c + ci) * l..(ni * c + ci + 1) * l, ci);
                sum[ci] += s as f64;
                if two {
                    dot[ci] += t as f64;
                }
            }
        }
        (sum, dot)
    });
    let mut total = [vec![0.0f64; c], vec![0.0f64; if two { c } else { 0 }]];
    for (sum, dot) in parts {
        total[0].iter_mut().zip(sum).for_each(|(t, v)| *t += v);
        total[1].iter_mut().zip(dot).for_each(|(t, v)| *t += v);
    }
    total.map(|v| v.into_iter().map(|s| s as f32).collect())
}

/// `sum of a[i] * (b[i] - m)`, vectorized like [`lane_sum`]; `a` may be `b` (squares).
fn lane_dot_dev(a: &[f32], b: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * (y - m))
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * (y[k] - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `sum of (a[i] - m)^2`, vectorized like [`lane_sum`].
fn lane_sq_dev(a: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let rest: f32 = ca.remainder().iter().map(|x| (x - m) * (x - m)).sum();
    for x in ca {
        for k in 0..8 {
            acc[k] += (x[k] - m) * (x[k] - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Runs `f` on contiguous ranges of `n` images of `size` values, one range per thread when
/// the tensor is large enough to be worth it, and returns the results in range order.
fn par_batch<R: Send>(
    n: usize,
    size: usize,
    f: impl Fn(std::ops::Range<usize>) -> R + Sync,
) -> Vec<R> {
    if n * size < PARALLEL_MIN {
        return vec![f(0..n)];
    }
    crate::kernels::par_images(n, &mut [], 0, |imgs, _| f(imgs))
}

/// Tensors smaller than this many values are processed on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Splits values `at..at + len` of an `[N, C, L]` tensor into runs of one channel:
/// `f(offset from at, run length, channel)`.
fn for_channel_runs(
    at: usize,
    len: usize,
    (c, l): (usize, usize),
    mut f: impl FnMut(usize, usize, usize),
) {
    let mut k = 0;
    while k < len {
        let i = at + k;
        let run = (l - i % l).min(len - k);
        f(k, run, i / l % c);
        k += run;
    }
}

/// `y = scale[c] * x + shift[c]` over a standard-layout slice.
fn channel_map(
    x: &[f32],
    (n, c, l): (usize, usize, usize),
    scale: &[f32],
    shift: &[f32],
) -> Vec<f32> {
    debug_assert_eq!(x.len(), n * c * l);
    // SAFETY: the channel runs cover the chunk, and each of its values is written once.
    unsafe {
        par_fill(x.len(), PARALLEL_MIN, |at, out| {
            for_channel_runs(at, out.len(), (c, l), |k, run, ci| {
                let (a, b) = (scale[ci], shift[ci]);
                for (o, &v) in out[k..k + run].iter_mut().zip(&x[at + k..]) {
                    o.write(a * v + b);
                }
            })
        })
    }
}

/// `y = p[c] * x + q[c] * (z - m[c]) + r[c]` over standard-layout slices.
fn channel_map2(
    x: &[f32],
    z: &[f32],
    (n, c, l): (usize, usize, usize),
    [p, q, r, m]: [&[f32]; 4],
) -> Vec<f32> {
    debug_assert_eq!(x.len(), n * c * l);
    // SAFETY: the channel runs cover the chunk, and each of its values is written once.
    unsafe {
        par_fill(x.len(), PARALLEL_MIN, |at, out| {
            for_channel_runs(at, out.len(), (c, l), |k, run, ci| {
                let (a, b, e, s) = (p[ci], q[ci], r[ci], m[ci]);
                let values = x[at + k..].iter().zip(&z[at + k..]);
                for (o, (&v, &w)) in out[k..k + run].iter_mut().zip(values) {
                    o.write(a * v + b * (w - s) + e);
                }
            })
        })
    }
}

fn vec1(v: &Var) -> Vec<f32> {
    v.value().iter().copied().collect()
}

/// Runs `f` on the standard-layout data of a value (copying only if it is not contiguous).
fn with_slice<R>(a: &Array, f: impl FnOnce(&[f32]) -> R) -> R {
    match a.as_slice() {
        Some(s) => f(s),
        None => f(a.as_standard_layout().as_slice().expect("standard layout")),
    }
}

impl Var {
    /// `y = x * scale[c] + shift[c]` (scale optional): eval-mode batch norms and conv biases.
    pub fn channel_affine(&self, scale: Option<&Var>, shift: &Var) -> Var {
        let xshape = self.value().raw_dim();
        let d = dims(&self.value());
        let s = scale.map_or_else(|| vec![1.0; d.1], vec1);
        let t = vec1(shift);
        let y = with_slice(&self.value(), |xs| channel_map(xs, d, &s, &t));
        let y = Array::from_shape_vec(xshape.clone(), y).expect("same size");
        let mut parents = vec![self.clone(), shift.clone()];
        parents.extend(scale.cloned());
        let shift_shape = shift.value().raw_dim();
        let scale_shape = scale.map(|s| s.value().raw_dim());
        let input = self.clone();
        Var::from_op(
            y,
            parents,
            Box::new(move |g, needs| {
                let want_scale = scale_shape.is_some() && needs[2];
                let [dt, ds] = with_slice(&g, |gs| match want_scale {
                    true => with_slice(&input.value(), |xs| channel_sums(gs, Some(xs), d)),
                    false => channel_sums(gs, None, d),
                });
                // Without a scale (a conv bias) the input gradient is the output's: moved,
                // not copied.
                let dx = needs[0].then(|| match scale_shape {
                    Some(_) => with_slice(&g, |gs| {
                        let v = channel_map(gs, d, &s, &vec![0.0; d.1]);
                        Array::from_shape_vec(xshape.clone(), v).expect("same size")
                    }),
                    None => g,
                });
                let mut out = vec![
                    dx,
                    needs[1].then(|| Array::from_shape_vec(shift_shape, dt).expect("C")),
                ];
                if let Some(shape) = scale_shape {
                    out.push(want_scale.then(|| Array::from_shape_vec(shape, ds).expect("C")));
                }
                out
            }),
        )
    }

    /// Training-mode mean-only batch norm: `y = g[c] * (x - mean[c]) + b[c]` with the batch
    /// mean; returns `y` and the per-channel means (for the running mean).
    pub fn mean_only_batch_norm(&self, weight: &Var, bias: &Var) -> (Var, Vec<f32>) {
        let xshape = self.value().raw_dim();
        let d = dims(&self.value());
        let count = (d.0 * d.2) as f32;
        let (g, b) = (vec1(weight), vec1(bias));
        let (y, mean) = with_slice(&self.value(), |xs| {
            let [sum, _] = channel_sums(xs, None, d);
            let mean: Vec<f32> = sum.iter().map(|s| s / count).collect();
            // g * (x - mean) + b = g * x + (b - g * mean)
            let shift: Vec<f32> = (0..d.1).map(|c| b[c] - g[c] * mean[c]).collect();
            (channel_map(xs, d, &g, &shift), mean)
        });
        let y = Array::from_shape_vec(xshape.clone(), y).expect("same size");
        let m = mean.clone();
        let shape = weight.value().raw_dim();
        let input = self.clone();
        let out = Var::from_op(
            y,
            vec![self.clone(), weight.clone(), bias.clone()],
            Box::new(move |gy, needs| {
                let gy = &gy;
                with_slice(gy, |gs| {
                    let [gsum, gx] = if needs[1] {
                        with_slice(&input.value(), |xs| channel_sums(gs, Some(xs), d))
                    } else {
                        channel_sums(gs, None, d)
                    };
                    // d/dx of g * (x - mean(x)) applied to dy: g * (dy - mean(dy)).
                    let dx = needs[0].then(|| {
                        let shift: Vec<f32> = (0..d.1).map(|c| -g[c] * gsum[c] / count).collect();
                        let v = channel_map(gs, d, &g, &shift);
                        Array::from_shape_vec(xshape.clone(), v).expect("same size")
                    });
                    // sum dy * (x - mean) = sum dy * x - mean * sum dy
                    let dg = needs[1].then(|| {
                        let v = (0..d.1).map(|c| gx[c] - m[c] * gsum[c]).collect();
                        Array::from_shape_vec(shape.clone(), v).expect("C")
                    });
                    let db = needs[2]
                        .then(|| Array::from_shape_vec(shape.clone(), gsum.clone()).expect("C"));
                    vec![dx, dg, db]
                })
            }),
        );
        (out, mean)
    }

    /// Training-mode mean subtraction with a shift, `y = x - mean[c] + b[c]` with the batch
    /// mean; returns `y` and the per-channel means. This is the mean-only batch norm with its
    /// scale folded into the preceding layer's weight (MSN's training path): its backward,
    /// `dx = dy - mean(dy)`, reads only `dy`, where the scaled form also needs `x` for `dg`.
    pub fn mean_shift(&self, bias: &Var) -> (Var, Vec<f32>) {
        let xshape = self.value().raw_dim();
        let d = dims(&self.value());
        let count = (d.0 * d.2) as f32;
        let b = vec1(bias);
        let (y, mean) = with_slice(&self.value(), |xs| {
            let [sum, _] = channel_sums(xs, None, d);
            let mean: Vec<f32> = sum.iter().map(|s| s / count).collect();
            let shift: Vec<f32> = (0..d.1).map(|c| b[c] - mean[c]).collect();
            (channel_map(xs, d, &vec![1.0; d.1], &shift), mean)
        });
        let y = Array::from_shape_vec(xshape.clone(), y).expect("same size");
        let shape = bias.value().raw_dim();
        let out = Var::from_op(
            y,
            vec![self.clone(), bias.clone()],
            Box::new(move |gy, needs| {
                let gy = &gy;
                with_slice(gy, |gs| {
                    let [gsum, _] = channel_sums(gs, None, d);
                    let dx = needs[0].then(|| {
                        let shift: Vec<f32> = gsum.iter().map(|s| -s / count).collect();
                        let v = channel_map(gs, d, &vec![1.0; d.1], &shift);
                        Array::from_shape_vec(xshape.clone(), v).expect("same size")
                    });
                    let db = needs[1].then(|| Array::from_shape_vec(shape, gsum).expect("C"));
                    vec![dx, db]
                })
            }),
        );
        (out, mean)
    }

    /// Training-mode batch norm: `y = g[c] * (x - mean[c]) / sqrt(var[c] + eps) + b[c]` with the
    /// batch mean and biased variance; returns `y`, the means and the biased variances.
    pub fn batch_norm(&self, weight: &Var, bias: &Var, eps: f32) -> (Var, Vec<f32>, Vec<f32>) {
        let xshape = self.value().raw_dim();
        let d = dims(&self.value());
        let count = (d.0 * d.2) as f32;
        let (g, b) = (vec1(weight), vec1(bias));
        // Three passes over x and one output, nothing else kept: the sums, the squared
        // deviations from the mean (the variance of the centred values, not E[x^2] -
        // E[x]^2), then y = (g inv) x + (b - g inv mean). The backward pass reads x again.
        let (mean, var, y) = with_slice(&self.value(), |xs| {
            let [sum, _] = channel_sums(xs, None, d);
            let mean: Vec<f32> = sum.iter().map(|s| s / count).collect();
            let [sq, _] = channel_reduce(d, false, |r, ci| [lane_sq_dev(&xs[r], mean[ci]), 0.0]);
            let var: Vec<f32> = sq.iter().map(|s| s / count).collect();
            let scale: Vec<f32> = (0..d.1).map(|c| g[c] / (var[c] + eps).sqrt()).collect();
            let shift: Vec<f32> = (0..d.1).map(|c| b[c] - scale[c] * mean[c]).collect();
            let y = channel_map(xs, d, &scale, &shift);
            (mean, var, y)
        });
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let y = Array::from_shape_vec(xshape.clone(), y).expect("same size");
        let shape = weight.value().raw_dim();
        let (input, mean_c) = (self.clone(), mean.clone());
        let out = Var::from_op(
            y,
            vec![self.clone(), weight.clone(), bias.clone()],
            Box::new(move |gy, needs| {
                let (gy, xv) = (&gy, input.value());
                let mean = &mean_c;
                with_slice(gy, |gs| {
                    with_slice(&xv, |xs| {
                        // sum(dy) and sum(dy * xhat) = inv * sum(dy * (x - mean)).
                        let [gsum, gdev] = channel_reduce(d, true, |r, ci| {
                            let (a, x) = (&gs[r.clone()], &xs[r]);
                            [lane_sum(a), lane_dot_dev(a, x, mean[ci])]
                        });
                        let gxhat: Vec<f32> = (0..d.1).map(|c| gdev[c] * inv[c]).collect();
                        let dx = needs[0].then(|| {
                            // g * inv * (dy - mean(dy) - xhat * mean(dy * xhat)), with
                            // xhat = inv * (x - mean).
                            let p: Vec<f32> = (0..d.1).map(|c| g[c] * inv[c]).collect();
                            let q: Vec<f32> = (0..d.1)
                                .map(|c| -p[c] * gxhat[c] / count * inv[c])
                                .collect();
                            let r: Vec<f32> = (0..d.1).map(|c| -p[c] * gsum[c] / count).collect();
                            let v = channel_map2(gs, xs, d, [&p, &q, &r, mean]);
                            Array::from_shape_vec(xshape.clone(), v).expect("same size")
                        });
                        let dg = needs[1]
                            .then(|| Array::from_shape_vec(shape.clone(), gxhat).expect("C"));
                        let db = needs[2].then(|| {
                            Array::from_shape_vec(shape.clone(), gsum.clone()).expect("C")
                        });
                        vec![dx, dg, db]
                    })
                })
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
        check("mean_shift", &[&x, &b], |v| v[0].mean_shift(&v[1]).0).unwrap();
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
