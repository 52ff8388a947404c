//! The channel-lane depthwise kernel on x86-64 with AVX-512: each output pixel's 16 lanes
//! are the bias plus one fused multiply-add per tap, up to 8 pixels side by side.

use super::{ChannelLanes, PIXELS};
use seq_macro::seq;
use std::arch::x86_64::*;

/// One group of 16 channels: `tmp[q][l]` for output pixel `q` and lane `l`.
///
/// # Safety
/// The CPU has AVX-512 F; `buf` is the group's padded plane (`hp * wp * 16`), `w` its
/// `kh * kw * 16` weights, `b` 16 biases, `tmp` `oh * ow * 16` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn group_avx512(
    g: &ChannelLanes,
    buf: &[f32],
    w: &[f32],
    b: &[f32],
    (lo, hi): (f32, f32),
    tmp: &mut [f32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
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
                #[target_feature(enable = "avx512f")]
        unsafe fn $name(
            g: &ChannelLanes,
            ((bp, wp, tp), (bias, lo, hi)): (
                (*const f32, *const f32, *mut f32),
                (
                    __m512,
                    __m512,
                    __m512,
                ),
            ),
            q0: usize,
        ) {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
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
