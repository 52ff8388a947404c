//! Initializers as `ndarray` arrays and back.
//!
//! ONNX stores a tensor's values either in `raw_data` (little-endian bytes) or in a typed
//! repeated field (`float_data`, `int64_data`, ...). Both are read; arrays are written back as
//! `raw_data`, the compact form every runtime reads. Tensors whose data sits in an external
//! file are rejected with a clear error: this toolkit works on self-contained models.

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::{Error, Result, TensorProto};
use ndarray::{ArrayD, IxDyn};

/// The element type of a tensor as ONNX names it (`FLOAT`, `INT64`, ...).
pub fn data_type_name(t: &TensorProto) -> String {
    DataType::try_from(t.data_type())
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("unknown ({})", t.data_type()))
}

/// The shape of a tensor, checked to be non-negative.
pub fn shape(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(t, format!("negative dimension {d}"))))
        .collect()
}

fn bad(t: &TensorProto, reason: String) -> Error {
    Error::BadTensor {
        name: t.name().to_string(),
        reason,
    }
}

fn check_inline(t: &TensorProto) -> Result<()> {
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(Error::ExternalData {
            name: t.name().to_string(),
        });
    }
    Ok(())
}

fn from_raw<const N: usize, T>(
    t: &TensorProto,
    raw: &[u8],
    conv: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if !raw.len().is_multiple_of(N) {
        return Err(bad(
            t,
            format!("raw_data has {} bytes, not a multiple of {N}", raw.len()),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| conv(c.try_into().expect("chunk of N bytes")))
        .collect())
}

fn into_array<T>(t: &TensorProto, values: Vec<T>) -> Result<ArrayD<T>> {
    let shape = shape(t)?;
    let expected: usize = shape.iter().product();
    if values.len() != expected {
        return Err(bad(
            t,
            format!(
                "shape {shape:?} needs {expected} values but the tensor holds {}",
                values.len()
            ),
        ));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| bad(t, format!("shape {shape:?}: {e}")))
}

/// Reads a tensor's values with `decode(type, raw bytes if any)`, which gives `None` for a
/// type it does not read (then the error names the `expected` types).
fn read_values<T>(
    t: &TensorProto,
    expected: &'static str,
    decode: impl FnOnce(DataType, Option<&[u8]>) -> Option<Result<Vec<T>>>,
) -> Result<ArrayD<T>> {
    check_inline(t)?;
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let decoded = DataType::try_from(t.data_type())
        .ok()
        .and_then(|d| decode(d, raw));
    let Some(values) = decoded else {
        return Err(Error::UnsupportedType {
            name: t.name().to_string(),
            data_type: data_type_name(t),
            expected,
        });
    };
    into_array(t, values?)
}

/// Reads a floating-point tensor (FLOAT, or DOUBLE narrowed to f32).
pub fn to_f32(t: &TensorProto) -> Result<ArrayD<f32>> {
    read_values(t, "FLOAT or DOUBLE", |d, raw| {
        Some(match (d, raw) {
            (DataType::Float, Some(r)) => from_raw(t, r, f32::from_le_bytes),
            (DataType::Float, None) => Ok(t.float_data.clone()),
            (DataType::Double, Some(r)) => from_raw(t, r, |b| f64::from_le_bytes(b) as f32),
            (DataType::Double, None) => Ok(t.double_data.iter().map(|&v| v as f32).collect()),
            _ => return None,
        })
    })
}

/// Reads an integer tensor (INT64, or INT32 widened to i64).
pub fn to_i64(t: &TensorProto) -> Result<ArrayD<i64>> {
    read_values(t, "INT64 or INT32", |d, raw| {
        Some(match (d, raw) {
            (DataType::Int64, Some(r)) => from_raw(t, r, i64::from_le_bytes),
            (DataType::Int64, None) => Ok(t.int64_data.clone()),
            (DataType::Int32, Some(r)) => from_raw(t, r, |b| i32::from_le_bytes(b) as i64),
            (DataType::Int32, None) => Ok(t.int32_data.iter().map(|&v| v as i64).collect()),
            _ => return None,
        })
    })
}

/// True when the tensor holds floating-point values this crate can read.
pub fn is_float(t: &TensorProto) -> bool {
    matches!(
        DataType::try_from(t.data_type()),
        Ok(DataType::Float | DataType::Double)
    )
}

/// True when the tensor holds FLOAT (f32) values.
pub fn is_f32(t: &TensorProto) -> bool {
    t.data_type() == DataType::Float as i32
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// Makes a FLOAT tensor named `name` holding `a`, stored as `raw_data`.
pub fn from_f32(name: &str, a: &ArrayD<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims(a.shape()),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(le_bytes(a, f32::to_le_bytes)),
        ..Default::default()
    }
}

/// The little-endian bytes of an array's values in standard (row-major) order.
fn le_bytes<T: Copy, const N: usize>(a: &ArrayD<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(a.len() * N);
    let mut put = |v: &T| raw.extend_from_slice(&f(*v));
    // A contiguous slice iterates far faster than a dynamic-rank iterator.
    match a.as_slice() {
        Some(s) => s.iter().for_each(&mut put),
        None => a.iter().for_each(&mut put),
    }
    raw
}

/// Makes an INT64 tensor named `name` holding `a`, stored as `raw_data`.
pub fn from_i64(name: &str, a: &ArrayD<i64>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims(a.shape()),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(le_bytes(a, i64::to_le_bytes)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn float_round_trips_through_raw_data() {
        let a = array![[1.0f32, -2.5], [3.25, 1e-7]].into_dyn();
        let t = from_f32("w", &a);
        assert_eq!(to_f32(&t).unwrap(), a);
    }

    #[test]
    fn typed_float_and_int_fields_are_read() {
        let t = TensorProto {
            name: Some("w".into()),
            dims: vec![3],
            data_type: Some(DataType::Float as i32),
            float_data: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        assert_eq!(to_f32(&t).unwrap().as_slice().unwrap(), &[1.0, 2.0, 3.0]);
        let t = TensorProto {
            name: Some("s".into()),
            dims: vec![2],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![-1, 7],
            ..Default::default()
        };
        assert_eq!(to_i64(&t).unwrap().as_slice().unwrap(), &[-1, 7]);
        let a = array![4i64, -9].into_dyn();
        assert_eq!(to_i64(&from_i64("s", &a)).unwrap(), a);
    }

    #[test]
    fn external_data_is_rejected_by_name() {
        let mut t = from_f32("big.weight", &array![1.0f32].into_dyn());
        t.data_location = Some(DataLocation::External as i32);
        let err = to_f32(&t).unwrap_err().to_string();
        assert!(
            err.contains("big.weight") && err.contains("external"),
            "{err}"
        );
    }

    #[test]
    fn wrong_element_count_and_type_are_errors() {
        let mut t = from_f32("w", &array![1.0f32, 2.0].into_dyn());
        t.dims = vec![3];
        assert!(to_f32(&t)
            .unwrap_err()
            .to_string()
            .contains("needs 3 values"));
        t.data_type = Some(DataType::String as i32);
        assert!(to_f32(&t).unwrap_err().to_string().contains("STRING"));
    }
}
