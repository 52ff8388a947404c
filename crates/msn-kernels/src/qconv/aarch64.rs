//! The int8 tile on aarch64: `sdot` where the CPU has the dot product (Cortex-A76: Raspberry
//! Pi 5, Jetson Orin), `smull` and `sadalp` where it has not (Cortex-A53 and A72: Pi 3, Pi 4).
//!
//! Both multiply signed bytes, and the activations are u8: the packed activations hold
//! `x - 128` as i8 (`x ^ 0x80`, [`to_signed`]), and each channel's offset gains
//! `128 * sum_k w[o, k]` (the caller's [`Tile::offset`] says so). The integer sums are the same
//! as the x86-64 kernel's; the requantization is [`requantize`](super::requantize)'s, in the
//! same f32 steps (multiply, then add; no fused multiply-add), rounded half to even by
//! `fcvtns`.

use super::{Tile, COLS, ROWS};
use std::arch::aarch64::*;

/// Pixels per sub-tile: four vectors of four.
const SUB: usize = 16;
const _: () = assert!(COLS.is_multiple_of(SUB) && ROWS == 4);

/// Interleaves four rows byte by byte into `group` (four bytes a pixel, `group[4p + t] =
/// rows[t][p]`), 16 pixels at a time, within [`interleave_reach`](super::interleave_reach);
/// returns how many pixels it wrote (a multiple of 16: the rest is the caller's).
pub(super) fn interleave4(rows: [&[u8]; 4], pixels: usize, group: &mut [u8]) -> usize {
    let n = super::interleave_reach(&rows, pixels, group);
    let mut p = 0;
    while p + 16 <= n {
        // SAFETY: NEON is the aarch64 baseline; each load reads 16 bytes of a row from `p`,
        // and `p + 16 <= n <=` its length; the store (four registers interleaved byte by
        // byte, `st4`) writes `group[4p..4p + 64]`, and `4p + 64 <= 4n <= group.len()`.
        unsafe {
            let ld = |r: &[u8]| vld1q_u8(r.as_ptr().add(p));
            let [a, b, c, d] = rows.map(ld);
            vst4q_u8(group.as_mut_ptr().add(4 * p), uint8x16x4_t(a, b, c, d));
        }
        p += 16;
    }
    p
}

/// Makes packed u8 activations the i8 the kernels multiply: `x - 128`.
pub(super) fn to_signed(packed: &mut [u8]) {
    for b in packed {
        *b ^= 0x80;
    }
}

/// The four rows' taps `4q..4q + 4`, row `r` in lane `r`: one load (the op keeps them side
/// by side).
///
/// # Safety
/// `w` holds `q * wstride + 16` bytes.
#[inline(always)]
unsafe fn weights(w: *const i8, wstride: usize, q: usize) -> int8x16_t {
    // SAFETY: the caller upholds this function's `# Safety` contract; NEON is the aarch64
    // baseline.
    unsafe { vld1q_s8(w.add(q * wstride)) }
}

/// One group of [`dot_groups`]' loop, its weights into register `$w` and its activations
/// into `$x0..$x3`: two loads, 16 `sdot` into v0-v15 (accumulator `4 * r + v` takes vector
/// `v` of the activations times lane `r` of the weights).
macro_rules! dot_group {
    ($w:literal, $x0:literal, $x1:literal, $x2:literal, $x3:literal) => {
        concat!(
            "ld1 {{v",
            $w,
            ".16b}}, [{w}], {ws}\n",
            "ld1 {{v",
            $x0,
            ".16b, v",
            $x1,
            ".16b, v",
            $x2,
            ".16b, v",
            $x3,
            ".16b}}, [{x}], {xs}\n",
            "sdot v0.4s, v",
            $x0,
            ".16b, v",
            $w,
            ".4b[0]\n",
            "sdot v1.4s, v",
            $x1,
            ".16b, v",
            $w,
            ".4b[0]\n",
            "sdot v2.4s, v",
            $x2,
            ".16b, v",
            $w,
            ".4b[0]\n",
            "sdot v3.4s, v",
            $x3,
            ".16b, v",
            $w,
            ".4b[0]\n",
            "sdot v4.4s, v",
            $x0,
            ".16b, v",
            $w,
            ".4b[1]\n",
            "sdot v5.4s, v",
            $x1,
            ".16b, v",
            $w,
            ".4b[1]\n",
            "sdot v6.4s, v",
            $x2,
            ".16b, v",
            $w,
            ".4b[1]\n",
            "sdot v7.4s, v",
            $x3,
            ".16b, v",
            $w,
            ".4b[1]\n",
            "sdot v8.4s, v",
            $x0,
            ".16b, v",
            $w,
            ".4b[2]\n",
            "sdot v9.4s, v",
            $x1,
            ".16b, v",
            $w,
            ".4b[2]\n",
            "sdot v10.4s, v",
            $x2,
            ".16b, v",
            $w,
            ".4b[2]\n",
            "sdot v11.4s, v",
            $x3,
            ".16b, v",
            $w,
            ".4b[2]\n",
            "sdot v12.4s, v",
            $x0,
            ".16b, v",
            $w,
            ".4b[3]\n",
            "sdot v13.4s, v",
            $x1,
            ".16b, v",
            $w,
            ".4b[3]\n",
            "sdot v14.4s, v",
            $x2,
            ".16b, v",
            $w,
            ".4b[3]\n",
            "sdot v15.4s, v",
            $x3,
            ".16b, v",
            $w,
            ".4b[3]\n",
        )
    };
}

