//! Float one-group convolutions with stride 1 (1x1, 3x3, any kernel, padding and dilation)
//! on our own kernels (AVX-512 on x86-64, NEON on aarch64: [`aarch64`]), with the bias, clips
//! (`Relu`, `Relu6`) and a residual `Add` fused into the store.
//!
//! tract 0.23.9 runs such a convolution as a matrix product whose activations it packs into
//! panels first (an im2col for a kernel larger than 1x1), and whose output pipeline (bias,
//! clip, residual add) it interprets per tile. On EfficientNet-Lite0 its 33 1x1
//! convolutions took 10.8 of 14.6 ms (one thread), and block 1's 16 -> 96 expansion on
//! 112x112 ran at 31 GFLOP/s. In NCHW the pixels of an input plane are contiguous, so 16 of
//! them make one vector lane for lane with no packing at all:
//! - a 1x1 convolution is `y[o] = sum_k w[o, k] * x[k]` over whole planes;
//! - a larger kernel is the same sum over the taps `k = (c, ky, kx)`, where `x[k]` is input
//!   plane `c`, zero-padded, read from an offset `ky * dh * wp + kx * dw` (`wp` the padded
//!   row length): the output comes out "wide", `wp` values a row of which the first `ow`
//!   are kept, with no im2col.
//!
//! [`rewrite`] replaces every such convolution of a decluttered model (the `EinSum` tract
//! makes of a 1x1 one, or a `Conv`) by [`DenseConv`] when the CPU has AVX2 or NEON, taking in
//! what follows, each the only reader of the one before: a constant bias `Add`, a `Max` and
//! a `Min` with constants, an `Add` of a tensor of the output's shape (a residual), then
//! again a `Max` and a `Min`.
//!
//! A tile is 6 output channels by 64 (wide) pixels: 24 accumulators, each tap's 4 vectors
//! loaded once and multiplied by 6 broadcast weights. For output channel `o` and pixel `p`
//! it computes `clip2(clip1(bias[o] + sum_k w[o, k] * x[k, p]) + r[o, p])`, the sum in order
//! of `k` with fused multiply-adds ([`tile_plain`] is the definition the tests hold the
//! vector kernel to). Threads split the output channels in groups of 6.

// Elsewhere than x86-64 the kernels are compiled out and `available()` is false: the op
// is never built, and its parts go unused.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_variables, unreachable_code)
)]

use std::fmt;
use std::sync::Arc;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::Downsample;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use crate::graph::{
    clip_bound, concrete_shapes, in_proportion, konst, per_channel, replace_each, values,
};
use crate::lanes::{add_clip, copy_rows, split_pairs};
use crate::split::{par_units, share, Rows, UNITS};
use crate::Cpu;
use seq_macro::seq;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Output channels per tile.
const ROWS: usize = 6;
// `seq!(R in 0..6 ..)` spells out the rows.
const _: () = assert!(ROWS == 6);
/// Pixels per tile: four 16-lane vectors.
const COLS: usize = 64;

/// A clip's bounds, infinite where there is none.
#[derive(Clone, Copy, Debug)]
struct Clip {
    lo: f32,
    hi: f32,
}

impl Clip {
    const NONE: Clip = Clip {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    fn bits(&self) -> (u32, u32) {
        (self.lo.to_bits(), self.hi.to_bits())
    }

    #[cfg(test)]
    fn apply(&self, v: f32) -> f32 {
        v.max(self.lo).min(self.hi)
    }
}

/// Where a kernel larger than 1x1, a padded or a strided convolution reads its input:
/// planes copied into a zero-padded buffer (`hp x wp`), each split into its `sh x sw` phases
/// (`qh x qw` each; phase `(a, b)` holds the padded pixels `(y, x)` with `y % sh == a` and
/// `x % sw == b`), so that every tap reads a stride-1 image; the output is computed `qw`
/// values a row, of which the first `ow` are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wide {
    h: usize,
    w: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    qh: usize,
    qw: usize,
    oh: usize,
    ow: usize,
}

impl Wide {
    /// One input plane's phases.
    fn plane_len(&self) -> usize {
        self.sh * self.sw * self.qh * self.qw
    }

    /// The padded buffer's length: every plane, and room for the last tap's reads past the
    /// last plane (less than a row; masked lanes are not read).
    fn buffer_len(&self, cin: usize) -> usize {
        cin * self.plane_len() + 2 * self.qw
    }

    /// Where the padded pixel `(y, x)` of plane `c` is in the buffer.
    fn at(&self, c: usize, y: usize, x: usize) -> usize {
        let phase = (y % self.sh) * self.sw + x % self.sw;
        c * self.plane_len() + phase * self.qh * self.qw + y / self.sh * self.qw + x / self.sw
    }

