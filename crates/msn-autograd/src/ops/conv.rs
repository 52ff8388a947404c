//! 2-D convolution and transposed convolution by im2col + sgemm, with groups, stride, padding
//! and dilation. Weights use PyTorch's layouts: conv `[O, C/groups, kh, kw]`, transposed conv
//! `[C_in, C_out/groups, kh, kw]`. Biases are added by the layers, as separate broadcast adds.

use crate::kernels::{col2im, gemm_seq, im2col, par_images, view2, view2_mut, ConvGeom};
use crate::{Array, Var};
use ndarray::{s, Array2, Dimension, IxDyn};

/// Stride, padding and dilation (height, width) and the group count of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// Extra rows and columns at the bottom-right of a transposed convolution's output.
    pub output_padding: [usize; 2],
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            output_padding: [0, 0],
        }
    }
}

impl ConvOptions {
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn output_padding(mut self, p: usize) -> Self {
        self.output_padding = [p, p];
        self
    }
}

/// A `[rows, cols]` copy of a weight whose first axis has `rows` entries (standard layout).
fn weight_matrix(w: &Array) -> Array2<f32> {
    let rows = w.shape()[0];
    let cols = w.len() / rows.max(1);
    w.as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows, cols))
        .expect("contiguous weight")
}

/// Sums per-chunk weight gradients in chunk order (reproducible for a thread count).
fn sum_parts(parts: Vec<Vec<f32>>, shape: IxDyn) -> Array {
    let mut total = vec![0.0f32; shape.size()];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    Array::from_shape_vec(shape, total).expect("weight-sized gradient")
}

impl Var {
    /// `x [N, C, H, W] * w [O, C/groups, kh, kw] -> [N, O, OH, OW]`.
    ///
    /// Images are split across threads; each image is unfolded (im2col) into a buffer that
    /// stays in cache and multiplied by the weight with a single-threaded sgemm. The backward
    /// pass unfolds again rather than keeping the column matrices, which saves memory.
    pub fn conv2d(&self, w: &Var, o: ConvOptions) -> Var {
        let wm = weight_matrix(&w.value());
        let wshape = w.value().raw_dim();
        let (out_c, cg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
        let (n, c, h, wd) = {
            let x = self.value();
            (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3])
        };
        let groups = o.groups;
        assert!(
            c == cg * groups && out_c % groups == 0,
            "conv2d: channels do not match the weight and groups"
        );
        let og = out_c / groups;
        let geom = ConvGeom::new(cg, (h, wd), (kh, kw), o.stride, o.padding, o.dilation);
        let (rows, l, plane) = (geom.rows(), geom.cols(), geom.plane());
        let mut y = vec![0.0f32; n * out_c * l];
        {
            let xv = self.value();
            let x = xv.as_standard_layout();
            let xs = x.as_slice().expect("standard layout");
            par_images(n, &mut y, out_c * l, |imgs, ys| {
                let mut col = vec![0.0f32; if geom.pointwise() { 0 } else { rows * l }];
                for (k, ni) in imgs.enumerate() {
                    let yi = &mut ys[k * out_c * l..(k + 1) * out_c * l];
                    for g in 0..groups {
                        let src = &xs[(ni * c + g * cg) * plane..(ni * c + (g + 1) * cg) * plane];
                        let colv = if geom.pointwise() {
                            view2(src, rows, l)
                        } else {
                            im2col(src, &geom, &mut col);
                            view2(&col, rows, l)
                        };
                        let wg = wm.slice(s![g * og..(g + 1) * og, ..]);
                        gemm_seq(
                            &mut view2_mut(&mut yi[g * og * l..], og, l),
                            wg,
                            colv,
                            false,
                        );
                    }
                }
            });
        }
        let y = Array::from_shape_vec(IxDyn(&[n, out_c, geom.oh, geom.ow]), y).expect("sized");
        let input = self.clone();
        Var::from_op(
            y,
            vec![self.clone(), w.clone()],
            Box::new(move |gy, needs| {
                let gy = gy.as_standard_layout();
                let gs = gy.as_slice().expect("standard layout");
                let xv = input.value();
                let x = xv.as_standard_layout();
                let xs = x.as_slice().expect("standard layout");
                let mut dx = vec![0.0f32; if needs[0] { n * c * h * wd } else { 0 }];
                let stride = if needs[0] { c * plane } else { 0 };
                let parts = par_images(n, &mut dx, stride, |imgs, dxs| {
                    let mut dw = vec![0.0f32; if needs[1] { out_c * rows } else { 0 }];
                    let mut col = vec![0.0f32; if geom.pointwise() { 0 } else { rows * l }];
                    for (k, ni) in imgs.enumerate() {
                        for g in 0..groups {
                            let gyg = view2(&gs[(ni * out_c + g * og) * l..], og, l);
                            let wg = wm.slice(s![g * og..(g + 1) * og, ..]);
                            if needs[1] {
                                let src = &xs[(ni * c + g * cg) * plane..];
                                let colv = if geom.pointwise() {
                                    view2(src, rows, l)
                                } else {
                                    im2col(&src[..cg * plane], &geom, &mut col);
                                    view2(&col, rows, l)
                                };
                                let mut dwg = view2_mut(&mut dw[g * og * rows..], og, rows);
                                gemm_seq(&mut dwg, gyg, colv.t(), true);
                            }
                            if needs[0] {
                                let dxg = &mut dxs[(k * c + g * cg) * plane..][..cg * plane];
                                if geom.pointwise() {
                                    gemm_seq(&mut view2_mut(dxg, rows, l), wg.t(), gyg, false);
                                } else {
                                    gemm_seq(&mut view2_mut(&mut col, rows, l), wg.t(), gyg, false);
                                    col2im(&col, &geom, dxg);
                                }
                            }
                        }
                    }
                    dw
                });
                let dx = needs[0].then(|| {
                    Array::from_shape_vec(IxDyn(&[n, c, h, wd]), dx).expect("input-sized")
                });
                let dw = needs[1].then(|| sum_parts(parts, wshape));
                vec![dx, dw]
            }),
        )
    }

