//! int8 convolutions (u8 activations, i8 weights, u8 output, one group) on our own kernels
//! (AVX-512 VNNI on x86-64; on aarch64 `sdot`, or NEON without the dot product: [`aarch64`]),
//! with the requantization fused per output channel.
//!
//! tract 0.23.9 runs a quantized convolution as an int8 matrix product whose output pipeline
//! it interprets op by op for every 8x8 tile (on x86-64 its VNNI kernel is 256 bits wide),
//! and a per-channel requantization as separate passes over the i32 output (`Scale`,
//! `Reduce<Sum>`, `Min`, `Max`, ...). On an int8 EfficientNet-Lite0 its 1x1 convolutions took
//! as long as the float model's (12.6 against 13.0 ms), and per-channel weights made the
//! model 4.3x slower than float. [`rewrite`] replaces every quantized convolution of a
//! decluttered model that it covers (one group, u8 input and output, constant i8 weights
//! with zero points 0, constant scales; any kernel, stride, padding and dilation) by
//! [`QConv`] when the CPU has AVX-512 VNNI or is an aarch64 one; elsewhere tract's kernels
//! stay. (On aarch64 tract's own path was 6x slower than the float model.)
//!
//! What it computes, for output channel `o` and pixel `p`, is what ONNX's `QLinearConv`
//! defines: `y = clamp(round_half_even(acc * m[o]) + y0, 0, 255)` with
//! `acc = sum_k x[k, p] * w[o, k] + c[o]` over the taps `k` (input channel, kernel row and
//! column; a tap in the padding reads the input's zero point `x0`), where
//! `c[o] = bias[o] - x0 * sum_k w[o, k]` (the zero point taken out once per channel, not per
//! pixel) and `m[o] = x_scale * w_scale[o] / y_scale`. The integer sum is exact; `acc` is
//! converted to f32, multiplied by `m[o]`, `y0` added (both in f32, no fused multiply-add)
//! and the result clamped and rounded half to even: [`requantize`] is the scalar definition,
//! and the vector kernel gives the same bytes. tract requantizes with a fixed-point
//! multiplier, so its codes and ours can differ by one where a value falls near a half.
//!
//! The activations are packed once per image, four taps per 32-bit lane
//! (`[ceil(k / 4)][pixels][4]`), the layout `vpdpbusd` multiplies: for a 1x1 convolution
//! with stride 1 that is an interleave of the input channels, otherwise an im2col. A tile of
//! 4 output channels by 64 pixels keeps 16 accumulators in registers.

use std::fmt;
use std::sync::Arc;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use crate::graph::{concrete_shapes, per_channel, values};
use crate::Cpu;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Output channels per tile.
const ROWS: usize = 4;
/// Pixels per tile: four vectors of 16.
const COLS: usize = 64;

/// Where each tap of a convolution reads its input, when it is not a plain 1x1 (stride 1,
/// no padding).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Im2col {
    /// Input channels and plane.
    cin: usize,
    h: usize,
    w: usize,
    /// Kernel, strides, dilations, padding before (top, left).
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    /// Output plane.
    oh: usize,
    ow: usize,
    /// The input's zero point, what a tap in the padding reads.
    x0: u8,
}

impl Im2col {
    /// Packs one image's `[cin][h][w]` u8 activations as `[ceil(k / 4)][pixels, padded][4]`
    /// with `k = cin * kh * kw` taps in ONNX's kernel order, zeros past the last tap and
    /// pixel.
    fn pack(&self, x: &[u8], out: &mut [u8]) {
        let pixels = self.oh * self.ow;
        let stride = pixels.next_multiple_of(COLS) * 4;
        let taps = self.cin * self.kh * self.kw;
        out.fill(0);
        for t in 0..taps {
            let (ci, ky, kx) = (t / (self.kh * self.kw), t / self.kw % self.kh, t % self.kw);
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let dst = &mut out[(t / 4) * stride + t % 4..];
            // Output column `ox` reads input column `ox * sw + off`: within the row for
            // `lo <= ox < hi`, the padding (`x0`) elsewhere.
            let off = (kx * self.dw) as isize - self.pl as isize;
            let first = |bound: isize| match bound <= 0 {
                true => 0,
                false => (bound as usize).div_ceil(self.sw).min(self.ow),
            };
            let (lo, hi) = (first(-off), first(self.w as isize - off));
            let lo = lo.min(hi);
            for oy in 0..self.oh {
                let iy = (oy * self.sh + ky * self.dh) as isize - self.pt as isize;
                let d = &mut dst[4 * oy * self.ow..];
                let cell = |ox: usize| 4 * ox;
                if !(0..self.h as isize).contains(&iy) {
                    (0..self.ow).for_each(|ox| d[cell(ox)] = self.x0);
                    continue;
                }
                let r = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                (0..lo).for_each(|ox| d[cell(ox)] = self.x0);
                if lo < hi {
                    let from = (lo * self.sw) as isize + off;
                    let src = r[from as usize..].iter().step_by(self.sw);
                    for (y, &v) in d[cell(lo)..].iter_mut().step_by(4).zip(src).take(hi - lo) {
                        *y = v;
                    }
                }
                (hi..self.ow).for_each(|ox| d[cell(ox)] = self.x0);
            }
        }
    }
}