    /// Copies `x` (`cin` planes `h x w`) into the padded buffer, whose padding is zero.
    fn fill(&self, cpu: Cpu, x: &[f32], buf: &mut [f32]) {
        let phase_len = self.qh * self.qw;
        if self.sh == 1 && self.sw == 1 {
            for (c, src) in x.chunks_exact(self.h * self.w).enumerate() {
                let at = self.at(c, self.pt, self.pl);
                copy_rows((src, self.w), (&mut buf[at..], self.qw), self.h, self.w);
            }
            return;
        }
        for (c, src) in x.chunks_exact(self.h * self.w).enumerate() {
            for (y, row) in src.chunks_exact(self.w).enumerate() {
                let y = self.pt + y;
                // Row `y / sh` of the phases `(y % sh, b)`; input column `x` goes to column
                // `(pl + x) / sw` of phase `(pl + x) % sw`.
                let base = self.at(c, y, 0);
                if self.sw == 1 {
                    buf[base + self.pl..base + self.pl + self.w].copy_from_slice(row);
                    continue;
                }
                if self.sw == 2 {
                    // Even input columns to one phase, odd ones to the other.
                    let at = |b0: usize| base + (self.pl + b0) % 2 * phase_len + (self.pl + b0) / 2;
                    let (ae, ao) = (at(0), at(1));
                    let (lo, hi) = buf.split_at_mut(ae.max(ao));
                    let (even, odd) = if ae < ao {
                        (&mut lo[ae..], hi)
                    } else {
                        (hi, &mut lo[ao..])
                    };
                    split_pairs(cpu, row, even, odd);
                    if row.len() % 2 == 1 {
                        even[row.len() / 2] = row[row.len() - 1];
                    }
                    continue;
                }
                for b0 in 0..self.sw {
                    let phase = (self.pl + b0) % self.sw;
                    let at = base + phase * phase_len + (self.pl + b0) / self.sw;
                    for (d, &v) in buf[at..]
                        .iter_mut()
                        .zip(row.iter().skip(b0).step_by(self.sw))
                    {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// A float one-group convolution of an f32 `[n, c, h, w]` (or `[c, h, w]`)
/// tensor, with what follows it fused in.
#[derive(Clone)]
pub struct DenseConv {
    /// Input and output shapes, with or without the batch axis (the output may drop a batch
    /// of one).
    input: TVec<usize>,
    output: TVec<usize>,
    cin: usize,
    cout: usize,
    /// `None` for a 1x1 kernel without padding: the planes are read where they are.
    wide: Option<Wide>,
    /// Where each tap `(c, ky, kx)` starts in the (padded) input, in values.
    taps: Arc<Vec<usize>>,
    /// Which way the tiles run.
    lanes: Lanes,
    /// Pixels on the lanes: `[ceil(cout / ROWS)][taps][ROWS]`; channels on the lanes:
    /// `[ceil(cout / (16 * cv))][taps][16 * cv]`. Each tile's weights tap by tap, zeros past
    /// the last output channel.
    weights: Arc<Vec<f32>>,
    /// One per output channel, zeros past the last tile's.
    bias: Arc<Vec<f32>>,
    /// Channels on the lanes: where each output pixel's window starts in the (padded) input,
    /// in values.
    windows: Arc<Vec<usize>>,
    clip1: Clip,
    /// Whether a second input, of the output's shape, is added after `clip1`.
    residual: bool,
    clip2: Clip,
    /// What the kernels may use: AVX2, AVX-512 or NEON (only then is the op made).
    cpu: Cpu,
    /// A grouped convolution: one op of one group per group, each on its group's input
    /// channels and writing its group's output channels (empty for one group). The op's own
    /// weights and taps are then empty; its bias, clips and residual are handed to the parts
    /// ([`DenseConv::share_tail`]).
    parts: Arc<Vec<DenseConv>>,
}

impl PartialEq for DenseConv {
    fn eq(&self, other: &DenseConv) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (&self.input, &self.output) == (&other.input, &other.output)
            && (self.cin, self.cout, self.residual) == (other.cin, other.cout, other.residual)
            && (self.clip1.bits(), self.clip2.bits()) == (other.clip1.bits(), other.clip2.bits())
            && self.wide == other.wide
            && self.taps == other.taps
            && (self.lanes, &self.windows) == (other.lanes, &other.windows)
            && bits(&self.weights) == bits(&other.weights)
            && bits(&self.bias) == bits(&other.bias)
            && self.parts == other.parts
    }
}

impl Eq for DenseConv {}

impl fmt::Debug for DenseConv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DenseConv({:?}: {} taps -> {} channels in {} group(s), {:?}, {:?}, {:?}{}, {:?})",
            self.input,
            self.parts.first().map_or(self.taps.len(), |p| p.taps.len()),
            self.cout,
            self.parts.len().max(1),
            self.lanes,
            self.wide,
            self.clip1,
            if self.residual { ", + residual" } else { "" },
            self.clip2,
        )
    }
}

/// Whether `cpu` has what the kernel needs.
pub fn available(cpu: Cpu) -> bool {
    cpu.avx2() || cpu.neon()
}

/// Where a tile's inputs are.
struct Tile<'a> {
    /// The input at the tile's first pixel; tap `k` starts `taps[k]` values further.
    x: &'a [f32],
    taps: &'a [usize],
    /// The tile's weights, `ROWS` per tap.
    w: &'a [f32],
    bias: [f32; ROWS],
    clip1: Clip,
    clip2: Clip,
    /// Rows (output channels) and pixels to store, at most `ROWS` and `COLS`.
    rows: usize,
    cols: usize,
}

/// The plain definition of a tile, for the tests: `out[r][p]` for the valid rows and
/// pixels, with `res[r][p]` added (then `clip2`) when given.
#[cfg(test)]
fn tile_plain(t: &Tile, res: Option<&[Vec<f32>]>, out: &mut [Vec<f32>]) {
    for (r, row) in out.iter_mut().enumerate().take(t.rows) {
        for (p, y) in row.iter_mut().enumerate().take(t.cols) {
            let mut acc = t.bias[r];
            for (k, &at) in t.taps.iter().enumerate() {
                acc = t.w[k * ROWS + r].mul_add(t.x[at + p], acc);
            }
            let v = t.clip1.apply(acc);
            *y = match res {
                Some(res) => t.clip2.apply(v + res[r][p]),
                None => v,
            };
        }
    }
}

/// Runs `tile` on this CPU's kernel: `ROWS` rows of `out` (and `res`) from the given
/// pointers.
///
/// # Safety
/// As the kernels' (`x86_64::tile`, `aarch64::tile`): the CPU has what they need
/// ([`available`]); `t.x` holds `t.cols` values from each of
/// `t.taps`, `t.w` `ROWS` per tap, and each of the first `t.rows` rows of `out` (and `res`)
/// at least `t.cols` values.
unsafe fn run_tile(
    cpu: Cpu,
    tile: &Tile,
    res: Option<[*const f32; ROWS]>,
    out: [*mut f32; ROWS],
) -> TractResult<()> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86_64::tile(cpu, tile, res, out);
            Ok(())
        }
        #[cfg(target_arch = "aarch64")]
        {
            aarch64::tile(tile, res, out);
            Ok(())
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (cpu, tile, res, out);
            bail!("DenseConv needs AVX2 or NEON")
        }
    }
}

/// Which way a tile runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lanes {
    /// `ROWS` output channels by `COLS` pixels, 16 pixels a vector: for large planes.
    Pixels,
    /// `16 * cv` output channels (`cv` vectors) by `pt` pixels, each pixel's input value
    /// broadcast: for small planes (7x7, 14x14), where 64-pixel tiles waste lanes. The
    /// pixels need not be neighbours, so a wide output is not needed either.
    Channels { cv: usize, pt: usize },
}

/// The shapes of channel tiles there are kernels for: 24 or fewer accumulators.
const CHANNEL_TILES: [(usize, usize); 4] = [(4, 6), (3, 7), (3, 8), (2, 12)];

impl Lanes {
    /// The better way for `cout` channels, `taps` taps and `pixels` output pixels,
    /// `computed` of them computed with pixels on the lanes: the share of the lanes that do
    /// useful work, with channels on the lanes only where they do 5% more. A channel tile
    /// also transposes its `16 * cv * pt` values into place, about one cycle each against
    /// `taps * cv * pt` multiply-adds: that is charged as `16 / taps` of its work.
    fn pick(cout: usize, taps: usize, pixels: usize, computed: usize) -> Lanes {
        let used = |n: usize, tile: usize| n as f64 / n.next_multiple_of(tile) as f64;
        let by_pixels = pixels as f64 / computed.next_multiple_of(16) as f64 * used(cout, ROWS);
        let transpose = taps as f64 / (taps + 16) as f64;
        let (share, cv, pt) = CHANNEL_TILES
            .iter()
            .map(|&(cv, pt)| (used(cout, 16 * cv) * used(pixels, pt) * transpose, cv, pt))
            .fold((0.0, 0, 0), |best, c| if c.0 > best.0 { c } else { best });
        if share > by_pixels + 0.05 {
            Lanes::Channels { cv, pt }
        } else {
            Lanes::Pixels
        }
    }
}

/// Where a channel tile's inputs are.
struct ChannelTile<'a> {
    /// The input; tap `k` of pixel `p` is at `taps[k] + windows[p]`.
    x: &'a [f32],
    taps: &'a [usize],
    windows: &'a [usize],
    /// The tile's weights, `16 * cv` per tap, and biases.
    w: &'a [f32],
    bias: &'a [f32],
    clip1: Clip,
}

/// The plain definition of a channel tile, for the tests: `out[p][c]`, `clip1` applied.
#[cfg(test)]
fn channel_tile_plain(t: &ChannelTile, cv: usize, out: &mut [[f32; COLS]]) {
    let n = 16 * cv;
    for (p, row) in out.iter_mut().enumerate().take(t.windows.len()) {
        for (c, y) in row.iter_mut().enumerate().take(n) {
            let mut acc = t.bias[c];
            for (k, &at) in t.taps.iter().enumerate() {
                acc = t.w[k * n + c].mul_add(t.x[at + t.windows[p]], acc);
            }
            *y = t.clip1.apply(acc);
        }
    }
}

/// Runs a channel tile of `cv` vectors by `t.windows.len()` pixels on this CPU's kernel.
///
/// # Safety
/// As the x86-64 kernel's (`x86_64::channel_tile`): the CPU has AVX-512 F; `t.windows` holds
/// `pt` offsets and `t.x` a value at every tap's offset plus every window's; `t.w` holds
/// `16 * cv` values per tap and `t.bias` `16 * cv`; `(cv, pt)` is one of [`CHANNEL_TILES`].
unsafe fn run_channel_tile(t: &ChannelTile, cv: usize, out: &mut [[f32; COLS]]) -> TractResult<()> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86_64::channel_tile(t, cv, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (t, cv, out);
            bail!("DenseConv needs AVX-512")
        }
    }
}

impl DenseConv {
    fn images(&self) -> usize {
        if self.input.len() == 4 {
            self.input[0]
        } else {
            1
        }
    }

    /// Output pixels per image.
    fn pixels(&self) -> usize {
        self.output[self.output.len() - 2] * self.output[self.output.len() - 1]
    }

    /// One image of one group: `x` its unpadded input planes, padded into `padded` first if
    /// the kernel reads a padded copy.
    fn run_image(
        &self,
        x: &[f32],
        res: Option<&[f32]>,
        out: &mut [f32],
        padded: &mut Vec<f32>,
    ) -> TractResult<()> {
        match &self.wide {
            Some(g) => {
                padded.resize(g.buffer_len(self.cin), 0.0);
                g.fill(self.cpu, x, padded);
                self.image(padded, res, out)
            }
            None => self.image(x, res, out),
        }
    }

