//! Max and average pooling over `[N, C, H, W]`, and global average pooling.

use crate::{Array, Var};
use ndarray::IxDyn;

fn out_size(size: usize, k: usize, s: usize, p: usize) -> usize {
    assert!(
        size + 2 * p >= k,
        "pool: window larger than the padded input"
    );
    (size + 2 * p - k) / s + 1
}

impl Var {
    /// Max pooling with a `k x k` window; padding counts as minus infinity.
    pub fn max_pool2d(&self, k: usize, stride: usize, padding: usize) -> Var {
        let x = self.value().as_standard_layout().into_owned();
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (oh, ow) = (
            out_size(h, k, stride, padding),
            out_size(w, k, stride, padding),
        );
        let xs = x.as_slice().expect("standard layout");
        let mut y = Array::zeros(IxDyn(&[n, c, oh, ow]));
        let mut argmax = vec![0usize; n * c * oh * ow];
        let ys = y.as_slice_mut().expect("fresh");
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
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
                            let idx = (plane * h + yy as usize) * w + xx as usize;
                            if xs[idx] > best || at == usize::MAX {
                                best = xs[idx];
                                at = idx;
                            }
                        }
                    }
                    let o = (plane * oh + oy) * ow + ox;
                    ys[o] = best;
                    argmax[o] = at;
                }
            }
        }
        let shape = x.raw_dim();
        Var::from_op(
            y,
            vec![self.clone()],
            Box::new(move |g, _| {
                let mut dx = Array::zeros(shape);
                let d = dx.as_slice_mut().expect("fresh");
                for (gi, &at) in g.iter().zip(&argmax) {
                    d[at] += gi;
                }
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
                let g = g.as_standard_layout();
                let gs = g.as_slice().expect("standard layout");
                let mut dx = Array::zeros(shape);
                let d = dx.as_slice_mut().expect("fresh");
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
