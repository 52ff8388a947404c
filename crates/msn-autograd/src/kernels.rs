//! Numeric kernels kept apart from the graph: im2col / col2im for convolutions, and moving a
//! group of channels between `[N, C, L]` tensors and `[C_g, N * L]` matrices for sgemm.

use crate::Array;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads matrix products use (0: all cores, the default). Results are
/// the same for a given thread count.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// `c = a b`, or `c += a b` when `accumulate`, on the `gemm` crate's sgemm. Any strides
/// (transposed views included) are read directly, without copies.
pub fn gemm_into(
    c: &mut ArrayViewMut2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "gemm: output shape");
    if m == 0 || n == 0 {
        return;
    }
    let threads = THREADS.load(Ordering::Relaxed);
    // Small products are not worth waking threads for.
    let parallelism = if m * n * k < 32 * 32 * 32 || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let (cs, as_, bs) = (
        c.strides().to_vec(),
        a.strides().to_vec(),
        b.strides().to_vec(),
    );
    // SAFETY: the pointers and strides come from live ndarray views of the stated shapes,
    // `c` is borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs[1],
            cs[0],
            accumulate,
            a.as_ptr(),
            as_[1],
            as_[0],
            b.as_ptr(),
            bs[1],
            bs[0],
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a b` as a new matrix.
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::<f32>::zeros((a.nrows(), b.ncols()));
    gemm_into(&mut c.view_mut(), a, b, false);
    c
}

/// A 2-D copy of a tensor that must have two axes.
pub fn as_2d(a: &Array) -> Array2<f32> {
    a.view()
        .into_dimensionality::<ndarray::Ix2>()
        .expect("a 2-D tensor")
        .to_owned()
}

/// The geometry of a 2-D convolution, seen from its (non-transposed) input side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    /// Input channels of one group.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Output size of a convolution; panics with a clear message if the kernel does not fit.
    pub fn new(
        n: usize,
        c: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Self {
        let out = |size: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            assert!(
                size + 2 * p >= span,
                "conv: kernel larger than the padded input"
            );
            (size + 2 * p - span) / s + 1
        };
        ConvGeom {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            dilation,
            oh: out(h, kh, stride[0], padding[0], dilation[0]),
            ow: out(w, kw, stride[1], padding[1], dilation[1]),
        }
    }

    /// Rows of the column matrix: `c * kh * kw`.
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix: `n * oh * ow`.
    pub fn cols(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Calls `f(row, col, input_offset)` for every in-bounds tap; `input_offset` indexes one
    /// group's `[n, c, h, w]` block given the per-image stride `image_stride`.
    #[inline]
    fn for_each_tap(&self, image_stride: usize, mut f: impl FnMut(usize, usize, usize)) {
        let l = self.oh * self.ow;
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    // Images outermost after the tap, so each row of the column matrix is
                    // written (or read) front to back.
                    for n in 0..self.n {
                        for oy in 0..self.oh {
                            let y = (oy * self.stride[0] + i * self.dilation[0]) as isize
                                - self.padding[0] as isize;
                            if y < 0 || y >= self.h as isize {
                                continue;
                            }
                            let base = n * image_stride + (c * self.h + y as usize) * self.w;
                            let col0 = n * l + oy * self.ow;
                            for ox in 0..self.ow {
                                let x = (ox * self.stride[1] + j * self.dilation[1]) as isize
                                    - self.padding[1] as isize;
                                if x >= 0 && x < self.w as isize {
                                    f(row, col0 + ox, base + x as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Unfolds group `g` of `x` (`[N, C_total, H, W]`, standard layout) into `[c*kh*kw, n*oh*ow]`.
pub fn im2col(x: &[f32], channels_total: usize, g: usize, geom: &ConvGeom) -> Array2<f32> {
    let mut col = Array2::<f32>::zeros((geom.rows(), geom.cols()));
    let image = channels_total * geom.h * geom.w;
    let src = &x[g * geom.c * geom.h * geom.w..];
    let ncols = geom.cols();
    let dst = col.as_slice_mut().expect("fresh array is contiguous");
    geom.for_each_tap(image, |row, c, off| dst[row * ncols + c] = src[off]);
    col
}

/// Folds a column matrix back, adding into group `g` of `dx` (`[N, C_total, H, W]`).
pub fn col2im(
    col: ArrayView2<f32>,
    dx: &mut [f32],
    channels_total: usize,
    g: usize,
    geom: &ConvGeom,
) {
    let image = channels_total * geom.h * geom.w;
    let dst = &mut dx[g * geom.c * geom.h * geom.w..];
    let col = col.as_standard_layout();
    let ncols = geom.cols();
    let src = col.as_slice().expect("standard layout");
    geom.for_each_tap(image, |row, c, off| dst[off] += src[row * ncols + c]);
}

/// Channels `[g*cg, (g+1)*cg)` of a `[N, C, ...]` tensor as a `[cg, N * L]` matrix.
pub fn gather_group(a: &Array, g: usize, cg: usize) -> Array2<f32> {
    let n = a.shape()[0];
    let l: usize = a.shape()[2..].iter().product();
    let c = a.shape()[1];
    let a3 = a
        .view()
        .into_shape_with_order((n, c, l))
        .expect("contiguous tensor");
    let part = a3.slice(ndarray::s![.., g * cg..(g + 1) * cg, ..]);
    let mut out = Array2::<f32>::zeros((cg, n * l));
    for (ni, img) in part.axis_iter(Axis(0)).enumerate() {
        out.slice_mut(ndarray::s![.., ni * l..(ni + 1) * l])
            .assign(&img);
    }
    out
}

/// Writes a `[cg, N * L]` matrix into channels `[g*cg, (g+1)*cg)` of a `[N, C, L...]` tensor.
pub fn scatter_group(m: ArrayView2<f32>, dst: &mut Array, g: usize, cg: usize) {
    let n = dst.shape()[0];
    let c = dst.shape()[1];
    let l: usize = dst.shape()[2..].iter().product();
    let mut d3 = dst
        .view_mut()
        .into_shape_with_order((n, c, l))
        .expect("contiguous tensor");
    for ni in 0..n {
        d3.slice_mut(ndarray::s![ni, g * cg..(g + 1) * cg, ..])
            .assign(&m.slice(ndarray::s![.., ni * l..(ni + 1) * l]));
    }
}
