//! What each kernel computes, in plain Rust: direct loops over the definitions, no layout
//! tricks, no vectors. Slow on purpose; the tests and the `kernels` fuzz target hold every
//! kernel, at every CPU level, to these.

/// The geometry of a 2-D convolution or pool over NCHW tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub strides: [usize; 2],
    /// Vertical and horizontal dilation.
    pub dilations: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Window {
    /// The output's height and width for an input of `(h, w)` (floor division; with
    /// `ceil`, ONNX's `ceil_mode`: a last window that starts within the input or the
    /// left/top padding counts); `None` when the kernel does not fit.
    pub fn output(&self, [h, w]: [usize; 2], ceil: bool) -> Option<[usize; 2]> {
        let one = |len: usize, k: usize, s: usize, d: usize, a: usize, b: usize| {
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let padded = len.checked_add(a)?.checked_add(b)?;
            let room = padded.checked_sub(span)?;
            let mut o = room.checked_div(s)? + 1;
            if ceil && room % s != 0 {
                o += 1;
                // The last window must start within the input or the leading padding.
                if (o - 1) * s >= len + a {
                    o -= 1;
                }
            }
            Some(o)
        };
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        let [t, l, b, r] = self.pads;
        Some([one(h, kh, sh, dh, t, b)?, one(w, kw, sw, dw, l, r)?])
    }

    /// The input position that output `o`'s tap `k` reads on one axis, if it is inside an
    /// input of `len` (not in the padding).
    fn at(o: usize, k: usize, s: usize, d: usize, pad: usize, len: usize) -> Option<usize> {
        (o * s + k * d).checked_sub(pad).filter(|&i| i < len)
    }

    /// The taps of output pixel `(oy, ox)` that read inside an input plane of `(h, w)`: kernel
    /// row, kernel column and the index in the plane (taps in the padding are left out).
    fn taps(
        &self,
        [oy, ox]: [usize; 2],
        [h, w]: [usize; 2],
    ) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let [kh, kw] = self.kernel;
        (0..kh).flat_map(move |ky| {
            let iy = Window::at(oy, ky, self.strides[0], self.dilations[0], self.pads[0], h);
            (0..kw).filter_map(move |kx| {
                let ix = Window::at(ox, kx, self.strides[1], self.dilations[1], self.pads[1], w);
                Some((ky, kx, iy? * w + ix?))
            })
        })
    }
}

/// A float convolution: `x` `[n, c, h, w]`, `kernel` `[co, c / groups, kh, kw]`, optional
/// `bias` `[co]`, then clipped to `clip` (`lo`, `hi`; infinite for none). Sums in f64.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    kernel: &[f32],
    co: usize,
    bias: Option<&[f32]>,
    groups: usize,
    win: &Window,
    clip: (f32, f32),
) -> (Vec<f32>, [usize; 4]) {
    let [oh, ow] = win.output([h, w], false).expect("the kernel fits");
    let [kh, kw] = win.kernel;
    let (cg, og) = (c / groups, co / groups);
    assert_eq!(x.len(), n * c * h * w);
    assert_eq!(kernel.len(), co * cg * kh * kw);
    let mut y = vec![0f32; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for ci in 0..cg {
                        let plane = &x[((b * c + g * cg + ci) * h) * w..][..h * w];
                        for (ky, kx, i) in win.taps([oy, ox], [h, w]) {
                            let k = kernel[((o * cg + ci) * kh + ky) * kw + kx];
                            acc += k as f64 * plane[i] as f64;
                        }
                    }
                    let v = (acc as f32).max(clip.0).min(clip.1);
                    y[((b * co + o) * oh + oy) * ow + ox] = v;
                }
            }
        }
    }
    (y, [n, co, oh, ow])
}

/// A max pool: `x` `[n, c, h, w]`; `ceil` is ONNX's `ceil_mode`. The maximum starts at the
/// lowest finite f32, as in tract and onnxruntime: padding never wins, and a window wholly in
/// the padding gives `f32::MIN` (not `-inf`). A NaN in a window gives NaN.
pub fn max_pool2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    win: &Window,
    ceil: bool,
) -> (Vec<f32>, [usize; 4]) {
    let [oh, ow] = win.output([h, w], ceil).expect("the kernel fits");
    let mut y = vec![0f32; n * c * oh * ow];
    for p in 0..n * c {
        let plane = &x[p * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::MIN;
                for (_, _, i) in win.taps([oy, ox], [h, w]) {
                    let v = plane[i];
                    if v.is_nan() || m.is_nan() {
                        m = f32::NAN;
                    } else if v > m {
                        m = v;
                    }
                }
                y[(p * oh + oy) * ow + ox] = m;
            }
        }
    }
    (y, [n, c, oh, ow])
}

