//! Moving values between planes (NCHW: one channel's pixels side by side) and 16-lane
//! pixels (16 channels side by side), for the kernels that put channels on the vector lanes,
//! and zeroing buffers.
//!
//! With AVX-512 the moves are gathers, so they stay vector code at the boards' `dist`
//! profile (opt-level "z" unrolls and vectorises no loop: there, written as plain loops,
//! these moves made EfficientNet-Lite0's small-plane depthwise convolutions 3x slower than at
//! opt-level 3). Elsewhere they are plain loops; the results are the same values.

use crate::Cpu;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::{deinterleave_avx512, first_lanes};

/// Zeroes `buf`: a `memset` at any optimisation level (`[f32]::fill` is a scalar loop at
/// opt-level "z").
#[inline]
pub(crate) fn zero(buf: &mut [f32]) {
    // SAFETY: all-zero bits are 0.0 in f32; the pointer and length are `buf`'s own.
    unsafe { std::ptr::write_bytes(buf.as_mut_ptr(), 0, buf.len()) }
}

/// Sets every value of `buf` to `v`: a `memset` for 0, vector stores otherwise (at
/// opt-level "z" `[f32]::fill` is a scalar loop).
pub(crate) fn splat(cpu: Cpu, buf: &mut [f32], v: f32) {
    if v.to_bits() == 0 {
        return zero(buf);
    }
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() {
        // SAFETY: `cpu` has AVX-512 F, so the CPU has it (a `Cpu` never exceeds the CPU).
        unsafe { x86_64::splat_avx512(buf, v) };
        return;
    }
    buf.fill(v);
}

/// `dst[r * dst_stride + i] = src[r * src_stride + i]` for `r < rows` and `i < len`: a
/// block of rows copied, one `memcpy` a row with the bounds checked once (at opt-level "z"
/// a slice's `copy_from_slice` is a call of its own, and its range checks another).
pub(crate) fn copy_rows(
    (src, src_stride): (&[f32], usize),
    (dst, dst_stride): (&mut [f32], usize),
    rows: usize,
    len: usize,
) {
    if rows == 0 || len == 0 {
        return;
    }
    assert!(len <= src_stride && len <= dst_stride);
    assert!((rows - 1) * src_stride + len <= src.len());
    assert!((rows - 1) * dst_stride + len <= dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for r in 0..rows {
        // SAFETY: the asserts above keep row `r`'s `len` values within both slices, and
        // `src` and `dst` cannot overlap (one is borrowed mutably).
        unsafe { std::ptr::copy_nonoverlapping(s.add(r * src_stride), d.add(r * dst_stride), len) };
    }
}

/// `dst[16 * i + l] = src[l * stride + i]` for `i < n` and `l < lanes` (at most 16): `n`
/// pixels of `lanes` planes `stride` apart into 16-lane pixels. Lanes past `lanes` are left
/// as they are.
pub(crate) fn to_lanes(
    cpu: Cpu,
    src: &[f32],
    stride: usize,
    lanes: usize,
    n: usize,
    dst: &mut [f32],
) {
    assert!(lanes <= 16 && dst.len() >= 16 * n);
    if n == 0 || lanes == 0 {
        return;
    }
    assert!(src.len() >= (lanes - 1) * stride + n);
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() && 15 * stride + n < i32::MAX as usize {
        // SAFETY: `cpu` has AVX-512 F, so the CPU has it (a `Cpu` never exceeds the CPU); the asserts above bound every read and write, and
        // every offset fits the gather's i32 index.
        unsafe { x86_64::to_lanes_avx512(src, stride, lanes, n, dst) };
        return;
    }
    for l in 0..lanes {
        for (d, &v) in dst
            .chunks_exact_mut(16)
            .zip(&src[l * stride..l * stride + n])
        {
            d[l] = v;
        }
    }
}

/// `dst[i] = src[i * stride + l]` for every `i < dst.len()`: lane `l` of pixels `stride`
/// values apart, into a plane's run.
pub(crate) fn from_lanes(cpu: Cpu, src: &[f32], stride: usize, l: usize, dst: &mut [f32]) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    assert!(l < stride && src.len() > (n - 1) * stride + l);
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() && 16 * stride < i32::MAX as usize {
        // SAFETY: `cpu` has AVX-512 F, so the CPU has it (a `Cpu` never exceeds the CPU); the assert above bounds every read, and every
        // offset in a gather (at most `15 * stride + l`) fits its i32 index.
        unsafe { x86_64::from_lanes_avx512(src, stride, l, dst) };
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = src[i * stride + l];
    }
}

