//! The float tiles on x86-64 AVX-512: [`tile`] (`ROWS` output channels by up to 64 pixels,
//! 16 a vector, 24 accumulators; with AVX2 and FMA only, [`tile_avx2`]: 16 pixels at a time,
//! 8 a vector, 12 accumulators), [`channel_tile`] (16 to 64 output channels on the lanes by a
//! few pixels, each pixel's input broadcast) and [`store_channel_tile`] (a channel tile's
//! values into place with one gather per channel). Fused multiply-adds in the order of the
//! taps from the bias, as [`tile_plain`](super::tile_plain) and
//! [`channel_tile_plain`](super::channel_tile_plain) define; the clips are `vmaxps`/`vminps`.

use super::{ChannelTile, Clip, Tile, COLS, ROWS};
use crate::Cpu;
use seq_macro::seq;
use std::arch::x86_64::*;
use tract_onnx::tract_core::internal::*;

/// Lane mask for vector `v` of a tile storing `cols` pixels.
#[inline(always)]
fn lane_mask(cols: usize, v: usize) -> u16 {
    crate::lanes::first_lanes(cols.saturating_sub(16 * v))
}

// The tile macros below spell out the 6 rows; `seq!` needs the count as a literal.
const _: () = assert!(ROWS == 6);

/// One tile with AVX-512, `$v` vectors wide: `ROWS` output channels by `16 * $v` pixels
/// (masked past `t.cols`), written to `out[r]`, with `res[r]` added (then `clip2`) when
/// given (each row's pointer at the tile's first pixel).
///
/// Every loop over rows and vectors is unrolled by `seq!`, so each accumulator has a
/// constant place and LLVM keeps it in a register at any optimisation level: the boards'
/// `dist` profile is opt-level "z", which unrolls nothing (with loops over arrays there,
/// this kernel ran 4.3x slower than at opt-level 3).
///
/// # Safety
/// The CPU has AVX-512 F ([`available`](super::available)); `t.x` holds `t.cols` values from each of
/// `t.taps`; `t.w` holds `ROWS` values per tap; each of the first `t.rows` rows of `out` and
/// `res` holds at least `t.cols` (at most `16 * $v`) values.
macro_rules! pixel_tile {
    ($name:ident, $v:literal) => {
                #[target_feature(enable = "avx512f")]
        unsafe fn $name(t: &Tile, res: Option<[*const f32; ROWS]>, out: [*mut f32; ROWS]) {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let mut mask: [__mmask16; $v] = [0; $v];
                seq!(V in 0..$v { mask[V] = lane_mask(t.cols, V); });
                let mut acc = [[_mm512_setzero_ps(); $v]; ROWS];
                seq!(R in 0..6 {
                    seq!(V in 0..$v { acc[R][V] = _mm512_set1_ps(t.bias[R]); });
                });
                let (x, w) = (t.x.as_ptr(), t.w.as_ptr());
                for (k, &at) in t.taps.iter().enumerate() {
                    let xk = x.add(at);
                    let mut xs = [_mm512_setzero_ps(); $v];
                    seq!(V in 0..$v { xs[V] = _mm512_maskz_loadu_ps(mask[V], xk.add(16 * V)); });
                    let wk = w.add(k * ROWS);
                    seq!(R in 0..6 {
                        let wb = _mm512_set1_ps(*wk.add(R));
                        seq!(V in 0..$v { acc[R][V] = _mm512_fmadd_ps(wb, xs[V], acc[R][V]); });
                    });
                }
                let (lo1, hi1) = (_mm512_set1_ps(t.clip1.lo), _mm512_set1_ps(t.clip1.hi));
                let (lo2, hi2) = (_mm512_set1_ps(t.clip2.lo), _mm512_set1_ps(t.clip2.hi));
                seq!(R in 0..6 {
                    if R < t.rows {
                        seq!(V in 0..$v {
                            let mut y = _mm512_min_ps(_mm512_max_ps(acc[R][V], lo1), hi1);
                            if let Some(res) = res {
                                let r = _mm512_maskz_loadu_ps(mask[V], res[R].add(16 * V));
                                y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, r), lo2), hi2);
                            }
                            _mm512_mask_storeu_ps(out[R].add(16 * V), mask[V], y);
                        });
                    }
                });
            }
        }
    };
}

pixel_tile!(tile_avx512_1, 1);
pixel_tile!(tile_avx512_2, 2);
pixel_tile!(tile_avx512_3, 3);
pixel_tile!(tile_avx512_4, 4);

