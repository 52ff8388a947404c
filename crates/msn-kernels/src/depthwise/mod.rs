//! Depthwise convolutions, and first layers on gray or RGB images, on our own vector kernel,
//! on every thread of tract's executor.
//!
//! tract 0.23.9 walks a depthwise convolution zone by zone along each output row: on x86-64
//! its vector kernel covers stride 1 only, and on the small late planes of a mobile network
//! (7x7 and 14x14 with 5x5 kernels) most of its time goes to walking the zones. On
//! EfficientNet-Lite0 that was 47% of a run, at about 1 GMAC/s. A first layer (three input
//! channels, stride 2) goes through im2col to a matrix product with an inner dimension of
//! 27. [`rewrite`] replaces every float depthwise convolution of a decluttered model, and
//! every one whose groups have at most 27 taps in all (3x3 on RGB), (NCHW, constant kernel
//! and bias, no dilation) by
//! [`DirectConv`], with a `Relu` or `Clip` that follows it fused in, before tract optimises
//! the rest.
//!
//! One output plane at a time: the group's input planes are copied into a zero-padded
//! buffer, each split into its `sh x sw` phases for a strided convolution (every phase a
//! stride-1 image with the same row length `qw`), so that each output position
//! `oy * qw + ox` of a "wide" output is the bias plus one product per tap and input plane at
//! a fixed offset from it. That sum runs along whole vectors of the flattened wide output,
//! across row ends (the `qw - ow` columns past each row's end are computed and dropped), for
//! any kernel size and stride; the wide rows are then copied into place.

use std::fmt;
use std::sync::Arc;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use crate::dwlanes::ChannelLanes;
use crate::graph::{
    clip_bound, image_shape, in_proportion, konst, per_channel, replace_each, values,
};
use crate::lanes::{copy_rows, split_pairs};
use crate::quant::{quantize_u8, QuantizeU8};
use crate::Cpu;

/// The most taps (input channels times kernel positions) the kernel takes per group with
/// more than one input channel: 3x3 on RGB. ResNet's 7x7 stem (147) ran 1.0-1.1x slower
/// here than tract's im2col and matrix product.
const MAX_GROUP_TAPS: usize = 27;

/// Values the kernel reads past the last tap's wide output (its vectors are 16 wide).
const SLACK: usize = 16;

/// Where a plane and its taps sit in the padded, phase-split buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    /// Input plane.
    h: usize,
    w: usize,
    /// Strides and the padding before (top, left).
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    /// Output plane.
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    /// One phase's rows and row length.
    qh: usize,
    pub(crate) qw: usize,
    /// Input planes per group (1 for a depthwise convolution), one after the other in the
    /// buffer.
    cin: usize,
    /// Each tap's offset in the buffer from the wide output position it adds to, for every
    /// input plane of the group in turn (the order of an ONNX kernel's `[ci, kh, kw]`).
    pub(crate) offsets: Vec<usize>,
    /// The largest of `offsets`.
    pub(crate) reach: usize,
}

