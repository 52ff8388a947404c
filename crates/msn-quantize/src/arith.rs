//! The quantization arithmetic, exactly as ONNX defines it.
//!
//! `QuantizeLinear`: `q = saturate(round(x / scale) + zero_point)`, rounding half to even;
//! `DequantizeLinear`: `x = (q - zero_point) * scale`. Activations are asymmetric over a range
//! that always contains 0 (so 0 and a ReLU's floor are exact); weights are symmetric per output
//! channel over `[-127, 127]` (zero point 0, and no `-128`, so that `u8 x s8` products cannot
//! saturate 16-bit intermediate sums in the x86 kernels); biases are int32 at the scale
//! `input_scale * weight_scale`.

/// An 8-bit element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QType {
    U8,
    I8,
}

impl QType {
    /// The representable range.
    pub fn range(self) -> (i32, i32) {
        match self {
            QType::U8 => (0, 255),
            QType::I8 => (-128, 127),
        }
    }
}

/// A scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub dtype: QType,
}

/// `QuantizeLinear` of one value.
pub fn quantize(x: f32, p: QParams) -> i32 {
    let (lo, hi) = p.dtype.range();
    saturate(
        (x / p.scale).round_ties_even() as f64 + p.zero_point as f64,
        lo,
        hi,
    )
}

/// `DequantizeLinear` of one value.
pub fn dequantize(q: i32, p: QParams) -> f32 {
    (q - p.zero_point) as f32 * p.scale
}

fn saturate(v: f64, lo: i32, hi: i32) -> i32 {
    if v.is_nan() {
        return 0.max(lo);
    }
    v.clamp(lo as f64, hi as f64) as i32
}

/// Parameters for values observed in `[min, max]`, widened to contain 0, which then
/// quantizes exactly. u8 is asymmetric; s8 is symmetric (zero point 0) unless the values are
/// never negative (after a ReLU), where it is `[0, max]` with zero point -128. A degenerate
/// range (all zeros, or not finite) gets scale 1.
pub fn activation_params(min: f32, max: f32, dtype: QType) -> QParams {
    let (qmin, qmax) = dtype.range();
    let mut lo = min.min(0.0);
    let mut hi = max.max(0.0);
    if dtype == QType::I8 && lo < 0.0 {
        let m = (-lo).max(hi);
        (lo, hi) = (-m * 128.0 / 127.0, m);
    }
    let scale = (hi - lo) / (qmax - qmin) as f32;
    if !scale.is_finite() || scale <= f32::MIN_POSITIVE {
        return QParams {
            scale: 1.0,
            zero_point: 0,
            dtype,
        };
    }
    if dtype == QType::I8 && lo < 0.0 {
        return QParams {
            scale: hi / 127.0,
            zero_point: 0,
            dtype,
        };
    }
    let zero_point = saturate(
        (qmin as f32 - lo / scale).round_ties_even() as f64,
        qmin,
        qmax,
    );
    QParams {
        scale,
        zero_point,
        dtype,
    }
}

/// Symmetric int8 weights: per output channel (the first axis of `w`, one scale per row of
/// `w` as `rows x rest`), or one scale for the whole tensor. Returns the codes and the scales.
pub fn quantize_weights(w: &[f32], rows: usize, per_channel: bool) -> (Vec<i8>, Vec<f32>) {
    quantize_weights_at_least(w, rows, per_channel, &[])
}

/// The largest int32 bias [`bias_min_scales`] allows: 2^30, which leaves the other half of
/// the i32 range to the products' sum (at most `k * 255 * 128`, 2^30 for `k` = 32,000).
pub const BIAS_LIMIT: f64 = (1u64 << 30) as f64;

/// The weight scale each output channel needs at least so that its bias, at scale
/// `input_scale * weight_scale`, stays within [`BIAS_LIMIT`]. A channel whose weights are
/// near zero otherwise gets a tiny scale, its bias saturates i32 and the runtimes' i32 sums
/// wrap (onnxruntime then gave EfficientNet-Lite0 the float model's top-1 on 6 of 22 images).
pub fn bias_min_scales(bias: &[f32], input_scale: f32) -> Vec<f32> {
    bias.iter()
        .map(|&b| (b.abs() as f64 / (input_scale as f64 * BIAS_LIMIT)) as f32)
        .map(|s| if s.is_finite() { s } else { 0.0 })
        .collect()
}

/// [`quantize_weights`], with each row's scale at least `min[row]` (the whole tensor's at
/// least the largest; no minimum where `min` is empty).
pub fn quantize_weights_at_least(
    w: &[f32],
    rows: usize,
    per_channel: bool,
    min: &[f32],
) -> (Vec<i8>, Vec<f32>) {
    let cols = w.len().checked_div(rows).unwrap_or(0);
    let amax = |s: &[f32]| s.iter().fold(0f32, |m, v| m.max(v.abs()));
    let floor = |i: usize| min.get(i).copied().unwrap_or(0.0);
    let scales: Vec<f32> = if per_channel {
        w.chunks(cols.max(1))
            .enumerate()
            .map(|(i, c)| weight_scale(amax(c)).max(floor(i)))
            .collect()
    } else {
        let all = min.iter().fold(0f32, |m, &v| m.max(v));
        vec![weight_scale(amax(w)).max(all); 1]
    };
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = if per_channel {
                scales[i / cols.max(1)]
            } else {
                scales[0]
            };
            quantize(
                v,
                QParams {
                    scale: s,
                    zero_point: 0,
                    dtype: QType::I8,
                },
            )
            .clamp(-127, 127) as i8
        })
        .collect();
    (q, scales)
}