/// One channel tile with AVX-512: `16 * $cv` output channels by `$pt` pixels into
/// `out[p]` (channel `c` at `out[p][c]`), `clip1` applied; unrolled as [`pixel_tile`] is.
///
/// # Safety
/// The CPU has AVX-512 F ([`available`](super::available)); `t.windows` holds `$pt` offsets, and `t.x` a
/// value at every tap's offset plus every window's; `t.w` holds `16 * $cv` values per tap
/// and `t.bias` `16 * $cv`.
macro_rules! channel_tile {
    ($name:ident, $cv:literal, $pt:literal) => {
                #[target_feature(enable = "avx512f")]
        unsafe fn $name(t: &ChannelTile, out: &mut [[f32; COLS]]) {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe {
                let (x, w, b) = (t.x.as_ptr(), t.w.as_ptr(), t.bias.as_ptr());
                let windows: &[usize; $pt] = t.windows.try_into().expect("a window per pixel");
                let out: &mut [[f32; COLS]; $pt] = (&mut out[..$pt]).try_into().expect("rows");
                let mut acc = [[_mm512_setzero_ps(); $cv]; $pt];
                seq!(P in 0..$pt {
                    seq!(V in 0..$cv { acc[P][V] = _mm512_loadu_ps(b.add(16 * V)); });
                });
                for (k, &at) in t.taps.iter().enumerate() {
                    let wk = w.add(k * 16 * $cv);
                    let mut wv = [_mm512_setzero_ps(); $cv];
                    seq!(V in 0..$cv { wv[V] = _mm512_loadu_ps(wk.add(16 * V)); });
                    let xk = x.add(at);
                    seq!(P in 0..$pt {
                        let xb = _mm512_set1_ps(*xk.add(windows[P]));
                        seq!(V in 0..$cv { acc[P][V] = _mm512_fmadd_ps(wv[V], xb, acc[P][V]); });
                    });
                }
                let (lo, hi) = (_mm512_set1_ps(t.clip1.lo), _mm512_set1_ps(t.clip1.hi));
                seq!(P in 0..$pt {
                    seq!(V in 0..$cv {
                        let y = _mm512_min_ps(_mm512_max_ps(acc[P][V], lo), hi);
                        _mm512_storeu_ps(out[P].as_mut_ptr().add(16 * V), y);
                    });
                });
            }
        }
    };
}

channel_tile!(channel_tile_4x6, 4, 6);
channel_tile!(channel_tile_3x7, 3, 7);
channel_tile!(channel_tile_3x8, 3, 8);
channel_tile!(channel_tile_2x12, 2, 12);

/// [`store_channel_tile`](super::store_channel_tile) with one gather per channel (at most 16 pixels).
///
/// # Safety
/// As [`store_channel_tile`](super::store_channel_tile)'s; the CPU has AVX-512 F; `buf.len() <= 16`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_channel_tile(
    buf: &[[f32; COLS]],
    rows: usize,
    dst: *mut f32,
    stride: usize,
    res: Option<*const f32>,
    clip2: Clip,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let n = buf.len();
        let mask = crate::lanes::first_lanes(n);
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(COLS as i32),
        );
        let (lo, hi) = (_mm512_set1_ps(clip2.lo), _mm512_set1_ps(clip2.hi));
        let src = buf.as_ptr() as *const f32;
        for c in 0..rows {
            let mut v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, src.add(c));
            if let Some(res) = res {
                let r = _mm512_maskz_loadu_ps(mask, res.add(c * stride));
                v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, r), lo), hi);
            }
            _mm512_mask_storeu_ps(dst.add(c * stride), mask, v);
        }
    }
}

