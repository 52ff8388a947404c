//! The float tile on aarch64 NEON: `ROWS` output channels by up to 16 pixels at a time (four
//! vectors of four, 24 accumulators), each tap's pixels loaded once and multiplied by the
//! `ROWS` weights with `fmla` by element, a 64-pixel tile done as four such runs. Fused
//! multiply-adds in the order of the taps from the bias, as [`tile_plain`](super::tile_plain)
//! defines; the clips are `fmaxnm`/`fminnm`, which (as Rust's `max`/`min`) return the number
//! when one operand is NaN.

use super::{Tile, ROWS};
use std::arch::aarch64::*;

const _: () = assert!(ROWS == 6);

/// Loads `n < 4` values from `p` (the rest zero), without reading past them.
///
/// # Safety
/// `p` holds `n` values.
#[inline(always)]
unsafe fn load_partial(p: *const f32, n: usize) -> float32x4_t {
    let mut v = [0f32; 4];
    // SAFETY: the caller says `p` holds `n` values; `v` holds 4 >= n.
    unsafe {
        std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n.min(4));
        vld1q_f32(v.as_ptr())
    }
}

/// Stores the first `n` lanes of `v` at `p` (all four when `n >= 4`).
///
/// # Safety
/// `p` holds `min(n, 4)` values.
#[inline(always)]
unsafe fn store_partial(p: *mut f32, v: float32x4_t, n: usize) {
    // SAFETY: as the caller says.
    unsafe {
        if n >= 4 {
            vst1q_f32(p, v);
        } else {
            let mut t = [0f32; 4];
            vst1q_f32(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
        }
    }
}

/// `V` vectors of pixels from pixel `s`, `n` of them valid (`4 * V` when `FULL`); with
/// `WHOLE`, every tap's `4 * V` values are read even past `n` (their lanes are not stored).
///
/// # Safety
/// As [`tile`]'s; `s + n <= t.cols`, `4 * (V - 1) < n <= 4 * V`; with `WHOLE`, `t.x` holds
/// `4 * V` values from `s` past every tap.
#[target_feature(enable = "neon")]
unsafe fn run<const V: usize, const FULL: bool, const WHOLE: bool>(
    t: &Tile,
    s: usize,
    n: usize,
    res: Option<[*const f32; ROWS]>,
    out: [*mut f32; ROWS],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract: every load reads
    // within the `n` values of a tap (or a residual row) from pixel `s`, every store within
    // the `n` values of an output row.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); V]; ROWS];
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = [vdupq_n_f32(t.bias[r]); V];
        }
        let (x, mut wk) = (t.x.as_ptr().add(s), t.w.as_ptr());
        // (LLVM keeps this loop as written: one tap an iteration.)
        for &at in t.taps {
            let xk = x.add(at);
            let mut xs = [vdupq_n_f32(0.0); V];
            if (FULL || WHOLE) && V == 4 {
                // One `ld1` of four registers.
                let v = vld1q_f32_x4(xk);
                xs[0] = v.0;
                xs[1 % V] = v.1;
                xs[2 % V] = v.2;
                xs[3 % V] = v.3;
            } else {
                for (v, xv) in xs.iter_mut().enumerate() {
                    *xv = if FULL || WHOLE || 4 * v + 4 <= n {
                        vld1q_f32(xk.add(4 * v))
                    } else {
                        load_partial(xk.add(4 * v), n - 4 * v)
                    };
                }
            }
            let (w03, w45) = (vld1q_f32(wk), vld1_f32(wk.add(4)));
            wk = wk.add(ROWS);
            for (v, &xv) in xs.iter().enumerate() {
                acc[0][v] = vfmaq_laneq_f32::<0>(acc[0][v], xv, w03);
                acc[1][v] = vfmaq_laneq_f32::<1>(acc[1][v], xv, w03);
                acc[2][v] = vfmaq_laneq_f32::<2>(acc[2][v], xv, w03);
                acc[3][v] = vfmaq_laneq_f32::<3>(acc[3][v], xv, w03);
                acc[4][v] = vfmaq_lane_f32::<0>(acc[4][v], xv, w45);
                acc[5][v] = vfmaq_lane_f32::<1>(acc[5][v], xv, w45);
            }
        }
        let (lo1, hi1) = (vdupq_n_f32(t.clip1.lo), vdupq_n_f32(t.clip1.hi));
        let (lo2, hi2) = (vdupq_n_f32(t.clip2.lo), vdupq_n_f32(t.clip2.hi));
        // Constant row and vector indices (the loops unroll), so that the accumulators stay
        // in registers; a row past `t.rows` is skipped. One loop with the residual, one
        // without.
        let stored = |r: usize, v: usize, y: float32x4_t| {
            let at = out[r].add(s + 4 * v);
            if FULL {
                vst1q_f32(at, y);
            } else {
                store_partial(at, y, n - 4 * v);
            }
        };
        match res {
            None =>
            {
                #[allow(clippy::needless_range_loop)]
                for r in 0..ROWS {
                    if r >= t.rows {
                        break;
                    }
                    for v in 0..V {
                        stored(r, v, vminnmq_f32(vmaxnmq_f32(acc[r][v], lo1), hi1));
                    }
                }
            }
            Some(res) =>
            {
                #[allow(clippy::needless_range_loop)]
                for r in 0..ROWS {
                    if r >= t.rows {
                        break;
                    }
                    for v in 0..V {
                        let left = n - 4 * v;
                        let y = vminnmq_f32(vmaxnmq_f32(acc[r][v], lo1), hi1);
                        let rv = res[r].add(s + 4 * v);
                        let rv = if FULL || left >= 4 {
                            vld1q_f32(rv)
                        } else {
                            load_partial(rv, left)
                        };
                        let y = vminnmq_f32(vmaxnmq_f32(vaddq_f32(y, rv), lo2), hi2);
                        stored(r, v, y);
                    }
                }
            }
        }
    }
}

