//! [`max_plane`](super::max_plane) on x86-64.

use crate::depthwise::Geometry;
use std::arch::x86_64::*;

/// [`max_plane`](super::max_plane) with AVX-512: 64 outputs, four accumulators, then 16 at a time; no call
/// inside the loops, so the accumulators stay in registers at opt-level "z". x86's max
/// returns its second operand when either is NaN: a NaN input is passed over unless it is
/// the last tap read, where onnxruntime's pooling would return it too.
///
/// # Safety
/// The CPU has AVX-512 F; every tap's offset plus `wide.len()` is within `buf`;
/// `wide.len()` is a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max_plane_avx512(g: &Geometry, buf: &[f32], wide: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (n, taps) = (wide.len(), g.offsets.len());
        let (src, offsets, dst) = (buf.as_ptr(), g.offsets.as_ptr(), wide.as_mut_ptr());
        let mut i = 0;
        while i + 64 <= n {
            let mut acc = [_mm512_set1_ps(f32::MIN); 4];
            for t in 0..taps {
                let s = src.add(*offsets.add(t) + i);
                acc[0] = _mm512_max_ps(_mm512_loadu_ps(s), acc[0]);
                acc[1] = _mm512_max_ps(_mm512_loadu_ps(s.add(16)), acc[1]);
                acc[2] = _mm512_max_ps(_mm512_loadu_ps(s.add(32)), acc[2]);
                acc[3] = _mm512_max_ps(_mm512_loadu_ps(s.add(48)), acc[3]);
            }
            _mm512_storeu_ps(dst.add(i), acc[0]);
            _mm512_storeu_ps(dst.add(i + 16), acc[1]);
            _mm512_storeu_ps(dst.add(i + 32), acc[2]);
            _mm512_storeu_ps(dst.add(i + 48), acc[3]);
            i += 64;
        }
        while i < n {
            let mut acc = _mm512_set1_ps(f32::MIN);
            for t in 0..taps {
                acc = _mm512_max_ps(_mm512_loadu_ps(src.add(*offsets.add(t) + i)), acc);
            }
            _mm512_storeu_ps(dst.add(i), acc);
            i += 16;
        }
    }
}

/// [`max_plane`](super::max_plane) with AVX2: 32 outputs, four accumulators, then 8 at a
/// time. `vmaxps` passes over a NaN as the AVX-512 loop does.
///
/// # Safety
/// The CPU has AVX2; every tap's offset plus `wide.len()` is within `buf`; `wide.len()` is
/// a multiple of 16.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_plane_avx2(g: &Geometry, buf: &[f32], wide: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (n, taps) = (wide.len(), g.offsets.len());
        let (src, offsets, dst) = (buf.as_ptr(), g.offsets.as_ptr(), wide.as_mut_ptr());
        let mut i = 0;
        while i + 32 <= n {
            let mut acc = [_mm256_set1_ps(f32::MIN); 4];
            for t in 0..taps {
                let s = src.add(*offsets.add(t) + i);
                acc[0] = _mm256_max_ps(_mm256_loadu_ps(s), acc[0]);
                acc[1] = _mm256_max_ps(_mm256_loadu_ps(s.add(8)), acc[1]);
                acc[2] = _mm256_max_ps(_mm256_loadu_ps(s.add(16)), acc[2]);
                acc[3] = _mm256_max_ps(_mm256_loadu_ps(s.add(24)), acc[3]);
            }
            _mm256_storeu_ps(dst.add(i), acc[0]);
            _mm256_storeu_ps(dst.add(i + 8), acc[1]);
            _mm256_storeu_ps(dst.add(i + 16), acc[2]);
            _mm256_storeu_ps(dst.add(i + 24), acc[3]);
            i += 32;
        }
        while i < n {
            let mut acc = _mm256_set1_ps(f32::MIN);
            for t in 0..taps {
                acc = _mm256_max_ps(_mm256_loadu_ps(src.add(*offsets.add(t) + i)), acc);
            }
            _mm256_storeu_ps(dst.add(i), acc);
            i += 8;
        }
    }
}
