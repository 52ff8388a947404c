//! The int8 tile on x86-64 AVX-512 VNNI ([`tile_vnni`]: `ROWS` output channels by `COLS`
//! pixels, u8 activations times i8 weights with `vpdpbusd`, the requantization in f32 then
//! rounded half to even), and the activations' packing with SSE2 ([`interleave4`]).

use super::{Tile, ROWS};
use std::arch::x86_64::*;

/// Interleaves four rows byte by byte into `group` (four bytes a pixel, `group[4p + t] =
/// rows[t][p]`), 16 pixels at a time, within [`interleave_reach`](super::interleave_reach);
/// returns how many pixels it wrote (a multiple of 16: the rest is the caller's).
pub(super) fn interleave4(rows: [&[u8]; 4], pixels: usize, group: &mut [u8]) -> usize {
    let n = super::interleave_reach(&rows, pixels, group);
    let mut p = 0;
    while p + 16 <= n {
        // SAFETY: SSE2 is part of x86-64; each load reads 16 bytes of a row from `p`, and
        // `p + 16 <= n <= ` its length; the four stores write `group[4p..4p + 64]`, and
        // `4p + 64 <= 4n <= group.len()`.
        unsafe {
            let ld = |r: &[u8]| _mm_loadu_si128(r.as_ptr().add(p) as *const __m128i);
            let [a, b, c, d] = rows.map(ld);
            let (ab0, ab1) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd0, cd1) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let dst = group.as_mut_ptr().add(4 * p) as *mut __m128i;
            _mm_storeu_si128(dst, _mm_unpacklo_epi16(ab0, cd0));
            _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(ab0, cd0));
            _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi16(ab1, cd1));
            _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi16(ab1, cd1));
        }
        p += 16;
    }
    p
}

/// One tile with AVX-512 VNNI: `ROWS` output channels by `COLS` pixels, written to
/// `out[r]` (each row's slice starts at the tile's first pixel).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI ([`available`](super::available)); `t.x` holds `t.groups` groups of
/// `COLS * 4` bytes `t.stride` apart; `t.w` holds `(t.groups - 1) * t.wstride + 4 * ROWS`
/// bytes; each of the
/// first `t.rows` rows of `out` holds at least `t.cols` (at most `COLS`) bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_vnni(t: &Tile, out: [*mut u8; ROWS]) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 4]; ROWS];
        let (x, w) = (t.x.as_ptr(), t.w.as_ptr());
        for q in 0..t.groups {
            let xq = x.add(q * t.stride) as *const __m512i;
            let xs = [
                _mm512_loadu_si512(xq),
                _mm512_loadu_si512(xq.add(1)),
                _mm512_loadu_si512(xq.add(2)),
                _mm512_loadu_si512(xq.add(3)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let wq = (w.add(q * t.wstride + 4 * r) as *const i32).read_unaligned();
                let wb = _mm512_set1_epi32(wq);
                for (a, &xv) in acc.iter_mut().zip(&xs) {
                    *a = _mm512_dpbusd_epi32(*a, xv, wb);
                }
            }
        }
        let (lo, hi, y0) = (
            _mm512_setzero_ps(),
            _mm512_set1_ps(255.0),
            _mm512_set1_ps(t.y0 as f32),
        );
        for (r, acc) in acc.iter().enumerate().take(t.rows) {
            let (c, m) = (_mm512_set1_epi32(t.offset[r]), _mm512_set1_ps(t.scale[r]));
            for (v, &a) in acc.iter().enumerate() {
                let first = 16 * v;
                if first >= t.cols {
                    break;
                }
                let f = _mm512_cvtepi32_ps(_mm512_add_epi32(a, c));
                let f = _mm512_add_ps(_mm512_mul_ps(f, m), y0);
                let f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
                // Rounds half to even (the default rounding mode).
                let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(f));
                let n = (t.cols - first).min(16);
                let mask = crate::lanes::first_lanes(n);
                _mm_mask_storeu_epi8(out[r].add(first) as *mut i8, mask, bytes);
            }
        }
    }
}