/// The first `n` of 8 lanes (all for `n >= 8`), as `vmaskmovps` takes them: the sign bit set.
#[inline(always)]
fn avx2_mask(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    // SAFETY: AVX is part of every CPU this is called on (`tile_avx2` needs AVX2); these
    // intrinsics only move values between registers.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// `V` vectors of 8 pixels from pixel `s`, `n` of them valid (the span `(s, n)`) (`8 * V` when `FULL`, else
/// the loads and stores past `n` are masked off), as [`pixel_tile`] computes them.
///
/// # Safety
/// The CPU has AVX2 and FMA; as [`tile_avx2`]'s; `s + n <= t.cols`, `8 * (V - 1) < n <=
/// 8 * V`.
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<const V: usize, const FULL: bool>(
    t: &Tile,
    (s, n): (usize, usize),
    res: Option<[*const f32; ROWS]>,
    out: [*mut f32; ROWS],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract: every load reads (and
    // every store writes) within the `n` values of a tap, a residual or an output row from
    // pixel `s`, the lanes past them masked off (masked lanes of `vmaskmovps` do not fault).
    unsafe {
        let mask: [__m256i; V] = std::array::from_fn(|v| avx2_mask(n.saturating_sub(8 * v)));
        let load = |p: *const f32, v: usize| {
            if FULL {
                _mm256_loadu_ps(p.add(8 * v))
            } else {
                _mm256_maskload_ps(p.add(8 * v), mask[v])
            }
        };
        let mut acc = [[_mm256_setzero_ps(); V]; ROWS];
        seq!(R in 0..6 {
            acc[R] = [_mm256_set1_ps(t.bias[R]); V];
        });
        let (x, mut wk) = (t.x.as_ptr().add(s), t.w.as_ptr());
        for &at in t.taps {
            let xk = x.add(at);
            let xs: [__m256; V] = std::array::from_fn(|v| load(xk, v));
            seq!(R in 0..6 {
                let wb = _mm256_broadcast_ss(&*wk.add(R));
                for v in 0..V {
                    acc[R][v] = _mm256_fmadd_ps(wb, xs[v], acc[R][v]);
                }
            });
            wk = wk.add(ROWS);
        }
        let (lo1, hi1) = (_mm256_set1_ps(t.clip1.lo), _mm256_set1_ps(t.clip1.hi));
        let (lo2, hi2) = (_mm256_set1_ps(t.clip2.lo), _mm256_set1_ps(t.clip2.hi));
        seq!(R in 0..6 {
            if R < t.rows {
                for v in 0..V {
                    let mut y = _mm256_min_ps(_mm256_max_ps(acc[R][v], lo1), hi1);
                    if let Some(res) = res {
                        let r = load(res[R].add(s), v);
                        y = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(y, r), lo2), hi2);
                    }
                    let at = out[R].add(s + 8 * v);
                    if FULL {
                        _mm256_storeu_ps(at, y);
                    } else {
                        _mm256_maskstore_ps(at, mask[v], y);
                    }
                }
            }
        });
    }
}

/// One tile with AVX2 and FMA: `ROWS` output channels by `t.cols` pixels, 16 at a time,
/// written to `out[r]`, with `res[r]` added (then `clip2`) when given. The same sums in
/// the same order as [`pixel_tile`]'s.
///
/// # Safety
/// The CPU has AVX2 and FMA; `t.x` holds `t.cols` values from each of `t.taps`; `t.w` holds
/// `ROWS` values per tap; each of the first `t.rows` rows of `out` and `res` holds at least
/// `t.cols` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(t: &Tile, res: Option<[*const f32; ROWS]>, out: [*mut f32; ROWS]) {
    // SAFETY: each run covers pixels `s..s + n` within `t.cols`, as `run_avx2` requires.
    unsafe {
        let mut s = 0;
        while s + 16 <= t.cols {
            run_avx2::<2, true>(t, (s, 16), res, out);
            s += 16;
        }
        match t.cols - s {
            0 => {}
            8 => run_avx2::<1, true>(t, (s, 8), res, out),
            n if n < 8 => run_avx2::<1, false>(t, (s, n), res, out),
            n => run_avx2::<2, false>(t, (s, n), res, out),
        }
    }
}

/// Runs `t` with the kernel as wide as its pixels: AVX-512 where `cpu` has it, else AVX2.
///
/// # Safety
/// As [`pixel_tile`]'s, or with AVX2 and FMA only ([`Cpu::avx2`]), [`tile_avx2`]'s.
pub(super) unsafe fn tile(
    cpu: Cpu,
    t: &Tile,
    res: Option<[*const f32; ROWS]>,
    out: [*mut f32; ROWS],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        if !cpu.avx512() {
            return tile_avx2(t, res, out);
        }
        match t.cols.div_ceil(16) {
            1 => tile_avx512_1(t, res, out),
            2 => tile_avx512_2(t, res, out),
            3 => tile_avx512_3(t, res, out),
            _ => tile_avx512_4(t, res, out),
        }
    }
}

/// Runs a channel tile of `cv` vectors by `t.windows.len()` pixels.
///
/// # Safety
/// As [`channel_tile`]'s.
pub(super) unsafe fn channel_tile(
    t: &ChannelTile,
    cv: usize,
    out: &mut [[f32; COLS]],
) -> TractResult<()> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        match (cv, t.windows.len()) {
            (4, 6) => channel_tile_4x6(t, out),
            (3, 7) => channel_tile_3x7(t, out),
            (3, 8) => channel_tile_3x8(t, out),
            (2, 12) => channel_tile_2x12(t, out),
            other => bail!("DenseConv has no {other:?} channel tile"),
        }
    }
    Ok(())
}
