//! Max and average pooling over `[N, C, H, W]`, and global average pooling.

use crate::{Array, Var};
use ndarray::IxDyn;
use rayon::prelude::*;

fn out_size(size: usize, k: usize, s: usize, p: usize) -> usize {
    assert!(
        size + 2 * p >= k,
        "pool: window larger than the padded input"
    );
    (size + 2 * p - k) / s + 1
}

/// The common 2x2, stride 2 window over one plane (row length `w`), with the general
/// path's semantics: the first of equal maxima wins.
fn max_pool_2x2(xp: &[f32], w: usize, oh: usize, ow: usize, yp: &mut [f32], ap: &mut [u32]) {
    for oy in 0..oh {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (top, bottom) = (&xp[r0..r0 + 2 * ow], &xp[r1..r1 + 2 * ow]);
        let (yr, ar) = (
            &mut yp[oy * ow..(oy + 1) * ow],
            &mut ap[oy * ow..(oy + 1) * ow],
        );
        for ox in 0..ow {
            let (mut best, mut at) = (top[2 * ox], r0 + 2 * ox);
            for (v, i) in [
                (top[2 * ox + 1], r0 + 2 * ox + 1),
                (bottom[2 * ox], r1 + 2 * ox),
                (bottom[2 * ox + 1], r1 + 2 * ox + 1),
            ] {
                if v > best {
                    best = v;
                    at = i;
                }
            }
            yr[ox] = best;
            ar[ox] = at as u32;
        }
    }
}

/// A pool's input gradient: `scatter(output gradient, zeroed input gradient)` over the
/// values in standard layout.
fn input_grad(g: &Array, shape: IxDyn, scatter: impl FnOnce(&[f32], &mut [f32])) -> Array {
    let g = g.as_standard_layout();
    let mut dx = Array::zeros(shape);
    scatter(
        g.as_slice().expect("standard layout"),
        dx.as_slice_mut().expect("fresh"),
    );
    dx
}