impl Geometry {
    pub(crate) fn new(
        cin: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (pt, pl): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Geometry {
        // Rows and columns the output reads, padding included (never fewer than the input's
        // own, which are copied whole).
        let ph = ((oh - 1) * sh + kh).max(pt + h);
        let pw = ((ow - 1) * sw + kw).max(pl + w);
        let (qh, qw) = (ph.div_ceil(sh), pw.div_ceil(sw));
        let plane_len = sh * sw * qh * qw;
        let mut offsets = Vec::with_capacity(cin * kh * kw);
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let phase = (ky % sh) * sw + kx % sw;
                    offsets.push(ci * plane_len + phase * qh * qw + (ky / sh) * qw + kx / sw);
                }
            }
        }
        Geometry {
            reach: offsets.iter().max().copied().unwrap_or(0),
            h,
            w,
            sh,
            sw,
            pt,
            pl,
            oh,
            ow,
            qh,
            qw,
            cin,
            offsets,
        }
    }

    /// One input plane's length in the buffer, all its phases.
    fn plane_len(&self) -> usize {
        self.sh * self.sw * self.qh * self.qw
    }

    /// The wide output's length, in whole vectors.
    pub(crate) fn wide_len(&self) -> usize {
        (self.oh * self.qw).next_multiple_of(16)
    }

    /// The buffer's length: every plane's phases, then what the last vectors of the last
    /// taps read. The largest offset plus `wide_len` stays within it: a tap's row in its
    /// phase plus the output rows is at most `qh`, and its column past the row end at most
    /// `(kw - 1) / sw`.
    pub(crate) fn buffer_len(&self) -> usize {
        let last = self.offsets.iter().max().copied().unwrap_or(0);
        (self.cin * self.plane_len()).max(last + self.wide_len()) + SLACK
    }

    /// Copies a group's input planes (`cin` of `h * w`) into `buf`: padded with `pad`,
    /// phase-split.
    #[inline(always)]
    pub(crate) fn fill_group_padded(&self, cpu: Cpu, planes: &[f32], buf: &mut [f32], pad: f32) {
        crate::lanes::splat(cpu, buf, pad);
        self.refill_group(cpu, planes, buf)
    }

    /// Copies a group's input planes into `buf` whose padding (everything but the planes'
    /// places) already holds the padding's value: `buf` was filled with this geometry before
    /// (or is zeroed, for a zero padding). The planes' places are the same for every group,
    /// so only they are written; setting the whole buffer again cost as much as the copy.
    #[inline(always)]
    pub(crate) fn refill_group(&self, cpu: Cpu, planes: &[f32], buf: &mut [f32]) {
        let len = self.plane_len();
        for (plane, buf) in planes
            .chunks_exact(self.h * self.w)
            .zip(buf.chunks_mut(len))
        {
            self.fill(cpu, plane, buf);
        }
    }

    /// Copies one input plane into its place in `buf` (zeroed): padded, split into phases.
    #[inline(always)]
    fn fill(&self, cpu: Cpu, plane: &[f32], buf: &mut [f32]) {
        if self.sh == 1 && self.sw == 1 {
            let at = self.pt * self.qw + self.pl;
            let (src, dst) = ((plane, self.w), (&mut buf[at..], self.qw));
            copy_rows(src, dst, self.h, self.w);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.sw == 2 && cpu.avx512() {
            assert!(plane.len() == self.h * self.w && buf.len() >= self.plane_len());
            // SAFETY: `cpu` has AVX-512 F, so the CPU has it; the plane and the buffer have the lengths
            // `fill_pairs_avx512` needs (asserted).
            unsafe { self.fill_pairs_avx512(plane, buf) };
            return;
        }
        let phase_len = self.qh * self.qw;
        for (iy, row) in plane.chunks_exact(self.w).enumerate() {
            let py = iy + self.pt;
            let (a, qy) = (py % self.sh, py / self.sh);
            if self.sw == 1 {
                let at = a * phase_len + qy * self.qw + self.pl;
                buf[at..at + self.w].copy_from_slice(row);
                continue;
            }
            if self.sw == 2 {
                // Pairs of columns split between the two column phases: even padded columns
                // to phase 0. An odd left padding starts with a lone column in phase 1.
                let base = a * 2 * phase_len + qy * self.qw;
                let (row, q0) = match self.pl % 2 {
                    0 => (row, self.pl / 2),
                    _ => {
                        buf[base + phase_len + self.pl / 2] = row[0];
                        (&row[1..], self.pl.div_ceil(2))
                    }
                };
                let (even, odd) = buf[base + q0..].split_at_mut(phase_len);
                if row.len() % 2 == 1 {
                    even[row.len() / 2] = row[row.len() - 1];
                }
                split_pairs(cpu, row, even, odd);
                continue;
            }
            // Column phase `b` holds the input columns `ix` with `(ix + pl) % sw == b`.
            for b in 0..self.sw {
                let ix0 = (b + self.sw - self.pl % self.sw) % self.sw;
                if ix0 >= self.w {
                    continue;
                }
                let at = (a * self.sw + b) * phase_len + qy * self.qw + (ix0 + self.pl) / self.sw;
                let src = row[ix0..].iter().step_by(self.sw);
                for (d, &v) in buf[at..].iter_mut().zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// A convolution of an NCHW f32 tensor whose groups have few input channels each: a
/// depthwise convolution (one input channel per group), or a network's first convolution
/// (three). With an optional clip of its output, as tract's `Max` then `Min` compute it.
#[derive(Clone)]
pub struct DirectConv {
    /// Input shape, `[n, c, h, w]`.
    input: [usize; 4],
    /// Output channels, and groups.
    cout: usize,
    groups: usize,
    /// Whether the tensors have the `n` axis (NCHW) or not (CHW, `n` is 1).
    batch: bool,
    geometry: Geometry,
    /// `[cout, cin / groups * kh * kw]`, row-major.
    kernel: Arc<Vec<f32>>,
    /// One per channel.
    bias: Arc<Vec<f32>>,
    /// Lower and upper bound, each optional.
    clip: (Option<f32>, Option<f32>),
    /// A u8 input, dequantized as tract's `DequantizeLinearF32` does (scale, zero point),
    /// in place of that op before this one.
    dequant: Option<(f32, i32)>,
    /// A u8 output, quantized as [`QuantizeU8`] does, in place of that op after this one.
    quant: Option<QuantizeU8>,
    /// A float depthwise convolution of a small plane: 16 channels on the lanes
    /// ([`crate::dwlanes`]), its kernel and bias packed for that.
    lanes: Option<Lanes>,
    /// What the kernels may use.
    cpu: Cpu,
}

/// A small plane's geometry with the kernel and bias packed for 16 channel lanes.
type Lanes = (ChannelLanes, Arc<Vec<f32>>, Arc<Vec<f32>>);

/// The input of a [`DirectConv`].
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    /// Values, scale, zero point.
    U8(&'a [u8], f32, i32),
}

/// Bit for bit: two ops are the same op when they compute the same values.
impl PartialEq for DirectConv {
    fn eq(&self, other: &DirectConv) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let clip = |c: (Option<f32>, Option<f32>)| (c.0.map(f32::to_bits), c.1.map(f32::to_bits));
        self.input == other.input
            && (self.cout, self.groups) == (other.cout, other.groups)
            && self.geometry == other.geometry
            && bits(&self.kernel) == bits(&other.kernel)
            && bits(&self.bias) == bits(&other.bias)
            && clip(self.clip) == clip(other.clip)
            && self.dequant.map(|(s, z)| (s.to_bits(), z))
                == other.dequant.map(|(s, z)| (s.to_bits(), z))
            && self.quant == other.quant
    }
}

impl Eq for DirectConv {}

impl fmt::Debug for DirectConv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        write!(
            f,
            "DirectConv({:?} -> {} channels, {} groups, {} taps, stride {}x{}, out {}x{}, clip {:?}, dequantize {:?}, quantize {:?})",
            self.input,
            self.cout,
            self.groups,
            g.offsets.len(),
            g.sh,
            g.sw,
            g.oh,
            g.ow,
            self.clip,
            self.dequant,
            self.quant
        )
    }
}

crate::graph::kernel_op!(DirectConv, "MsnDirectConv", Rounding);

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].try_as_plain_ram()?;
        let x = match self.dequant {
            None => Input::F32(input.as_slice::<f32>()?),
            Some((scale, zp)) => Input::U8(input.as_slice::<u8>()?, scale, zp),
        };
        let g = &self.geometry;
        let shape = self.shape(self.input[0], self.cout, g.oh, g.ow);
        let output = match (&self.quant, &self.lanes, x) {
            (None, Some((lanes, k, b)), Input::F32(x)) => {
                let (lo, hi) = (
                    self.clip.0.unwrap_or(f32::NEG_INFINITY),
                    self.clip.1.unwrap_or(f32::INFINITY),
                );
                let mut output = crate::split::output_f32(&shape)?;
                let mut view = output.try_as_plain_ram_mut()?;
                let out = view.as_slice_mut::<f32>()?;
                lanes.run(x, (k, b), (lo, hi), out)?;
                output
            }
            (None, ..) => {
                let mut output = crate::split::output_f32(&shape)?;
                let mut view = output.try_as_plain_ram_mut()?;
                let g = &self.geometry;
                self.planes(x, view.as_slice_mut::<f32>()?, |wide, out| {
                    copy_rows((wide, g.qw), (out, g.ow), g.oh, g.ow)
                })?;
                output
            }
            (Some(q), ..) => {
                let mut output = crate::split::output_u8(&shape)?;
                let mut view = output.try_as_plain_ram_mut()?;
                let g = &self.geometry;
                self.planes(x, view.as_slice_mut::<u8>()?, |wide, out| {
                    // Each row from the rest of the wide output, whose values past the row
                    // let the last step run whole.
                    for (r, row) in out.chunks_exact_mut(g.ow).enumerate() {
                        quantize_u8(&wide[r * g.qw..], row, q.scale, q.zero_point)
                    }
                })?;
                output
            }
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl DirectConv {
    /// Every output plane into `out`, written from the wide output (rows of `qw` values, the
    /// first `ow` kept) by `store`.
    fn planes<T: Send>(
        &self,
        x: Input,
        out: &mut [T],
        store: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> TractResult<()> {
        let [n, cin, h, w] = self.input;
        let len = match x {
            Input::F32(x) => x.len(),
            Input::U8(x, ..) => x.len(),
        };
        ensure!(len == n * cin * h * w, "depthwise input has the wrong size");
        let g = &self.geometry;
        let plane = g.oh * g.ow;
        let cout = self.cout;
        let cout_g = cout / self.groups;
        let work = out.len() * g.offsets.len();
        let taps = g.offsets.len();
        let group_len = g.cin * h * w;
        let (lo, hi) = (
            self.clip.0.unwrap_or(f32::NEG_INFINITY),
            self.clip.1.unwrap_or(f32::INFINITY),
        );
        let (isa, cpu) = (Isa::of(self.cpu), self.cpu);
        // Group `group`'s input planes into `buf`, through `floats` for a u8 input. `buf` is
        // zeroed when it is made, and its padding stays zero: only the planes are written.
        let fill = |group: usize, buf: &mut [f32], floats: &mut [f32]| {
            let at = group * group_len..(group + 1) * group_len;
            match x {
                Input::F32(x) => g.refill_group(cpu, &x[at], buf),
                Input::U8(x, scale, zp) => {
                    // What tract's `DequantizeLinearF32` computes.
                    for (f, &v) in floats.iter_mut().zip(&x[at]) {
                        *f = (v as i32 - zp) as f32 * scale;
                    }
                    g.refill_group(cpu, floats, buf)
                }
            }
        };
        let floats = || match x {
            Input::F32(_) => Vec::new(),
            Input::U8(..) => vec![0f32; group_len],
        };
        // One group for every output plane (a first layer on one image): filled once, here,
        // rather than once by every thread's chunk.
        let shared = (self.groups == 1 && n == 1).then(|| {
            let mut buf = vec![0f32; g.buffer_len()];
            fill(0, &mut buf, &mut floats());
            buf
        });
        tract_linalg::multithread::par_chunks_mut(out, plane, work, |first, chunk| {
            let mut own = match shared {
                Some(_) => Vec::new(),
                None => vec![0f32; g.buffer_len()],
            };
            let mut wide = vec![0f32; g.wide_len()];
            let mut floats = floats();
            // The (image, group) whose planes `own` holds.
            let mut filled = None;
            for (i, out) in chunk.chunks_exact_mut(plane).enumerate() {
                let p = first + i;
                let co = p % cout;
                // Input planes of image `p / cout`, group `co / cout_g`.
                let group = p / cout * self.groups + co / cout_g;
                let buf = match &shared {
                    Some(buf) => &buf[..],
                    None => {
                        if filled != Some(group) {
                            filled = Some(group);
                            fill(group, &mut own, &mut floats);
                        }
                        &own[..]
                    }
                };
                let job = Plane {
                    g,
                    k: &self.kernel[co * taps..(co + 1) * taps],
                    bias: self.bias[co],
                    lo,
                    hi,
                };
                isa.run(&job, buf, &mut wide);
                store(&wide, out);
            }
            Ok(())
        })
    }

    /// A tensor shape in this op's layout.
    fn shape(&self, n: usize, c: usize, h: usize, w: usize) -> TVec<usize> {
        if self.batch {
            tvec![n, c, h, w]
        } else {
            tvec![c, h, w]
        }
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = if self.dequant.is_some() {
            u8::datum_type()
        } else {
            f32::datum_type()
        };
        ensure!(inputs.len() == 1 && inputs[0].datum_type == input);
        let g = &self.geometry;
        let shape = self.shape(self.input[0], self.cout, g.oh, g.ow);
        Ok(tvec!(if self.quant.is_some() {
            u8::fact(shape)
        } else {
            f32::fact(shape)
        }))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geometry;
        let macs = self.input[0] * self.cout * g.oh * g.ow * g.offsets.len();
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// One output channel of one image: its taps, bias and clip bounds (infinite when there is
/// no clip; a NaN passes through either way).
struct Plane<'a> {
    g: &'a Geometry,
    k: &'a [f32],
    bias: f32,
    lo: f32,
    hi: f32,
}

/// The instruction set the plane loop is compiled for, picked at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
    Plain,
}

impl Isa {
    /// The best loop `cpu` runs.
    fn of(cpu: Cpu) -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if cpu.avx512() {
                return Isa::Avx512;
            }
            if cpu.avx2() {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if cpu.neon() {
            return Isa::Neon;
        }
        let _ = cpu;
        Isa::Plain
    }

    /// Convolves one plane into `wide` (rows of `qw`, the `ow` first of each the output's)
    /// from `buf`, its group's planes filled in ([`Geometry::fill_group_padded`]).
    fn run(self, p: &Plane, buf: &[f32], wide: &mut [f32]) {
        // What the kernels' unchecked reads and writes rely on: every tap's reads for the
        // whole wide output are within `buf`, each tap has its weight, and the wide output
        // is whole 16-value blocks.
        assert!(
            p.g.reach + wide.len() <= buf.len(),
            "depthwise buffer too short"
        );
        assert!(p.k.len() <= p.g.offsets.len() && wide.len().is_multiple_of(16));
        // SAFETY: `Isa::of` picked the instruction set from a `Cpu`, which never exceeds
        // what the CPU has; the reads and writes are within bounds, as asserted.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512_plane(p, buf, wide),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2_plane(p, buf, wide),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => neon_plane(p, buf, wide),
                Isa::Plain => plain_plane(p, buf, wide),
            }
        }
    }
}

