//! 2-D convolution and transposed convolution by im2col + sgemm, with groups, stride, padding
//! and dilation. Weights use PyTorch's layouts: conv `[O, C/groups, kh, kw]`, transposed conv
//! `[C_in, C_out/groups, kh, kw]`. Biases are added by the layers, as separate broadcast adds.

use crate::kernels::{
    bias_leaky_relu, col2im, conv_direct, conv_direct_wide, conv_gemm, conv_weight_direct,
    conv_weight_gemm, conv_weight_outer, direct_conv, gemm_seq, im2col, leaky_relu_grad,
    par_images, par_images_new, view2, view2_mut, ConvGeom, DirectInput, PackedWeight,
};
use crate::{Array, Var};
use ndarray::{s, Array2, ArrayView2, Dimension, IxDyn};
use std::ops::Range;

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

/// A convolution `K` lowered to matrix products, image by image: from "A" images
/// (`groups * a` channels of the geometry's input size) to "B" images (`groups * b` channels
/// of its output size), `B_g = W_g im2col(A_g)`. A convolution is `K`; a transposed
/// convolution is `K^T`, so both, and both their gradients, are the three passes below.
struct Lowered {
    geom: ConvGeom,
    groups: usize,
    a: usize,
    b: usize,
    /// `[groups * b, a * kh * kw]`.
    wm: Array2<f32>,
    /// For a stride-1 `K`: `K^T` as a convolution of B images (the weight flipped in space,
    /// its channel axes swapped: `[groups * a, b * kh * kw]`), so the adjoint runs on the
    /// fused im2col sgemm instead of a matrix product followed by col2im.
    flipped: Option<(ConvGeom, Vec<PackedWeight>)>,
    /// For a strided `K`: `K^T` as one stride-1 convolution per output phase.
    phases: Option<Vec<Phase>>,
    /// For a strided `K` whose phase convolution takes the direct kernels: `K` itself as a
    /// stride-1 convolution of the input's phases (space to depth), for all three passes.
    s2d: Option<S2d>,
    /// `wm`'s groups packed for the fused kernels, where they run.
    packed: Option<Vec<PackedWeight>>,
}

impl Lowered {
    /// `K` with weight `w` (`[groups * b, geom.c, kh, kw]`): `geom.c` channels a group in, `b`
    /// out.
    fn new(geom: ConvGeom, w: &Var, b: usize, groups: usize) -> Self {
        let wm = weight_matrix(&w.value());
        let a = geom.c;
        let s2d = S2d::new(&geom, &wm, b, groups);
        let flipped = Self::flip(&geom, &wm, b, groups);
        let phases = match s2d {
            Some(_) => None,
            None => phases(&geom, &wm, b, groups),
        };
        let packed = (0..groups)
            .map(|g| PackedWeight::new(wm.slice(s![g * b..(g + 1) * b, ..])))
            .collect();
        Lowered {
            geom,
            groups,
            a,
            b,
            wm,
            flipped,
            phases,
            s2d,
            packed,
        }
    }

    /// The adjoint of a stride-1 convolution as a convolution: `dx[c, y, x] = sum over
    /// (o, i, j) of w[o, c, i, j] dy[o, y + p - i d, x + p - j d]`, a convolution of `dy`
    /// with padding `d (k - 1) - p` and the weight `w'[c, o, k-1-i, k-1-j]`. `None` where
    /// that padding would be negative, for strided convolutions, for fewer than 8 input
    /// channels, and when the fused kernels are not available.
    fn flip(
        geom: &ConvGeom,
        wm: &Array2<f32>,
        b: usize,
        groups: usize,
    ) -> Option<(ConvGeom, Vec<PackedWeight>)> {
        let g = geom;
        let pad = |a: usize, k: usize| (g.dilation[a] * (k - 1)).checked_sub(g.padding[a]);
        // With fewer than 8 input channels (a first layer's input gradient, rarely wanted)
        // most of the kernel's 8-row tile would be idle.
        if g.stride != [1, 1] || g.c < 8 || !crate::kernels::fused_conv_available() {
            return None;
        }
        let (ph, pw) = (pad(0, g.kh)?, pad(1, g.kw)?);
        let fg = ConvGeom::new(b, (g.oh, g.ow), (g.kh, g.kw), [1, 1], [ph, pw], g.dilation);
        debug_assert_eq!((fg.oh, fg.ow), (g.h, g.w));
        let (a, taps) = (g.c, g.kh * g.kw);
        let mut f = Array2::<f32>::zeros((groups * a, b * taps));
        for gi in 0..groups {
            for c in 0..a {
                for o in 0..b {
                    for t in 0..taps {
                        f[[gi * a + c, o * taps + taps - 1 - t]] = wm[[gi * b + o, c * taps + t]];
                    }
                }
            }
        }
        let packed = (0..groups)
            .map(|gi| PackedWeight::new(f.slice(s![gi * a..(gi + 1) * a, ..])))
            .collect::<Option<_>>()?;
        Some((fg, packed))
    }

    fn a_size(&self) -> usize {
        self.groups * self.a * self.geom.plane()
    }

    fn b_size(&self) -> usize {
        self.groups * self.b * self.geom.cols()
    }

