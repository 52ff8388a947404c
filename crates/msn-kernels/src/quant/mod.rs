//! tract's f32 -> u8 `QuantizeLinear`, computed the same way in a loop that vectorises.
//!
//! tract's loop does not vectorise (a saturating cast and a rounding call per value): about
//! 2.3 ns a value here, 6.3 ms a run of an int8 EfficientNet-Lite0 (28 ms), where every float
//! depthwise convolution's output is quantized again. [`QuantizeU8`] computes what tract's
//! `quantize_linear_f32_u8` does, value for value: `clamp(round_half_even(x * (1 / scale)) +
//! zero_point, 0, 255)`, and a NaN gives the zero point; but it clamps before it rounds (the
//! bounds are integers, so the order does not matter) and rounds by adding and subtracting
//! 1.5 * 2^23, exact for the clamped range in the default rounding mode. The ops are swapped
//! into the optimised plan by [`rewrite`].

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::QuantizeLinearU8;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

#[cfg(target_arch = "aarch64")]
mod aarch64;

/// `QuantizeLinear` from f32 to u8; `scale` is the reciprocal of ONNX's, as in tract's op.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeU8 {
    pub scale: f32,
    pub zero_point: u8,
}

impl Eq for QuantizeU8 {}

/// What tract's `QuantizeLinearU8` writes for the first `ys.len()` values of `xs` (at least as
/// many), into `ys`. On aarch64 the values past them in `xs` let the last step run whole (they
/// are read, not stored).
pub fn quantize_u8(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    let n = ys.len();
    assert!(xs.len() >= n, "quantize_u8: fewer values than bytes");
    #[cfg(target_arch = "aarch64")]
    {
        let whole = n / 16 * 16;
        // SAFETY: NEON is the aarch64 baseline; `xs` and `ys` hold `whole` values each.
        unsafe { aarch64::quantize_u8_neon(&xs[..whole], &mut ys[..whole], scale, zero_point) };
        let left = n - whole;
        if left > 0 && xs.len() >= whole + 16 {
            // SAFETY: as above; `xs` holds 16 values from `whole`, `ys` `left < 16`.
            unsafe {
                aarch64::quantize_u8_neon_last(
                    &xs[whole..whole + 16],
                    &mut ys[whole..],
                    scale,
                    zero_point,
                )
            };
        } else if left > 0 {
            quantize_u8_plain(&xs[whole..n], &mut ys[whole..], scale, zero_point);
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    quantize_u8_plain(&xs[..n], ys, scale, zero_point)
}

/// [`quantize_u8`] in plain Rust.
pub fn quantize_u8_plain(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: the ulp of the sum is 1
    let zp = zero_point as f32;
    let (lo, hi) = (-zp, 255.0 - zp);
    // Comparisons and selects only, so that the loop vectorises (`f32::max` and a saturating
    // `as` do not, here).
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let v = x * scale;
        #[allow(clippy::eq_op)] // false for NaN only
        let v = if v == v { v } else { 0.0 };
        let v = if v > lo { v } else { lo };
        let v = if v < hi { v } else { hi };
        let r = (v + ROUND) - ROUND + zp;
        // SAFETY: `r` is a whole number in [0, 255], not NaN.
        *y = unsafe { r.to_int_unchecked::<i32>() } as u8;
    }
}

impl Op for QuantizeU8 {
    fn name(&self) -> StaticName {
        "MsnQuantizeU8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: 1/{} zero_point: {}",
            self.scale.recip(),
            self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let xs = x.as_slice::<f32>()?;
        let mut y = crate::split::output_u8(inputs[0].shape())?;
        let mut view = y.try_as_plain_ram_mut()?;
        quantize_u8(xs, view.as_slice_mut::<u8>()?, self.scale, self.zero_point);
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Swaps every f32 -> u8 `QuantizeLinearU8` of an optimised model for [`QuantizeU8`]; returns
/// how many.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let found: Vec<(usize, QuantizeU8)> = model
        .nodes
        .iter()
        .filter_map(|node| {
            let q = node
                .op_as::<ElementWiseOp>()?
                .0
                .downcast_ref::<QuantizeLinearU8>()?;
            let input = model.outlet_fact(*node.inputs.first()?).ok()?;
            (node.inputs.len() == 1
                && input.datum_type == f32::datum_type()
                && node.outputs[0].fact.datum_type == u8::datum_type())
            .then_some({
                (
                    node.id,
                    QuantizeU8 {
                        scale: q.scale,
                        zero_point: q.zero_point,
                    },
                )
            })
        })
        .collect();
    for (id, op) in &found {
        let node = &model.nodes[*id];
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op.clone())?;
        patch.apply(model)?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::{quantize_u8, quantize_u8_plain};
    use tract_onnx::tract_core::ops::quant::quantize_linear_f32_u8;

    /// Value for value what tract's scalar function gives: ties either way, both clamps, the
    /// edges of the range, NaN and the infinities, large values, and a sweep of scales and
    /// zero points.
    #[test]
    fn quantize_u8_matches_tracts_function() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN_POSITIVE,
            4.2e9,
        ];
        for i in -3000..3000 {
            xs.push(i as f32 * 0.25); // exact halves: ties at every other step
            xs.push(i as f32 * 0.1 + 0.05);
            xs.push((i as f32 * 0.37).sin() * 300.0);
        }
        let mut ys = vec![0u8; xs.len()];
        for &scale in &[1.0f32, 0.5, 2.0, 1.0 / 0.0235, 1.0 / 6.1e-3, 37.0] {
            for zp in [0u8, 1, 37, 127, 128, 200, 255] {
                quantize_u8(&xs, &mut ys, scale, zp);
                let mut plain = vec![0u8; xs.len()];
                quantize_u8_plain(&xs, &mut plain, scale, zp);
                assert_eq!(plain, ys, "scale {scale} zero point {zp}");
                // Fewer bytes than values: the last step reads past them, stores none.
                for n in 0..40 {
                    let mut short = vec![0u8; n + 1];
                    quantize_u8(&xs, &mut short[..n], scale, zp);
                    assert_eq!(short[..n], plain[..n], "{n} bytes");
                    assert_eq!(short[n], 0, "a byte past {n} written");
                }
                for (x, y) in xs.iter().zip(&ys) {
                    // tract's function adds the zero point to the rounded value cast to i32,
                    // which overflows past 2^31: those saturate.
                    let v = x * scale;
                    let want = if v.abs() < 2e9 || v.is_nan() {
                        quantize_linear_f32_u8(*x, scale, zp as i32)
                    } else if v > 0.0 {
                        255
                    } else {
                        0
                    };
                    assert_eq!(*y, want, "x {x} scale {scale} zero point {zp}");
                }
            }
        }
    }
}