/// A quantized convolution of a u8 `[n, c, h, w]` (or `[c, h, w]`) tensor to u8, one group.
#[derive(Clone)]
pub struct QConv {
    /// Input and output shapes, with or without the batch axis (the output may drop a batch
    /// of one).
    input: TVec<usize>,
    output: TVec<usize>,
    /// `None` for a 1x1 convolution with stride 1 and no padding.
    im2col: Option<Im2col>,
    /// Taps (input channels times kernel positions), output channels, output pixels per
    /// image.
    k: usize,
    cout: usize,
    pixels: usize,
    /// `[cout / ROWS rounded up][k / 4 rounded up][ROWS][4]`: blocks of `ROWS` rows, in each
    /// the rows' four taps of one group side by side and the groups one after the other, so a
    /// tile reads its weights in one sequential pass; zeros past the last row and tap.
    weights: Arc<Vec<i8>>,
    /// `c[o]` and `m[o]` (see the module's comment), one per output channel.
    offset: Arc<Vec<i32>>,
    /// `c[o] + 128 * sum_k w[o, k]`: the offset of kernels that multiply `x - 128`.
    signed_offset: Arc<Vec<i32>>,
    scale: Arc<Vec<f32>>,
    /// The output's zero point.
    y0: u8,
    /// What the kernel may use: AVX-512 VNNI or aarch64 NEON (only then is the op made).
    cpu: Cpu,
}

impl PartialEq for QConv {
    fn eq(&self, other: &QConv) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (&self.input, &self.output) == (&other.input, &other.output)
            && (self.k, self.cout, self.pixels, self.y0)
                == (other.k, other.cout, other.pixels, other.y0)
            && self.im2col == other.im2col
            && self.weights == other.weights
            && self.offset == other.offset
            && self.signed_offset == other.signed_offset
            && bits(&self.scale) == bits(&other.scale)
    }
}

impl Eq for QConv {}

impl fmt::Debug for QConv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QConv({:?}: {} taps -> {} channels, {} pixels, y0 {}, {:?})",
            self.input, self.k, self.cout, self.pixels, self.y0, self.im2col
        )
    }
}

/// Whether `cpu` has what the kernel needs.
pub fn available(cpu: Cpu) -> bool {
    cpu.avx512_vnni() || cpu.neon()
}

pub use crate::reference::requantize;

/// Length of the packed activations of one image: `ceil(k / 4)` groups of `pixels` rounded
/// up to a whole tile, 4 bytes each.
fn packed_len(k: usize, pixels: usize) -> usize {
    k.div_ceil(4) * pixels.next_multiple_of(COLS) * 4
}

/// How far the per-architecture `interleave4` may go: `pixels`, and as far as every row and
/// `group` (four bytes a pixel) hold.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn interleave_reach(rows: &[&[u8]; 4], pixels: usize, group: &[u8]) -> usize {
    rows.iter()
        .map(|r| r.len())
        .fold(pixels.min(group.len() / 4), usize::min)
}

/// Packs one image's `[k][pixels]` u8 activations as `[ceil(k / 4)][pixels, padded][4]`:
/// four input channels side by side per pixel, zeros past the last channel and pixel.
fn pack(x: &[u8], k: usize, pixels: usize, out: &mut [u8]) {
    let stride = pixels.next_multiple_of(COLS);
    for (q, group) in out.chunks_exact_mut(stride * 4).enumerate() {
        let row = |t: usize| {
            let c = 4 * q + t;
            (c < k).then(|| &x[c * pixels..(c + 1) * pixels])
        };
        let rows = [row(0), row(1), row(2), row(3)];
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut p = 0;
        #[cfg(target_arch = "aarch64")]
        if let [Some(a), Some(b), Some(c), Some(d)] = rows {
            p = aarch64::interleave4([a, b, c, d], pixels, group);
        }
        #[cfg(target_arch = "x86_64")]
        if let [Some(a), Some(b), Some(c), Some(d)] = rows {
            p = x86_64::interleave4([a, b, c, d], pixels, group);
        }
        for p in p..stride {
            for (t, r) in rows.iter().enumerate() {
                group[4 * p + t] = match r {
                    Some(r) if p < pixels => r[p],
                    _ => 0,
                };
            }
        }
    }
}

/// Where a tile's inputs and outputs are. `out` points at row `first` of this chunk's
/// output, pixel `p0`; rows of the tile at and past `rows` are computed and not stored.
// Read only by the vector kernels (and the tests).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
struct Tile<'a> {
    /// Packed activations at the tile's first pixel; groups `stride` bytes apart.
    x: &'a [u8],
    stride: usize,
    groups: usize,
    /// The tile's weights: group `q` of row `r` at `q * wstride + 4 * r` (4 bytes; the op
    /// keeps a block's rows of one group side by side, `wstride = 4 * ROWS`, so that a tile's
    /// `ROWS` rows of one group are one 16-byte load and its groups follow each other).
    w: &'a [i8],
    wstride: usize,
    offset: [i32; ROWS],
    scale: [f32; ROWS],
    y0: u8,
    rows: usize,
    cols: usize,
}