/// One output code from its integer sum `acc` (the offsets included) and the channel's
/// multiplier `m = x_scale * w_scale / y_scale`: `clamp(round_half_even(acc * m + y0), 0, 255)`
/// in f32, no fused multiply-add. The int8 kernels give these bytes.
#[inline]
pub fn requantize(acc: i32, m: f32, y0: u8) -> u8 {
    let v = (acc as f32 * m + y0 as f32).clamp(0.0, 255.0);
    v.round_ties_even() as u8
}

/// ONNX's `QLinearConv` with u8 activations and i8 weights (zero point 0), one group:
/// `x` `[n, c, h, w]` with zero point `x0` (the padding reads `x0`), `kernel`
/// `[co, c, kh, kw]`, `bias` `[co]` (i32), `m[o]` each channel's multiplier and `y0` the
/// output's zero point.
#[allow(clippy::too_many_arguments)]
pub fn qlinear_conv(
    x: &[u8],
    [n, c, h, w]: [usize; 4],
    x0: u8,
    kernel: &[i8],
    co: usize,
    bias: Option<&[i32]>,
    win: &Window,
    m: &[f32],
    y0: u8,
) -> (Vec<u8>, [usize; 4]) {
    let [oh, ow] = win.output([h, w], false).expect("the kernel fits");
    let [kh, kw] = win.kernel;
    assert_eq!(kernel.len(), co * c * kh * kw);
    let mut y = vec![0u8; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0i64, |b| b[o] as i64);
                    // A tap in the padding reads `x0`, which adds nothing.
                    for ci in 0..c {
                        let plane = &x[((b * c + ci) * h) * w..][..h * w];
                        for (ky, kx, i) in win.taps([oy, ox], [h, w]) {
                            let k = kernel[((o * c + ci) * kh + ky) * kw + kx];
                            acc += (plane[i] as i64 - x0 as i64) * k as i64;
                        }
                    }
                    let acc = acc.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                    y[((b * co + o) * oh + oy) * ow + ox] = requantize(acc, m[o], y0);
                }
            }
        }
    }
    (y, [n, co, oh, ow])
}

/// ONNX's `QuantizeLinear` to u8 with tract's reciprocal scale: `clamp(round_half_even(x *
/// inv_scale) + zero_point, 0, 255)`; a NaN gives the zero point.
pub fn quantize_u8(x: f32, inv_scale: f32, zero_point: u8) -> u8 {
    let v = x * inv_scale;
    if v.is_nan() {
        return zero_point;
    }
    (v.round_ties_even() + zero_point as f32).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output sizes as ONNX's shape inference gives them (hand-computed cases).
    #[test]
    fn output_sizes_follow_onnx() {
        let win = |k, s, p| Window {
            kernel: [k, k],
            strides: [s, s],
            dilations: [1, 1],
            pads: [p, p, p, p],
        };
        assert_eq!(win(3, 1, 1).output([7, 7], false), Some([7, 7]));
        assert_eq!(win(3, 2, 1).output([112, 112], false), Some([56, 56]));
        assert_eq!(win(3, 2, 0).output([6, 6], false), Some([2, 2]));
        assert_eq!(win(3, 2, 0).output([6, 6], true), Some([3, 3]));
        assert_eq!(win(5, 1, 0).output([3, 3], false), None);
        let dilated = Window {
            dilations: [2, 3],
            ..win(3, 1, 0)
        };
        assert_eq!(dilated.output([9, 9], false), Some([5, 3]));
    }

    /// A 1x1 convolution is a matrix product; a 3x3 one of ones sums the neighbourhood.
    #[test]
    fn convolution_of_known_values() {
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let ones = vec![1.0; 9];
        let win = Window {
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let (y, shape) = conv2d(
            &x,
            [1, 1, 3, 3],
            &ones,
            1,
            Some(&[0.5]),
            1,
            &win,
            (f32::NEG_INFINITY, f32::INFINITY),
        );
        assert_eq!(shape, [1, 1, 3, 3]);
        // Centre: the sum of 0..9; corner (0, 0): 0 + 1 + 3 + 4.
        assert_eq!(y[4], 36.5);
        assert_eq!(y[0], 8.5);
        let (p, _) = max_pool2d(&x, [1, 1, 3, 3], &win, false);
        assert_eq!(p, vec![4.0, 5.0, 5.0, 7.0, 8.0, 8.0, 7.0, 8.0, 8.0]);
        assert_eq!(requantize(10, 0.25, 3), 6); // 2.5 + 3 = 5.5 -> 6 (even)
        assert_eq!(requantize(-1000, 1.0, 0), 0);
        assert_eq!(quantize_u8(2.5, 1.0, 0), 2);
        assert_eq!(quantize_u8(f32::NAN, 1.0, 7), 7);
        assert_eq!(quantize_u8(1e9, 1.0, 7), 255);
    }
}
