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
mod x86_64;

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
                    x86_64::group_avx512(self, &buf, w, b, (lo, hi), &mut tmp)
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