    /// `x [N, C_in, H, W]`, `w [C_in, C_out/groups, kh, kw]` -> `[N, C_out, H', W']` with
    /// `H' = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1`.
    ///
    /// The adjoint of [`Var::conv2d`]: per image, `col = W^T x` then col2im, split across
    /// threads by image like the convolution.
    pub fn conv_transpose2d(&self, w: &Var, o: ConvOptions) -> Var {
        let wm = weight_matrix(&w.value());
        let wshape = w.value().raw_dim();
        let (wc_in, cog, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
        let (n, c_in, h, wd) = {
            let x = self.value();
            (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3])
        };
        let groups = o.groups;
        assert!(
            wc_in == c_in && c_in % groups == 0,
            "conv_transpose2d: channels do not match the weight"
        );
        let cig = c_in / groups;
        let c_out = cog * groups;
        let size = |i: usize, k: usize, a: usize| {
            (i - 1) * o.stride[a] + o.dilation[a] * (k - 1) + o.output_padding[a] + 1
                - 2 * o.padding[a]
        };
        let (oh, ow) = (size(h, kh, 0), size(wd, kw, 1));
        // The conv whose input is our output and whose output is our input.
        let geom = ConvGeom::new(cog, (oh, ow), (kh, kw), o.stride, o.padding, o.dilation);
        assert_eq!(
            (geom.oh, geom.ow),
            (h, wd),
            "conv_transpose2d: inconsistent geometry"
        );
        let (rows, l, plane) = (geom.rows(), geom.cols(), geom.plane());
        let mut y = vec![0.0f32; n * c_out * plane];
        {
            let xv = self.value();
            let x = xv.as_standard_layout();
            let xs = x.as_slice().expect("standard layout");
            par_images(n, &mut y, c_out * plane, |imgs, ys| {
                let mut col = vec![0.0f32; if geom.pointwise() { 0 } else { rows * l }];
                for (k, ni) in imgs.enumerate() {
                    for g in 0..groups {
                        let xg = view2(&xs[(ni * c_in + g * cig) * l..], cig, l);
                        let wg = wm.slice(s![g * cig..(g + 1) * cig, ..]);
                        let yg = &mut ys[(k * c_out + g * cog) * plane..][..cog * plane];
                        if geom.pointwise() {
                            gemm_seq(&mut view2_mut(yg, rows, l), wg.t(), xg, false);
                        } else {
                            gemm_seq(&mut view2_mut(&mut col, rows, l), wg.t(), xg, false);
                            col2im(&col, &geom, yg);
                        }
                    }
                }
            });
        }
        let y = Array::from_shape_vec(IxDyn(&[n, c_out, oh, ow]), y).expect("sized");
        let input = self.clone();
        Var::from_op(
            y,
            vec![self.clone(), w.clone()],
            Box::new(move |gy, needs| {
                let gy = gy.as_standard_layout();
                let gs = gy.as_slice().expect("standard layout");
                let xv = input.value();
                let x = xv.as_standard_layout();
                let xs = x.as_slice().expect("standard layout");
                let mut dx = vec![0.0f32; if needs[0] { n * c_in * l } else { 0 }];
                let stride = if needs[0] { c_in * l } else { 0 };
                let parts = par_images(n, &mut dx, stride, |imgs, dxs| {
                    let mut dw = vec![0.0f32; if needs[1] { c_in * rows } else { 0 }];
                    let mut col = vec![0.0f32; if geom.pointwise() { 0 } else { rows * l }];
                    for (k, ni) in imgs.enumerate() {
                        for g in 0..groups {
                            let src = &gs[(ni * c_out + g * cog) * plane..][..cog * plane];
                            let colv = if geom.pointwise() {
                                view2(src, rows, l)
                            } else {
                                im2col(src, &geom, &mut col);
                                view2(&col, rows, l)
                            };
                            let wg = wm.slice(s![g * cig..(g + 1) * cig, ..]);
                            if needs[0] {
                                let mut dxg =
                                    view2_mut(&mut dxs[(k * c_in + g * cig) * l..], cig, l);
                                gemm_seq(&mut dxg, wg, colv, false);
                            }
                            if needs[1] {
                                let xg = view2(&xs[(ni * c_in + g * cig) * l..], cig, l);
                                let mut dwg = view2_mut(&mut dw[g * cig * rows..], cig, rows);
                                gemm_seq(&mut dwg, xg, colv.t(), true);
                            }
                        }
                    }
                    dw
                });
                let dx = needs[0].then(|| {
                    Array::from_shape_vec(IxDyn(&[n, c_in, h, wd]), dx).expect("input-sized")
                });
                let dw = needs[1].then(|| sum_parts(parts, wshape));
                vec![dx, dw]
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ConvOptions;
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;
    use crate::Var;
    use ndarray::array;

    #[test]
    fn conv2d_of_a_known_kernel() {
        // 3x3 input, 2x2 kernel of ones: each output is the sum of a 2x2 window.
        let x = Var::constant(
            array![[[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]].into_dyn(),
        );
        let w = Var::constant(ndarray::Array::ones(ndarray::IxDyn(&[1, 1, 2, 2])));
        let y = x.conv2d(&w, ConvOptions::default());
        assert_eq!(
            *y.value(),
            array![[[[12.0f32, 16.0], [24.0, 28.0]]]].into_dyn()
        );
        let y = x.conv2d(&w, ConvOptions::default().padding(1).stride(2));
        assert_eq!(
            *y.value(),
            array![[[[1.0f32, 5.0], [11.0, 28.0]]]].into_dyn()
        );
    }

    #[test]
    fn conv2d_gradients_with_stride_padding_dilation_groups() {
        let x = spread(&[2, 4, 7, 6], -1.0, 1.0, 10);
        let w = spread(&[6, 2, 3, 2], -1.0, 1.0, 11);
        let o = ConvOptions::default()
            .groups(2)
            .padding(1)
            .stride(2)
            .dilation(1);
        check("conv2d groups", &[&x, &w], move |v| v[0].conv2d(&v[1], o)).unwrap();
        let w = spread(&[3, 4, 3, 3], -1.0, 1.0, 12);
        let o = ConvOptions::default().dilation(2).padding(2);
        check("conv2d dilation", &[&x, &w], move |v| v[0].conv2d(&v[1], o)).unwrap();
    }

    #[test]
    fn conv_transpose2d_gradients_and_shape() {
        let x = spread(&[2, 4, 4, 3], -1.0, 1.0, 13);
        let w = spread(&[4, 3, 4, 4], -1.0, 1.0, 14);
        let o = ConvOptions::default().stride(2).padding(1);
        let y = Var::constant(x.clone()).conv_transpose2d(&Var::constant(w.clone()), o);
        assert_eq!(y.shape(), vec![2, 3, 8, 6]);
        check("conv_transpose2d", &[&x, &w], move |v| {
            v[0].conv_transpose2d(&v[1], o)
        })
        .unwrap();
        let w = spread(&[4, 1, 3, 3], -1.0, 1.0, 15);
        let o = ConvOptions::default().groups(2).stride(2).output_padding(1);
        check("conv_transpose2d groups", &[&x, &w], move |v| {
            v[0].conv_transpose2d(&v[1], o)
        })
        .unwrap();
    }

    #[test]
    fn conv_transpose2d_is_the_adjoint_of_conv2d() {
        // <conv(x), y> == <x, conv_t(y)> for the same weight.
        let x = spread(&[1, 3, 6, 6], -1.0, 1.0, 16);
        let w = spread(&[2, 3, 3, 3], -1.0, 1.0, 17);
        let o = ConvOptions::default()
            .stride(2)
            .padding(1)
            .output_padding(1);
        let cx = Var::constant(x.clone()).conv2d(&Var::constant(w.clone()), o);
        let y = spread(&cx.shape(), -1.0, 1.0, 18);
        let ty = Var::constant(y.clone()).conv_transpose2d(&Var::constant(w), o);
        let lhs: f32 = (&*cx.value() * &y).sum();
        let rhs: f32 = (&x * &*ty.value()).sum();
        assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
    }

    #[test]
    fn pointwise_convolutions_take_the_no_im2col_path() {
        // 1x1, stride 1, no padding: the input is its own column matrix.
        let x = spread(&[3, 4, 3, 5], -1.0, 1.0, 16);
        let w = spread(&[6, 2, 1, 1], -1.0, 1.0, 17);
        let o = ConvOptions::default().groups(2);
        check("conv2d 1x1", &[&x, &w], move |v| v[0].conv2d(&v[1], o)).unwrap();
        let w = spread(&[4, 3, 1, 1], -1.0, 1.0, 18);
        check("conv_transpose2d 1x1", &[&x, &w], move |v| {
            v[0].conv_transpose2d(&v[1], ConvOptions::default())
        })
        .unwrap();
        // Against the explicit sum for one output.
        let y = Var::constant(x.clone()).conv2d(
            &Var::constant(
                w.clone()
                    .permuted_axes(ndarray::IxDyn(&[1, 0, 2, 3]))
                    .as_standard_layout()
                    .into_owned(),
            ),
            ConvOptions::default(),
        );
        let want: f32 = (0..4).map(|c| x[[2, c, 1, 4]] * w[[c, 1, 0, 0]]).sum();
        assert!((y.value()[[2, 1, 1, 4]] - want).abs() < 1e-6);
    }
}