/// The plain definition of a tile, for the tests: `out[r][p]` for the valid rows and pixels.
#[cfg(test)]
fn tile_plain(t: &Tile, out: &mut [Vec<u8>]) {
    for (r, row) in out.iter_mut().enumerate().take(t.rows) {
        for (p, y) in row.iter_mut().enumerate().take(t.cols) {
            let mut acc = t.offset[r];
            for q in 0..t.groups {
                for l in 0..4 {
                    let x = t.x[q * t.stride + 4 * p + l] as i32;
                    acc += x * t.w[q * t.wstride + 4 * r + l] as i32;
                }
            }
            *y = requantize(acc, t.scale[r], t.y0);
        }
    }
}

impl QConv {
    fn images(&self) -> usize {
        if self.input.len() == 4 {
            self.input[0]
        } else {
            1
        }
    }

    /// Convolves one image: `x` `[k][pixels]`, `packed` its packed form, into `out`
    /// `[cout][pixels]`.
    fn image(&self, packed: &[u8], out: &mut [u8]) -> TractResult<()> {
        let (pixels, groups) = (self.pixels, self.k.div_ceil(4));
        let stride = pixels.next_multiple_of(COLS) * 4;
        // What the tile's unchecked reads rely on, checked here whatever built the op.
        ensure!(available(self.cpu), "QConv needs AVX-512 VNNI or NEON");
        // Blocks of `ROWS` rows (the last padded with zeros), a block's groups one after the
        // other, `wstride` bytes each: the tile at block `o / ROWS` reads
        // `groups * wstride` bytes from `o / ROWS * groups * wstride`.
        let wstride = 4 * ROWS;
        let block = groups
            .checked_mul(wstride)
            .context("QConv geometry overflows")?;
        let weights = self
            .cout
            .div_ceil(ROWS)
            .checked_mul(block)
            .context("QConv geometry overflows")?;
        ensure!(
            packed.len() >= packed_len(self.k, pixels)
                && self.weights.len() >= weights
                && self.offset.len() >= self.cout
                && self.signed_offset.len() >= self.cout
                && self.scale.len() >= self.cout
                && out.len() == self.cout * pixels,
            "QConv buffers too short"
        );
        // Rows `first..` of the output in `chunk`, `first` a multiple of `ROWS` (every tile
        // starts at a block of weights).
        let rows_from = |first: usize, chunk: &mut [u8]| -> TractResult<()> {
            let rows = chunk.len() / pixels;
            for p0 in (0..pixels).step_by(COLS) {
                // Without a kernel (armv7) the loop's body only fails.
                #[cfg_attr(
                    not(any(target_arch = "x86_64", target_arch = "aarch64")),
                    allow(clippy::never_loop)
                )]
                for r0 in (0..rows).step_by(ROWS) {
                    let o = first + r0;
                    let mut tile = Tile {
                        x: &packed[4 * p0..],
                        stride,
                        groups,
                        w: &self.weights[o / ROWS * block..],
                        wstride,
                        offset: [0; ROWS],
                        scale: [0.0; ROWS],
                        y0: self.y0,
                        rows: (rows - r0).min(ROWS),
                        cols: (pixels - p0).min(COLS),
                    };
                    // The aarch64 kernels multiply `x - 128` (see [`aarch64`]).
                    let offset = match cfg!(target_arch = "aarch64") {
                        true => &self.signed_offset,
                        false => &self.offset,
                    };
                    for r in 0..tile.rows {
                        tile.offset[r] = offset[o + r];
                        tile.scale[r] = self.scale[o + r];
                    }
                    let base = chunk.as_mut_ptr();
                    let out: [*mut u8; ROWS] = std::array::from_fn(|r| {
                        // Rows past `tile.rows` are never written: point them at row 0.
                        let r = if r < tile.rows { r0 + r } else { r0 };
                        // SAFETY: row `r` of the chunk exists; `p0 < pixels`.
                        unsafe { base.add(r * pixels + p0) }
                    });
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: checked above: `self.cpu`, so the CPU, has AVX-512 VNNI; the tile's
                    // slices and rows have the lengths `x86_64::tile_vnni` reads and writes (the
                    // packed groups are padded to whole tiles, the weights to whole
                    // tiles of rows).
                    unsafe {
                        x86_64::tile_vnni(&tile, out)
                    };
                    #[cfg(target_arch = "aarch64")]
                    // SAFETY: checked above: `self.cpu`, so the CPU, has NEON, and the dot
                    // product where `dotprod()` says; the lengths are as for x86-64; `packed`
                    // was made signed in `eval`.
                    unsafe {
                        if self.cpu.dotprod() {
                            aarch64::tile_dotprod(&tile, out)
                        } else {
                            aarch64::tile_neon(&tile, out)
                        }
                    };
                    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
                    {
                        let _ = (tile, out);
                        bail!("QConv needs AVX-512 VNNI or NEON");
                    }
                }
            }
            Ok(())
        };
        // The threads take whole blocks of rows; the last rows (fewer than `ROWS`) after them.
        let whole = self.cout / ROWS * ROWS * pixels;
        let (blocks, rest) = out.split_at_mut(whole);
        if !blocks.is_empty() {
            let work = whole * self.k;
            tract_linalg::multithread::par_chunks_mut(blocks, ROWS * pixels, work, |b, chunk| {
                rows_from(b * ROWS, chunk)
            })?;
        }
        if !rest.is_empty() {
            rows_from(self.cout / ROWS * ROWS, rest)?;
        }
        Ok(())
    }
}