    /// Hands a grouped op's bias, clips and residual (fused after its parts were built) to
    /// its parts.
    fn share_tail(&mut self) {
        if self.parts.is_empty() {
            return;
        }
        let og = self.cout / self.parts.len();
        let parts = self
            .parts
            .iter()
            .enumerate()
            .map(|(g, part)| {
                let mut bias = vec![0f32; part.bias.len()];
                bias[..og].copy_from_slice(&self.bias[g * og..(g + 1) * og]);
                DenseConv {
                    bias: Arc::new(bias),
                    clip1: self.clip1,
                    residual: self.residual,
                    clip2: self.clip2,
                    ..part.clone()
                }
            })
            .collect();
        self.parts = Arc::new(parts);
    }

    /// What the kernels' unchecked reads rely on, checked here whatever built the op: the
    /// CPU has AVX-512; every tap's reads for every computed pixel (or window) are within an
    /// input of `x_len` values; the weights and biases cover every tile. Checked arithmetic:
    /// an overflow is an error, not a wrapped bound.
    fn check(&self, x_len: usize) -> TractResult<()> {
        let overflow = || format_err!("DenseConv geometry overflows");
        ensure!(available(self.cpu), "DenseConv needs AVX2 or NEON");
        ensure!(
            self.lanes == Lanes::Pixels || self.cpu.avx512(),
            "DenseConv's channel tiles need AVX-512"
        );
        let (cout, pixels, taps) = (self.cout, self.pixels(), self.taps.len());
        let reach = self.taps.iter().max().copied().unwrap_or(0);
        let (tile, computed) = match (self.lanes, &self.wide) {
            (Lanes::Channels { cv, pt }, _) => {
                ensure!(
                    CHANNEL_TILES.contains(&(cv, pt)),
                    "no {cv}x{pt} channel tile"
                );
                let windows = pixels.div_ceil(pt).checked_mul(pt).ok_or_else(overflow)?;
                ensure!(self.windows.len() >= windows, "DenseConv windows too few");
                let last = self.windows.iter().max().copied().unwrap_or(0);
                // One value a tap and window.
                (16 * cv, last.checked_add(1).ok_or_else(overflow)?)
            }
            (Lanes::Pixels, Some(g)) => (ROWS, g.oh.checked_mul(g.qw).ok_or_else(overflow)?),
            (Lanes::Pixels, None) => (ROWS, pixels),
        };
        ensure!(
            reach.checked_add(computed).ok_or_else(overflow)? <= x_len,
            "DenseConv input too short for its taps"
        );
        let tiles = cout.div_ceil(tile);
        let weights = tiles
            .checked_mul(tile)
            .and_then(|n| n.checked_mul(taps))
            .ok_or_else(overflow)?;
        ensure!(
            self.weights.len() >= weights && self.bias.len() >= tiles * tile,
            "DenseConv weights too few"
        );
        Ok(())
    }