    /// Sizes the im2col buffer of one group (empty for a pointwise convolution). It is
    /// allocated on first use: the fused AVX-512 paths never need it.
    fn col<'c>(&self, col: &'c mut Vec<f32>) -> &'c mut [f32] {
        let len = self.geom.rows() * self.geom.cols();
        col.resize(if self.geom.pointwise() { 0 } else { len }, 0.0);
        col
    }

    fn w(&self, g: usize) -> ArrayView2<'_, f32> {
        self.wm.slice(s![g * self.b..(g + 1) * self.b, ..])
    }

    fn b_group<'x>(&self, b_img: &'x [f32], g: usize) -> ArrayView2<'x, f32> {
        let l = self.geom.cols();
        view2(&b_img[g * self.b * l..], self.b, l)
    }

    /// Group `g` of an A image as the columns `W_g` multiplies.
    fn columns<'x>(&self, a_img: &'x [f32], g: usize, col: &'x mut [f32]) -> ArrayView2<'x, f32> {
        let (rows, l, size) = (
            self.geom.rows(),
            self.geom.cols(),
            self.a * self.geom.plane(),
        );
        let src = &a_img[g * size..(g + 1) * size];
        if self.geom.pointwise() {
            return view2(src, rows, l);
        }
        im2col(src, &self.geom, col);
        view2(col, rows, l)
    }

    /// How many images the fused kernels multiply at once: enough for about 256 columns,
    /// since the small images of late layers fill the 48-column register tile badly alone.
    /// The direct kernels write each image in place, so they take more images at once (the
    /// weight gradient's dot products then run longer between their sums).
    fn batch(&self) -> usize {
        match (&self.packed, &self.s2d) {
            // A few hundred KB of phase images at a time.
            (_, Some(s2d)) => (65536 / (s2d.pg.c * s2d.pg.plane()).max(1)).clamp(1, 32),
            (Some(_), _) if direct_conv(&self.geom) => {
                (4096 / self.geom.cols().max(1)).clamp(1, 32)
            }
            (Some(_), _) => (256 / self.geom.cols().max(1)).clamp(1, 32),
            (None, _) => 1,
        }
    }

    /// `b = K a` for `count` images (`a_imgs`, `b_imgs`: back to back).
    fn forward(&self, a_imgs: &[f32], count: usize, b_imgs: &mut [f32], col: &mut Vec<f32>) {
        let (l, size) = (self.geom.cols(), self.a * self.geom.plane());
        let (a_size, b_size) = (a_imgs.len() / count, b_imgs.len() / count);
        if let Some(s2d) = &self.s2d {
            return s2d.forward(&self.geom, a_imgs, count, b_imgs);
        }
        if let Some(packed) = &self.packed {
            for (g, w) in packed.iter().enumerate() {
                let srcs = groups_of(a_imgs, count, g * size, size);
                if direct_conv(&self.geom) {
                    let out = &mut b_imgs[g * self.b * l..];
                    conv_direct(
                        DirectInput::Images(&srcs),
                        &self.geom,
                        w,
                        out,
                        l,
                        b_size,
                        false,
                    );
                    continue;
                }
                through_groups(b_imgs, count, g, self.b, l, false, |out, acc| {
                    conv_gemm(&srcs, &self.geom, w, out, acc)
                });
            }
            return;
        }
        for i in 0..count {
            let a_img = &a_imgs[i * a_size..(i + 1) * a_size];
            let b_img = &mut b_imgs[i * b_size..(i + 1) * b_size];
            for g in 0..self.groups {
                let out = &mut b_img[g * self.b * l..(g + 1) * self.b * l];
                gemm_seq(
                    &mut view2_mut(out, self.b, l),
                    self.w(g),
                    self.columns(a_img, g, self.col(col)),
                    false,
                );
            }
        }
    }

    /// `a += K^T b` for `count` images.
    fn adjoint(&self, b_imgs: &[f32], count: usize, a_imgs: &mut [f32], col: &mut Vec<f32>) {
        let (rows, l, size) = (
            self.geom.rows(),
            self.geom.cols(),
            self.a * self.geom.plane(),
        );
        if let Some(s2d) = &self.s2d {
            return s2d.adjoint(&self.geom, b_imgs, count, a_imgs);
        }
        if let Some((fg, fw)) = &self.flipped {
            let a_size = a_imgs.len() / count;
            for (g, w) in fw.iter().enumerate() {
                let srcs = groups_of(b_imgs, count, g * self.b * l, self.b * l);
                if direct_conv(fg) {
                    let out = &mut a_imgs[g * self.a * fg.cols()..];
                    conv_direct(
                        DirectInput::Images(&srcs),
                        fg,
                        w,
                        out,
                        fg.cols(),
                        a_size,
                        true,
                    );
                    continue;
                }
                through_groups(a_imgs, count, g, self.a, fg.cols(), true, |out, acc| {
                    conv_gemm(&srcs, fg, w, out, acc)
                });
            }
            return;
        }
        let (a_size, b_size) = (a_imgs.len() / count, b_imgs.len() / count);
        if let Some(phases) = &self.phases {
            for i in 0..count {
                let b_img = &b_imgs[i * b_size..(i + 1) * b_size];
                let a_img = &mut a_imgs[i * a_size..(i + 1) * a_size];
                for g in 0..self.groups {
                    let dy = &b_img[g * self.b * l..(g + 1) * self.b * l];
                    let dx = &mut a_img[g * size..(g + 1) * size];
                    adjoint_by_phases(phases, &self.geom, g, self.a, dy, dx);
                }
            }
            return;
        }
        let col = self.col(col);
        for i in 0..count {
            let b_img = &b_imgs[i * b_size..(i + 1) * b_size];
            let a_img = &mut a_imgs[i * a_size..(i + 1) * a_size];
            for g in 0..self.groups {
                let (w, bg) = (self.w(g).reversed_axes(), self.b_group(b_img, g));
                let out = &mut a_img[g * size..(g + 1) * size];
                if self.geom.pointwise() {
                    gemm_seq(&mut view2_mut(out, rows, l), w, bg, false);
                } else {
                    gemm_seq(&mut view2_mut(col, rows, l), w, bg, false);
                    col2im(col, &self.geom, out);
                }
            }
        }
    }

    /// `dW += b im2col(a)^T` for `count` images.
    fn weight_grad(
        &self,
        a_imgs: &[f32],
        b_imgs: &[f32],
        count: usize,
        dw: &mut [f32],
        col: &mut Vec<f32>,
    ) {
        let (rows, l, size) = (
            self.geom.rows(),
            self.geom.cols(),
            self.a * self.geom.plane(),
        );
        let (a_size, b_size) = (a_imgs.len() / count, b_imgs.len() / count);
        if let Some(s2d) = &self.s2d {
            return s2d.weight_grad(&self.geom, a_imgs, b_imgs, count, dw);
        }
        for g in 0..self.groups {
            let dwg = &mut dw[g * self.b * rows..(g + 1) * self.b * rows];
            if self.packed.is_some() {
                let srcs = groups_of(a_imgs, count, g * size, size);
                if direct_conv(&self.geom) {
                    let gy = &b_imgs[g * self.b * l..];
                    conv_weight_direct(DirectInput::Images(&srcs), &self.geom, gy, l, b_size, dwg);
                    continue;
                }
                let done = if count == 1 {
                    conv_weight_gemm(&srcs, &self.geom, self.b_group(b_imgs, g), dwg)
                } else {
                    // The gradients side by side: `[b, count * l]`.
                    let mut gy = Array2::<f32>::zeros((self.b, count * l));
                    for i in 0..count {
                        let bg = self.b_group(&b_imgs[i * b_size..(i + 1) * b_size], g);
                        gy.slice_mut(s![.., i * l..(i + 1) * l]).assign(&bg);
                    }
                    conv_weight_gemm(&srcs, &self.geom, gy.view(), dwg)
                };
                assert!(done, "the fused kernels run where the weights were packed");
                continue;
            }
            for i in 0..count {
                let a_img = &a_imgs[i * a_size..(i + 1) * a_size];
                let bg = self.b_group(&b_imgs[i * b_size..(i + 1) * b_size], g);
                gemm_seq(
                    &mut view2_mut(dwg, self.b, rows),
                    bg,
                    self.columns(a_img, g, self.col(col)).reversed_axes(),
                    true,
                );
            }
        }
    }

    /// Runs `f(images, their slice of out, im2col buffer, weight gradient)` over `n` images
    /// split across threads and, within a thread, taken [`Lowered::batch`] at a time (the
    /// output, returned, holds `out_size` values an image, zeroed before `f` runs, or nothing
    /// when `out_size` is 0); returns it and each thread's weight gradient (`dw_len` values,
    /// 0 when not wanted).
    fn images(
        &self,
        n: usize,
        out_size: usize,
        dw_len: usize,
        f: impl Fn(Range<usize>, &mut [f32], &mut Vec<f32>, &mut [f32]) + Sync,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let batch = self.batch();
        par_images_new(n, out_size, |imgs, outs| {
            let (mut col, mut dw) = (Vec::new(), vec![0.0f32; dw_len]);
            for start in imgs.clone().step_by(batch) {
                let end = (start + batch).min(imgs.end);
                f(start..end, outs.next(end - start), &mut col, &mut dw);
            }
            dw
        })
    }
}