/// A plane's kernel with explicit vector registers: the wide output in blocks of `$n`
/// vectors (64 values) then `$m` (16), each block's accumulators at constant places
/// (`seq!` unrolls their loops) and the taps two at a time, so that it is vector code with
/// its accumulators in registers at any optimisation level (the boards' `dist` profile is
/// "z", where LLVM vectorises and unrolls nothing). One call per plane: at "z" a call per
/// block cost a stack frame and the accumulators' set-up through memory each time (the
/// kernel ran 1.3x its opt-level-3 time). The clip keeps a NaN: x86's max/min return their
/// second operand when either is NaN, NEON's return NaN.
///
/// # Safety
/// The CPU has the instruction set; `buf` holds every tap's offset plus `wide.len()`
/// values; `wide.len()` is a multiple of 16; `p.k` has at most `p.g.offsets.len()` taps
/// ([`Isa::run`] asserts these).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_macros)
)]
macro_rules! simd_plane {
    ($(#[$attr:meta])* $name:ident, $width:expr, $splat:path, $load:path, $fma:path,
     $max:path, $min:path, $store:path, $n:literal, $m:literal) => {
        $(#[$attr])*
        pub(super) unsafe fn $name(p: &Plane, buf: &[f32], wide: &mut [f32]) {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let (offsets, k) = (p.g.offsets.as_ptr(), p.k.as_ptr());
                let taps = p.k.len();
                let (bias, lo, hi) = ($splat(p.bias), $splat(p.lo), $splat(p.hi));
                let (len, src, dst) = (wide.len(), buf.as_ptr(), wide.as_mut_ptr());
                let mut at = 0;
                while at + $n * $width <= len {
                    simd_plane!(@block $n, $width, $splat, $load, $fma, $max, $min, $store,
                        (offsets, k, taps), (bias, lo, hi), src.add(at), dst.add(at));
                    at += $n * $width;
                }
                while at < len {
                    simd_plane!(@block $m, $width, $splat, $load, $fma, $max, $min, $store,
                        (offsets, k, taps), (bias, lo, hi), src.add(at), dst.add(at));
                    at += $m * $width;
                }
            }
        }
    };
    (@block $n:literal, $width:expr, $splat:path, $load:path, $fma:path, $max:path,
     $min:path, $store:path, ($offsets:ident, $k:ident, $taps:ident),
     ($bias:ident, $lo:ident, $hi:ident), $src:expr, $dst:expr) => {{
        let (src, dst) = ($src, $dst);
        seq!(J in 0..$n { let mut acc = [#($bias,)*]; });
        let mut t = 0;
        while t + 2 <= $taps {
            let (s0, k0) = (src.add(*$offsets.add(t)), $splat(*$k.add(t)));
            let (s1, k1) = (src.add(*$offsets.add(t + 1)), $splat(*$k.add(t + 1)));
            seq!(J in 0..$n { acc[J] = $fma($load(s0.add(J * $width)), k0, acc[J]); });
            seq!(J in 0..$n { acc[J] = $fma($load(s1.add(J * $width)), k1, acc[J]); });
            t += 2;
        }
        if t < $taps {
            let (s0, k0) = (src.add(*$offsets.add(t)), $splat(*$k.add(t)));
            seq!(J in 0..$n { acc[J] = $fma($load(s0.add(J * $width)), k0, acc[J]); });
        }
        seq!(J in 0..$n { $store(dst.add(J * $width), $min($hi, $max($lo, acc[J]))); });
    }};
}

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "aarch64")]
use aarch64::neon_plane;
#[cfg(target_arch = "x86_64")]
use x86_64::{avx2_plane, avx512_plane};

/// The wide output, `bias + sum_t k[t] * buf[offsets[t] + i]` clipped, in plain Rust (CPUs
/// without AVX2 or NEON; armv7), in blocks of 64 values then 16 that LLVM can vectorise.
fn plain_plane(p: &Plane, buf: &[f32], wide: &mut [f32]) {
    for (i, out) in wide.chunks_exact_mut(64).enumerate() {
        block::<64>(p, buf, i * 64, out);
    }
    let at = wide.len() / 64 * 64;
    for (i, out) in wide[at..].chunks_exact_mut(16).enumerate() {
        block::<16>(p, buf, at + i * 16, out);
    }
}

/// `B` outputs from `at`, clipped. A NaN passes the clip.
fn block<const B: usize>(p: &Plane, buf: &[f32], at: usize, out: &mut [f32]) {
    let mut acc = [p.bias; B];
    for (&o, &kv) in p.g.offsets.iter().zip(p.k) {
        let src: &[f32; B] = buf[o + at..o + at + B].try_into().expect("B values");
        for j in 0..B {
            acc[j] += kv * src[j];
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        let a = if a < p.lo { p.lo } else { a };
        *o = if a > p.hi { p.hi } else { a };
    }
}

/// A quantized convolution's weights and bias in float (`w * w_scale`, `bias * x_scale *
/// w_scale`), the input's dequantization (scale, zero point) and the output's quantization:
/// what ONNX's `QLinearConv` computes, as a float convolution between a dequantize and a
/// quantize (the padding, the input's zero point, is 0 in float). Inputs 1 to 8: kernel
/// (i8), bias (i32), x0, x_scale, w0 (zeros), w_scale, y0, y_scale.
#[allow(clippy::type_complexity)]
fn dequantized(
    model: &TypedModel,
    node: &TypedNode,
    cout: usize,
    taps: usize,
) -> Option<(Vec<f32>, Vec<f32>, (f32, i32), QuantizeU8)> {
    let per_channel = |v: Vec<f32>| per_channel(v, cout);
    let w = values::<i8>(model, node.inputs[1])?;
    let bias = values::<i32>(model, node.inputs[2])?;
    let bias = per_channel(bias.iter().map(|&b| b as f32).collect())?;
    let (x0, xs) = (
        values::<i32>(model, node.inputs[3])?,
        values::<f32>(model, node.inputs[4])?,
    );
    let w0 = values::<i32>(model, node.inputs[5])?;
    let ws = per_channel(values::<f32>(model, node.inputs[6])?)?;
    let (y0, ys) = (
        values::<i32>(model, node.inputs[7])?,
        values::<f32>(model, node.inputs[8])?,
    );
    let (&[x0], &[xs], &[y0], &[ys]) = (&x0[..], &xs[..], &y0[..], &ys[..]) else {
        return None;
    };
    if w.len() != cout * taps
        || w0.iter().any(|&z| z != 0)
        || !(0..=255).contains(&y0)
        || !(ys.is_finite() && ys > 0.0 && xs.is_finite())
        || ws.iter().any(|s| !s.is_finite())
    {
        return None;
    }
    let kernel = w
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * ws[i / taps])
        .collect();
    let bias = bias.iter().zip(&ws).map(|(&b, &s)| b * (xs * s)).collect();
    let quant = QuantizeU8 {
        scale: ys.recip(),
        zero_point: y0 as u8,
    };
    Some((kernel, bias, (xs, x0), quant))
}

/// The op that replaces the Conv `node`, if it is a float depthwise convolution this kernel
/// covers; the outlet it reads (before a dequantize it absorbs); and the outlet it replaces,
/// past any clip and quantize it absorbs.
fn lower(
    model: &TypedModel,
    node: &TypedNode,
    cpu: Cpu,
    channel_lanes: bool,
) -> Option<(DirectConv, OutletId, OutletId)> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let ([n, c, h, w], batch) = image_shape(x, spec.data_format)?;
    let (cout, groups) = (spec.output_channels, conv.group);
    // An int8 model's depthwise convolution in QLinearConv: u8 in and out.
    let quantized = conv.q_params == Some(u8::datum_type())
        && x.datum_type == u8::datum_type()
        && node.outputs[0].fact.datum_type == u8::datum_type()
        && node.inputs.len() == 9;
    let fits =
        (x.datum_type == f32::datum_type() && conv.q_params.is_none() && node.inputs.len() == 3
            || quantized)
            && conv.kernel_fmt == KernelFormat::OIHW
            && spec.kernel_shape.len() == 2
            && groups > 0
            && spec.input_channels == c
            && c % groups == 0
            && cout % groups == 0
            && spec.dilations().iter().all(|&d| d == 1);
    // Depthwise convolutions (any kernel), and first layers on gray or RGB images with small
    // kernels: more taps per group make matrix products, tract's strength.
    let cin = if fits { c / groups } else { 0 };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    // Quantized: depthwise only (one-group convolutions go to `qconv`).
    if cin == 0
        || cin > 1 && cin * kh * kw > MAX_GROUP_TAPS
        || quantized && (cin > 1 || groups == 1)
    {
        return None;
    }
    let (kernel, bias, io) = if quantized {
        let (k, b, dq, q) = dequantized(model, node, cout, cin * kh * kw)?;
        (k, b, Some((dq, q)))
    } else {
        let kernel = konst(model, node.inputs[1])?;
        let bias = konst(model, node.inputs[2])?;
        if kernel.datum_type() != f32::datum_type()
            || kernel.shape() != [cout, cin, kh, kw]
            || bias.datum_type() != f32::datum_type()
            || !(bias.len() == cout || bias.len() == 1)
        {
            return None;
        }
        let kernel = kernel
            .try_as_plain_ram()
            .ok()?
            .as_slice::<f32>()
            .ok()?
            .to_vec();
        let bias = bias.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
        let bias = if bias.len() == cout {
            bias.to_vec()
        } else {
            vec![bias[0]; cout]
        };
        (kernel, bias, None)
    };
    let strides = spec.strides();
    let pads = spec.computed_padding(&[h, w]);
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    if oh == 0 || ow == 0 || n == 0 || strides.contains(&0) {
        return None;
    }
    // The padded, phase-split copy of a group's planes must stay in proportion to them and
    // to the output (a hostile model's padding and strides could make it enormous).
    let (sh, sw) = (strides[0], strides[1]);
    let ph = ((oh - 1).checked_mul(sh)?.checked_add(kh)?).max(pads[0].pad_before.checked_add(h)?);
    let pw = ((ow - 1).checked_mul(sw)?.checked_add(kw)?).max(pads[1].pad_before.checked_add(w)?);
    let buffer = (ph.checked_add(sh)?)
        .saturating_mul(pw.checked_add(sw)?)
        .saturating_mul(cin);
    if !in_proportion(buffer, cin * h * w, oh * ow) {
        return None;
    }
    let geometry = Geometry::new(
        cin,
        (h, w),
        (kh, kw),
        (strides[0], strides[1]),
        (pads[0].pad_before, pads[1].pad_before),
        (oh, ow),
    );
    let mut op = DirectConv {
        input: [n, c, h, w],
        cout,
        groups,
        batch,
        geometry,
        kernel: Arc::new(kernel),
        bias: Arc::new(bias),
        clip: (None, None),
        dequant: io.as_ref().map(|io| io.0),
        quant: io.map(|io| io.1),
        lanes: None,
        cpu,
    };
    if op.quant.is_some() {
        // Quantized already: u8 in, u8 out, nothing around it to take in.
        return Some((op, node.inputs[0], OutletId::new(node.id, 0)));
    }
    // A dequantize of u8 before it whose only reader it is (an int8 model's float depthwise
    // convolution).
    let mut from = node.inputs[0];
    let producer = model.node(from.node);
    if let Some(d) = producer.op_as::<DequantizeLinearF32>() {
        let only_reader = matches!(model.single_succ(producer.id), Ok(Some(n)) if n.id == node.id);
        let u8_in = model
            .outlet_fact(*producer.inputs.first()?)
            .is_ok_and(|f| f.datum_type == u8::datum_type());
        if only_reader && u8_in && !model.outputs.contains(&from) {
            op.dequant = Some((d.scale, d.zero_point));
            from = producer.inputs[0];
        }
    }
    // A Max then a Min (or either alone) with constants, each the only reader of the one
    // before and neither a model output.
    let mut last = OutletId::new(node.id, 0);
    while op.clip.0.is_none() || op.clip.1.is_none() {
        if model.outputs.contains(&last) {
            break;
        }
        let Ok(Some(next)) = model.single_succ(last.node) else {
            break;
        };
        let Some((is_max, v)) = clip_bound(model, next, last) else {
            break;
        };
        // A Max after a Min changes the order of the two: stop there.
        match (is_max, op.clip) {
            (true, (None, None)) => op.clip.0 = Some(v),
            (false, (_, None)) => op.clip.1 = Some(v),
            _ => break,
        }
        last = OutletId::new(next.id, 0);
    }
    // And a quantize to u8 after the clip.
    if !model.outputs.contains(&last) {
        if let Ok(Some(next)) = model.single_succ(last.node) {
            let q = next
                .op_as::<ElementWiseOp>()
                .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>());
            if let Some(q) = q {
                op.quant = Some(QuantizeU8 {
                    scale: q.scale,
                    zero_point: q.zero_point,
                });
                last = OutletId::new(next.id, 0);
            }
        }
    }
    // Float in and out, one channel per group: a small plane goes on the channel lanes.
    if op.dequant.is_none()
        && op.quant.is_none()
        && cin == 1
        && groups == c
        && cout == c
        && channel_lanes
    {
        op.lanes = ChannelLanes::new(
            cpu,
            c,
            (h, w),
            (kh, kw),
            (strides[0], strides[1]),
            (pads[0].pad_before, pads[1].pad_before),
            (oh, ow),
        )
        .map(|l| {
            let (k, b) = l.pack(&op.kernel, &op.bias);
            (l, k, b)
        });
    }
    Some((op, from, last))
}

