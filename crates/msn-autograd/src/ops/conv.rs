//! 2-D convolution and transposed convolution by im2col + sgemm, with groups, stride, padding
//! and dilation. Weights use PyTorch's layouts: conv `[O, C/groups, kh, kw]`, transposed conv
//! `[C_in, C_out/groups, kh, kw]`. Biases are added by the layers, as separate broadcast adds.

use crate::kernels::{col2im, gather_group, im2col, matmul, scatter_group, ConvGeom};
use crate::{Array, Var};
use ndarray::{Array2, IxDyn};

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

/// The weight of group `g` as `[rows_g, cols]`, where the weight is `[rows_total, ...]`.
fn weight_group(w: &Array, g: usize, rows_g: usize) -> Array2<f32> {
    let cols = w.len() / w.shape()[0];
    let w2 = w
        .view()
        .into_shape_with_order((w.shape()[0], cols))
        .expect("contiguous weight");
    w2.slice(ndarray::s![g * rows_g..(g + 1) * rows_g, ..])
        .to_owned()
}

fn add_weight_group(dw: &mut Array, g: usize, part: &Array2<f32>) {
    let rows_g = part.nrows();
    let cols = dw.len() / dw.shape()[0];
    let rows = dw.shape()[0];
    let mut d2 = dw
        .view_mut()
        .into_shape_with_order((rows, cols))
        .expect("contiguous");
    let mut slot = d2.slice_mut(ndarray::s![g * rows_g..(g + 1) * rows_g, ..]);
    slot += part;
}

impl Var {
    /// `x [N, C, H, W] * w [O, C/groups, kh, kw] -> [N, O, OH, OW]`.
    pub fn conv2d(&self, w: &Var, o: ConvOptions) -> Var {
        let x = self.value().as_standard_layout().into_owned();
        let wv = w.value().clone();
        let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (out_c, cg, kh, kw) = (wv.shape()[0], wv.shape()[1], wv.shape()[2], wv.shape()[3]);
        let groups = o.groups;
        assert!(
            c == cg * groups && out_c % groups == 0,
            "conv2d: channels do not match the weight and groups"
        );
        let og = out_c / groups;
        let geom = ConvGeom::new(n, cg, (h, wd), (kh, kw), o.stride, o.padding, o.dilation);
        let xs = x.as_slice().expect("standard layout");
        let cols: Vec<Array2<f32>> = (0..groups).map(|g| im2col(xs, c, g, &geom)).collect();
        let mut y = Array::zeros(IxDyn(&[n, out_c, geom.oh, geom.ow]));
        for (g, col) in cols.iter().enumerate() {
            scatter_group(
                matmul(weight_group(&wv, g, og).view(), col.view()).view(),
                &mut y,
                g,
                og,
            );
        }
        Var::from_op(
            y,
            vec![self.clone(), w.clone()],
            Box::new(move |gy, needs| {
                let mut dx = needs[0].then(|| Array::zeros(IxDyn(&[n, c, h, wd])));
                let mut dw = needs[1].then(|| Array::zeros(wv.raw_dim()));
                let gy = gy.as_standard_layout();
                for (g, col) in cols.iter().enumerate() {
                    let gyg = gather_group(&gy.to_owned(), g, og);
                    if let Some(dw) = dw.as_mut() {
                        add_weight_group(dw, g, &matmul(gyg.view(), col.t()));
                    }
                    if let Some(dx) = dx.as_mut() {
                        let dcol = matmul(weight_group(&wv, g, og).t(), gyg.view());
                        col2im(dcol.view(), dx.as_slice_mut().expect("fresh"), c, g, &geom);
                    }
                }
                vec![dx, dw]
            }),
        )
    }

    /// `x [N, C_in, H, W]`, `w [C_in, C_out/groups, kh, kw]` -> `[N, C_out, H', W']` with
    /// `H' = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1`.
    pub fn conv_transpose2d(&self, w: &Var, o: ConvOptions) -> Var {
        let x = self.value().as_standard_layout().into_owned();
        let wv = w.value().clone();
        let (n, c_in, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (wc_in, cog, kh, kw) = (wv.shape()[0], wv.shape()[1], wv.shape()[2], wv.shape()[3]);
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
        let geom = ConvGeom::new(n, cog, (oh, ow), (kh, kw), o.stride, o.padding, o.dilation);
        assert_eq!(
            (geom.oh, geom.ow),
            (h, wd),
            "conv_transpose2d: inconsistent geometry"
        );
        let mut y = Array::zeros(IxDyn(&[n, c_out, oh, ow]));
        for g in 0..groups {
            let col = matmul(
                weight_group(&wv, g, cig).t(),
                gather_group(&x, g, cig).view(),
            );
            col2im(
                col.view(),
                y.as_slice_mut().expect("fresh"),
                c_out,
                g,
                &geom,
            );
        }
        Var::from_op(
            y,
            vec![self.clone(), w.clone()],
            Box::new(move |gy, needs| {
                let gy = gy.as_standard_layout().into_owned();
                let gys = gy.as_slice().expect("standard layout");
                let mut dx = needs[0].then(|| Array::zeros(IxDyn(&[n, c_in, h, wd])));
                let mut dw = needs[1].then(|| Array::zeros(wv.raw_dim()));
                for g in 0..groups {
                    let col = im2col(gys, c_out, g, &geom);
                    if let Some(dx) = dx.as_mut() {
                        scatter_group(
                            matmul(weight_group(&wv, g, cig).view(), col.view()).view(),
                            dx,
                            g,
                            cig,
                        );
                    }
                    if let Some(dw) = dw.as_mut() {
                        add_weight_group(dw, g, &matmul(gather_group(&x, g, cig).view(), col.t()));
                    }
                }
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
}
