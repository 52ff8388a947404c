//! The moves of [`super`] on x86-64 with AVX-512: gathers and masked stores, the same
//! values as the plain loops there.

use std::arch::x86_64::*;

/// The AVX-512 mask of the first `n` lanes, all 16 from `n >= 16` on.
#[inline(always)]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// [`splat`](super::splat) 16 values a store.
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn splat_avx512(buf: &mut [f32], v: f32) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (n, d, x) = (buf.len(), buf.as_mut_ptr(), _mm512_set1_ps(v));
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(d.add(i), x);
            i += 16;
        }
        let left = n - i;
        _mm512_mask_storeu_ps(d.add(i), first_lanes(left), x);
    }
}

/// [`to_lanes`](super::to_lanes) with one gather per pixel.
///
/// # Safety
/// The CPU has AVX-512 F; `src` and `dst` hold what [`to_lanes`](super::to_lanes) asserts; `15 * stride + n`
/// fits an i32.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn to_lanes_avx512(
    src: &[f32],
    stride: usize,
    lanes: usize,
    n: usize,
    dst: &mut [f32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let s = stride as i32;
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(s),
        );
        let mask = first_lanes(lanes);
        let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
        for i in 0..n {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, src.add(i));
            _mm512_mask_storeu_ps(dst.add(16 * i), mask, v);
        }
    }
}

/// [`from_lanes`](super::from_lanes) 16 values a gather.
///
/// # Safety
/// The CPU has AVX-512 F; `src` and `dst` hold what [`from_lanes`](super::from_lanes) asserts; `16 * stride`
/// fits an i32.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn from_lanes_avx512(src: &[f32], stride: usize, l: usize, dst: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        let n = dst.len();
        let (s, d) = (src.as_ptr().add(l), dst.as_mut_ptr());
        let mut i = 0;
        while i < n {
            let left = n - i;
            let mask = first_lanes(left);
            let v =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, s.add(i * stride));
            _mm512_mask_storeu_ps(d.add(i), mask, v);
            i += 16;
        }
    }
}

/// [`add_clip`](super::add_clip) 16 values at a time. x86's `max(a, lo)` returns `lo` when `a` is NaN, as
/// `f32::max` does.
///
/// # Safety
/// The CPU has AVX-512 F; `res.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_clip_avx512(dst: &mut [f32], res: &[f32], (lo, hi): (f32, f32)) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let n = dst.len();
        let (d, r) = (dst.as_mut_ptr(), res.as_ptr());
        let mut i = 0;
        while i < n {
            let left = n - i;
            let mask = first_lanes(left);
            let y = _mm512_add_ps(
                _mm512_maskz_loadu_ps(mask, d.add(i)),
                _mm512_maskz_loadu_ps(mask, r.add(i)),
            );
            let y = _mm512_min_ps(_mm512_max_ps(y, vlo), vhi);
            _mm512_mask_storeu_ps(d.add(i), mask, y);
            i += 16;
        }
    }
}

/// [`split_pairs`](super::split_pairs) 16 pairs at a time.
///
/// # Safety
/// The CPU has AVX-512 F; `row.len() == 2 * even.len() == 2 * odd.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn split_pairs_avx512(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    // SAFETY: `row` holds `2 * n` values, `even` and `odd` `n` each (the caller's contract).
    unsafe {
        deinterleave_avx512(
            row.as_ptr(),
            even.as_mut_ptr(),
            odd.as_mut_ptr(),
            even.len(),
        )
    }
}

/// Values `2i` of `r` to `e[i]` and `2i + 1` to `o[i]`, `i < pairs`: 16 pairs a step, the last
/// ones masked (no access past `2 * pairs` values of `r` or `pairs` of `e` and `o`).
///
/// # Safety
/// The CPU has AVX-512 F; `r` is readable for `2 * pairs` values, `e` and `o` writable for
/// `pairs` values each.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn deinterleave_avx512(r: *const f32, e: *mut f32, o: *mut f32, pairs: usize) {
    // SAFETY: the caller upholds this function's `# Safety` contract; every access below is
    // within `2 * pairs` values of `r` and `pairs` of `e` and `o` (the last step masked).
    unsafe {
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mut i = 0;
        while i + 16 <= pairs {
            let a = _mm512_loadu_ps(r.add(2 * i));
            let b = _mm512_loadu_ps(r.add(2 * i + 16));
            _mm512_storeu_ps(e.add(i), _mm512_permutex2var_ps(a, ie, b));
            _mm512_storeu_ps(o.add(i), _mm512_permutex2var_ps(a, io, b));
            i += 16;
        }
        if i < pairs {
            // The last `k < 16` pairs: `2k` values in, `k` out to each side.
            let k = pairs - i;
            let (ma, mb) = (first_lanes(2 * k), first_lanes((2 * k).saturating_sub(16)));
            let a = _mm512_maskz_loadu_ps(ma, r.add(2 * i));
            let b = _mm512_maskz_loadu_ps(mb, r.add(2 * i + 16));
            let m = first_lanes(k);
            _mm512_mask_storeu_ps(e.add(i), m, _mm512_permutex2var_ps(a, ie, b));
            _mm512_mask_storeu_ps(o.add(i), m, _mm512_permutex2var_ps(a, io, b));
        }
    }
}