/// `acc[r][v] += x[v] . w[lane r]` over `groups` groups: the weights of group `q` (16 bytes)
/// at `w + q * wstride`, its activations (64 bytes) at `x + q * xstride`; two groups a loop,
/// each one `ld1` of the weights and one of the activations, both post-incremented, and 16
/// `sdot` (LLVM's loop took 23 instructions a group, this one 19).
///
/// # Safety
/// The CPU has the dot product; `w` holds `(groups - 1) * wstride + 16` bytes, `x`
/// `(groups - 1) * xstride + 64`.
#[inline(always)]
unsafe fn dot_groups(
    acc: &mut [[int32x4_t; 4]; ROWS],
    x: *const i8,
    xstride: usize,
    w: *const i8,
    wstride: usize,
    groups: usize,
) {
    // SAFETY: the caller's contract bounds every load; the asm writes only the registers it
    // names (accumulators in v0-v15, scratch v16-v25) and its pointer and counter copies.
    unsafe {
        std::arch::asm!(
            "cbz {n}, 4f",
            "tbz {n}, #0, 2f",
            dot_group!(16, 17, 18, 19, 20),
            "sub {n}, {n}, #1",
            "cbz {n}, 4f",
            "2:",
            dot_group!(16, 17, 18, 19, 20),
            dot_group!(21, 22, 23, 24, 25),
            "subs {n}, {n}, #2",
            "b.ne 2b",
            "4:",
            n = inout(reg) groups => _,
            x = inout(reg) x => _,
            w = inout(reg) w => _,
            xs = in(reg) xstride,
            ws = in(reg) wstride,
            inout("v0") acc[0][0],
            inout("v1") acc[0][1],
            inout("v2") acc[0][2],
            inout("v3") acc[0][3],
            inout("v4") acc[1][0],
            inout("v5") acc[1][1],
            inout("v6") acc[1][2],
            inout("v7") acc[1][3],
            inout("v8") acc[2][0],
            inout("v9") acc[2][1],
            inout("v10") acc[2][2],
            inout("v11") acc[2][3],
            inout("v12") acc[3][0],
            inout("v13") acc[3][1],
            inout("v14") acc[3][2],
            inout("v15") acc[3][3],
            out("v16") _,
            out("v17") _,
            out("v18") _,
            out("v19") _,
            out("v20") _,
            out("v21") _,
            out("v22") _,
            out("v23") _,
            out("v24") _,
            out("v25") _,
            options(nostack, readonly),
        );
    }
}

/// One tile with `sdot`.
///
/// # Safety
/// The CPU has NEON and the dot product; `t.x` holds `t.groups` groups of `COLS * 4` bytes
/// `t.stride` apart (signed, [`to_signed`]); `t.w` holds `(t.groups - 1) * t.wstride + 16`
/// bytes; each of
/// the first `t.rows` rows of `out` holds at least `t.cols` (at most `COLS`) bytes.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile_dotprod(t: &Tile, out: [*mut u8; ROWS]) {
    // SAFETY: the caller upholds this function's `# Safety` contract: every read is within a
    // group's `COLS * 4` bytes and the weights' `ROWS` rows.
    unsafe {
        let (x, w, wstride) = (t.x.as_ptr() as *const i8, t.w.as_ptr(), t.wstride);
        for s in (0..t.cols).step_by(SUB) {
            let mut acc = [[vdupq_n_s32(0); 4]; ROWS];
            dot_groups(&mut acc, x.add(4 * s), t.stride, w, wstride, t.groups);
            store(t, &acc, s, out);
        }
    }
}