/// One tile with NEON: `ROWS` output channels by `t.cols` pixels, written to `out[r]`, with
/// `res[r]` added (then `clip2`) when given (each row's pointer at the tile's first pixel).
///
/// # Safety
/// `t.x` holds `t.cols` values from each of `t.taps`; `t.w` holds `ROWS` values per tap;
/// each of the first `t.rows` rows of `out` and `res` holds at least `t.cols` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn tile(t: &Tile, res: Option<[*const f32; ROWS]>, out: [*mut f32; ROWS]) {
    // SAFETY: each run covers pixels `s..s + n` within `t.cols`, as `run` requires.
    unsafe {
        let mut s = 0;
        while s + 16 <= t.cols {
            run::<4, true, true>(t, s, 16, res, out);
            s += 16;
        }
        let n = t.cols - s;
        if n == 0 {
            return;
        }
        // The last run's loads whole vectors where every tap's are within the input (a
        // padded input has room past its planes), partial ones otherwise.
        let v = n.div_ceil(4);
        let reach = t.taps.iter().max().copied().unwrap_or(0);
        let whole = reach.checked_add(s + 4 * v).is_some_and(|e| e <= t.x.len());
        match (v, whole) {
            (1, true) => run::<1, false, true>(t, s, n, res, out),
            (2, true) => run::<2, false, true>(t, s, n, res, out),
            (3, true) => run::<3, false, true>(t, s, n, res, out),
            (_, true) => run::<4, false, true>(t, s, n, res, out),
            (1, false) => run::<1, false, false>(t, s, n, res, out),
            (2, false) => run::<2, false, false>(t, s, n, res, out),
            (3, false) => run::<3, false, false>(t, s, n, res, out),
            (_, false) => run::<4, false, false>(t, s, n, res, out),
        }
    }
}
