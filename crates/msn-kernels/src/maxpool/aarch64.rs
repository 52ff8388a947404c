//! [`max_plane`](super::max_plane) on aarch64.

use crate::depthwise::Geometry;
use seq_macro::seq;
use std::arch::aarch64::*;

/// [`max_plane`](super::max_plane) with NEON: 64 outputs (16 vectors) at a time, then 16. `fmaxnm` passes over
/// a NaN, as `f32::max` does.
///
/// # Safety
/// The CPU has NEON; every tap's offset plus `wide.len()` is within `buf`; `wide.len()` is a
/// multiple of 16.
#[target_feature(enable = "neon")]
// `seq!` spells out `4 * 0` and `1 * 4`.
#[allow(clippy::identity_op, clippy::erasing_op)]
pub(super) unsafe fn max_plane_neon(g: &Geometry, buf: &[f32], wide: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (n, offsets) = (wide.len(), &g.offsets);
        let (src, dst, low) = (buf.as_ptr(), wide.as_mut_ptr(), vdupq_n_f32(f32::MIN));
        let mut i = 0;
        while i + 64 <= n {
            let mut acc = [low; 16];
            for &o in offsets {
                let s = src.add(o + i);
                seq!(J in 0..16 { acc[J] = vmaxnmq_f32(vld1q_f32(s.add(4 * J)), acc[J]); });
            }
            seq!(J in 0..16 { vst1q_f32(dst.add(i + 4 * J), acc[J]); });
            i += 64;
        }
        while i < n {
            let mut acc = [low; 4];
            for &o in offsets {
                let s = src.add(o + i);
                seq!(J in 0..4 { acc[J] = vmaxnmq_f32(vld1q_f32(s.add(4 * J)), acc[J]); });
            }
            seq!(J in 0..4 { vst1q_f32(dst.add(i + 4 * J), acc[J]); });
            i += 16;
        }
    }
}