crate::graph::kernel_op!(QConv, "MsnQConv", Rounding);

impl EvalOp for QConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<u8>()?;
        let (n, k, pixels) = (self.images(), self.k, self.pixels);
        let image = self.input[self.input.len() - 3..].iter().product::<usize>();
        ensure!(x.len() == n * image, "QConv input has the wrong size");
        let mut y = crate::split::output_u8(&self.output)?;
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<u8>()?;
        let mut packed = vec![0u8; packed_len(k, pixels)];
        for (x, out) in x
            .chunks_exact(image)
            .zip(out.chunks_exact_mut(self.cout * pixels))
        {
            match &self.im2col {
                Some(g) => g.pack(x, &mut packed),
                None => pack(x, k, pixels, &mut packed),
            }
            #[cfg(target_arch = "aarch64")]
            aarch64::to_signed(&mut packed);
            self.image(&packed, out)?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == u8::datum_type());
        Ok(tvec!(u8::fact(self.output.clone())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs = self.images() * self.cout * self.pixels * self.k;
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs.into())))
    }

    as_op!();
}

/// The op that replaces `node`, if it is a quantized convolution this kernel covers: either
/// the `EinSum` tract's declutter makes of a 1x1 one ([`lower_einsum`]) or a `Conv`
/// ([`lower_conv`]).
fn lower(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> Option<QConv> {
    let op = lower_einsum(model, node).or_else(|| lower_conv(model, node))?;
    Some(QConv { cpu, ..op })
}

/// The input and output shapes of a node whose first input and output are u8.
fn u8_shapes(model: &TypedModel, node: &TypedNode) -> Option<(TVec<usize>, TVec<usize>)> {
    let x = model.outlet_fact(*node.inputs.first()?).ok()?;
    if x.datum_type != u8::datum_type() || node.outputs.first()?.fact.datum_type != u8::datum_type()
    {
        return None;
    }
    concrete_shapes(model, node)
}

/// A 1x1 convolution with stride 1 and no padding, as tract declutters it: an `EinSum`
/// `IHW,OI,O,,,O,O,,->OHW` (with `N` in front with a batch axis; scalar bias and weight
/// parameters have no axis).
fn lower_einsum(model: &TypedModel, node: &TypedNode) -> Option<QConv> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params != Some(u8::datum_type()) || node.inputs.len() != 9 {
        return None;
    }
    let (input, output) = u8_shapes(model, node)?;
    let weights = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let &[cout, k] = weights.shape() else {
        return None;
    };
    let o = |rank: usize| if rank == 1 { "O" } else { "" };
    let rank = |i: usize| {
        model
            .outlet_fact(node.inputs[i])
            .map(|f| f.rank())
            .unwrap_or(9)
    };
    let (bias, k0, ks) = (o(rank(2)), o(rank(5)), o(rank(6)));
    // With a batch axis on both sides, or dropped from the output (a batch of one).
    let (n_in, n_out) = match (input.len(), output.len()) {
        (3, 3) => ("", ""),
        (4, 4) => ("N", "N"),
        (4, 3) if input[0] == 1 => ("N", ""),
        _ => return None,
    };
    let expected = format!("{n_in}IHW,OI,{bias},,,{k0},{ks},,->{n_out}OHW");
    let pixels = input[input.len() - 2] * input[input.len() - 1];
    if op.axes.to_string() != expected
        || input[input.len() - 3] != k
        || output[output.len() - 2] * output[output.len() - 1] != pixels
    {
        return None;
    }
    build(model, node, (input, output), (k, cout, pixels), None)
}

