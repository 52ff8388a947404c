//! The depthwise plane loop on aarch64 NEON.

use super::Plane;
use seq_macro::seq;
use std::arch::aarch64::*;

/// `x * k + acc` in the argument order of the x86 intrinsics.
#[inline(always)]
unsafe fn neon_fma(x: float32x4_t, k: float32x4_t, acc: float32x4_t) -> float32x4_t {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe { vfmaq_f32(acc, x, k) }
}

simd_plane!(
    neon_plane,
    4,
    vdupq_n_f32,
    vld1q_f32,
    neon_fma,
    vmaxq_f32,
    vminq_f32,
    vst1q_f32,
    16,
    4
);