fn weight_scale(amax: f32) -> f32 {
    if amax.is_finite() && amax > 0.0 {
        amax / 127.0
    } else {
        1.0
    }
}

/// A bias in int32 at scale `input_scale * weight_scale` (per channel), saturating.
pub fn quantize_bias(b: &[f32], input_scale: f32, weight_scales: &[f32]) -> Vec<i32> {
    b.iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = input_scale * weight_scales[if weight_scales.len() == 1 { 0 } else { i }];
            saturate((v as f64 / s as f64).round_ties_even(), i32::MIN, i32::MAX)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel of near-zero weights with a large bias: without the floor its bias code is
    /// far past i32 (5.0 / (0.02 * 1e-9 / 127) = 3.2e13); with it the code fits within
    /// 2^30 and still means the bias, and the other channel keeps its own scale.
    #[test]
    fn bias_floor_keeps_int32_biases_in_range() {
        let w = [1e-9f32, -1e-9, 0.5, -0.25];
        let bias = [5.0f32, 0.1];
        let min = bias_min_scales(&bias, 0.02);
        for per_channel in [true, false] {
            let (_, plain) = quantize_weights(&w, 2, per_channel);
            let (q, s) = quantize_weights_at_least(&w, 2, per_channel, &min);
            let b = quantize_bias(&bias, 0.02, &s);
            for (i, &v) in b.iter().enumerate() {
                assert!((v as f64).abs() <= BIAS_LIMIT, "{per_channel}: {v}");
                let back = v as f64 * 0.02 * s[if per_channel { i } else { 0 }] as f64;
                assert!(
                    (back - bias[i] as f64).abs() < 1e-6,
                    "{per_channel}: {back}"
                );
            }
            if per_channel {
                let big = quantize_bias(&bias, 0.02, &plain);
                assert_eq!(big[0], i32::MAX, "the unfloored bias saturates");
                assert_eq!(s[1], plain[1]);
                assert_eq!(&q[2..], &[127, -64]);
            }
        }
    }

    const U: QParams = QParams {
        scale: 0.5,
        zero_point: 10,
        dtype: QType::U8,
    };

    #[test]
    fn rounds_half_to_even() {
        // 0.25 / 0.5 = 0.5 -> 0; 0.75 / 0.5 = 1.5 -> 2; -0.25 / 0.5 = -0.5 -> -0
        assert_eq!(quantize(0.25, U), 10);
        assert_eq!(quantize(0.75, U), 12);
        assert_eq!(quantize(-0.25, U), 10);
        assert_eq!(quantize(1.25, U), 12);
    }

    #[test]
    fn saturates_at_the_type_range() {
        assert_eq!(quantize(1e9, U), 255);
        assert_eq!(quantize(-1e9, U), 0);
        let s = QParams {
            dtype: QType::I8,
            zero_point: 0,
            ..U
        };
        assert_eq!(quantize(1e9, s), 127);
        assert_eq!(quantize(-1e9, s), -128);
        assert_eq!(quantize(f32::NAN, s), 0);
    }

    #[test]
    fn activation_ranges_contain_zero_exactly() {
        let p = activation_params(-1.0, 3.0, QType::U8);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.zero_point, 64);
        assert_eq!(dequantize(quantize(0.0, p), p), 0.0);
        // A ReLU's output: zero point 0, the whole code range above it.
        let r = activation_params(0.5, 2.0, QType::U8);
        assert_eq!(r.zero_point, 0);
        assert!((r.scale - 2.0 / 255.0).abs() < 1e-7);
        let s = activation_params(-2.0, 1.0, QType::I8);
        assert_eq!(s.zero_point, 0);
        assert!((s.scale - 2.0 / 127.0).abs() < 1e-7);
        let s = activation_params(0.0, 2.0, QType::I8);
        assert_eq!(s.zero_point, -128);
        assert!((s.scale - 2.0 / 255.0).abs() < 1e-7);
        // Degenerate ranges do not divide by zero.
        assert_eq!(activation_params(0.0, 0.0, QType::U8).scale, 1.0);
        assert_eq!(activation_params(f32::NAN, 1.0, QType::U8).zero_point, 0);
        // Round trip error at most half a step inside the range.
        for i in 0..=100 {
            let x = -1.0 + 4.0 * i as f32 / 100.0;
            assert!((dequantize(quantize(x, p), p) - x).abs() <= p.scale / 2.0 + 1e-6);
        }
    }

    #[test]
    fn weights_are_symmetric_per_channel() {
        let w = [0.5, -1.0, 0.25, 2.0, 0.0, -2.0];
        let (q, s) = quantize_weights(&w, 2, true);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q, vec![64, -127, 32, 127, 0, -127]);
        let (q, s) = quantize_weights(&w, 2, false);
        assert_eq!(s, vec![2.0 / 127.0]);
        assert_eq!(q, vec![32, -64, 16, 127, 0, -127]);
        let (_, s) = quantize_weights(&[0.0, 0.0], 1, true);
        assert_eq!(s, vec![1.0]);
    }

    #[test]
    fn bias_at_input_times_weight_scale() {
        assert_eq!(quantize_bias(&[1.0, -1.0], 0.5, &[0.25, 0.5]), vec![8, -4]);
        assert_eq!(quantize_bias(&[1e30], 1e-3, &[1e-3]), vec![i32::MAX]);
    }
}