impl Var {
    /// Max pooling with a `k x k` window; padding counts as minus infinity. The first of
    /// equal maxima takes the gradient. Planes run in parallel.
    pub fn max_pool2d(&self, k: usize, stride: usize, padding: usize) -> Var {
        let xv = self.value();
        let x = xv.as_standard_layout();
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (oh, ow) = (
            out_size(h, k, stride, padding),
            out_size(w, k, stride, padding),
        );
        let xs = x.as_slice().expect("standard layout");
        let mut y = Array::zeros(IxDyn(&[n, c, oh, ow]));
        // Per output, the argmax's offset inside its input plane.
        let mut argmax = vec![0u32; n * c * oh * ow];
        let (plane_in, plane_out) = (h * w, oh * ow);
        let ys = y.as_slice_mut().expect("fresh");
        ys.par_chunks_mut(plane_out.max(1))
            .zip(argmax.par_chunks_mut(plane_out.max(1)))
            .enumerate()
            .for_each(|(p, (yp, ap))| {
                let xp = &xs[p * plane_in..(p + 1) * plane_in];
                if k == 2 && stride == 2 && padding == 0 {
                    max_pool_2x2(xp, w, oh, ow, yp, ap);
                    return;
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut best, mut at) = (f32::NEG_INFINITY, u32::MAX);
                        for i in 0..k {
                            let yy = (oy * stride + i) as isize - padding as isize;
                            if yy < 0 || yy >= h as isize {
                                continue;
                            }
                            for j in 0..k {
                                let xx = (ox * stride + j) as isize - padding as isize;
                                if xx < 0 || xx >= w as isize {
                                    continue;
                                }
                                let idx = yy as usize * w + xx as usize;
                                if xp[idx] > best || at == u32::MAX {
                                    best = xp[idx];
                                    at = idx as u32;
                                }
                            }
                        }
                        yp[oy * ow + ox] = best;
                        ap[oy * ow + ox] = at;
                    }
                }
            });
        let shape = x.raw_dim();
        drop(x);
        drop(xv);
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                let dx = input_grad(g, shape, |gs, d| {
                    d.par_chunks_mut(plane_in.max(1))
                        .zip(gs.par_chunks(plane_out.max(1)))
                        .zip(argmax.par_chunks(plane_out.max(1)))
                        .for_each(|((dp, gp), ap)| {
                            for (gi, &at) in gp.iter().zip(ap) {
                                dp[at as usize] += gi;
                            }
                        })
                });
                vec![Some(dx)]
            }),
        )
    }

    /// Average pooling with a `k x k` window and no padding.
    pub fn avg_pool2d(&self, k: usize, stride: usize) -> Var {
        let x = self.value().as_standard_layout().into_owned();
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (oh, ow) = (out_size(h, k, stride, 0), out_size(w, k, stride, 0));
        let xs = x.as_slice().expect("standard layout");
        let scale = 1.0 / (k * k) as f32;
        let mut y = Array::zeros(IxDyn(&[n, c, oh, ow]));
        let ys = y.as_slice_mut().expect("fresh");
        let taps = move |plane: usize, oy: usize, ox: usize| {
            (0..k).flat_map(move |i| {
                (0..k).map(move |j| (plane * h + oy * stride + i) * w + ox * stride + j)
            })
        };
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    ys[(plane * oh + oy) * ow + ox] =
                        taps(plane, oy, ox).map(|i| xs[i]).sum::<f32>() * scale;
                }
            }
        }
        let shape = x.raw_dim();
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let g = &g;
                let dx = input_grad(g, shape, |gs, d| {
                    for plane in 0..n * c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let gv = gs[(plane * oh + oy) * ow + ox] * scale;
                                for i in taps(plane, oy, ox) {
                                    d[i] += gv;
                                }
                            }
                        }
                    }
                });
                vec![Some(dx)]
            }),
        )
    }

    /// Mean over height and width: `[N, C, H, W] -> [N, C, 1, 1]`.
    pub fn global_avg_pool(&self) -> Var {
        self.mean_axes(&[2, 3])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::check;
    use crate::Var;
    use ndarray::array;

    #[test]
    fn max_pool_picks_the_window_maximum() {
        let x = Var::constant(array![[[[1.0f32, 5.0, 2.0, 0.0], [3.0, 4.0, 8.0, 1.0]]]].into_dyn());
        let y = x.max_pool2d(2, 2, 0);
        assert_eq!(*y.value(), array![[[[5.0f32, 8.0]]]].into_dyn());
        // Ties: the first tap in row-major order takes the gradient, in the 2x2 fast path
        // and in the general path alike.
        for (k, s, p) in [(2, 2, 0), (3, 3, 0)] {
            let x = Var::parameter(ndarray::Array::from_elem(
                ndarray::IxDyn(&[1, 1, 3, 3]),
                1.0,
            ));
            x.max_pool2d(k, s, p).sum().backward();
            let g = x.grad().unwrap();
            assert_eq!(g[[0, 0, 0, 0]], 1.0);
            assert_eq!(g.sum(), 1.0);
        }
    }

    #[test]
    fn pooling_gradients_match_finite_differences() {
        // A permutation of evenly spaced values: no two taps come within the finite-difference
        // step of each other, so the argmax cannot flip.
        let n = 2 * 3 * 6 * 5;
        let x = ndarray::Array::from_shape_fn(ndarray::IxDyn(&[2, 3, 6, 5]), |i| {
            let flat = ((i[0] * 3 + i[1]) * 6 + i[2]) * 5 + i[3];
            ((flat * 37) % n) as f32 * 0.05 - 4.0
        });
        check("max_pool2d", &[&x], |v| v[0].max_pool2d(2, 2, 0)).unwrap();
        check("max_pool2d padded", &[&x], |v| v[0].max_pool2d(3, 2, 1)).unwrap();
        check("avg_pool2d", &[&x], |v| v[0].avg_pool2d(2, 2)).unwrap();
        check("global_avg_pool", &[&x], |v| v[0].global_avg_pool()).unwrap();
    }
}