/// One tile without the dot product: `smull` makes eight i16 products (two pixels' four
/// taps), `sadalp` adds them in pairs into i32 lanes (so no i16 sum can overflow), and a
/// final `addp` sums each pixel's two lanes.
///
/// # Safety
/// As [`tile_dotprod`], without the dot product.
#[target_feature(enable = "neon")]
pub(super) unsafe fn tile_neon(t: &Tile, out: [*mut u8; ROWS]) {
    // SAFETY: as `tile_dotprod`.
    unsafe {
        let (x, w, wstride) = (t.x.as_ptr() as *const i8, t.w.as_ptr(), t.wstride);
        for s in (0..t.cols).step_by(SUB) {
            let mut acc = [[vdupq_n_s32(0); 4]; ROWS];
            // Two halves of eight pixels, to keep the pair sums in registers.
            for half in 0..2 {
                let mut pairs = [[vdupq_n_s32(0); 4]; ROWS];
                for q in 0..t.groups {
                    let xq = x.add(q * t.stride + 4 * (s + 8 * half));
                    let xs = [vld1q_s8(xq), vld1q_s8(xq.add(16))];
                    let wv = weights(w, wstride, q);
                    let ws = [
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(vreinterpretq_s32_s8(wv))),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(vreinterpretq_s32_s8(wv))),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(vreinterpretq_s32_s8(wv))),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(vreinterpretq_s32_s8(wv))),
                    ];
                    for (r, pair) in pairs.iter_mut().enumerate() {
                        for (v, &xv) in xs.iter().enumerate() {
                            let lo = vmull_s8(vget_low_s8(xv), vget_low_s8(ws[r]));
                            let hi = vmull_high_s8(xv, ws[r]);
                            pair[2 * v] = vpadalq_s16(pair[2 * v], lo);
                            pair[2 * v + 1] = vpadalq_s16(pair[2 * v + 1], hi);
                        }
                    }
                }
                for (r, pair) in pairs.iter().enumerate() {
                    acc[r][2 * half] = vpaddq_s32(pair[0], pair[1]);
                    acc[r][2 * half + 1] = vpaddq_s32(pair[2], pair[3]);
                }
            }
            store(t, &acc, s, out);
        }
    }
}

/// Requantizes and stores the sub-tile at pixel `s`: rows `..t.rows`, pixels `s..t.cols`.
///
/// # Safety
/// As the tiles': each of the first `t.rows` rows of `out` holds at least `t.cols` bytes;
/// `s < t.cols`.
#[inline(always)]
unsafe fn store(t: &Tile, acc: &[[int32x4_t; 4]; ROWS], s: usize, out: [*mut u8; ROWS]) {
    // SAFETY: the caller upholds this function's `# Safety` contract; the stores write
    // `min(t.cols - s, SUB)` bytes at `s` of each valid row.
    unsafe {
        let y0 = vdupq_n_f32(t.y0 as f32);
        let n = (t.cols - s).min(SUB);
        for (r, acc) in acc.iter().enumerate().take(t.rows) {
            let (c, m) = (vdupq_n_s32(t.offset[r]), vdupq_n_f32(t.scale[r]));
            // `fcvtns` rounds half to even and saturates to i32, the narrowings saturate to
            // i16, then to u8: the clamp to [0, 255] of the rounded value, which is the
            // rounding of the clamped one (the bounds are integers), as `requantize` has it.
            let codes = acc.map(|a| {
                let f = vcvtq_f32_s32(vaddq_s32(a, c));
                vcvtnq_s32_f32(vaddq_f32(vmulq_f32(f, m), y0))
            });
            let h0 = vqmovn_high_s32(vqmovn_s32(codes[0]), codes[1]);
            let h1 = vqmovn_high_s32(vqmovn_s32(codes[2]), codes[3]);
            let bytes = vqmovun_high_s16(vqmovun_s16(h0), h1);
            let dst = out[r].add(s);
            if n == SUB {
                vst1q_u8(dst, bytes);
            } else {
                let mut tmp = [0u8; SUB];
                vst1q_u8(tmp.as_mut_ptr(), bytes);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n);
            }
        }
    }
}
