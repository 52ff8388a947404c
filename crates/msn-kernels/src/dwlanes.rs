//! Float depthwise convolutions of small planes (EfficientNet's and MobileNet's 7x7 and
//! 14x14) with 16 channels on the vector lanes.
//!
//! [`crate::depthwise`]'s kernel runs along the pixels of one plane at a time. On a 7x7
//! plane with a 5x5 kernel its wide output is 77 values for 49 kept, and copying the padded
//! plane in and the rows out costs as much as the 25 taps: EfficientNet-Lite0's 7x7
//! depthwise convolutions took 2.4x onnxruntime's time. Here 16 channels at a time are
//! transposed into a zero-padded buffer of 16-lane pixels (`[hp][wp][16]`); each output
//! pixel is then the bias plus one multiply-add per tap of that tap's 16 weights and the
//! input pixel under it, 8 pixels at a time, with no wide output; the result is clipped and
//! transposed back into NCHW. Any kernel, stride and padding.

// Elsewhere than x86-64 the kernels are compiled out and `available()` is false: the op
// is never built, and its parts go unused.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_variables, unreachable_code, clippy::never_loop)
)]

use std::sync::Arc;
use tract_onnx::tract_core::internal::*;

use crate::graph::in_proportion;
use crate::lanes::{from_lanes, to_lanes, zero};
use crate::split::{par_units, Rows};
use crate::Cpu;
#[cfg(target_arch = "x86_64")]
use seq_macro::seq;

/// Pixels summed side by side.
const PIXELS: usize = 8;

/// Output planes of at most this many pixels go on this kernel (larger ones fill a 16-lane
/// buffer out of cache, and the plane kernel's wide output wastes little there).
pub(crate) const MAX_PIXELS: usize = 256;

/// A depthwise convolution's shape, and its kernel with 16 channels side by side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChannelLanes {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
    /// The padded plane's rows and row length.
    hp: usize,
    wp: usize,
    /// What the kernel may use: AVX-512 (only then is this made).
    cpu: Cpu,
}

impl ChannelLanes {
    /// The geometry, if its output plane is small enough and every read is in the padded
    /// plane.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cpu: Cpu,
        c: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (pt, pl): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Option<ChannelLanes> {
        // Few taps on a larger plane: transposing the planes in and out costs more than
        // the plane kernel's waste.
        let small = kh * kw >= 25 || oh * ow <= 64;
        if !available(cpu)
            || !small
            || oh * ow > MAX_PIXELS
            || oh * ow == 0
            || c == 0
            || kh * kw == 0
        {
            return None;
        }
        let hp = ((oh - 1).checked_mul(sh)?.checked_add(kh)?).max(pt.checked_add(h)?);
        let wp = ((ow - 1).checked_mul(sw)?.checked_add(kw)?).max(pl.checked_add(w)?);
        if !in_proportion(hp.saturating_mul(wp), h * w, oh * ow) {
            return None;
        }
        Some(ChannelLanes {
            c,
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            pt,
            pl,
            oh,
            ow,
            hp,
            wp,
            cpu,
        })
    }

    /// `kernel` (`[c][kh * kw]`) as `[ceil(c / 16)][kh * kw][16]`, zeros past the last
    /// channel; `bias` padded to whole groups of 16.
    pub(crate) fn pack(&self, kernel: &[f32], bias: &[f32]) -> (Arc<Vec<f32>>, Arc<Vec<f32>>) {
        let taps = self.kh * self.kw;
        let groups = self.c.div_ceil(16);
        let mut k = vec![0f32; groups * taps * 16];
        for (ch, row) in kernel.chunks_exact(taps).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                k[((ch / 16) * taps + t) * 16 + ch % 16] = v;
            }
        }
        let mut b = bias.to_vec();
        b.resize(groups * 16, 0.0);
        (Arc::new(k), Arc::new(b))
    }

    /// Convolves `n` images `x` (`[n][c][h][w]`) into `out` (`[n][c][oh][ow]`) with the
    /// packed kernel and bias, clipped to `[lo, hi]`.
    pub(crate) fn run(
        &self,
        x: &[f32],
        (kernel, bias): (&[f32], &[f32]),
        (lo, hi): (f32, f32),
        out: &mut [f32],
    ) -> TractResult<()> {
        let (plane, oplane) = (self.h * self.w, self.oh * self.ow);
        let n = x.len() / (self.c * plane).max(1);
        ensure!(x.len() == n * self.c * plane && out.len() == n * self.c * oplane);
        let taps = self.kh * self.kw;
        let groups = self.c.div_ceil(16);
        ensure!(kernel.len() == groups * taps * 16 && bias.len() == groups * 16);
        ensure!(available(self.cpu), "the channel-lane kernel needs AVX-512");
        let buffer = self.hp.checked_mul(self.wp).and_then(|n| n.checked_mul(16));
        ensure!(
            buffer.is_some()
                && self.hp >= (self.oh - 1) * self.sh + self.kh
                && self.wp >= (self.ow - 1) * self.sw + self.kw,
            "the channel-lane kernel's padded plane is too small"
        );
        let dst = Rows::new(out);
        let work = n * self.c * oplane * taps;
        par_units((n, groups), work, |image, gs| {
            let mut buf = vec![0f32; self.hp * self.wp * 16];
            let mut tmp = vec![0f32; oplane * 16];
            for g in gs {
                let c0 = g * 16;
                let lanes = (self.c - c0).min(16);
                // The group's planes, transposed into the padded buffer (zero padding).
                zero(&mut buf);
                let src = &x[(image * self.c + c0) * plane..];
                for iy in 0..self.h {
                    let at = ((iy + self.pt) * self.wp + self.pl) * 16;
                    to_lanes(
                        self.cpu,
                        &src[iy * self.w..],
                        plane,
                        lanes,
                        self.w,
                        &mut buf[at..],
                    );
                }
                let w = &kernel[g * taps * 16..(g + 1) * taps * 16];
                let b = &bias[c0..c0 + 16];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `self.cpu`, so the CPU, has AVX-512 F (checked above); every tap of every
                // output pixel reads within the padded buffer (`hp`, `wp` cover the last
                // output's window), and `tmp` holds 16 values per output pixel.
                unsafe {
                    group_avx512(self, &buf, w, b, (lo, hi), &mut tmp)
                };
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (w, b, &mut tmp);
                    bail!("the channel-lane depthwise kernel needs AVX-512");
                }
                for l in 0..lanes {
                    let at = (image * self.c + c0 + l) * oplane;
                    // SAFETY: plane `c0 + l` of `image` is this unit's alone.
                    let row = unsafe { dst.slice(at, oplane)? };
                    from_lanes(self.cpu, &tmp, 16, l, row);
                }
            }
            Ok(())
        })
    }
}