/// A quantized `Conv` of one group on NCHW (or CHW) with a constant OIHW kernel.
fn lower_conv(model: &TypedModel, node: &TypedNode) -> Option<QConv> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    if conv.q_params != Some(u8::datum_type())
        || node.inputs.len() != 9
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
    {
        return None;
    }
    let (input, output) = u8_shapes(model, node)?;
    let batch = spec.data_format == DataFormat::NCHW;
    let [n, cin, h, w] = match (batch, &input[..]) {
        (true, &[n, c, h, w]) => [n, c, h, w],
        (false, &[c, h, w]) => [1, c, h, w],
        _ => return None,
    };
    let weights = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let &[cout, wc, kh, kw] = weights.shape() else {
        return None;
    };
    let pads = spec.computed_padding(&[h, w]);
    let (strides, dilations) = (spec.strides(), spec.dilations());
    let g = Im2col {
        cin,
        h,
        w,
        kh,
        kw,
        sh: strides[0],
        sw: strides[1],
        dh: dilations[0],
        dw: dilations[1],
        pt: pads[0].pad_before,
        pl: pads[1].pad_before,
        oh: pads[0].convoluted,
        ow: pads[1].convoluted,
        x0: 0,
    };
    let expected: TVec<usize> = if batch {
        tvec![n, cout, g.oh, g.ow]
    } else {
        tvec![cout, g.oh, g.ow]
    };
    if wc != cin || output != expected || n == 0 || g.oh * g.ow == 0 || cin * kh * kw == 0 {
        return None;
    }
    let (k, pixels) = (cin * kh * kw, g.oh * g.ow);
    build(model, node, (input, output), (k, cout, pixels), Some(g))
}

/// The op, from the node's constant weights `[cout, k]` (any trailing kernel axes) and its
/// quantization parameters (inputs 2 to 8: bias, x0, x_scale, w0, w_scale, y0, y_scale).
fn build(
    model: &TypedModel,
    node: &TypedNode,
    (input, output): (TVec<usize>, TVec<usize>),
    (k, cout, pixels): (usize, usize, usize),
    mut im2col: Option<Im2col>,
) -> Option<QConv> {
    if k == 0 || cout == 0 || pixels == 0 || output[output.len() - 3] != cout {
        return None;
    }
    let w = values::<i8>(model, node.inputs[1])?;
    let bias = per_channel(values::<i32>(model, node.inputs[2])?, cout)?;
    let x0 = values::<i32>(model, node.inputs[3])?;
    let x_scale = values::<f32>(model, node.inputs[4])?;
    let k0 = values::<i32>(model, node.inputs[5])?;
    let k_scale = per_channel(values::<f32>(model, node.inputs[6])?, cout)?;
    let y0 = values::<i32>(model, node.inputs[7])?;
    let y_scale = values::<f32>(model, node.inputs[8])?;
    let (&[x0], &[x_scale], &[y0], &[y_scale]) = (&x0[..], &x_scale[..], &y0[..], &y_scale[..])
    else {
        return None;
    };
    if w.len() != cout * k
        || k0.iter().any(|&z| z != 0)
        || !(0..=255).contains(&y0)
        || !(0..=255).contains(&x0)
    {
        return None;
    }
    if let Some(g) = &mut im2col {
        g.x0 = x0 as u8;
    }
    // The products' sum is at most `k * 255 * 128` in size; `c` is kept within what leaves
    // room for it in an i32. A bias beyond that (a quantizer saturates a channel's bias when
    // its weight scale is tiny) is clamped, where tract's and onnxruntime's i32 sums wrap.
    let room = i32::MAX as i64 - k as i64 * 255 * 128;
    if room < i32::MAX as i64 / 2 {
        return None;
    }
    let groups = k.div_ceil(4);
    // Blocks of `ROWS` rows ([`QConv::weights`]); the last block's missing rows are zeros.
    let wstride = 4 * ROWS;
    let block = groups * wstride;
    let mut weights = vec![0i8; cout.div_ceil(ROWS) * block];
    let mut offset = Vec::with_capacity(cout);
    let mut signed_offset = Vec::with_capacity(cout);
    let mut scale = Vec::with_capacity(cout);
    for o in 0..cout {
        let row = &w[o * k..(o + 1) * k];
        let (whole, last) = row.split_at(k / 4 * 4);
        for (q, taps) in whole.chunks_exact(4).enumerate() {
            let at = o / ROWS * block + q * wstride + 4 * (o % ROWS);
            weights[at..at + 4].copy_from_slice(taps);
        }
        if !last.is_empty() {
            let at = o / ROWS * block + k / 4 * wstride + 4 * (o % ROWS);
            weights[at..at + last.len()].copy_from_slice(last);
        }
        let sum: i64 = row.iter().map(|&v| v as i64).sum();
        let c = (bias[o] as i64 - x0 as i64 * sum).clamp(-room, room);
        offset.push(c as i32);
        // `|128 * sum| <= 128 * 128 * k`, within the room's margin of `255 * 128 * k`.
        signed_offset.push((c + 128 * sum) as i32);
        let m = x_scale * k_scale[o] / y_scale;
        // A channel whose weights are all zero may have a zero scale.
        if !m.is_finite() || m < 0.0 {
            return None;
        }
        scale.push(m);
    }
    Some(QConv {
        input,
        output,
        im2col,
        k,
        cout,
        pixels,
        weights: Arc::new(weights),
        offset: Arc::new(offset),
        signed_offset: Arc::new(signed_offset),
        scale: Arc::new(scale),
        y0: y0 as u8,
        cpu: Cpu::GENERIC,
    })
}

