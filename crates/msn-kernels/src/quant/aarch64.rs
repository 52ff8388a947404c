//! [`quantize_u8`](super::quantize_u8) on aarch64 NEON.

use std::arch::aarch64::*;

/// 16 values of `xs` quantized as [`quantize_u8_neon`] does, the first `ys.len()` (fewer than
/// 16) stored, by lane stores (no call: a `memcpy` of a few bytes cost more than the step).
///
/// # Safety
/// The CPU has NEON; `xs.len() == 16 > ys.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_u8_neon_last(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    assert!(xs.len() == 16 && ys.len() < 16);
    // SAFETY: `xs` holds 16 values; each store below writes within the `ys.len()` bytes
    // (`left` counts what is still to store from `p`).
    unsafe {
        let mut v = quantize16(xs.as_ptr(), scale, zero_point);
        let (mut p, mut left) = (ys.as_mut_ptr(), ys.len());
        if left >= 8 {
            vst1_lane_u64::<0>(p as *mut u64, vreinterpret_u64_u8(vget_low_u8(v)));
            v = vextq_u8::<8>(v, v);
            (p, left) = (p.add(8), left - 8);
        }
        if left >= 4 {
            vst1q_lane_u32::<0>(p as *mut u32, vreinterpretq_u32_u8(v));
            v = vextq_u8::<4>(v, v);
            (p, left) = (p.add(4), left - 4);
        }
        if left >= 2 {
            vst1q_lane_u16::<0>(p as *mut u16, vreinterpretq_u16_u8(v));
            v = vextq_u8::<2>(v, v);
            (p, left) = (p.add(2), left - 2);
        }
        if left == 1 {
            vst1q_lane_u8::<0>(p, v);
        }
    }
}

/// 16 values from `x`, quantized: `fcvtns` rounds half to even and gives 0 for NaN (so the
/// zero point), and the saturating add and narrowings clamp to [0, 255] whatever the size.
///
/// # Safety
/// The CPU has NEON; `x` holds 16 values.
#[inline(always)]
unsafe fn quantize16(x: *const f32, scale: f32, zero_point: u8) -> uint8x16_t {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (zp, k) = (vdupq_n_s32(zero_point as i32), vdupq_n_f32(scale));
        let v = vld1q_f32_x4(x);
        let q = |v: float32x4_t| vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(v, k)), zp);
        let lo = vqmovn_high_s32(vqmovn_s32(q(v.0)), q(v.1));
        let hi = vqmovn_high_s32(vqmovn_s32(q(v.2)), q(v.3));
        vqmovun_high_s16(vqmovun_s16(lo), hi)
    }
}

/// [`quantize_u8`](super::quantize_u8) on NEON, 16 values a step (`xs.len()` a multiple of 16, `ys` as long), the
/// same bytes as the clamp then round of [`quantize_u8_plain`](super::quantize_u8_plain), as the bounds are integers.
///
/// # Safety
/// The CPU has NEON (the aarch64 baseline).
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_u8_neon(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    assert!(xs.len().is_multiple_of(16) && ys.len() >= xs.len());
    for (x, y) in xs.chunks_exact(16).zip(ys.chunks_exact_mut(16)) {
        // SAFETY: `x` holds 16 values and `y` 16 bytes (chunks_exact); NEON is baseline.
        unsafe { vst1q_u8(y.as_mut_ptr(), quantize16(x.as_ptr(), scale, zero_point)) };
    }
}