/// Whether `cpu` has what the kernel needs.
pub(crate) fn available(cpu: Cpu) -> bool {
    cpu.avx512()
}

/// One group of 16 channels: `tmp[q][l]` for output pixel `q` and lane `l`.
///
/// # Safety
/// The CPU has AVX-512 F; `buf` is the group's padded plane (`hp * wp * 16`), `w` its
/// `kh * kw * 16` weights, `b` 16 biases, `tmp` `oh * ow * 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn group_avx512(
    g: &ChannelLanes,
    buf: &[f32],
    w: &[f32],
    b: &[f32],
    (lo, hi): (f32, f32),
    tmp: &mut [f32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use std::arch::x86_64::*;
        let (bp, wp, tp) = (buf.as_ptr(), w.as_ptr(), tmp.as_mut_ptr());
        let bias = _mm512_loadu_ps(b.as_ptr());
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let args = ((bp, wp, tp), (bias, lo, hi));
        let total = g.oh * g.ow;
        for q0 in (0..total).step_by(PIXELS) {
            match total - q0 {
                1 => pixels_1(g, args, q0),
                2 => pixels_2(g, args, q0),
                3 => pixels_3(g, args, q0),
                4 => pixels_4(g, args, q0),
                5 => pixels_5(g, args, q0),
                6 => pixels_6(g, args, q0),
                7 => pixels_7(g, args, q0),
                _ => pixels_8(g, args, q0),
            }
        }
    }
}

// `group_avx512`'s last tile takes `PIXELS` pixels.
const _: () = assert!(PIXELS == 8);

/// The output pixels `q0..q0 + $p` (across rows), each reading its window from `at[p]`.
/// The loops over pixels are unrolled by `seq!`, so each accumulator stays in a register
/// at any optimisation level (the boards' `dist` profile is opt-level "z", which unrolls
/// nothing).
///
/// # Safety
/// As [`group_avx512`]'s, with `q0 + $p` at most the output's pixels.
macro_rules! pixels {
    ($name:ident, $p:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(
            g: &ChannelLanes,
            ((bp, wp, tp), (bias, lo, hi)): (
                (*const f32, *const f32, *mut f32),
                (
                    std::arch::x86_64::__m512,
                    std::arch::x86_64::__m512,
                    std::arch::x86_64::__m512,
                ),
            ),
            q0: usize,
        ) {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                use std::arch::x86_64::*;
                let mut at = [bp; $p];
                seq!(P in 0..$p {
                    let (oy, ox) = ((q0 + P) / g.ow, (q0 + P) % g.ow);
                    at[P] = bp.add((oy * g.sh * g.wp + ox * g.sw) * 16);
                });
                let mut acc = [bias; $p];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let off = (ky * g.wp + kx) * 16;
                        let wv = _mm512_loadu_ps(wp.add((ky * g.kw + kx) * 16));
                        seq!(P in 0..$p {
                            acc[P] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(at[P].add(off)), acc[P]);
                        });
                    }
                }
                seq!(P in 0..$p {
                    let y = _mm512_min_ps(_mm512_max_ps(acc[P], lo), hi);
                    _mm512_storeu_ps(tp.add((q0 + P) * 16), y);
                });
            }
        }
    };
}

pixels!(pixels_1, 1);
pixels!(pixels_2, 2);
pixels!(pixels_3, 3);
pixels!(pixels_4, 4);
pixels!(pixels_5, 5);
pixels!(pixels_6, 6);
pixels!(pixels_7, 7);
pixels!(pixels_8, 8);

#[cfg(test)]
mod tests {
    use super::*;

    /// Padding and strides that would make the 16-lane buffer enormous for a 3x3 output are
    /// refused (the plane is left to the other kernel or to tract); ordinary ones are not.
    #[test]
    fn enormous_padding_is_refused() {
        if !available(crate::cpu::get()) {
            eprintln!("SKIPPED: the CPU level in force (MSN_CPU caps it) has no AVX-512");
            return;
        }
        let lanes = |s: usize, p: usize, o: usize| {
            ChannelLanes::new(Cpu::detect(), 8, (10, 10), (5, 5), (s, s), (p, p), (o, o))
        };
        assert!(lanes(5000, 5000, 3).is_none());
        assert!(lanes(1, 2, 10).is_some());
        assert!(lanes(2, 2, 5).is_some());
    }
}