/// Replaces every convolution [`DirectConv`] covers in a decluttered model; returns how many.
pub fn rewrite(model: &mut TypedModel, cpu: Cpu, channel_lanes: bool) -> TractResult<usize> {
    replace_each(model, |model, node| {
        let (op, from, last) = lower(model, node, cpu, channel_lanes)?;
        Some((op, tvec![from], last))
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::{self as verify, Plan, Source};
    use crate::Cpu;
    use msn_onnx::builder::{attr, GraphBuilder};
    use msn_onnx::proto::tensor_proto::DataType;

    /// A Conv on `[n, cin, h, w]` to `cout` channels in `groups` groups with a kernel
    /// `kh x kw`, then `tail` ("", "Relu",
    /// "Clip" 0..6, "Clip-min" 0.., "Min" at 0.5 alone). With `tail` starting "pw+", a 1x1
    /// Conv comes first (tract then drops the batch axis of a batch of one: CHW).
    #[allow(clippy::too_many_arguments)]
    fn graph(
        n: usize,
        (c, cout, groups): (usize, usize, usize),
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: (usize, usize),
        pads: [usize; 4],
        bias: bool,
        tail: &str,
    ) -> Source {
        let mut b = GraphBuilder::new("dw");
        let x = b.input("x", &[n as i64, c as i64, h as i64, w as i64]);
        // "q+": u8 in and out, as an int8 model has it around a float depthwise convolution:
        // QuantizeLinear -> DequantizeLinear -> Conv -> tail -> QuantizeLinear ->
        // DequantizeLinear.
        let (quantized, tail) = match tail.strip_prefix("q+") {
            Some(rest) => (true, rest),
            None => (false, tail),
        };
        let qdq = |b: &mut GraphBuilder, x: &str, name: &str, scale: f32, zp: u8| {
            let s = b.initializer_raw(
                &format!("{name}_s"),
                DataType::Float,
                &[],
                scale.to_le_bytes().to_vec(),
            );
            let z = b.initializer_raw(&format!("{name}_z"), DataType::Uint8, &[], vec![zp]);
            let q = b.node("QuantizeLinear", &[x, &s, &z], &format!("{name}_q"), &[]);
            b.node(
                "DequantizeLinear",
                &[&q, &s, &z],
                &format!("{name}_dq"),
                &[],
            )
        };
        let x = if quantized {
            qdq(&mut b, &x, "in", 0.02, 110)
        } else {
            x
        };
        let kv: Vec<f32> = (0..cout * c / groups * kh * kw)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let kernel = ndarray::Array::from_shape_vec(vec![cout, c / groups, kh, kw], kv).unwrap();
        let k = b.initializer_f32("k", &kernel.into_dyn());
        let (x, tail) = match tail.strip_prefix("pw+") {
            Some(rest) => {
                let pv: Vec<f32> = (0..c * c).map(|i| ((i as f32) * 0.73).cos()).collect();
                let pw = ndarray::Array::from_shape_vec(vec![c, c, 1, 1], pv).unwrap();
                let pw = b.initializer_f32("pw", &pw.into_dyn());
                (b.node("Conv", &[&x, &pw], "pointwise", &[]), rest)
            }
            None => (x, tail),
        };
        let mut ins = vec![x.clone(), k];
        if bias {
            let bv: Vec<f32> = (0..cout).map(|i| (i as f32) * 0.1 - 0.3).collect();
            ins.push(b.initializer_f32("b", &ndarray::Array::from_vec(bv).into_dyn()));
        }
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let attrs = [
            attr::int("group", groups as i64),
            attr::ints("kernel_shape", &[kh as i64, kw as i64]),
            attr::ints("strides", &[stride.0 as i64, stride.1 as i64]),
            attr::ints("pads", &pads.map(|p| p as i64)),
        ];
        let mut y = b.node("Conv", &ins, "conv", &attrs);
        let scalar = |b: &mut GraphBuilder, name: &str, v: f32| {
            b.initializer_f32(name, &ndarray::arr0(v).into_dyn())
        };
        match tail {
            "" => {}
            "Relu" => y = b.node("Relu", &[&y], "relu", &[]),
            "Clip" => {
                let (lo, hi) = (scalar(&mut b, "lo", 0.0), scalar(&mut b, "hi", 6.0));
                y = b.node("Clip", &[&y, &lo, &hi], "clip", &[]);
            }
            "Clip-min" => {
                let lo = scalar(&mut b, "lo", 0.0);
                y = b.node("Clip", &[&y, &lo], "clip", &[]);
            }
            "Min" => {
                let hi = scalar(&mut b, "hi", 0.5);
                y = b.node("Min", &[&y, &hi], "min", &[]);
            }
            _ => unreachable!(),
        }
        if quantized {
            y = qdq(&mut b, &y, "out", 0.03, 40);
        }
        let oh = (h + pads[0] + pads[2] - kh) / stride.0 + 1;
        let ow = (w + pads[1] + pads[3] - kw) / stride.1 + 1;
        b.output(&y, &[n as i64, cout as i64, oh as i64, ow as i64]);
        let model = b.into_model(13);
        Source::from_bytes(msn_onnx::io::to_bytes(&model)).unwrap()
    }

    /// The rewritten plan against tract's own (its unoptimised plan), on random inputs.
    fn check(source: &Source) -> f64 {
        let shapes = source.shapes();
        let ours = source.plan(&shapes, Plan::Optimized).unwrap();
        assert!(
            ours.ops().iter().any(|o| o == "MsnDirectConv"),
            "not rewritten: {:?}",
            ours.ops()
        );
        let reference = source.plan(&shapes, Plan::Reference).unwrap();
        let mut state = 7u64;
        let mut worst = 0f64;
        for _ in 0..2 {
            let x: Vec<f32> = (0..shapes[0].iter().product::<usize>())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect();
            let x = tract_onnx::prelude::Tensor::from_shape(&shapes[0], &x).unwrap();
            let a = ours.run(vec![x.clone()]).unwrap();
            let b = reference.run(vec![x]).unwrap();
            assert_eq!(a[0].shape(), b[0].shape());
            worst = worst.max(verify::relative_error(&a[0], &b[0]));
        }
        worst
    }

    /// A hostile model's padding and strides that would make the padded copy of a small
    /// plane enormous (about 100 M values a plane, for a 3x3 output): not on our kernel,
    /// for a depthwise convolution and a first layer alike.
    #[test]
    fn enormous_padding_is_refused() {
        for (c, cout, groups) in [(8, 8, 8), (3, 8, 1)] {
            let source = graph(
                1,
                (c, cout, groups),
                (10, 10),
                (3, 3),
                (5000, 5000),
                [5000; 4],
                true,
                "Relu",
            );
            let shapes = source.shapes();
            let ours = source.plan(&shapes, Plan::Optimized).unwrap();
            assert!(
                !ours.ops().iter().any(|o| o == "MsnDirectConv"),
                "{:?}",
                ours.ops()
            );
        }
    }

    /// Every instruction set this CPU has gives the sums of the plain-Rust block (the AVX2
    /// path is not the one picked on an AVX-512 machine, so it is checked here).
    #[test]
    fn every_instruction_set_agrees_with_plain_rust() {
        // One input plane (9 taps: the kernels take taps two at a time, so an odd count
        // leaves one over) and two (18), stride 2x1; the wide output is 4 rows of 25 = 112
        // values: one block of 64 and three of 16, so both block sizes run.
        for cin in [1, 2] {
            instruction_sets_agree(cin);
        }
    }

    fn instruction_sets_agree(cin: usize) {
        use super::{Geometry, Isa, Plane};
        let g = Geometry::new(cin, (9, 23), (3, 3), (2, 1), (1, 1), (4, 23));
        let x: Vec<f32> = (0..cin * 9 * 23)
            .map(|i| ((i as f32) * 0.61).sin())
            .collect();
        let k: Vec<f32> = (0..cin * 9).map(|i| ((i as f32) * 0.29).cos()).collect();
        let p = Plane {
            g: &g,
            k: &k,
            bias: 0.25,
            lo: -0.5,
            hi: 1.0,
        };
        let run = |isa: Isa| {
            let mut buf = vec![0f32; g.buffer_len()];
            g.fill_group_padded(Cpu::GENERIC, &x, &mut buf, 0.0);
            let mut wide = vec![0f32; g.wide_len()];
            let mut out = vec![0f32; g.oh * g.ow];
            isa.run(&p, &buf, &mut wide);
            for (row, w) in out.chunks_exact_mut(g.ow).zip(wide.chunks(g.qw)) {
                row.copy_from_slice(&w[..g.ow]);
            }
            out
        };
        let plain = {
            let mut buf = vec![0f32; g.buffer_len()];
            g.fill_group_padded(Cpu::GENERIC, &x, &mut buf, 0.0);
            let mut wide = vec![0f32; g.wide_len()];
            for at in (0..wide.len()).step_by(16) {
                let mut acc = [p.bias; 16];
                for (&o, &kv) in g.offsets.iter().zip(&k) {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a += kv * buf[o + at + j];
                    }
                }
                for (j, a) in acc.into_iter().enumerate() {
                    wide[at + j] = a.clamp(p.lo, p.hi);
                }
            }
            let mut out = vec![0f32; g.oh * g.ow];
            for (row, w) in out.chunks_exact_mut(g.ow).zip(wide.chunks(g.qw)) {
                row.copy_from_slice(&w[..g.ow]);
            }
            out
        };
        for isa in Cpu::detect().levels().into_iter().map(Isa::of) {
            let got = run(isa);
            let worst = got
                .iter()
                .zip(&plain)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{isa:?}, {cin} planes: off by {worst}");
        }
    }

    /// Batch, channels, input size, kernel, strides, pads, bias, tail (see [`graph`]).
    type Case = (
        usize,
        (usize, usize, usize),
        (usize, usize),
        (usize, usize),
        (usize, usize),
        [usize; 4],
        bool,
        &'static str,
    );

    #[test]
    fn direct_convolutions_match_tracts_own() {
        let cases: &[Case] = &[
            // EfficientNet-Lite0's shapes: stride 1 and 2, 3x3 and 5x5, asymmetric padding.
            (
                1,
                (32, 32, 32),
                (112, 112),
                (3, 3),
                (1, 1),
                [1, 1, 1, 1],
                true,
                "Clip",
            ),
            (
                1,
                (24, 24, 24),
                (112, 112),
                (3, 3),
                (2, 2),
                [0, 0, 1, 1],
                true,
                "pw+Clip",
            ),
            (
                1,
                (12, 12, 12),
                (28, 28),
                (5, 5),
                (1, 1),
                [2, 2, 2, 2],
                true,
                "pw+Relu",
            ),
            (
                2,
                (12, 12, 12),
                (28, 28),
                (3, 3),
                (2, 2),
                [1, 1, 1, 1],
                true,
                "pw+",
            ),
            (
                1,
                (16, 16, 16),
                (56, 56),
                (5, 5),
                (2, 2),
                [1, 1, 2, 2],
                true,
                "Relu",
            ),
            (
                1,
                (40, 40, 40),
                (7, 7),
                (5, 5),
                (1, 1),
                [2, 2, 2, 2],
                true,
                "Clip",
            ),
            (
                1,
                (40, 40, 40),
                (14, 14),
                (5, 5),
                (1, 1),
                [2, 2, 2, 2],
                false,
                "",
            ),
            // Batches, odd sizes, unequal strides, no padding, stride 3, kernels wider than
            // tall, a lone Min, a Clip with only a lower bound, 1x1 planes.
            (
                3,
                (5, 5, 5),
                (9, 13),
                (3, 3),
                (1, 2),
                [1, 0, 1, 2],
                true,
                "Clip-min",
            ),
            (
                2,
                (7, 7, 7),
                (17, 10),
                (3, 5),
                (3, 1),
                [0, 0, 0, 0],
                false,
                "Min",
            ),
            (
                1,
                (3, 3, 3),
                (1, 1),
                (3, 3),
                (1, 1),
                [1, 1, 1, 1],
                true,
                "Relu",
            ),
            (
                1,
                (3, 3, 3),
                (7, 10),
                (3, 3),
                (2, 2),
                [1, 1, 1, 1],
                true,
                "",
            ),
            (1, (3, 3, 3), (7, 9), (3, 3), (2, 2), [1, 1, 1, 1], true, ""),
            (2, (4, 4, 4), (6, 6), (1, 1), (2, 2), [0, 0, 0, 0], true, ""),
            (1, (2, 2, 2), (5, 4), (5, 4), (1, 1), [0, 0, 0, 0], true, ""),
            // First layers (RGB and gray, one group), a depth multiplier of 2, groups of
            // 2 and 3 inputs, and in a batch.
            (
                1,
                (3, 32, 1),
                (224, 224),
                (3, 3),
                (2, 2),
                [0, 0, 1, 1],
                true,
                "Clip",
            ),
            (
                1,
                (3, 16, 1),
                (30, 31),
                (3, 3),
                (1, 1),
                [1, 1, 1, 1],
                true,
                "Relu",
            ),
            (
                1,
                (1, 32, 1),
                (28, 28),
                (3, 3),
                (1, 1),
                [1, 1, 1, 1],
                true,
                "",
            ),
            (
                1,
                (4, 8, 4),
                (11, 9),
                (3, 3),
                (2, 1),
                [1, 1, 1, 1],
                true,
                "",
            ),
            (
                1,
                (6, 9, 3),
                (10, 10),
                (3, 3),
                (1, 1),
                [1, 1, 1, 1],
                false,
                "Relu",
            ),
            (
                3,
                (3, 5, 1),
                (13, 12),
                (3, 3),
                (2, 2),
                [1, 1, 1, 1],
                true,
                "",
            ),
            // u8 in and out (an int8 model's float depthwise convolutions), with and
            // without a clip between, in a batch.
            (
                1,
                (24, 24, 24),
                (28, 28),
                (3, 3),
                (2, 2),
                [0, 0, 1, 1],
                true,
                "q+Clip",
            ),
            (2, (8, 8, 8), (9, 11), (5, 5), (1, 1), [2; 4], true, "q+"),
        ];
        for &(n, c, hw, k, s, pads, bias, tail) in cases {
            let source = graph(n, c, hw, k, s, pads, bias, tail);
            if tail.starts_with("q+") {
                // The dequantize before and the quantize after are taken in: only the
                // graph's first quantize and last dequantize stay.
                let shapes = source.shapes();
                let ops = source.plan(&shapes, Plan::Optimized).unwrap().ops();
                let count = |name: &str| ops.iter().filter(|o| *o == name).count();
                assert_eq!(
                    (count("DequantizeLinearF32"), count("MsnQuantizeU8")),
                    (1, 1),
                    "{tail}: {ops:?}"
                );
            }
            let err = check(&source);
            assert!(
                err < 1e-5,
                "n{n} c{c:?} {hw:?} k{k:?} s{s:?} pads{pads:?} bias {bias} {tail}: relative error {err:e}"
            );
        }
    }
}