/// Group `g` (the `size` values at `offset`) of each of `count` images back to back in `imgs`.
fn groups_of(imgs: &[f32], count: usize, offset: usize, size: usize) -> Vec<&[f32]> {
    let image = imgs.len() / count;
    (0..count)
        .map(|i| &imgs[i * image + offset..i * image + offset + size])
        .collect()
}

thread_local! {
    /// Per-thread product of several images' groups before it is spread over the images.
    static SIDE_BY_SIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f(out, accumulate)` on the `[rows, count * l]` matrix whose column block `i` is group
/// `g` (`rows * l` values at `g * rows * l`) of image `i` of `imgs`: in place for one image,
/// else in a buffer then copied into the images, or added when `add`.
fn through_groups(
    imgs: &mut [f32],
    count: usize,
    g: usize,
    rows: usize,
    l: usize,
    add: bool,
    f: impl FnOnce(&mut [f32], bool),
) {
    let image = imgs.len() / count;
    if count == 1 {
        return f(&mut imgs[g * rows * l..(g + 1) * rows * l], add);
    }
    SIDE_BY_SIDE.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(rows * count * l, 0.0);
        f(&mut buf, false);
        for i in 0..count {
            for r in 0..rows {
                let src = &buf[(r * count + i) * l..(r * count + i + 1) * l];
                let at = i * image + (g * rows + r) * l;
                let dst = &mut imgs[at..at + l];
                if add {
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    })
}

thread_local! {
    /// Per-thread phase images of [`S2d`] (its input side, or its input gradient).
    static PHASES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A strided, undilated convolution `K` (stride `s`, kernel `k`, padding `p`) as a stride-1
/// convolution of the input's phases (space to depth): phase `(u, v)` of channel `c` is the
/// padded input's pixels `(s y + u, s x + v)`, a channel of its own, and the weight's taps
/// `(s i + u, s j + v)` become that channel's `ceil(k / s)`-square kernel (zero past `k`).
/// The direct kernels then run all three passes without packing: forward and weight
/// gradient on the phase convolution, the input gradient as its flipped convolution
/// (written wide, see [`conv_direct_wide`]) gathered back from the phases.
struct S2d {
    /// The phase convolution: `a * s * s` channels of `(oh + kq - 1) x (ow + kq - 1)`, kernel
    /// `kq x kq`, stride 1, no padding; its output is `K`'s.
    pg: ConvGeom,
    /// Phase weights per group, `[b, a * s * s * kq * kq]`.
    packed: Vec<PackedWeight>,
    /// The phase convolution's adjoint as a convolution of the output gradient (padding
    /// `kq - 1`, the phase weight flipped, channel axes swapped) and its weights per group.
    fg: ConvGeom,
    flipped: Vec<PackedWeight>,
    groups: usize,
    b: usize,
}

impl S2d {
    fn new(g: &ConvGeom, wm: &Array2<f32>, b: usize, groups: usize) -> Option<S2d> {
        let [sy, sx] = g.stride;
        if g.stride == [1, 1] || g.dilation != [1, 1] || !crate::kernels::fused_conv_available() {
            return None;
        }
        let (kqh, kqw) = (g.kh.div_ceil(sy), g.kw.div_ceil(sx));
        let (hq, wq) = (g.oh + kqh - 1, g.ow + kqw - 1);
        let ap = g.c * sy * sx;
        let pg = ConvGeom::new(ap, (hq, wq), (kqh, kqw), [1, 1], [0, 0], [1, 1]);
        debug_assert_eq!((pg.oh, pg.ow), (g.oh, g.ow));
        if !direct_conv(&pg) {
            return None;
        }
        // Phase weight: row o, column ((c * sy + u) * sx + v) * kq^2 + i * kqw + j holds
        // w[o, c, sy i + u, sx j + v].
        let (taps, ptaps) = (g.kh * g.kw, kqh * kqw);
        let mut pw = Array2::<f32>::zeros((groups * b, ap * ptaps));
        for o in 0..groups * b {
            for c in 0..g.c {
                for y in 0..g.kh {
                    for x in 0..g.kw {
                        let ch = (c * sy + y % sy) * sx + x % sx;
                        let col = ch * ptaps + (y / sy) * kqw + x / sx;
                        pw[[o, col]] = wm[[o, c * taps + y * g.kw + x]];
                    }
                }
            }
        }
        let fg = ConvGeom::new(
            b,
            (g.oh, g.ow),
            (kqh, kqw),
            [1, 1],
            [kqh - 1, kqw - 1],
            [1, 1],
        );
        debug_assert_eq!((fg.oh, fg.ow), (hq, wq));
        let mut f = Array2::<f32>::zeros((groups * ap, b * ptaps));
        for gi in 0..groups {
            for c in 0..ap {
                for o in 0..b {
                    for t in 0..ptaps {
                        f[[gi * ap + c, o * ptaps + ptaps - 1 - t]] =
                            pw[[gi * b + o, c * ptaps + t]];
                    }
                }
            }
        }
        let pack = |m: &Array2<f32>, rows: usize| -> Option<Vec<PackedWeight>> {
            (0..groups)
                .map(|gi| PackedWeight::new(m.slice(s![gi * rows..(gi + 1) * rows, ..])))
                .collect()
        };
        Some(S2d {
            pg,
            packed: pack(&pw, b)?,
            fg,
            flipped: pack(&f, ap)?,
            groups,
            b,
        })
    }

    /// Runs `f` on the phase images of `count` input images (`[groups * a, h, w]` each, back
    /// to back): group-major, `[groups][count][pg.c, hq, wq]`, then 16 zeros (the slack of
    /// [`DirectInput::Padded`]).
    fn with_phases<R>(
        &self,
        g: &ConvGeom,
        xs: &[f32],
        count: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        let [sy, sx] = g.stride;
        let (hq, wq) = (self.pg.h, self.pg.w);
        let plane = hq * wq;
        let image = self.groups * g.c * g.plane();
        PHASES.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.resize(count * self.groups * self.pg.c * plane + 16, 0.0);
            for gi in 0..self.groups {
                for i in 0..count {
                    for c in 0..g.c {
                        let src = &xs[i * image + (gi * g.c + c) * g.plane()..][..g.plane()];
                        for u in 0..sy {
                            for v in 0..sx {
                                let ch = ((gi * count + i) * g.c + c) * sy * sx + u * sx + v;
                                let dst = &mut buf[ch * plane..(ch + 1) * plane];
                                phase_copy(src, g, [u, v], [hq, wq], dst);
                            }
                        }
                    }
                }
            }
            f(&buf)
        })
    }

    fn forward(&self, g: &ConvGeom, a_imgs: &[f32], count: usize, b_imgs: &mut [f32]) {
        let (l, b_size) = (g.cols(), b_imgs.len() / count);
        let size = self.pg.c * self.pg.plane();
        self.with_phases(g, a_imgs, count, |xq| {
            for (gi, w) in self.packed.iter().enumerate() {
                let x = DirectInput::Padded(&xq[gi * count * size..], count);
                let out = &mut b_imgs[gi * self.b * l..];
                conv_direct(x, &self.pg, w, out, l, b_size, false);
            }
        })
    }

    /// `dWq^T += im2col(a) b^T` for the phase convolution's weight `Wq`, transposed per group
    /// (`[groups][pg.rows()][b]`): outer products over the phase images. [`S2d::to_weight`]
    /// maps the summed gradient back to `K`'s layout and taps once a step.
    fn weight_grad(
        &self,
        g: &ConvGeom,
        a_imgs: &[f32],
        b_imgs: &[f32],
        count: usize,
        dw: &mut [f32],
    ) {
        let (l, b_size) = (g.cols(), b_imgs.len() / count);
        let size = self.pg.c * self.pg.plane();
        let prow = self.pg.rows();
        self.with_phases(g, a_imgs, count, |xq| {
            for gi in 0..self.groups {
                let x = DirectInput::Padded(&xq[gi * count * size..], count);
                let gy = &b_imgs[gi * self.b * l..];
                let dwg = &mut dw[gi * self.b * prow..(gi + 1) * self.b * prow];
                conv_weight_outer(x, &self.pg, gy, l, b_size, dwg);
            }
        })
    }

    /// Values of the phase convolution's weight gradient.
    fn weight_len(&self) -> usize {
        self.groups * self.b * self.pg.rows()
    }

    /// The gradient of `K`'s weight (`[groups * b, c, kh, kw]`) from the phase weight's:
    /// each phase tap goes to the tap of `K` it came from (phase taps past the kernel
    /// carry zero weights and are dropped).
    fn to_weight(&self, g: &ConvGeom, dwq: &[f32], shape: IxDyn) -> Array {
        let [sy, sx] = g.stride;
        let (prow, rows) = (self.pg.rows(), g.rows());
        let (ptaps, kqw) = (self.pg.kh * self.pg.kw, self.pg.kw);
        let mut dw = vec![0.0f32; self.groups * self.b * rows];
        for (row, dst) in dw.chunks_exact_mut(rows).enumerate() {
            let (gi, o) = (row / self.b, row % self.b);
            let src = &dwq[gi * self.b * prow..(gi + 1) * self.b * prow];
            for c in 0..g.c {
                for y in 0..g.kh {
                    for x in 0..g.kw {
                        let ch = (c * sy + y % sy) * sx + x % sx;
                        let col = ch * ptaps + (y / sy) * kqw + x / sx;
                        dst[(c * g.kh + y) * g.kw + x] = src[col * self.b + o];
                    }
                }
            }
        }
        Array::from_shape_vec(shape, dw).expect("weight-sized gradient")
    }

    /// `a += K^T b`: the flipped phase convolution of `b` into phase images (wide rows),
    /// then each input pixel takes its value from its phase.
    fn adjoint(&self, g: &ConvGeom, b_imgs: &[f32], count: usize, a_imgs: &mut [f32]) {
        let (l, fg) = (g.cols(), &self.fg);
        let [sy, sx] = g.stride;
        let wpf = fg.padded().1;
        let plane = fg.oh * wpf;
        let ap = self.pg.c;
        let image = self.groups * ap * plane;
        let a_size = a_imgs.len() / count;
        PHASES.with(|buf| {
            let mut buf = buf.borrow_mut();
            // Not cleared: the kernel writes every phase pixel read below, the window of
            // phase pixels that land inside the input (the other phase pixels fall on the
            // padding: a quarter of them for cnn3's 4x4 stride-2 layer).
            buf.resize(count * image, 0.0);
            let window = (
                phase_window(g.h, sy, g.padding[0], fg.oh),
                phase_window(g.w, sx, g.padding[1], fg.ow),
            );
            for (gi, w) in self.flipped.iter().enumerate() {
                let srcs = groups_of(b_imgs, count, gi * self.b * l, self.b * l);
                let out = &mut buf[gi * ap * plane..];
                let x = DirectInput::Images(&srcs);
                conv_direct_wide(x, fg, w, out, plane, image, window.clone());
            }
            for i in 0..count {
                for c in 0..self.groups * g.c {
                    let dst = &mut a_imgs[i * a_size + c * g.plane()..][..g.plane()];
                    for u in 0..sy {
                        for v in 0..sx {
                            let ch = i * image / plane + c * sy * sx + u * sx + v;
                            let src = &buf[ch * plane..(ch + 1) * plane];
                            phase_copy_back(src, g, [u, v], [fg.oh, fg.ow], wpf, dst);
                        }
                    }
                }
            }
        })
    }
}

/// The phase rows (or columns) that [`phase_cols`] reads for any of the `s` phases: the
/// union of their ranges.
fn phase_window(w: usize, s: usize, p: usize, wq: usize) -> Range<usize> {
    (0..s)
        .map(|v| phase_cols(w, s, v, p, wq).0)
        .filter(|r| !r.is_empty())
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
        .unwrap_or(0..0)
}

/// The output columns `x'` of a phase row whose input column `s x' + v - p` is inside a
/// `w`-wide row, and the first such input column.
fn phase_cols(
    w: usize,
    s: usize,
    v: usize,
    p: usize,
    wq: usize,
) -> (std::ops::Range<usize>, usize) {
    // First x' with s x' + v >= p, last with s x' + v - p < w.
    let x0 = p.saturating_sub(v).div_ceil(s);
    let x1 = ((w + p).saturating_sub(v)).div_ceil(s).min(wq);
    if x0 >= x1 {
        return (0..0, 0);
    }
    (x0..x1, s * x0 + v - p)
}

/// Phase `(u, v)` of one input channel `x` (`[h, w]`) under the geometry's stride and
/// padding: `dst[y * wq + x'] = x[s y + u - p, s x' + v - p]`, zero outside the input
/// (`dst` is zero on entry).
fn phase_copy(x: &[f32], g: &ConvGeom, [u, v]: [usize; 2], [hq, wq]: [usize; 2], dst: &mut [f32]) {
    let ([sy, sx], [py, px]) = (g.stride, g.padding);
    let (cols, first) = phase_cols(g.w, sx, v, px, wq);
    for y in 0..hq {
        let Some(row) = (sy * y + u).checked_sub(py).filter(|r| *r < g.h) else {
            continue;
        };
        let out = &mut dst[y * wq + cols.start..y * wq + cols.end];
        let src = &x[row * g.w + first..(row + 1) * g.w];
        if sx == 2 {
            // Stride 2, the common case, in a form the compiler vectorizes.
            let n = out.len().min(src.len() / 2);
            for (o, s) in out[..n].iter_mut().zip(src.chunks_exact(2)) {
                *o = s[0];
            }
            if n < out.len() {
                out[n] = src[2 * n];
            }
        } else {
            for (o, s) in out.iter_mut().zip(src.iter().step_by(sx)) {
                *o = *s;
            }
        }
    }
}

/// The adjoint of [`phase_copy`], adding: `dx[s y + u - p, s x' + v - p] += src[y * wp +
/// x']` for the `hq x wq` phase pixels that fall inside the input (`src` rows `wp` apart).
fn phase_copy_back(
    src: &[f32],
    g: &ConvGeom,
    [u, v]: [usize; 2],
    [hq, wq]: [usize; 2],
    wp: usize,
    dx: &mut [f32],
) {
    let ([sy, sx], [py, px]) = (g.stride, g.padding);
    let (cols, first) = phase_cols(g.w, sx, v, px, wq);
    for y in 0..hq {
        let Some(row) = (sy * y + u).checked_sub(py).filter(|r| *r < g.h) else {
            continue;
        };
        let out = &mut dx[row * g.w + first..(row + 1) * g.w];
        let src = &src[y * wp + cols.start..y * wp + cols.end];
        if sx == 2 {
            let n = src.len().min(out.len() / 2);
            for (o, s) in out.chunks_exact_mut(2).zip(&src[..n]) {
                o[0] += *s;
            }
            if n < src.len() {
                out[2 * n] += src[n];
            }
        } else {
            for (o, s) in out.iter_mut().step_by(sx).zip(src) {
                *o += *s;
            }
        }
    }
}

/// One phase of a strided convolution's adjoint: the input pixels `(s y + py, s x + px)`
/// receive `dx[c, y, x] = sum over (o, t, u) of w'[c, o, t, u] B[o, y + t, x + u]`, a plain
/// stride-1 convolution of a window `B` of `dy` (rows from `dy` row `e0y`, zero outside)
/// with the taps `i = py + p - s (e0y + t)` of the weight (and likewise across).
struct Phase {
    /// `(py, px)`.
    at: [usize; 2],
    /// First `dy` row and column of the window `B` (may be negative).
    e0: [isize; 2],
    /// The stride-1 convolution over `B`: `b` channels of `(H + K' - 1) x (W + K' - 1)`,
    /// kernel `K'y x K'x`, no padding; its output is the phase's `H x W` pixels.
    geom: ConvGeom,
    /// `w'` per group: `[a, b * K'y * K'x]`.
    weights: Vec<PackedWeight>,
}

/// The phases of the adjoint of a strided, undilated convolution (`None` for stride 1,
/// dilation, fewer than 8 input channels, or without the fused kernels). Phases that no
/// tap reaches, or that hold no input pixel, are left out: their input gradient is zero.
fn phases(g: &ConvGeom, wm: &Array2<f32>, b: usize, groups: usize) -> Option<Vec<Phase>> {
    if g.stride == [1, 1]
        || g.dilation != [1, 1]
        || g.c < 8
        || !crate::kernels::fused_conv_available()
    {
        return None;
    }
    // Per axis and phase: (first window offset e0, taps i in window order, output size).
    let axis = |ax: usize, k: usize, size: usize, ph: usize| {
        let (s, p) = (g.stride[ax] as isize, g.padding[ax] as isize);
        let mut taps: Vec<(isize, usize)> = (0..k)
            .filter(|&i| (ph as isize + p - i as isize).rem_euclid(s) == 0)
            .map(|i| ((ph as isize + p - i as isize) / s, i))
            .collect();
        taps.sort();
        let out = if ph < size {
            (size - ph).div_ceil(s as usize)
        } else {
            0
        };
        (
            taps.first().map_or(0, |t| t.0),
            taps.into_iter().map(|t| t.1).collect::<Vec<_>>(),
            out,
        )
    };
    let mut phases = Vec::new();
    for py in 0..g.stride[0] {
        for px in 0..g.stride[1] {
            let (ey, iy, hy) = axis(0, g.kh, g.h, py);
            let (ex, jx, wx) = axis(1, g.kw, g.w, px);
            if iy.is_empty() || jx.is_empty() || hy == 0 || wx == 0 {
                continue;
            }
            let (kh, kw) = (iy.len(), jx.len());
            let geom = ConvGeom::new(
                b,
                (hy + kh - 1, wx + kw - 1),
                (kh, kw),
                [1, 1],
                [0, 0],
                [1, 1],
            );
            let a = g.c;
            let mut f = Array2::<f32>::zeros((groups * a, b * kh * kw));
            for gi in 0..groups {
                for c in 0..a {
                    for o in 0..b {
                        for (t, &i) in iy.iter().enumerate() {
                            for (u, &j) in jx.iter().enumerate() {
                                f[[gi * a + c, (o * kh + t) * kw + u]] =
                                    wm[[gi * b + o, (c * g.kh + i) * g.kw + j]];
                            }
                        }
                    }
                }
            }
            let weights = (0..groups)
                .map(|gi| PackedWeight::new(f.slice(s![gi * a..(gi + 1) * a, ..])))
                .collect::<Option<_>>()?;
            phases.push(Phase {
                at: [py, px],
                e0: [ey, ex],
                geom,
                weights,
            });
        }
    }
    Some(phases)
}

/// `a += K^T b` for one image group through the phases: `dy` is the group's `[b, oh, ow]`
/// gradient, `dx` its `[a, h, w]` input gradient.
fn adjoint_by_phases(
    phases: &[Phase],
    g: &ConvGeom,
    group: usize,
    a: usize,
    dy: &[f32],
    dx: &mut [f32],
) {
    let (oh, ow) = (g.oh as isize, g.ow as isize);
    let mut window = Vec::new();
    let mut out = Vec::new();
    for ph in phases {
        let pg = &ph.geom;
        // The window of dy, zero outside it.
        window.clear();
        window.resize(pg.c * pg.h * pg.w, 0.0);
        // Window columns q0..q1 read dy columns q0 + e0x..q1 + e0x.
        let q0 = (-ph.e0[1]).clamp(0, pg.w as isize) as usize;
        let q1 = (ow - ph.e0[1]).clamp(q0 as isize, pg.w as isize) as usize;
        for o in 0..pg.c {
            for r in 0..pg.h {
                let y = r as isize + ph.e0[0];
                if !(0..oh).contains(&y) || q0 == q1 {
                    continue;
                }
                let src = (o * g.oh + y as usize) * g.ow;
                let x0 = (q0 as isize + ph.e0[1]) as usize;
                let dst = (o * pg.h + r) * pg.w;
                window[dst + q0..dst + q1].copy_from_slice(&dy[src + x0..src + x0 + (q1 - q0)]);
            }
        }
        out.clear();
        out.resize(a * pg.cols(), 0.0);
        conv_gemm(&[&window], pg, &ph.weights[group], &mut out, false);
        let [sy, sx] = g.stride;
        for c in 0..a {
            for y in 0..pg.oh {
                let row = &out[(c * pg.oh + y) * pg.ow..(c * pg.oh + y + 1) * pg.ow];
                let at = (c * g.h + sy * y + ph.at[0]) * g.w + ph.at[1];
                for (x, v) in row.iter().enumerate() {
                    dx[at + sx * x] += v;
                }
            }
        }
    }
}

/// The standard-layout values of an array, as a slice.
fn values(a: &Array) -> std::borrow::Cow<'_, [f32]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

/// The four dimensions of an image batch or a convolution weight.
fn dims4(v: &Var) -> [usize; 4] {
    let shape = v.shape();
    assert_eq!(shape.len(), 4, "a convolution takes 4-D tensors");
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The images `r` of a batch of `size`-value images.
fn images<'x>(xs: &'x [f32], r: &Range<usize>, size: usize) -> &'x [f32] {
    &xs[r.start * size..r.end * size]
}

impl Var {
    /// `x [N, C, H, W] * w [O, C/groups, kh, kw] -> [N, O, OH, OW]`.
    ///
    /// Images are split across threads; each image is unfolded (im2col) into a buffer that
    /// stays in cache and multiplied by the weight with a single-threaded sgemm. The backward
    /// pass unfolds again rather than keeping the column matrices, which saves memory.
    pub fn conv2d(&self, w: &Var, o: ConvOptions) -> Var {
        self.conv2d_then(w, o, None)
    }

    /// [`Var::conv2d`], with `act` applied to its output inside the op when given.
    fn conv2d_then(&self, w: &Var, o: ConvOptions, act: Option<Activation>) -> Var {
        let ([out_c, cg, kh, kw], [n, c, h, wd]) = (dims4(w), dims4(self));
        let groups = o.groups;
        assert!(
            c == cg * groups && out_c % groups == 0,
            "conv2d: channels do not match the weight and groups"
        );
        let geom = ConvGeom::new(cg, (h, wd), (kh, kw), o.stride, o.padding, o.dilation);
        let k = Lowered::new(geom, w, out_c / groups, groups);
        let (oh, ow) = (k.geom.oh, k.geom.ow);
        apply(self, w, k, false, [n, out_c, oh, ow], act)
    }

    /// `leaky_relu(conv2d(x, w) + b, slope)` (`b`: one value per output channel) as one op:
    /// the bias and the activation are applied to each part of the output right after the
    /// convolution writes it, and the backward pass takes the activation's derivative from
    /// the output, so neither the sum nor the activation is a tensor of its own (two passes
    /// over the output and two allocations fewer each way). `slope` 0 is a ReLU.
    pub fn conv2d_bias_leaky_relu(&self, w: &Var, b: &Var, slope: f32, o: ConvOptions) -> Var {
        assert!(
            slope >= 0.0,
            "conv2d_bias_leaky_relu: a slope of at least 0"
        );
        let act = Activation {
            bias: b.clone(),
            slope,
        };
        self.conv2d_then(w, o, Some(act))
    }

    /// `x [N, C_in, H, W]`, `w [C_in, C_out/groups, kh, kw]` -> `[N, C_out, H', W']` with
    /// `H' = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1`.
    ///
    /// The adjoint of [`Var::conv2d`]: per image, `col = W^T x` then col2im, split across
    /// threads by image like the convolution.
    pub fn conv_transpose2d(&self, w: &Var, o: ConvOptions) -> Var {
        let ([wc_in, cog, kh, kw], [n, c_in, h, wd]) = (dims4(w), dims4(self));
        let groups = o.groups;
        assert!(
            wc_in == c_in && c_in % groups == 0,
            "conv_transpose2d: channels do not match the weight"
        );
        let size = |i: usize, k: usize, a: usize| {
            (i - 1) * o.stride[a] + o.dilation[a] * (k - 1) + o.output_padding[a] + 1
                - 2 * o.padding[a]
        };
        let (oh, ow) = (size(h, kh, 0), size(wd, kw, 1));
        // The conv whose input is our output and whose output is our input.
        let geom = ConvGeom::new(cog, (oh, ow), (kh, kw), o.stride, o.padding, o.dilation);
        let k = Lowered::new(geom, w, c_in / groups, groups);
        assert_eq!(
            (k.geom.oh, k.geom.ow),
            (h, wd),
            "conv_transpose2d: inconsistent geometry"
        );
        apply(self, w, k, true, [n, cog * groups, oh, ow], None)
    }
}

/// `y = K x` (a convolution) or `y = K^T x` (`transposed`), with its gradients: `dx` is the
/// other direction applied to `dy`, `dW` pairs the A side (x, or dy when transposed) with the
/// B side.
/// A bias and a leaky ReLU applied to a convolution's output inside the op
/// ([`Var::conv2d_bias_leaky_relu`]).
struct Activation {
    bias: Var,
    slope: f32,
}

fn apply(
    x: &Var,
    w: &Var,
    k: Lowered,
    transposed: bool,
    y_shape: [usize; 4],
    act: Option<Activation>,
) -> Var {
    let (wshape, xshape) = (w.value().raw_dim(), x.value().raw_dim());
    let n = xshape[0];
    let (x_size, y_size) = if transposed {
        (k.b_size(), k.a_size())
    } else {
        (k.a_size(), k.b_size())
    };
    let (channels, plane) = (y_shape[1], y_shape[2] * y_shape[3]);
    let y = {
        let xv = x.value();
        let xs = values(&xv);
        let bias: Option<(Vec<f32>, f32)> = act.as_ref().map(|a| {
            let b = a.bias.value();
            assert_eq!(b.len(), channels, "one bias per output channel");
            (b.iter().copied().collect(), a.slope)
        });
        k.images(n, y_size, 0, |r, ys, col, _| {
            let (xr, count) = (images(&xs, &r, x_size), r.len());
            match transposed {
                false => k.forward(xr, count, ys, col),
                true => k.adjoint(xr, count, ys, col),
            }
            // While this part of the output is still in cache.
            if let Some((bias, slope)) = &bias {
                for (i, row) in ys.chunks_mut(plane).enumerate() {
                    bias_leaky_relu(row, bias[i % channels], *slope);
                }
            }
        })
        .0
    };
    let y = Array::from_shape_vec(IxDyn(&y_shape), y).expect("sized");
    let input = x.clone();
    // The gradients of x and w from the output's.
    let grads = move |gy: &Array, needs: &[bool]| {
        let (gs, xv) = (values(gy), input.value());
        let xs = values(&xv);
        // A strided convolution's weight gradient is summed in its phase layout.
        let dw_len = match (needs[1], &k.s2d) {
            (false, _) => 0,
            (true, Some(s2d)) => s2d.weight_len(),
            (true, None) => wshape.size(),
        };
        let dx_size = if needs[0] { x_size } else { 0 };
        let (dx, parts) = k.images(n, dx_size, dw_len, |r, dxs, col, dw| {
            let (xr, gyr) = (images(&xs, &r, x_size), images(&gs, &r, y_size));
            let (a_imgs, b_imgs) = if transposed { (gyr, xr) } else { (xr, gyr) };
            if needs[1] {
                k.weight_grad(a_imgs, b_imgs, r.len(), dw, col);
            }
            match (needs[0], transposed) {
                (false, _) => {}
                (true, false) => k.adjoint(gyr, r.len(), dxs, col),
                (true, true) => k.forward(gyr, r.len(), dxs, col),
            }
        });
        let dx = needs[0].then(|| Array::from_shape_vec(xshape, dx).expect("sized"));
        let dw = needs[1].then(|| match &k.s2d {
            Some(s2d) => {
                let dwq = sum_parts(parts, IxDyn(&[s2d.weight_len()]));
                s2d.to_weight(&k.geom, dwq.as_slice().expect("standard layout"), wshape)
            }
            None => sum_parts(parts, wshape),
        });
        vec![dx, dw]
    };
    let Some(act) = act else {
        return Var::from_op(
            y,
            vec![x.clone(), w.clone()],
            Box::new(move |gy, needs| grads(&gy, needs)),
        );
    };
    let bias_shape = act.bias.value().raw_dim();
    Var::from_op_with_output(
        y,
        vec![x.clone(), w.clone(), act.bias],
        Box::new(move |mut gy, y, needs| {
            // The leaky ReLU's derivative from the output's sign (the same as the input's for
            // a positive slope; for slope 0, 0 where the output is 0), in place, image by
            // image on all threads, with each image's channel sums: the bias gradient.
            let slope = act.slope;
            let ys = values(y);
            if !gy.is_standard_layout() {
                gy = gy.as_standard_layout().into_owned();
            }
            let gs = gy.as_slice_mut().expect("standard layout");
            let sums = par_images(n, gs, y_size, |r, part| {
                let mut sum = vec![0.0f64; channels];
                let ys = &ys[r.start * y_size..r.end * y_size];
                for (i, (rows, yrows)) in part.chunks_mut(plane).zip(ys.chunks(plane)).enumerate() {
                    sum[i % channels] += leaky_relu_grad(rows, yrows, slope) as f64;
                }
                sum
            });
            let db = needs[2].then(|| {
                let mut total = vec![0.0f64; channels];
                for part in sums {
                    total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
                }
                let db = total.into_iter().map(|v| v as f32).collect();
                Array::from_shape_vec(bias_shape, db).expect("one value per channel")
            });
            let mut out = grads(&gy, needs);
            out.push(db);
            out
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::ConvOptions;
    use crate::gradcheck::check;
    use crate::ops::elementwise::spread;
    use crate::{Array, Var};
    use ndarray::array;

    #[test]
    fn fused_bias_and_leaky_relu_match_the_three_ops() {
        // The direct kernels (stride 1, wide rows), the phase path (stride 2), the packed
        // path (8-pixel rows), groups, and a plain ReLU (slope 0).
        for (n, c, h, o, k, opts, slope) in [
            (3, 16, 28, 32, 3, ConvOptions::default().padding(2), 0.1),
            (
                2,
                12,
                30,
                14,
                4,
                ConvOptions::default().padding(2).stride(2),
                0.1,
            ),
            (2, 8, 8, 16, 3, ConvOptions::default().padding(1), 0.2),
            (
                2,
                8,
                9,
                6,
                3,
                ConvOptions::default().padding(1).groups(2),
                0.0,
            ),
        ] {
            let x = spread(&[n, c, h, h], -1.0, 1.0, 1);
            let w = spread(&[o, c / opts.groups, k, k], -0.3, 0.3, 2);
            let b = spread(&[o], -0.5, 0.5, 3);
            let run = |fused: bool| {
                let (xv, wv, bv) = (
                    Var::parameter(x.clone()),
                    Var::parameter(w.clone()),
                    Var::parameter(b.clone()),
                );
                let y = match fused {
                    true => xv.conv2d_bias_leaky_relu(&wv, &bv, slope, opts),
                    false => xv
                        .conv2d(&wv, opts)
                        .channel_affine(None, &bv)
                        .leaky_relu(slope),
                };
                let proj = spread(&y.shape(), -1.0, 1.0, 4);
                let out = y.value().clone();
                y.mul(&Var::constant(proj)).sum().backward();
                [
                    out,
                    xv.grad().unwrap(),
                    wv.grad().unwrap(),
                    bv.grad().unwrap(),
                ]
            };
            let (fused, plain) = (run(true), run(false));
            for (what, (a, e)) in ["y", "dx", "dw", "db"].iter().zip(fused.iter().zip(&plain)) {
                assert_eq!(a.shape(), e.shape(), "{what}");
                let scale = e.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(e)
                    .fold(0.0f32, |m, (a, e)| m.max((a - e).abs()));
                assert!(
                    worst <= 1e-5 * scale,
                    "{what} of [{n}, {c}, {h}, {h}] * [{o}, {k}, {k}] {opts:?}: off by {worst} (scale {scale})"
                );
            }
        }
    }

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

    /// Checks a convolution's (or a transposed one's) gradients by finite differences.
    fn check_conv(what: &str, x: &Array, w: &Array, o: ConvOptions, transposed: bool) {
        check(what, &[x, w], move |v| match transposed {
            false => v[0].conv2d(&v[1], o),
            true => v[0].conv_transpose2d(&v[1], o),
        })
        .unwrap();
    }

    #[test]
    fn conv2d_gradients_with_stride_padding_dilation_groups() {
        let x = spread(&[2, 4, 7, 6], -1.0, 1.0, 10);
        let w = spread(&[6, 2, 3, 2], -1.0, 1.0, 11);
        let o = ConvOptions::default().groups(2).padding(1).stride(2);
        check_conv("conv2d groups", &x, &w, o, false);
        let w = spread(&[3, 4, 3, 3], -1.0, 1.0, 12);
        let o = ConvOptions::default().dilation(2).padding(2);
        check_conv("conv2d dilation", &x, &w, o, false);
    }

    #[test]
    fn conv_transpose2d_gradients_and_shape() {
        let x = spread(&[2, 4, 4, 3], -1.0, 1.0, 13);
        let w = spread(&[4, 3, 4, 4], -1.0, 1.0, 14);
        let o = ConvOptions::default().stride(2).padding(1);
        let y = Var::constant(x.clone()).conv_transpose2d(&Var::constant(w.clone()), o);
        assert_eq!(y.shape(), vec![2, 3, 8, 6]);
        check_conv("conv_transpose2d", &x, &w, o, true);
        let w = spread(&[4, 1, 3, 3], -1.0, 1.0, 15);
        let o = ConvOptions::default().groups(2).stride(2).output_padding(1);
        check_conv("conv_transpose2d groups", &x, &w, o, true);
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

    /// Forward, input gradient and weight gradient against the definition, summed in f64, on
    /// shapes large enough for every blocking edge of the kernels: more taps than one k
    /// block, output channels not a multiple of the register tile, pixels over several
    /// panels; stride 1 (whose input gradient is itself a convolution), stride 2, dilation
    /// and groups; small images, several to a matrix product.
    #[test]
    fn large_convolutions_match_the_definition() {
        // The fused kernels (x86-64 with AVX-512), then im2col and sgemm (every other machine).
        for fused in [true, false] {
            crate::kernels::set_fused(fused);
            large_convolutions_against_the_definition(fused);
        }
        crate::kernels::set_fused(true);
    }

    fn large_convolutions_against_the_definition(fused: bool) {
        for (n, c, h, o, k, opts) in [
            (2, 40, 13, 50, 3, ConvOptions::default().padding(1)),
            (
                2,
                20,
                12,
                20,
                4,
                ConvOptions::default().padding(2).stride(2),
            ),
            (
                1,
                24,
                11,
                18,
                3,
                ConvOptions::default().padding(3).dilation(2).groups(2),
            ),
            (3, 8, 30, 33, 5, ConvOptions::default().padding(2)),
            (
                2,
                16,
                15,
                12,
                3,
                ConvOptions::default().padding(1).stride(2),
            ),
            (2, 9, 14, 10, 5, ConvOptions::default().padding(1).stride(3)),
            (2, 16, 9, 12, 2, ConvOptions::default().stride(2).groups(2)),
            // Output rows of whole 16-pixel vectors: the direct kernel.
            (2, 12, 15, 20, 3, ConvOptions::default().padding(1)),
            (3, 10, 31, 9, 3, ConvOptions::default().padding(1)),
            (
                2,
                16,
                15,
                12,
                3,
                ConvOptions::default().padding(2).dilation(2),
            ),
            // Strided, as stride-1 convolutions of the input's phases (space to depth); with
            // stride 3 and a 5x5 kernel, phase taps past the kernel are zero.
            (
                2,
                12,
                30,
                14,
                4,
                ConvOptions::default().padding(2).stride(2),
            ),
            (
                1,
                8,
                40,
                6,
                5,
                ConvOptions::default().padding(1).stride(3).groups(2),
            ),
            // Small images, taken several at a time by the fused kernels.
            (5, 16, 4, 20, 3, ConvOptions::default().padding(1)),
            (6, 12, 5, 8, 3, ConvOptions::default().padding(1).groups(2)),
        ] {
            let g = opts.groups;
            let x = spread(&[n, c, h, h + 1], -1.0, 1.0, 21);
            let w = spread(&[o, c / g, k, k], -0.5, 0.5, 22);
            let (xv, wv) = (Var::parameter(x.clone()), Var::parameter(w.clone()));
            let y = xv.conv2d(&wv, opts);
            let ys = y.shape();
            let gy = spread(&ys, -1.0, 1.0, 23);
            y.mul(&Var::constant(gy.clone())).sum().backward();
            let (s, p, d) = (opts.stride[0], opts.padding[0] as isize, opts.dilation[0]);
            let mut want_y = ndarray::ArrayD::<f64>::zeros(ys.clone());
            let mut want_dx = ndarray::ArrayD::<f64>::zeros(x.raw_dim());
            let mut want_dw = ndarray::ArrayD::<f64>::zeros(w.raw_dim());
            let (cg, og) = (c / g, o / g);
            for ni in 0..n {
                for oc in 0..o {
                    for oy in 0..ys[2] {
                        for ox in 0..ys[3] {
                            let mut acc = 0.0f64;
                            for ci in 0..cg {
                                let xc = (oc / og) * cg + ci;
                                for i in 0..k {
                                    for j in 0..k {
                                        let yy = (oy * s + i * d) as isize - p;
                                        let xx = (ox * s + j * d) as isize - p;
                                        if yy < 0 || xx < 0 || yy >= h as isize || xx > h as isize {
                                            continue;
                                        }
                                        let xi = [ni, xc, yy as usize, xx as usize];
                                        let wi = [oc, ci, i, j];
                                        let gyv = gy[[ni, oc, oy, ox]] as f64;
                                        acc += x[xi] as f64 * w[wi] as f64;
                                        want_dx[xi] += gyv * w[wi] as f64;
                                        want_dw[wi] += gyv * x[xi] as f64;
                                    }
                                }
                            }
                            want_y[[ni, oc, oy, ox]] = acc;
                        }
                    }
                }
            }
            let close = |name: &str, got: &Array, want: &ndarray::ArrayD<f64>| {
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (a, b) in got.iter().zip(want) {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-5 * scale,
                        "{name} (c {c}, o {o}, k {k}, {opts:?}, fused kernels {fused}): {a} vs {b}"
                    );
                }
            };
            close("y", &y.value(), &want_y);
            close("dx", &xv.grad().expect("dx"), &want_dx);
            close("dw", &wv.grad().expect("dw"), &want_dw);
        }
    }

    /// A transposed convolution is the adjoint of a convolution, on shapes that take the
    /// fused paths (8 or more channels, stride 1 and 2): its value pairs with the
    /// convolution's (`<conv(x), y> = <x, conv_t(y)>`), its input gradient is the
    /// convolution of the output gradient, and its weight gradient the convolution's weight
    /// gradient with the two sides swapped.
    #[test]
    fn large_transposed_convolutions_are_adjoints() {
        for (c, o, h, k, opts) in [
            (
                16,
                24,
                9,
                4,
                ConvOptions::default()
                    .stride(2)
                    .padding(1)
                    .output_padding(1),
            ),
            (12, 8, 7, 3, ConvOptions::default().padding(1)),
            // Space to depth.
            (16, 12, 30, 4, ConvOptions::default().stride(2).padding(1)),
            (
                16,
                16,
                8,
                3,
                ConvOptions::default()
                    .stride(2)
                    .padding(1)
                    .output_padding(1)
                    .groups(2),
            ),
        ] {
            let x = spread(&[2, c, h, h], -1.0, 1.0, 31);
            let w = spread(&[o, c / opts.groups, k, k], -0.5, 0.5, 32);
            let conv = |x: &Var, w: &Var| x.conv2d(w, opts);
            let y = spread(
                &conv(&Var::constant(x.clone()), &Var::constant(w.clone())).shape(),
                -1.0,
                1.0,
                33,
            );
            // conv_t(y) with the same weight, and its gradients against z.
            let (yv, wv) = (Var::parameter(y.clone()), Var::parameter(w.clone()));
            let t = yv.conv_transpose2d(&wv, opts);
            assert_eq!(t.shape(), x.shape(), "{opts:?}");
            let z = spread(&t.shape(), -1.0, 1.0, 34);
            t.mul(&Var::constant(z.clone())).sum().backward();
            // The same quantities from the convolution.
            let (zv, w2) = (Var::parameter(z.clone()), Var::parameter(w.clone()));
            let cz = conv(&zv, &w2);
            cz.mul(&Var::constant(y.clone())).sum().backward();
            let close = |name: &str, a: &Array, b: &Array| {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!((p - q).abs() <= 2e-5 * scale, "{name} {opts:?}: {p} vs {q}");
                }
            };
            let cx = conv(&Var::constant(x.clone()), &Var::constant(w.clone()));
            let lhs: f64 = cx.value().iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let tx = Var::constant(y.clone()).conv_transpose2d(&Var::constant(w.clone()), opts);
            let rhs: f64 = tx.value().iter().zip(&x).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{opts:?}: {lhs} vs {rhs}"
            );
            close("dy", &yv.grad().expect("dy"), &cz.value());
            close("dw", &wv.grad().expect("dw"), &w2.grad().expect("dw"));
        }
    }
}
