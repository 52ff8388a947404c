//! Proof that a rewritten model computes what the original did: both run through tract's
//! reference plan (no optimiser, no folding) on the same pseudo-random inputs, every input
//! fed and every output compared.

use crate::model::{Plan, Source, TensorSpec};
use crate::{Error, Result};
use msn_onnx::ModelProto;
use std::path::Path;
use tract_onnx::prelude::*;

/// The input shapes to verify at: each declared dimension, symbolic ones replaced by
/// `overrides` (by input position) or by 1.
pub fn shapes(inputs: &[TensorSpec], overrides: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            if let Some(s) = overrides.get(i) {
                return Ok(s.clone());
            }
            let dims = spec.dims.as_ref().ok_or_else(|| {
                Error::Inference(format!(
                    "input '{}' has no declared shape; give --input-shape",
                    spec.name
                ))
            })?;
            Ok(dims.iter().map(|d| d.unwrap_or(1)).collect())
        })
        .collect()
}

/// A pseudo-random tensor of the input's type: floats uniform in [-1, 1], integers in
/// {0, 1, 2} (small enough to be valid indices and counts), booleans alternating.
fn random(spec: &TensorSpec, shape: &[usize], state: &mut u64) -> Result<Tensor> {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let n: usize = shape.iter().product();
    let unit: Vec<f64> = (0..n)
        .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        .collect();
    let small: Vec<i64> = unit.iter().map(|u| ((u + 1.0) * 1.5) as i64 % 3).collect();
    let dt = spec.datum_type().ok_or_else(|| {
        Error::Inference(format!(
            "input '{}': element type {} cannot be fed",
            spec.name, spec.dtype
        ))
    })?;
    let t = if dt.is_float() {
        Tensor::from_shape(shape, &unit)?
            .cast_to_dt(dt)?
            .into_owned()
    } else if dt == bool::datum_type() {
        let b: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        Tensor::from_shape(shape, &b)?
    } else {
        Tensor::from_shape(shape, &small)?
            .cast_to_dt(dt)?
            .into_owned()
    };
    Ok(t)
}

/// The largest difference between two outputs relative to the largest magnitude of the
/// first (floats; a NaN on one side only counts as infinitely far), or 0 / infinity for
/// equal / different integer outputs.
pub use msn_kernels::testing::relative_error;

/// Runs `original` and `rewritten` on `n` inputs and returns the largest relative error over
/// every output. Input shapes are the declared ones (symbolic dimensions 1 unless given).
pub fn models(
    original: &ModelProto,
    rewritten: &ModelProto,
    n: usize,
    seed: u64,
    overrides: &[Vec<usize>],
) -> Result<f64> {
    let a = Source::from_bytes(msn_onnx::io::to_bytes(original), Path::new("original"))?;
    let b = Source::from_bytes(msn_onnx::io::to_bytes(rewritten), Path::new("rewritten"))?;
    let specs = a.inputs().to_vec();
    let shapes = shapes(&specs, overrides)?;
    let pa = a.plan(&shapes, Plan::Reference)?;
    let pb = b.plan(&shapes, Plan::Reference)?;
    if pa.outputs().len() != pb.outputs().len() {
        return Err(Error::Inference(format!(
            "the rewritten model has {} outputs, the original {}",
            pb.outputs().len(),
            pa.outputs().len()
        )));
    }
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut worst = 0.0f64;
    for _ in 0..n {
        let inputs: Vec<Tensor> = specs
            .iter()
            .zip(&shapes)
            .map(|(s, shape)| random(s, shape, &mut state))
            .collect::<Result<_>>()?;
        let ya = pa.run(inputs.clone())?;
        let yb = pb.run(inputs)?;
        for (p, q) in ya.iter().zip(&yb) {
            worst = worst.max(relative_error(p, q));
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_of_floats_and_exactness_of_integers() {
        let a = Tensor::from(ndarray::arr1(&[1.0f32, -4.0]).into_dyn());
        let b = Tensor::from(ndarray::arr1(&[1.0f32, -3.0]).into_dyn());
        assert!((relative_error(&a, &b) - 0.25).abs() < 1e-9);
        let i = Tensor::from(ndarray::arr1(&[1i64, 2]).into_dyn());
        let j = Tensor::from(ndarray::arr1(&[1i64, 3]).into_dyn());
        assert_eq!(relative_error(&i, &i), 0.0);
        // A NaN on one side only is infinitely far off; on both, it agrees.
        let n = Tensor::from(ndarray::arr1(&[1.0f32, f32::NAN, 2.0]).into_dyn());
        let m = Tensor::from(ndarray::arr1(&[1.0f32, 3.0, 2.0]).into_dyn());
        assert!(relative_error(&n, &m).is_infinite());
        assert!(relative_error(&m, &n).is_infinite());
        assert_eq!(relative_error(&n, &n), 0.0);
        assert!(relative_error(&i, &j).is_infinite());
    }
}