/// Replaces every quantized convolution [`QConv`] covers in a decluttered model, when
/// this CPU runs its kernel; returns how many.
pub fn rewrite(model: &mut TypedModel, cpu: Cpu) -> TractResult<usize> {
    if !available(cpu) {
        return Ok(0);
    }
    let found: Vec<(usize, QConv)> = model
        .nodes
        .iter()
        .filter_map(|node| lower(model, node, cpu).map(|op| (node.id, op)))
        .collect();
    for (id, op) in &found {
        let node = &model.nodes[*id];
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, op.clone(), &[x])?;
        patch.shunt_outside(model, OutletId::new(*id, 0), y[0])?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Plan, Source};
    use msn_onnx::builder::{attr, GraphBuilder};
    use msn_onnx::proto::tensor_proto::DataType;

    /// A reproducible stream of pseudo-random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn packing_puts_four_channels_side_by_side() {
        let mut rng = Rng(3);
        for k in [1, 3, 4, 5, 8, 13] {
            for pixels in [1, 15, 16, 17, 63, 64, 100, 130] {
                let x = rng.bytes(k * pixels);
                let mut out = vec![7u8; packed_len(k, pixels)];
                pack(&x, k, pixels, &mut out);
                let stride = pixels.next_multiple_of(COLS);
                for q in 0..k.div_ceil(4) {
                    for p in 0..stride {
                        for t in 0..4 {
                            let c = 4 * q + t;
                            let want = if c < k && p < pixels {
                                x[c * pixels + p]
                            } else {
                                0
                            };
                            assert_eq!(
                                out[(q * stride + p) * 4 + t],
                                want,
                                "k {k} pixels {pixels}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The vector tile gives the scalar definition's bytes, over ragged tiles, offsets that
    /// push the sums past f32's exact integers, and scales that clamp at both ends.
    #[test]
    fn tiles_match_the_definition() {
        let cpu = crate::cpu::get();
        if !available(cpu) {
            eprintln!(
                "SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX-512 VNNI or NEON"
            );
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if !cpu.dotprod() {
            eprintln!("SKIPPED: the sdot tile (the CPU level in force has no dot product)");
        }
        let mut rng = Rng(11);
        for groups in [1, 2, 7, 40, 288] {
            for (rows, cols) in [(4, 64), (1, 1), (3, 15), (2, 16), (4, 17), (4, 63), (1, 48)] {
                let stride = COLS * 4 * 2;
                let x = rng.bytes(groups * stride);
                // A tile of the op's rows 1 to 4 of 6 (`wstride` 4 * 6).
                let wstride = 4 * (ROWS + 2);
                let w: Vec<i8> = rng
                    .bytes(wstride * groups)
                    .iter()
                    .map(|&b| b as i8)
                    .collect();
                let offset: [i32; ROWS] =
                    std::array::from_fn(|_| (rng.next() % 40_000_000) as i32 - 20_000_000);
                let scale: [f32; ROWS] = std::array::from_fn(|r| {
                    [1e-5, 3.7e-4, 0.0213, 0.0][r] * (1.0 + (rng.next() % 100) as f32 / 100.0)
                });
                let tile = Tile {
                    x: &x,
                    stride,
                    groups,
                    w: &w[4..],
                    wstride,
                    offset,
                    scale,
                    y0: (rng.next() % 256) as u8,
                    rows,
                    cols,
                };
                let mut want = vec![vec![0u8; COLS]; ROWS];
                tile_plain(&tile, &mut want);
                let mut got = vec![vec![0u8; COLS]; ROWS];
                let out: [*mut u8; ROWS] = std::array::from_fn(|r| got[r].as_mut_ptr());
                // SAFETY: `available()`; the slices have the lengths the tile reads and
                // writes.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86_64::tile_vnni(&tile, out)
                };
                #[cfg(target_arch = "aarch64")]
                {
                    // The aarch64 kernels take `x - 128` and the offsets that make up for it.
                    let mut xs = x.clone();
                    aarch64::to_signed(&mut xs);
                    let signed = Tile {
                        x: &xs,
                        offset: std::array::from_fn(|r| {
                            let row = (0..groups).flat_map(|q| {
                                let at = 4 + q * wstride + 4 * r;
                                w[at..at + 4].iter().map(|&v| v as i32)
                            });
                            offset[r] + 128 * row.sum::<i32>()
                        }),
                        ..tile
                    };
                    // SAFETY: as for x86-64; NEON is the aarch64 baseline; `sdot` only
                    // where the CPU has it.
                    unsafe { aarch64::tile_neon(&signed, out) };
                    assert_eq!(got, want, "NEON: groups {groups} rows {rows} cols {cols}");
                    if cpu.dotprod() {
                        got.iter_mut().for_each(|r| r.fill(0));
                        let out: [*mut u8; ROWS] = std::array::from_fn(|r| got[r].as_mut_ptr());
                        // SAFETY: as above, and the CPU has the dot product.
                        unsafe { aarch64::tile_dotprod(&signed, out) };
                    }
                }
                assert_eq!(got, want, "groups {groups} rows {rows} cols {cols}");
            }
        }
    }

    #[test]
    fn requantize_rounds_half_to_even_and_saturates() {
        assert_eq!(requantize(5, 0.5, 0), 2); // 2.5
        assert_eq!(requantize(7, 0.5, 0), 4); // 3.5
        assert_eq!(requantize(-7, 0.5, 10), 6); // -3.5 + 10
        assert_eq!(requantize(1000, 1.0, 0), 255);
        assert_eq!(requantize(-1000, 1.0, 200), 0);
        assert_eq!(requantize(i32::MAX, 1.0, 0), 255);
        assert_eq!(requantize(i32::MIN, 1.0, 255), 0);
    }

    /// A convolution's kernel, strides, pads (top, left, bottom, right) and dilations.
    type Kernel = ((usize, usize), (usize, usize), [usize; 4], (usize, usize));

    const ONE: Kernel = ((1, 1), (1, 1), [0; 4], (1, 1));

    /// `x` (f32, `[n, k, h, w]`) -> QuantizeLinear -> a QLinearConv to `cout` channels
    /// (weights per channel or per tensor) -> DequantizeLinear.
    fn graph(
        n: usize,
        k: usize,
        cout: usize,
        (h, w): (usize, usize),
        per_channel: bool,
        ((kh, kw), (sh, sw), pads, (dh, dw)): Kernel,
    ) -> Source {
        grouped(
            n,
            (k, 1),
            cout,
            (h, w),
            per_channel,
            ((kh, kw), (sh, sw), pads, (dh, dw)),
        )
    }

    /// [`graph`] with `k` input channels in `groups` groups.
    fn grouped(
        n: usize,
        (k, groups): (usize, usize),
        cout: usize,
        (h, w): (usize, usize),
        per_channel: bool,
        ((kh, kw), (sh, sw), pads, (dh, dw)): Kernel,
    ) -> Source {
        let mut rng = Rng((n * 1000 + k * 100 + cout + h + kh * 7 + sw + groups) as u64);
        let taps = k / groups * kh * kw;
        let mut b = GraphBuilder::new("q1x1");
        let x = b.input("x", &[n as i64, k as i64, h as i64, w as i64]);
        let f32s = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        let xs = b.initializer_raw("xs", DataType::Float, &[], f32s(&[0.02]));
        let x0 = b.initializer_raw("x0", DataType::Uint8, &[], vec![121]);
        let q = b.node("QuantizeLinear", &[&x, &xs, &x0], "xq", &[]);
        let weights: Vec<u8> = rng.bytes(cout * taps);
        let wq = b.initializer_raw("w", DataType::Int8, &[cout, k / groups, kh, kw], weights);
        let ws: Vec<f32> = (0..cout)
            .map(|o| (0.004 + 0.003 * ((o * 7) % 5) as f32) * 4.0 / (taps as f32).sqrt())
            .collect();
        let ws = if per_channel { ws } else { ws[..1].to_vec() };
        let dims: &[usize] = if per_channel { &[cout] } else { &[] };
        let wsn = b.initializer_raw("ws", DataType::Float, dims, f32s(&ws));
        let w0 = b.initializer_raw("w0", DataType::Int8, dims, vec![0; ws.len()]);
        let bias: Vec<u8> = (0..cout)
            .flat_map(|o| ((o as i32 - 3) * 517).to_le_bytes())
            .collect();
        let bias = b.initializer_raw("bias", DataType::Int32, &[cout], bias);
        let ys = b.initializer_raw("ys", DataType::Float, &[], f32s(&[0.05]));
        let y0 = b.initializer_raw("y0", DataType::Uint8, &[], vec![97]);
        let y = b.node(
            "QLinearConv",
            &[&q, &xs, &x0, &wq, &wsn, &w0, &ys, &y0, &bias],
            "yq",
            &[
                attr::ints("kernel_shape", &[kh as i64, kw as i64]),
                attr::ints("strides", &[sh as i64, sw as i64]),
                attr::ints("pads", &pads.map(|p| p as i64)),
                attr::ints("dilations", &[dh as i64, dw as i64]),
                attr::int("group", groups as i64),
            ],
        );
        let y = b.node("DequantizeLinear", &[&y, &ys, &y0], "y", &[]);
        let oh = (h + pads[0] + pads[2] - (kh - 1) * dh - 1) / sh + 1;
        let ow = (w + pads[1] + pads[3] - (kw - 1) * dw - 1) / sw + 1;
        b.output(&y, &[n as i64, cout as i64, oh as i64, ow as i64]);
        let model = b.into_model(13);
        Source::from_bytes(msn_onnx::io::to_bytes(&model)).unwrap()
    }

    /// Our plan against tract's own (its unoptimised plan) on random inputs: at most one
    /// output code apart (tract requantizes in fixed point), and few codes off at all.
    #[test]
    fn quantized_convolutions_match_tracts_own() {
        if !available(crate::cpu::get()) {
            eprintln!(
                "SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX-512 VNNI or NEON"
            );
            return;
        }
        let cases = [
            // 1x1 (EfficientNet-Lite0's expansions and projections).
            (1, 16, 96, (28, 28), true, ONE),
            (1, 16, 96, (28, 28), false, ONE),
            (1, 3, 5, (7, 9), true, ONE),
            (2, 37, 10, (13, 11), true, ONE),
            (1, 96, 24, (14, 14), false, ONE),
            (1, 320, 64, (7, 7), true, ONE),
            (3, 5, 4, (1, 1), false, ONE),
            // Lite0's stem, ResNet's 3x3 and 7x7 and strided 1x1, a 4x4 stride 2 (cnn3),
            // dilation, uneven kernels and strides, a kernel as large as the image.
            (
                1,
                3,
                32,
                (64, 64),
                true,
                ((3, 3), (2, 2), [0, 0, 1, 1], (1, 1)),
            ),
            (1, 64, 64, (14, 14), true, ((3, 3), (1, 1), [1; 4], (1, 1))),
            (1, 3, 16, (40, 40), false, ((7, 7), (2, 2), [3; 4], (1, 1))),
            (2, 64, 128, (14, 14), true, ((1, 1), (2, 2), [0; 4], (1, 1))),
            (1, 1, 16, (28, 28), true, ((4, 4), (2, 2), [1; 4], (1, 1))),
            (1, 6, 9, (17, 13), true, ((3, 3), (1, 1), [2; 4], (2, 2))),
            (
                2,
                5,
                7,
                (11, 16),
                false,
                ((5, 3), (3, 2), [2, 1, 0, 1], (1, 1)),
            ),
            (1, 4, 6, (5, 5), true, ((5, 5), (1, 1), [0; 4], (1, 1))),
        ];
        for (n, k, cout, hw, per_channel, kernel) in cases {
            let source = graph(n, k, cout, hw, per_channel, kernel);
            let what = format!("n{n} k{k} cout{cout} {hw:?} per channel {per_channel} {kernel:?}");
            check(&source, "MsnQConv", &what);
        }
    }

    /// An int8 model's depthwise convolutions in QLinearConv, on our float depthwise kernel
    /// between a dequantize and a quantize (any CPU).
    #[test]
    fn quantized_depthwise_convolutions_match_tracts_own() {
        let cases = [
            (1, 32, (28, 28), true, ((3, 3), (1, 1), [1; 4], (1, 1))),
            (
                1,
                24,
                (21, 20),
                true,
                ((3, 3), (2, 2), [0, 0, 1, 1], (1, 1)),
            ),
            (2, 40, (14, 14), false, ((5, 5), (1, 1), [2; 4], (1, 1))),
            (1, 16, (7, 9), true, ((5, 5), (2, 2), [1, 1, 2, 2], (1, 1))),
        ];
        for (n, c, hw, per_channel, kernel) in cases {
            let source = grouped(n, (c, c), c, hw, per_channel, kernel);
            let what = format!("depthwise n{n} c{c} {hw:?} per channel {per_channel} {kernel:?}");
            check(&source, "MsnDirectConv", &what);
        }
    }

    /// Our plan (with `op` in it) against tract's own (its unoptimised plan) on random
    /// inputs: at most one output code apart (tract requantizes in fixed point), and few codes
    /// off at all.
    fn check(source: &Source, op: &str, what: &str) {
        let shapes = source.shapes();
        let ours = source.plan(&shapes, Plan::Optimized).unwrap();
        assert!(
            ours.ops().iter().any(|o| o == op),
            "{what}: not rewritten: {:?}",
            ours.ops()
        );
        let reference = source.plan(&shapes, Plan::Reference).unwrap();
        let mut rng = Rng(5);
        let len = shapes[0].iter().product::<usize>();
        let x: Vec<f32> = (0..len)
            .map(|_| (rng.next() % 10_000) as f32 / 10_000.0 * 5.0 - 2.5)
            .collect();
        let x = tract_onnx::prelude::Tensor::from_shape(&shapes[0], &x).unwrap();
        let a = ours.run(vec![x.clone()]).unwrap().remove(0);
        let b = reference.run(vec![x]).unwrap().remove(0);
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.try_as_plain_ram().unwrap(), b.try_as_plain_ram().unwrap());
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let codes: Vec<i32> = a
            .iter()
            .zip(b)
            .map(|(a, b)| ((a - b) / 0.05).round().abs() as i32)
            .collect();
        let worst = codes.iter().max().copied().unwrap_or(0);
        let off = codes.iter().filter(|&&c| c != 0).count();
        let clamped = a.iter().filter(|&&v| v <= -4.8 || v >= 7.9).count();
        assert!(
            worst <= 1 && off * 100 <= a.len() && clamped * 2 < a.len(),
            "{what}: {off} of {} codes off, by up to {worst}; {clamped} at a bound",
            a.len()
        );
    }
}