    /// Convolves one image: `x` its (padded) input, `res` `[cout][pixels]` if a residual,
    /// into `out` `[cout][pixels]`.
    fn image(&self, x: &[f32], res: Option<&[f32]>, out: &mut [f32]) -> TractResult<()> {
        let (cout, pixels, taps) = (self.cout, self.pixels(), self.taps.len());
        ensure!(out.len() == cout * pixels && res.is_none_or(|r| r.len() == out.len()));
        self.check(x.len())?;
        if let Lanes::Channels { cv, pt } = self.lanes {
            return self.image_by_channels(x, res, out, (cv, pt));
        }
        // Pixels computed: the wide output's, or the output's.
        let (computed, row_len) = match &self.wide {
            Some(g) => (g.oh * g.qw, g.qw),
            None => (pixels, pixels),
        };
        let groups = cout.div_ceil(ROWS);
        let blocks = computed.div_ceil(COLS);
        let parts = UNITS.div_ceil(groups).min(blocks);
        let work = cout * computed * taps;
        let dst = Rows::new(out);
        // The threads split the pixel blocks into `parts`, and each part's row groups; each
        // writes only its groups' rows in its part's pixels.
        par_units((parts, groups), work, |part, gs| {
            // SAFETY: all-zero bits are 0.0 in f32. (`[[0f32; COLS]; ROWS]` is a loop of
            // copies at opt-level "z".)
            let mut buf: [[f32; COLS]; ROWS] = unsafe { std::mem::zeroed() };
            // Row group by row group, each along its part's pixels: the output is written
            // in long runs of its rows. (Pixel block by pixel block, the tiles of one block
            // kept its input in L1 but wrote every row group's rows at once; EfficientNet-
            // Lite0's 16 -> 96 expansion on 112x112 took 0.90-1.05 ms that way, 0.66 this.)
            for g in gs {
                // The row group's set-up, once for all its blocks: at opt-level "z" it was
                // a tenth of a tile's time when done per block.
                let o = g * ROWS;
                let rows = (cout - o).min(ROWS);
                let mut bias = [0f32; ROWS];
                bias[..rows].copy_from_slice(&self.bias[o..o + rows]);
                let w = &self.weights[g * taps * ROWS..(g + 1) * taps * ROWS];
                // Rows past `rows` are never read or written: row `o` stands in. Rows
                // `o..o + rows` of the output (checked here; the residual is the output's
                // size, checked above) belong to this thread's groups.
                let row = |r: usize| if r < rows { o + r } else { o };
                dst.check_rows(o * pixels, rows, pixels, pixels)?;
                let out_rows = seq!(R in 0..6 { [#(dst.at(row(R) * pixels)?,)*] });
                let res_rows = match res {
                    Some(res) => {
                        seq!(R in 0..6 { [#(res.as_ptr().wrapping_add(row(R) * pixels),)*] })
                    }
                    None => [std::ptr::null(); ROWS],
                };
                for block in share(blocks, parts, part) {
                    let p0 = block * COLS;
                    let cols = (computed - p0).min(COLS);
                    let tile = Tile {
                        x: &x[p0..],
                        taps: &self.taps,
                        w,
                        bias,
                        clip1: self.clip1,
                        clip2: self.clip2,
                        rows,
                        cols,
                    };
                    if self.wide.is_none() {
                        // SAFETY: `p0 + cols <= pixels`, within each row. (Written out row
                        // by row: at opt-level "z" the arrays' set-up loops were a fifth of
                        // the block loop's own time.)
                        let out = seq!(R in 0..6 { [#(out_rows[R].wrapping_add(p0),)*] });
                        // Not `map`: a closure is a call at opt-level "z".
                        #[allow(clippy::manual_map)]
                        let res = match res {
                            Some(_) => {
                                Some(seq!(R in 0..6 { [#(res_rows[R].wrapping_add(p0),)*] }))
                            }
                            None => None,
                        };
                        // SAFETY: `check` found AVX2 or NEON on `self.cpu`, so the CPU has it; the
                        // tile's input rows hold `cols` values from `p0` (`x` holds every
                        // plane), its weights `ROWS` per tap.
                        unsafe { run_tile(self.cpu, &tile, res, out)? };
                        continue;
                    }
                    let wide = seq!(R in 0..6 { [#(buf[R].as_mut_ptr(),)*] });
                    // SAFETY: as above; the wide buffer's rows hold `COLS` values, and the
                    // padded input holds every tap's `cols` values from `p0` (see
                    // `Wide::buffer_len`).
                    unsafe { run_tile(self.cpu, &tile, None, wide)? };
                    // The kept columns of each wide row the tile covers, into place.
                    for (r, wide) in buf.iter().enumerate().take(rows) {
                        let base = (o + r) * pixels;
                        let mut p = p0;
                        while p < p0 + cols {
                            let (oy, ox) = (p / row_len, p % row_len);
                            let end = (p0 + cols).min(p - ox + row_len);
                            let ow = self.output[self.output.len() - 1];
                            if ox < ow {
                                let n = (end - p).min(ow - ox);
                                let at = base + oy * ow + ox;
                                let src = &wide[p - p0..p - p0 + n];
                                // SAFETY: row `o + r` belongs to this thread; `ox + n <= ow`.
                                let dst = unsafe { dst.slice(at, n)? };
                                dst.copy_from_slice(src);
                                if let Some(res) = res {
                                    add_clip(
                                        self.cpu,
                                        dst,
                                        &res[at..],
                                        (self.clip2.lo, self.clip2.hi),
                                    );
                                }
                            }
                            p = end;
                        }
                    }
                }
            }
            Ok(())
        })
    }
    /// [`Self::image`] with channels on the lanes: tiles of `16 * cv` channels by `pt`
    /// pixels, each channel group's pixels in turn (its weights stay in cache), transposed
    /// into place with the residual and `clip2`.
    fn image_by_channels(
        &self,
        x: &[f32],
        res: Option<&[f32]>,
        out: &mut [f32],
        (cv, pt): (usize, usize),
    ) -> TractResult<()> {
        let (cout, pixels, taps) = (self.cout, self.pixels(), self.taps.len());
        let n = 16 * cv;
        let groups = cout.div_ceil(n);
        let tiles = pixels.div_ceil(pt);
        let parts = UNITS.div_ceil(groups).min(tiles);
        let work = cout * pixels * taps;
        let dst = Rows::new(out);
        // The threads split the channel groups, and each group's pixel tiles into `parts`.
        par_units((groups, parts), work, |g, parts_of_g| {
            // SAFETY: all-zero bits are 0.0 in f32. (`[[0f32; COLS]; 12]` is a loop of
            // copies at opt-level "z".)
            let mut buf: [[f32; COLS]; 12] = unsafe { std::mem::zeroed() };
            let o = g * n;
            let rows = (cout - o).min(n);
            // The group's slices once, not per tile (calls of their own at opt-level "z").
            let (w, bias) = (
                &self.weights[g * taps * n..(g + 1) * taps * n],
                &self.bias[o..o + n],
            );
            for part in parts_of_g {
                for t in share(tiles, parts, part) {
                    let q0 = t * pt;
                    let tile = ChannelTile {
                        x,
                        taps: &self.taps,
                        windows: &self.windows[q0..q0 + pt],
                        w,
                        bias,
                        clip1: self.clip1,
                    };
                    // SAFETY: `check` found AVX-512 on `self.cpu`, so the CPU has it; `windows`
                    // is padded to whole tiles (with in-plane offsets), so every tap of every
                    // window is within `x`; the weights and biases are padded to whole
                    // groups; `(cv, pt)` is one of `CHANNEL_TILES` (see `Lanes::pick`).
                    unsafe { run_channel_tile(&tile, cv, &mut buf)? };
                    let cols = (pixels - q0).min(pt);
                    let at = o * pixels + q0;
                    if let Some(res) = res {
                        ensure!(res.len() >= at + (rows - 1) * pixels + cols);
                    }
                    // SAFETY: rows `o..o + rows` belong to this thread's groups, and `q0 +
                    // cols <= pixels`; so are the residual's (checked above); `buf` holds
                    // `cols <= pt` rows of `COLS >= rows` values.
                    unsafe {
                        store_channel_tile(
                            self.cpu,
                            &buf[..cols],
                            rows,
                            (dst.at(at)?, pixels),
                            res.map(|r| r[at..].as_ptr()),
                            self.clip2,
                        )
                    };
                }
            }
            Ok(())
        })
    }
}

/// A channel tile's `buf[p][c]` (`p < buf.len()`, `c < rows`) into place: `dst[c * stride +
/// p]`, with `res[c * stride + p]` added and `clip2` applied when there is a residual.
///
/// # Safety
/// `rows <= COLS`; `dst` (and `res`) hold `(rows - 1) * stride + buf.len()` values, and no
/// other thread writes those of `dst`.
unsafe fn store_channel_tile(
    cpu: Cpu,
    buf: &[[f32; COLS]],
    rows: usize,
    (dst, stride): (*mut f32, usize),
    res: Option<*const f32>,
    clip2: Clip,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if buf.len() <= 16 && cpu.avx512() {
            x86_64::store_channel_tile(buf, rows, dst, stride, res, clip2);
            return;
        }
        for c in 0..rows {
            for (p, b) in buf.iter().enumerate() {
                let at = c * stride + p;
                let mut v = b[c];
                if let Some(res) = res {
                    v = (v + *res.add(at)).max(clip2.lo).min(clip2.hi);
                }
                *dst.add(at) = v;
            }
        }
    }
}

crate::graph::kernel_op!(DenseConv, "MsnDenseConv", Rounding);

impl EvalOp for DenseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let (n, cout, pixels) = (self.images(), self.cout, self.pixels());
        let image = self.input[self.input.len() - 3..].iter().product::<usize>();
        ensure!(x.len() == n * image, "DenseConv input has the wrong size");
        let res = match (self.residual, inputs.get(1)) {
            (true, Some(r)) => Some(r.try_as_plain_ram()?),
            (false, None) => None,
            _ => bail!("DenseConv has the wrong number of inputs"),
        };
        let res = res.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
        ensure!(
            res.is_none_or(|r| r.len() == n * cout * pixels),
            "DenseConv residual has the wrong size"
        );
        let mut y = crate::split::output_f32(&self.output)?;
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let mut padded = Vec::new();
        for (i, (x, out)) in x
            .chunks_exact(image)
            .zip(out.chunks_exact_mut(cout * pixels))
            .enumerate()
        {
            let res = res.map(|r| &r[i * cout * pixels..(i + 1) * cout * pixels]);
            if self.parts.is_empty() {
                self.run_image(x, res, out, &mut padded)?;
                continue;
            }
            // Group by group: its input channels in, its output channels out.
            let groups = self.parts.len();
            let (cg, og) = (self.cin / groups, cout / groups);
            let plane = image / self.cin;
            for (g, part) in self.parts.iter().enumerate() {
                ensure!(
                    part.cin == cg && part.cout == og,
                    "DenseConv group shapes differ"
                );
                let x = &x[g * cg * plane..(g + 1) * cg * plane];
                let res = res.map(|r| &r[g * og * pixels..(g + 1) * og * pixels]);
                let out = &mut out[g * og * pixels..(g + 1) * og * pixels];
                part.run_image(x, res, out, &mut padded)?;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for DenseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 + self.residual as usize);
        ensure!(inputs.iter().all(|i| i.datum_type == f32::datum_type()));
        Ok(tvec!(f32::fact(self.output.clone())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let taps = self.parts.first().map_or(self.taps.len(), |p| p.taps.len());
        let macs = self.images() * self.cout * self.pixels() * taps;
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// `Some(v)` if `t` is a bias of `cout` channels for an output of rank `rank`: one value, or
/// `cout` values on the channel axis (third from the end) with every other axis 1.
fn channel_bias(t: &Tensor, cout: usize, rank: usize) -> Option<Vec<f32>> {
    if t.datum_type() != f32::datum_type() || t.rank() > rank {
        return None;
    }
    let v = t.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    if v.len() == 1 {
        return Some(vec![v[0]; cout]);
    }
    let channel = t.rank().checked_sub(3)?;
    let ok = t
        .shape()
        .iter()
        .enumerate()
        .all(|(i, &d)| d == if i == channel { cout } else { 1 });
    ok.then_some(v)
}

/// The single reader of `outlet`, if it has exactly one and `outlet` is not a model output.
fn only_reader(model: &TypedModel, outlet: OutletId) -> Option<&TypedNode> {
    let succ = model.outlet_successors(outlet);
    if model.outputs.contains(&outlet) || succ.len() != 1 {
        return None;
    }
    let next = model.node(succ[0].node);
    (next.outputs.len() == 1).then_some(next)
}

/// The convolution's shapes and parts, before what follows it is taken in.
struct Found {
    /// Where the input comes from (before any `Downsample` taken in).
    source: OutletId,
    input: TVec<usize>,
    output: TVec<usize>,
    cin: usize,
    cout: usize,
    /// Kernel size, strides, dilations, padding before (top, left) and after (bottom,
    /// right).
    kernel: (usize, usize),
    strides: (usize, usize),
    dilations: (usize, usize),
    pads: [usize; 4],
    /// `[cout][cin / groups * kh * kw]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
}

/// A 1x1 convolution as tract declutters it: an `EinSum` `IHW,OI->OHW` (with `N` in front
/// with a batch axis).
fn einsum(model: &TypedModel, node: &TypedNode) -> Option<Found> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return None;
    }
    let (input, output) = concrete_shapes(model, node)?;
    let weights = konst(model, node.inputs[1])?;
    let &[cout, cin] = weights.shape() else {
        return None;
    };
    // A strided 1x1 convolution: tract subsamples the input first with a `Downsample` per
    // axis (ResNet's shortcut projections). Taken in, the tile reads the input's phase
    // instead: a copy of the input's size less, and no op of tract's generic code, which
    // costs 2.5x as much at the boards' opt-level "z".
    let (mut source, mut strides) = (node.inputs[0], [1usize; 2]);
    let rank = input.len();
    while let Some(prev) = Some(&model.nodes[source.node])
        .filter(|n| n.outputs.len() == 1 && n.outputs[0].successors.len() == 1)
        .and_then(|n| n.op_as::<Downsample>().map(|d| (n, d)))
    {
        let (n, d) = prev;
        let axis = d.axis.checked_sub(rank - 2).filter(|&a| a < 2)?;
        if d.modulo != 0 || d.stride < 1 || strides[axis] != 1 {
            return None;
        }
        strides[axis] = d.stride as usize;
        source = n.inputs[0];
    }
    let input: TVec<usize> = match source == node.inputs[0] {
        true => input,
        false => model.outlet_fact(source).ok()?.shape.as_concrete()?.into(),
    };
    if input.len() != rank {
        return None;
    }
    let (n_in, n_out) = match (input.len(), output.len()) {
        (3, 3) => ("", ""),
        (4, 4) => ("N", "N"),
        (4, 3) if input[0] == 1 => ("N", ""),
        _ => return None,
    };
    let (i, o) = (input.len() - 3, output.len() - 3);
    let (h, w) = (input[i + 1], input[i + 2]);
    if op.axes.to_string() != format!("{n_in}IHW,OI->{n_out}OHW")
        || input[i] != cin
        || output[o..] != [cout, h.div_ceil(strides[0]), w.div_ceil(strides[1])]
    {
        return None;
    }
    Some(Found {
        source,
        input,
        output,
        cin,
        cout,
        kernel: (1, 1),
        strides: (strides[0], strides[1]),
        dilations: (1, 1),
        pads: [0; 4],
        weights: values::<f32>(model, node.inputs[1])?,
        bias: vec![0.0; cout],
        groups: 1,
    })
}

/// A float `Conv` of one group with stride 1 on NCHW (or CHW), constant OIHW kernel and bias.
fn conv(model: &TypedModel, node: &TypedNode) -> Option<Found> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || node.inputs.len() != 3
        || conv.group == 0
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
    {
        return None;
    }
    let (input, output) = concrete_shapes(model, node)?;
    let batch = spec.data_format == DataFormat::NCHW;
    let [n, cin, h, w] = match (batch, &input[..]) {
        (true, &[n, c, h, w]) => [n, c, h, w],
        (false, &[c, h, w]) => [1, c, h, w],
        _ => return None,
    };
    let kernel = konst(model, node.inputs[1])?;
    let &[cout, wc, kh, kw] = kernel.shape() else {
        return None;
    };
    let pads = spec.computed_padding(&[h, w]);
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    let expected: TVec<usize> = if batch {
        tvec![n, cout, oh, ow]
    } else {
        tvec![cout, oh, ow]
    };
    if wc.checked_mul(conv.group) != Some(cin) || cout % conv.group != 0 || output != expected {
        return None;
    }
    let (strides, dilations) = (spec.strides(), spec.dilations());
    Some(Found {
        source: node.inputs[0],
        input,
        output,
        cin,
        cout,
        kernel: (kh, kw),
        strides: (strides[0], strides[1]),
        dilations: (dilations[0], dilations[1]),
        pads: [
            pads[0].pad_before,
            pads[1].pad_before,
            pads[0].pad_after,
            pads[1].pad_after,
        ],
        weights: values::<f32>(model, node.inputs[1])?,
        bias: per_channel(values::<f32>(model, node.inputs[2])?, cout)?,
        groups: conv.group,
    })
}

/// The op for a convolution, its taps and weights laid out for the tiles.
fn build(f: Found, cpu: Cpu) -> Option<DenseConv> {
    if !available(cpu) {
        return None;
    }
    if f.groups > 1 {
        return build_grouped(f, cpu);
    }
    let (kh, kw) = f.kernel;
    let (dh, dw) = f.dilations;
    let taps_per_plane = kh * kw;
    let k = f.cin * taps_per_plane;
    let (i, o) = (f.input.len() - 3, f.output.len() - 3);
    let (h, w) = (f.input[i + 1], f.input[i + 2]);
    let (oh, ow) = (f.output[o + 1], f.output[o + 2]);
    if k == 0 || f.cout == 0 || oh * ow == 0 || f.weights.len() != f.cout * k || f.input[0] == 0 {
        return None;
    }
    let [pt, pl, pb, pr] = f.pads;
    let (sh, sw) = f.strides;
    let (hp, wp) = (
        pt.checked_add(h)?.checked_add(pb)?,
        pl.checked_add(w)?.checked_add(pr)?,
    );
    // The padded copy (its phases round each dimension up to a whole stride).
    let padded = (hp.checked_add(sh)?)
        .saturating_mul(wp.checked_add(sw)?)
        .saturating_mul(f.cin);
    if !in_proportion(padded, f.cin * h * w, f.cout * oh * ow) {
        return None;
    }
    let plain = taps_per_plane == 1 && f.pads == [0; 4] && f.strides == (1, 1);
    let wide = (!plain).then(|| Wide {
        h,
        w,
        sh,
        sw,
        pt,
        pl,
        qh: hp.div_ceil(sh),
        qw: wp.div_ceil(sw),
        oh,
        ow,
    });
    // Every tap's reads of a kept output must stay within the padded plane (the wide
    // columns past `ow` may run on into the next row, the buffer's slack).
    if sh == 0
        || sw == 0
        || (oh - 1) * sh + (kh - 1) * dh >= hp
        || (ow - 1) * sw + (kw - 1) * dw >= wp
    {
        return None;
    }
    let taps = (0..k)
        .map(|t| {
            let (c, ky, kx) = (t / taps_per_plane, t % taps_per_plane / kw, t % kw);
            match &wide {
                Some(g) => g.at(c, ky * dh, kx * dw),
                None => c * h * w,
            }
        })
        .collect();
    let pixels = oh * ow;
    let computed = wide.as_ref().map_or(pixels, |g| oh * g.qw);
    // Channel tiles are AVX-512 only.
    let lanes = match cpu.avx512() {
        true => Lanes::pick(f.cout, k, pixels, computed),
        false => Lanes::Pixels,
    };
    let tile_rows = match lanes {
        Lanes::Pixels => ROWS,
        Lanes::Channels { cv, .. } => 16 * cv,
    };
    let groups = f.cout.div_ceil(tile_rows);
    let mut weights = vec![0f32; groups * k * tile_rows];
    for (oc, row) in f.weights.chunks_exact(k).enumerate() {
        let (g, r) = (oc / tile_rows, oc % tile_rows);
        for (t, &v) in row.iter().enumerate() {
            weights[(g * k + t) * tile_rows + r] = v;
        }
    }
    let mut bias = f.bias;
    bias.resize(groups * tile_rows, 0.0);
    // Where each output pixel's window starts; the last tile's missing pixels repeat the
    // last one (computed and not stored).
    let windows = match lanes {
        Lanes::Pixels => Vec::new(),
        Lanes::Channels { pt, .. } => (0..pixels.next_multiple_of(pt))
            .map(|q| {
                let q = q.min(pixels - 1);
                match &wide {
                    Some(g) => q / ow * g.qw + q % ow,
                    None => q,
                }
            })
            .collect(),
    };
    Some(DenseConv {
        input: f.input,
        output: f.output,
        cin: f.cin,
        cout: f.cout,
        wide,
        taps: Arc::new(taps),
        lanes,
        weights: Arc::new(weights),
        bias: Arc::new(bias),
        windows: Arc::new(windows),
        clip1: Clip::NONE,
        residual: false,
        clip2: Clip::NONE,
        cpu,
        parts: Arc::new(Vec::new()),
    })
}

/// A grouped convolution: one op of one group per group (each its group's channels, weights
/// and biases), under an op of the whole shapes that runs them in turn.
fn build_grouped(f: Found, cpu: Cpu) -> Option<DenseConv> {
    let groups = f.groups;
    let (cg, og) = (f.cin / groups, f.cout / groups);
    let (i, o) = (f.input.len() - 3, f.output.len() - 3);
    let per_group = og.checked_mul(f.weights.len() / f.cout.max(1))?;
    if cg * groups != f.cin || og * groups != f.cout || f.weights.len() != groups * per_group {
        return None;
    }
    let parts = (0..groups)
        .map(|g| {
            let (mut input, mut output) = (f.input.clone(), f.output.clone());
            input[i] = cg;
            output[o] = og;
            build(
                Found {
                    source: f.source,
                    input,
                    output,
                    cin: cg,
                    cout: og,
                    weights: f.weights[g * per_group..(g + 1) * per_group].to_vec(),
                    bias: f.bias[g * og..(g + 1) * og].to_vec(),
                    groups: 1,
                    ..f
                },
                cpu,
            )
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DenseConv {
        input: f.input,
        output: f.output,
        cin: f.cin,
        cout: f.cout,
        wide: None,
        taps: Arc::new(Vec::new()),
        lanes: Lanes::Pixels,
        weights: Arc::new(Vec::new()),
        bias: Arc::new(f.bias),
        windows: Arc::new(Vec::new()),
        clip1: Clip::NONE,
        residual: false,
        clip2: Clip::NONE,
        cpu,
        parts: Arc::new(parts),
    })
}

/// A `Max` then a `Min` (or either alone) with constants after `last`, each the only reader
/// of the one before: the clip, and the outlet past it.
fn clip_after(model: &TypedModel, mut last: OutletId) -> (Clip, OutletId) {
    let mut clip = (None, None);
    while let Some(next) = only_reader(model, last) {
        let Some((is_max, v)) = clip_bound(model, next, last) else {
            break;
        };
        // A Max after a Min changes the order of the two: stop there.
        match (is_max, clip) {
            (true, (None, None)) => clip.0 = Some(v),
            (false, (_, None)) => clip.1 = Some(v),
            _ => break,
        }
        last = OutletId::new(next.id, 0);
    }
    let clip = Clip {
        lo: clip.0.unwrap_or(f32::NEG_INFINITY),
        hi: clip.1.unwrap_or(f32::INFINITY),
    };
    (clip, last)
}

/// The op that replaces `node`, if it is a float convolution this kernel covers; the
/// outlet it replaces, past whatever it takes in; and the residual outlet, if any.
#[allow(clippy::type_complexity)]
fn lower(
    model: &TypedModel,
    node: &TypedNode,
    cpu: Cpu,
) -> Option<(DenseConv, OutletId, OutletId, Option<OutletId>)> {
    let dt = |o: OutletId| model.outlet_fact(o).ok().map(|f| f.datum_type);
    if dt(*node.inputs.first()?)? != f32::datum_type()
        || node.outputs[0].fact.datum_type != f32::datum_type()
    {
        return None;
    }
    let found = einsum(model, node).or_else(|| conv(model, node))?;
    let source = found.source;
    let mut op = build(found, cpu)?;
    let shape = |n: &TypedNode| n.outputs[0].fact.shape.as_concrete() == Some(&op.output[..]);
    let is_add = |n: &TypedNode| {
        n.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>()) && n.inputs.len() == 2
    };
    let mut last = OutletId::new(node.id, 0);
    // A bias: an `Add` of a constant.
    if let Some(next) = only_reader(model, last).filter(|n| is_add(n) && shape(n)) {
        let other = *next.inputs.iter().find(|&&i| i != last)?;
        let b = konst(model, other).and_then(|b| channel_bias(&b, op.cout, op.output.len()));
        if let Some(b) = b {
            // The op's biases run past `cout` (zeros, to whole tiles).
            let mut bias = op.bias.to_vec();
            for (a, b) in bias.iter_mut().zip(&b) {
                *a += b;
            }
            op.bias = Arc::new(bias);
            last = OutletId::new(next.id, 0);
        }
    }
    (op.clip1, last) = clip_after(model, last);
    // A residual: an `Add` of another tensor of the output's shape. `last`'s only reader is
    // that `Add`, so the other tensor cannot depend on this convolution.
    let mut residual = None;
    if let Some(next) = only_reader(model, last).filter(|n| is_add(n) && shape(n)) {
        let other = *next.inputs.iter().find(|&&i| i != last)?;
        let fact = model.outlet_fact(other).ok()?;
        if fact.datum_type == f32::datum_type()
            && fact.shape.as_concrete() == Some(&op.output[..])
            && fact.konst.is_none()
        {
            op.residual = true;
            residual = Some(other);
            (op.clip2, last) = clip_after(model, OutletId::new(next.id, 0));
        }
    }
    op.share_tail();
    Some((op, source, last, residual))
}

/// Replaces every float convolution [`DenseConv`] covers in a decluttered model, when this
/// CPU runs its kernel; returns how many.
pub fn rewrite(model: &mut TypedModel, cpu: Cpu) -> TractResult<usize> {
    if !available(cpu) {
        return Ok(0);
    }
    replace_each(model, |model, node| {
        let (op, source, last, residual) = lower(model, node, cpu)?;
        let mut inputs = tvec![source];
        inputs.extend(residual);
        Some((op, inputs, last))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self as verify, noise, Plan, Source};
    use msn_onnx::builder::{attr, GraphBuilder};

    /// Every kernel, this one included where it is not in the default plan (aarch64).
    fn ours() -> crate::Options {
        crate::Options {
            dense: true,
            ..crate::Options::default()
        }
    }

    /// The vector tile gives the plain definition's values (up to rounding: both use fused
    /// multiply-adds in the same order, so they agree exactly), over ragged tiles, clips,
    /// and a residual.
    #[test]
    fn tiles_match_the_definition() {
        let levels: Vec<Cpu> = crate::cpu::get()
            .levels()
            .into_iter()
            .filter(|&c| available(c))
            .collect();
        if levels.is_empty() {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX2 or NEON");
            return;
        }
        for cpu in levels {
            eprintln!("tiles at {:?}", cpu.level());
            for ntaps in [1, 2, 9, 40, 300] {
                for (rows, cols) in [(6, 64), (1, 1), (3, 15), (2, 16), (6, 17), (4, 63), (5, 48)] {
                    // `tight`: the input ends at the last tap's last value (no room past it).
                    for (residual, tight) in [(false, false), (true, false), (false, true)] {
                        let span = 200;
                        let x = noise(ntaps as u64, span + COLS);
                        let taps: Vec<usize> = (0..ntaps).map(|k| (k * 37) % span).collect();
                        let end = taps.iter().max().unwrap() + cols;
                        let x = if tight { &x[..end] } else { &x[..] };
                        let w = noise(7 + ntaps as u64, ntaps * ROWS);
                        let res: Vec<Vec<f32>> =
                            (0..ROWS).map(|r| noise(99 + r as u64, COLS)).collect();
                        let t = Tile {
                            x,
                            taps: &taps,
                            w: &w,
                            bias: [0.5, -0.25, 0.0, 1.0, -1.0, 0.125],
                            clip1: Clip { lo: -1.5, hi: 2.0 },
                            clip2: if residual {
                                Clip { lo: 0.0, hi: 2.5 }
                            } else {
                                Clip::NONE
                            },
                            rows,
                            cols,
                        };
                        let mut want = vec![vec![f32::NAN; COLS]; ROWS];
                        tile_plain(&t, residual.then_some(&res[..]), &mut want);
                        let mut got = vec![vec![f32::NAN; COLS]; ROWS];
                        let out = std::array::from_fn(|r| got[r].as_mut_ptr());
                        let rp = residual.then(|| std::array::from_fn(|r| res[r].as_ptr()));
                        // SAFETY: the CPU has AVX2 or NEON; `x` holds `COLS` values past every tap,
                        // `w` `ROWS` per tap, the rows `COLS` each.
                        unsafe { run_tile(cpu, &t, rp, out).unwrap() };
                        for r in 0..ROWS {
                            for p in 0..COLS {
                                let (g, e) = (got[r][p], want[r][p]);
                                let what = format!("taps {ntaps} tile {rows}x{cols} r{r} p{p}");
                                if r < rows && p < cols {
                                    assert_eq!(g.to_bits(), e.to_bits(), "{what}: {g} vs {e}");
                                } else {
                                    assert!(g.is_nan(), "{what}: written outside the tile");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The channel tiles give the plain definition's values, for every shape there is a
    /// kernel for, windows in any order.
    #[test]
    fn channel_tiles_match_the_definition() {
        if !crate::cpu::get().avx512() {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX-512");
            return;
        }
        for (cv, pt) in CHANNEL_TILES {
            for ntaps in [1, 3, 9, 200] {
                let span = 150;
                let x = noise(ntaps as u64, span + 64);
                let taps: Vec<usize> = (0..ntaps).map(|k| (k * 31) % span).collect();
                let windows: Vec<usize> = (0..pt).map(|p| (p * 13) % 64).collect();
                let w = noise(5 + ntaps as u64, ntaps * 16 * cv);
                let bias = noise(77, 16 * cv);
                let t = ChannelTile {
                    x: &x,
                    taps: &taps,
                    windows: &windows,
                    w: &w,
                    bias: &bias,
                    clip1: Clip { lo: -1.0, hi: 1.5 },
                };
                let mut want = [[f32::NAN; COLS]; 12];
                channel_tile_plain(&t, cv, &mut want);
                let mut got = [[f32::NAN; COLS]; 12];
                // SAFETY: the CPU has AVX-512; every tap of every window is within `x`.
                unsafe { run_channel_tile(&t, cv, &mut got).unwrap() };
                for p in 0..12 {
                    for c in 0..COLS {
                        let (g, e) = (got[p][c], want[p][c]);
                        let what = format!("({cv}, {pt}) taps {ntaps} p{p} c{c}");
                        if p < pt && c < 16 * cv {
                            assert_eq!(g.to_bits(), e.to_bits(), "{what}: {g} vs {e}");
                        } else {
                            assert!(g.is_nan(), "{what}: written outside the tile");
                        }
                    }
                }
            }
        }
    }

    /// Channels go on the lanes where 64-pixel tiles would waste lanes: small planes.
    #[test]
    fn lanes_follow_the_plane() {
        // EfficientNet-Lite0's 7x7 1x1 convolutions, ResNet's 7x7 and 14x14 3x3.
        assert!(matches!(
            Lanes::pick(1152, 192, 49, 49),
            Lanes::Channels { .. }
        ));
        assert!(matches!(
            Lanes::pick(320, 1152, 49, 49),
            Lanes::Channels { .. }
        ));
        assert!(matches!(
            Lanes::pick(512, 4608, 49, 63),
            Lanes::Channels { .. }
        ));
        assert!(matches!(
            Lanes::pick(256, 2304, 196, 224),
            Lanes::Channels { .. }
        ));
        // Large planes keep pixels on the lanes, and so do 14x14 1x1 convolutions: their
        // last 16-pixel vector wastes little, and their few taps make transposing dear.
        assert_eq!(Lanes::pick(96, 16, 112 * 112, 112 * 112), Lanes::Pixels);
        assert_eq!(Lanes::pick(144, 24, 56 * 56, 56 * 56), Lanes::Pixels);
        assert_eq!(Lanes::pick(480, 80, 196, 196), Lanes::Pixels);
        assert_eq!(Lanes::pick(80, 480, 196, 196), Lanes::Pixels);
        // The cases `convolutions_match_tracts_own` relies on for channel tiles, one with
        // output channels that do not fill the last tile.
        assert!(matches!(
            Lanes::pick(80, 400, 49, 49),
            Lanes::Channels { cv: 3, .. }
        ));
        assert!(matches!(
            Lanes::pick(64, 320, 49, 49),
            Lanes::Channels { .. }
        ));
        assert!(matches!(
            Lanes::pick(64, 576, 196, 224),
            Lanes::Channels { .. }
        ));
    }

    /// A Conv on `[n, c, h, w]` to `cout` channels, kernel `kh x kw`, then `tail`:
    /// "+"-separated steps of "relu", "relu6" and "res" (add the input: `cout == c` and the
    /// same plane).
    #[allow(clippy::too_many_arguments)]
    fn graph(
        n: usize,
        (c, cout): (usize, usize),
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        dilation: usize,
        pads: [usize; 4],
        tail: &str,
    ) -> Source {
        // "gN" in the tail: N groups.
        let groups = tail
            .split('+')
            .find_map(|s| s.strip_prefix('g').and_then(|g| g.parse().ok()))
            .unwrap_or(1usize);
        let cg = c / groups;
        let mut b = GraphBuilder::new("dense");
        let x = b.input("x", &[n as i64, c as i64, h as i64, w as i64]);
        let k = noise(3, cout * cg * kh * kw)
            .into_iter()
            .map(|v| v / ((cg * kh * kw) as f32).sqrt())
            .collect();
        let k = ndarray::Array::from_shape_vec((cout, cg, kh, kw), k).unwrap();
        let k = b.initializer_f32("k", &k.into_dyn());
        let bias = ndarray::Array::from_vec(noise(4, cout)).into_dyn();
        let bias = b.initializer_f32("b", &bias);
        let attrs = [
            attr::ints("kernel_shape", &[kh as i64, kw as i64]),
            attr::ints("pads", &pads.map(|p| p as i64)),
            attr::ints("dilations", &[dilation as i64; 2]),
            attr::ints("strides", &[sh as i64, sw as i64]),
            attr::int("group", groups as i64),
        ];
        let mut y = b.node("Conv", &[&x, &k, &bias], "conv", &attrs);
        let (lo, hi) = (
            b.initializer_f32("lo", &ndarray::arr0(0f32).into_dyn()),
            b.initializer_f32("hi", &ndarray::arr0(6f32).into_dyn()),
        );
        let steps = tail
            .split('+')
            .filter(|s| !s.is_empty() && !s.starts_with('g'));
        for (i, step) in steps.enumerate() {
            let name = format!("{step}{i}");
            y = match step {
                "relu" => b.node("Relu", &[&y], &name, &[]),
                "relu6" => b.node("Clip", &[&y, &lo, &hi], &name, &[]),
                "res" => b.node("Add", &[&y, &x], &name, &[]),
                _ => unreachable!("{step}"),
            };
        }
        let oh = (h + pads[0] + pads[2] - dilation * (kh - 1) - 1) / sh + 1;
        let ow = (w + pads[1] + pads[3] - dilation * (kw - 1) - 1) / sw + 1;
        b.output(&y, &[n as i64, cout as i64, oh as i64, ow as i64]);
        let model = b.into_model(13);
        Source::from_bytes(msn_onnx::io::to_bytes(&model)).unwrap()
    }

    /// Our plan against tract's own (its unoptimised plan), on random inputs: the largest
    /// difference relative to the output's largest value, and how many of our ops it has.
    fn check(source: &Source) -> (f64, usize) {
        let shapes = source.shapes();
        let ours = source.plan(&shapes, Plan::With(ours())).unwrap();
        let ops = ours.ops().iter().filter(|o| *o == "MsnDenseConv").count();
        let reference = source.plan(&shapes, Plan::Reference).unwrap();
        let len = shapes[0].iter().product::<usize>();
        let x = noise(11, len)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect::<Vec<_>>();
        let x = tract_onnx::prelude::Tensor::from_shape(&shapes[0], &x).unwrap();
        let a = ours.run(vec![x.clone()]).unwrap();
        let b = reference.run(vec![x]).unwrap();
        assert_eq!(a[0].shape(), b[0].shape());
        (verify::relative_error(&a[0], &b[0]), ops)
    }

    /// 1x1 convolutions (EfficientNet's and MobileNet's expansions and projections, with
    /// their clips and residuals), ResNet's 3x3 with its residual and Relu, dilation, uneven
    /// kernels and padding, a kernel as large as the image, batches, against tract's own.
    #[test]
    fn convolutions_match_tracts_own() {
        if !available(crate::cpu::get()) {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX2 or NEON");
            return;
        }
        type Pair = (usize, usize);
        type Case = (usize, Pair, Pair, Pair, Pair, usize, [usize; 4]);
        let cases: [(Case, &str); 24] = [
            // Strided: ResNet's 3x3 and 1x1 downsampling and its 7x7 stem, cnn3's 4x4, uneven
            // strides with dilation.
            ((1, (64, 128), (28, 28), (3, 3), (2, 2), 1, [1; 4]), "relu"),
            ((1, (64, 128), (14, 14), (1, 1), (2, 2), 1, [0; 4]), ""),
            ((1, (3, 16), (40, 40), (7, 7), (2, 2), 1, [3; 4]), "relu"),
            ((2, (8, 16), (28, 28), (4, 4), (2, 2), 1, [1; 4]), "relu6"),
            ((2, (5, 7), (11, 16), (5, 3), (3, 2), 2, [2, 1, 0, 1]), ""),
            ((1, (256, 512), (14, 14), (3, 3), (2, 2), 1, [1; 4]), "relu"),
            ((1, (400, 80), (7, 7), (1, 1), (1, 1), 1, [0; 4]), "relu6"),
            ((1, (16, 96), (28, 28), (1, 1), (1, 1), 1, [0; 4]), "relu6"),
            ((1, (24, 24), (14, 14), (1, 1), (1, 1), 1, [0; 4]), "res"),
            ((2, (37, 10), (13, 11), (1, 1), (1, 1), 1, [0; 4]), ""),
            ((1, (3, 5), (7, 9), (1, 1), (1, 1), 1, [0; 4]), "relu"),
            ((1, (320, 64), (7, 7), (1, 1), (1, 1), 1, [0; 4]), "relu6"),
            (
                (1, (64, 64), (14, 14), (3, 3), (1, 1), 1, [1; 4]),
                "res+relu",
            ),
            ((2, (16, 32), (28, 28), (3, 3), (1, 1), 1, [1; 4]), "relu"),
            ((1, (6, 9), (17, 13), (3, 3), (1, 1), 2, [2; 4]), "relu6"),
            ((2, (5, 7), (11, 16), (5, 3), (1, 1), 1, [2, 1, 0, 1]), ""),
            ((1, (4, 6), (5, 5), (5, 5), (1, 1), 1, [0; 4]), "relu"),
            ((1, (32, 32), (6, 6), (1, 1), (1, 1), 1, [1; 4]), "relu"),
            (
                (1, (12, 12), (9, 10), (3, 3), (1, 1), 1, [1; 4]),
                "relu+res+relu6",
            ),
            ((1, (7, 7), (3, 70), (3, 3), (1, 1), 1, [1; 4]), "relu6+res"),
            // Grouped (RegNet, ResNeXt): one op, a part per group.
            (
                (1, (64, 64), (14, 14), (3, 3), (1, 1), 1, [1; 4]),
                "g4+relu",
            ),
            ((2, (48, 96), (9, 11), (3, 3), (2, 2), 1, [1; 4]), "g3"),
            (
                (1, (64, 64), (7, 7), (3, 3), (1, 1), 1, [1; 4]),
                "g8+relu+res+relu6",
            ),
            (
                (1, (20, 10), (5, 6), (3, 3), (1, 2), 2, [2, 1, 2, 1]),
                "g5+relu6",
            ),
        ];
        for ((n, c, hw, k, st, d, pads), tail) in cases {
            let (err, ops) = check(&graph(n, c, hw, k, st, d, pads, tail));
            let what = format!(
                "n{n} {c:?} {hw:?} kernel {k:?} stride {st:?} dilation {d} pads {pads:?} {tail}"
            );
            assert_eq!(ops, 1, "{what}: not rewritten");
            assert!(err < 1e-5, "{what}: relative error {err:e}");
        }
    }

    /// Threads split the tiles (pixel blocks and channel groups) without changing a value:
    /// each output is one tile's, summed in the same order.
    #[test]
    fn threads_give_the_same_values() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        if !available(crate::cpu::get()) {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX2 or NEON");
            return;
        }
        let cases = [
            // Pixels on the lanes, a few row groups (so the pixels are split too); channels
            // on the lanes; strided and wide with a residual.
            graph(1, (32, 16), (40, 40), (1, 1), (1, 1), 1, [0; 4], "relu6"),
            graph(1, (320, 64), (7, 7), (1, 1), (1, 1), 1, [0; 4], "relu6"),
            graph(1, (64, 64), (14, 14), (3, 3), (1, 1), 1, [1; 4], "res+relu"),
            graph(2, (16, 24), (30, 30), (3, 3), (2, 2), 1, [1; 4], "relu"),
            graph(
                1,
                (12, 12),
                (33, 35),
                (3, 3),
                (1, 1),
                1,
                [1; 4],
                "relu+res+relu6",
            ),
        ];
        for source in cases {
            let shapes = source.shapes();
            let ours = source.plan(&shapes, Plan::With(ours())).unwrap();
            let len = shapes[0].iter().product::<usize>();
            let x = tract_onnx::prelude::Tensor::from_shape(&shapes[0], &noise(5, len)).unwrap();
            let one = multithread_tract_scope(Executor::SingleThread, || {
                ours.run(vec![x.clone()]).unwrap().remove(0)
            });
            let three = multithread_tract_scope(Executor::multithread(3), || {
                ours.run(vec![x.clone()]).unwrap().remove(0)
            });
            assert_eq!(one, three, "{shapes:?}");
            let reference = source.plan(&shapes, Plan::Reference).unwrap();
            let want = reference.run(vec![x]).unwrap().remove(0);
            assert!(verify::relative_error(&three, &want) < 1e-5);
        }
    }

    /// A hostile model's padding and strides that would make the padded copy of a small
    /// input enormous (about 800 M values here, for a 3x3 output): not built, so the
    /// convolution is left to tract. The same shape with ordinary padding is built.
    #[test]
    fn enormous_padding_is_refused() {
        if !available(Cpu::detect()) {
            eprintln!("SKIPPED: this CPU has no AVX2 or NEON, so no DenseConv is built");
            return;
        }
        let found = |stride: usize, pad: usize, out: usize| Found {
            source: OutletId::new(0, 0),
            input: tvec![1, 8, 10, 10],
            output: tvec![1, 8, out, out],
            cin: 8,
            cout: 8,
            kernel: (3, 3),
            strides: (stride, stride),
            dilations: (1, 1),
            pads: [pad; 4],
            weights: vec![0.5; 8 * 8 * 9],
            bias: vec![0.0; 8],
            groups: 1,
        };
        assert!(build(found(5000, 5000, 3), Cpu::detect()).is_none());
        assert!(build(found(1, 1, 10), Cpu::detect()).is_some());
        assert!(build(found(2, 1, 5), Cpu::detect()).is_some());
    }

    /// What follows the convolution is taken in: nothing of the tail is left to tract.
    #[test]
    fn the_tail_is_fused() {
        if !available(crate::cpu::get()) {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX2 or NEON");
            return;
        }
        let source = graph(
            1,
            (8, 8),
            (10, 10),
            (3, 3),
            (1, 1),
            1,
            [1; 4],
            "relu+res+relu6",
        );
        let shapes = source.shapes();
        let ours = source.plan(&shapes, Plan::With(ours())).unwrap();
        assert_eq!(ours.ops(), ["Source", "MsnDenseConv"], "{:?}", ours.ops());
    }

    /// A strided 1x1 convolution, which tract declutters into `Downsample`s and a product,
    /// is one op, with its values (uneven sizes: the last row and column are read).
    #[test]
    fn strided_one_by_one_takes_in_the_downsample() {
        if !available(crate::cpu::get()) {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX2 or NEON");
            return;
        }
        for (hw, s) in [((15, 13), (2, 2)), ((14, 9), (2, 3)), ((9, 14), (1, 2))] {
            let source = graph(1, (24, 40), hw, (1, 1), s, 1, [0; 4], "relu");
            let shapes = source.shapes();
            let ours = source.plan(&shapes, Plan::With(ours())).unwrap();
            assert_eq!(
                ours.ops(),
                ["Source", "MsnDenseConv"],
                "{hw:?} {s:?}: {:?}",
                ours.ops()
            );
            let (err, count) = check(&source);
            assert!(
                count == 1 && err < 1e-5,
                "{hw:?} {s:?}: {err} ({count} ops)"
            );
        }
    }
}