/// `dst[i] = min(max(dst[i] + res[i], lo), hi)` (as `f32::max` then `f32::min`) for every
/// `i < dst.len()`: a residual added, then clipped.
pub(crate) fn add_clip(cpu: Cpu, dst: &mut [f32], res: &[f32], (lo, hi): (f32, f32)) {
    let res = &res[..dst.len()];
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() {
        // SAFETY: `cpu` has AVX-512 F, so the CPU has it (a `Cpu` never exceeds the CPU); `res` holds `dst.len()` values.
        unsafe { x86_64::add_clip_avx512(dst, res, (lo, hi)) };
        return;
    }
    for (d, &r) in dst.iter_mut().zip(res) {
        *d = (*d + r).max(lo).min(hi);
    }
}

/// `row[2 * i]` to `even[i]` and `row[2 * i + 1]` to `odd[i]`, for every whole pair.
pub(crate) fn split_pairs(cpu: Cpu, row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let n = row.len() / 2;
    let (even, odd) = (&mut even[..n], &mut odd[..n]);
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512() {
        // SAFETY: `cpu` has AVX-512 F, so the CPU has it (a `Cpu` never exceeds the CPU); `row` holds `2 * n` values, `even` and `odd` `n`.
        unsafe { x86_64::split_pairs_avx512(&row[..2 * n], even, odd) };
        return;
    }
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect()
    }

    /// Each move against its definition, over lane counts, lengths and strides that leave
    /// ragged vectors; lanes past `lanes` untouched; at every CPU level this machine has.
    #[test]
    fn moves_match_their_definitions() {
        for cpu in Cpu::detect().levels() {
            eprintln!("lanes at {cpu}");
            moves(cpu);
        }
    }

    fn moves(cpu: Cpu) {
        for &(stride, lanes, n) in &[
            (49, 16, 49),
            (196, 7, 14),
            (5, 3, 5),
            (30, 16, 17),
            (1, 1, 1),
        ] {
            let src = noise((lanes - 1) * stride + n);
            let mut dst = vec![-1.0; 16 * n];
            to_lanes(cpu, &src, stride, lanes, n, &mut dst);
            for i in 0..n {
                for l in 0..16 {
                    let want = if l < lanes { src[l * stride + i] } else { -1.0 };
                    assert_eq!(
                        dst[16 * i + l].to_bits(),
                        want.to_bits(),
                        "to_lanes {i} {l}"
                    );
                }
            }
        }
        for &(stride, l, n) in &[
            (16, 0, 49),
            (16, 15, 33),
            (64, 5, 12),
            (64, 63, 1),
            (3, 2, 17),
        ] {
            let src = noise((n - 1) * stride + l + 1);
            let mut dst = vec![0.0; n];
            from_lanes(cpu, &src, stride, l, &mut dst);
            for (i, d) in dst.iter().enumerate() {
                assert_eq!(d.to_bits(), src[i * stride + l].to_bits(), "from_lanes {i}");
            }
        }
        let (lo, hi) = (-1.0f32, 2.5f32);
        for n in [1, 15, 16, 17, 40] {
            let (mut dst, res) = (noise(n), noise(n + 3)[3..].to_vec());
            let want: Vec<f32> = dst
                .iter()
                .zip(&res)
                .map(|(d, r)| (d + r).max(lo).min(hi))
                .collect();
            add_clip(cpu, &mut dst, &res, (lo, hi));
            assert_eq!(dst, want, "add_clip {n}");
        }
        let src = noise(7 * 30);
        let mut dst = vec![-1.0; 5 * 40];
        copy_rows((&src, 30), (&mut dst, 40), 5, 27);
        for (i, d) in dst.iter().enumerate() {
            let (r, c) = (i / 40, i % 40);
            let want = if c < 27 { src[r * 30 + c] } else { -1.0 };
            assert_eq!(d.to_bits(), want.to_bits(), "copy_rows {r} {c}");
        }
        for n in [0, 5, 16, 37] {
            let mut b = noise(n);
            splat(cpu, &mut b, -3.5);
            assert!(b.iter().all(|&v| v == -3.5), "splat {n}");
        }
        let mut z = noise(37);
        zero(&mut z);
        assert!(z.iter().all(|v| v.to_bits() == 0));
    }
}
