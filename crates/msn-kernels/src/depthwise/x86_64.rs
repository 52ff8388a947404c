//! The depthwise plane loop on x86-64 (AVX-512, and AVX2 with FMA), and the stride-2 split
//! of a plane into its column phases with AVX-512.

use super::{Geometry, Plane};
use seq_macro::seq;
use std::arch::x86_64::*;

impl Geometry {
    /// [`Self::fill`] for two column phases (`sw == 2`), the whole plane in one call, 16
    /// pairs of columns at a time: at opt-level "z" a call per row cost as much as the
    /// split itself on the 14x14 and 7x7 planes.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `self.sw == 2`; `plane` holds `h * w` values, `buf` at least
    /// [`Self::plane_len`]. (Every padded input position `(iy + pt, ix + pl)` lies within
    /// `sh * qh` rows and `2 * qw` columns, by [`Self::new`], so every write is within the
    /// plane's phases.)
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill_pairs_avx512(&self, plane: &[f32], buf: &mut [f32]) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            let phase_len = self.qh * self.qw;
            // An odd left padding puts the first column alone in phase 1; the pairs start after.
            let lone = self.pl % 2;
            let (src, dst) = (plane.as_ptr(), buf.as_mut_ptr());
            let n = self.w - lone;
            let pairs = n / 2;
            for iy in 0..self.h {
                let py = iy + self.pt;
                let base = (py % self.sh) * 2 * phase_len + (py / self.sh) * self.qw;
                let row = src.add(iy * self.w);
                if lone == 1 {
                    *dst.add(base + phase_len + self.pl / 2) = *row;
                }
                let (r, e) = (row.add(lone), dst.add(base + self.pl.div_ceil(2)));
                let o = e.add(phase_len);
                crate::lanes::deinterleave_avx512(r, e, o, pairs);
                if n % 2 == 1 {
                    *e.add(pairs) = *r.add(n - 1);
                }
            }
        }
    }
}

simd_plane!(
    #[target_feature(enable = "avx512f")]
    avx512_plane,
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_max_ps,
    _mm512_min_ps,
    _mm512_storeu_ps,
    4,
    1
);
simd_plane!(
    #[target_feature(enable = "avx2,fma")]
    avx2_plane,
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_max_ps,
    _mm256_min_ps,
    _mm256_storeu_ps,
    8,
    2
);
