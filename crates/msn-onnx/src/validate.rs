//! Checks a model before anything computes with it: the graph's structure (through
//! [`GraphView`]), every initializer's element count against its data, and the attributes
//! that index arithmetic depends on (groups, strides, dilations, kernels, pads, axes).
//! A model that passes can be folded and measured without a panic or an absurd allocation.

use crate::graph::{node_label, GraphView};
use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::{attr_int, attr_ints, attribute, Error, GraphProto, ModelProto, NodeProto, Result};

/// The most elements one tensor may declare (16 GiB of f32): beyond any model this toolkit
/// runs, and small enough that sizes computed from it cannot overflow.
pub const MAX_ELEMENTS: u64 = 1 << 32;
/// The most dimensions a tensor may have.
pub const MAX_RANK: usize = 16;
/// The largest stride, dilation, kernel side or pad accepted.
pub const MAX_GEOMETRY: i64 = 1 << 20;

fn bad(what: String, reason: String) -> Error {
    Error::BadTensor { name: what, reason }
}

/// Validates the whole model (see the module docs).
pub fn model(m: &ModelProto) -> Result<()> {
    GraphView::new(m)?;
    graph(m.graph.as_ref().expect("GraphView checked it"))
}

fn graph(g: &GraphProto) -> Result<()> {
    for t in &g.initializer {
        initializer(t)?;
    }
    for (i, n) in g.node.iter().enumerate() {
        node(n).map_err(|reason| Error::BadNode {
            node: node_label(n, i),
            op: n.op_type().to_string(),
            reason,
        })?;
        for a in &n.attribute {
            if let Some(t) = &a.t {
                initializer(t)?;
            }
            for sub in a.g.iter().chain(&a.graphs) {
                graph(sub)?;
            }
        }
    }
    Ok(())
}

/// The element size in bytes of a fixed-size ONNX type (`None` for strings and unknowns).
pub fn element_size(data_type: i32) -> Option<usize> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Float | Int32 | Uint32 => 4,
        Double | Int64 | Uint64 | Complex64 => 8,
        Complex128 => 16,
        Float16 | Bfloat16 | Int16 | Uint16 => 2,
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz => 1,
        _ => return None,
    })
}

/// The number of elements a tensor's dims declare, checked.
pub fn element_count(t: &crate::TensorProto) -> Result<u64> {
    if t.dims.len() > MAX_RANK {
        return Err(bad(
            t.name().into(),
            format!("{} dimensions (at most {MAX_RANK})", t.dims.len()),
        ));
    }
    // Dimensions of 0 make an empty tensor, but the others must still be sane (array
    // libraries check their product), so the product skips zeros.
    let mut n: u64 = 1;
    for &d in t.dims.iter().filter(|&&d| d != 0) {
        let d = u64::try_from(d)
            .map_err(|_| bad(t.name().into(), format!("negative dimension {d}")))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                bad(
                    t.name().into(),
                    format!(
                        "dims {:?} declare more than {MAX_ELEMENTS} elements",
                        t.dims
                    ),
                )
            })?;
    }
    Ok(if t.dims.contains(&0) { 0 } else { n })
}

/// An initializer's dims agree with the data it holds.
fn initializer(t: &crate::TensorProto) -> Result<()> {
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(Error::ExternalData {
            name: t.name().to_string(),
        });
    }
    let n = element_count(t)?;
    let Some(size) = element_size(t.data_type()) else {
        return Ok(()); // strings and unknown types: nothing numeric reads them
    };
    let held = match t.raw_data.as_deref() {
        Some(raw) if !raw.is_empty() => {
            if !raw.len().is_multiple_of(size) {
                return Err(bad(
                    t.name().into(),
                    format!("raw_data has {} bytes, not a multiple of {size}", raw.len()),
                ));
            }
            (raw.len() / size) as u64
        }
        _ => {
            let typed = t.float_data.len()
                + t.int32_data.len()
                + t.int64_data.len()
                + t.double_data.len()
                + t.uint64_data.len();
            // Complex numbers take two values each in the typed fields.
            let per = match DataType::try_from(t.data_type()) {
                Ok(DataType::Complex64 | DataType::Complex128) => 2,
                _ => 1,
            };
            (typed / per) as u64
        }
    };
    if held != n {
        return Err(bad(
            t.name().into(),
            format!(
                "dims {:?} need {n} values but the tensor holds {held}",
                t.dims
            ),
        ));
    }
    Ok(())
}

fn all_in(values: &[i64], lo: i64, what: &str) -> std::result::Result<(), String> {
    match values.iter().find(|&&v| v < lo || v > MAX_GEOMETRY) {
        Some(v) => Err(format!(
            "{what} {v} is out of range ({lo} to {MAX_GEOMETRY})"
        )),
        None => Ok(()),
    }
}

/// How many inputs the ONNX standard requires of the ops whose inputs our passes and tract
/// index by position (the optional ones after them may be absent or empty).
fn required_inputs(op: &str) -> usize {
    match op {
        "QLinearConv" | "QLinearMatMul" => 8,
        "BatchNormalization" => 5,
        "Conv" | "ConvTranspose" | "ConvInteger" | "Gemm" | "MatMul" | "MatMulInteger" | "Add"
        | "Sub" | "Mul" | "Div" | "Pow" | "QuantizeLinear" | "DequantizeLinear" | "PRelu" => 2,
        _ => 0,
    }
}

/// The attributes of one node that later arithmetic trusts.
fn node(n: &NodeProto) -> std::result::Result<(), String> {
    let required = required_inputs(n.op_type());
    if let Some(i) = (0..required).find(|&i| n.input.get(i).is_none_or(|v| v.is_empty())) {
        return Err(format!(
            "{} needs {required} inputs, input {i} is missing",
            n.op_type()
        ));
    }
    match n.op_type() {
        "Conv" | "ConvTranspose" | "ConvInteger" | "QLinearConv" => {
            let group = attr_int(n, "group", 1);
            if !(1..=MAX_GEOMETRY).contains(&group) {
                return Err(format!("group {group} must be at least 1"));
            }
            let kernel = attr_ints(n, "kernel_shape");
            all_in(kernel, 1, "kernel size")?;
            let strides = attr_ints(n, "strides");
            all_in(strides, 1, "stride")?;
            let dilations = attr_ints(n, "dilations");
            all_in(dilations, 1, "dilation")?;
            let pads = attr_ints(n, "pads");
            all_in(pads, 0, "pad")?;
            all_in(attr_ints(n, "output_padding"), 0, "output padding")?;
            let spatial = [kernel.len(), strides.len(), dilations.len(), pads.len() / 2]
                .into_iter()
                .filter(|&l| l > 0)
                .collect::<Vec<_>>();
            if spatial.windows(2).any(|w| w[0] != w[1]) || !pads.len().is_multiple_of(2) {
                return Err(format!(
                    "kernel_shape, strides, dilations and pads disagree on the number of \
                     spatial axes ({}, {}, {}, {} values)",
                    kernel.len(),
                    strides.len(),
                    dilations.len(),
                    pads.len()
                ));
            }
        }
        "MaxPool" | "AveragePool" | "LpPool" => {
            let kernel = attr_ints(n, "kernel_shape");
            if kernel.is_empty() {
                return Err("kernel_shape is required".into());
            }
            all_in(kernel, 1, "kernel size")?;
            all_in(attr_ints(n, "strides"), 1, "stride")?;
            all_in(attr_ints(n, "dilations"), 1, "dilation")?;
            all_in(attr_ints(n, "pads"), 0, "pad")?;
        }
        _ => {}
    }
    if let Some(a) = attribute(n, "axis").and_then(|a| a.i) {
        if a.unsigned_abs() as usize > MAX_RANK {
            return Err(format!("axis {a} is out of range"));
        }
    }
    if let Some(bad) = attr_ints(n, "axes")
        .iter()
        .find(|a| a.unsigned_abs() as usize > MAX_RANK)
    {
        return Err(format!("axis {bad} is out of range"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{attr, GraphBuilder};

    fn conv(attrs: Vec<crate::AttributeProto>) -> ModelProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[1, 2, 4, 4]);
        let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![2, 2, 3, 3], 0.1));
        let y = b.node("Conv", &[&x, &w], "y", &attrs);
        b.output(&y, &[1, 2, 2, 2]);
        b.into_model(17)
    }

    #[test]
    fn bad_conv_attributes_are_named() {
        model(&conv(vec![])).unwrap();
        for (a, want) in [
            (attr::int("group", 0), "group 0"),
            (attr::ints("strides", &[0, 1]), "stride 0"),
            (attr::ints("pads", &[-1, 0, 0, 0]), "pad -1"),
            (attr::ints("pads", &[1, 1, 1]), "disagree"),
            (attr::ints("dilations", &[1 << 40, 1]), "out of range"),
        ] {
            let err = model(&conv(vec![a])).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("Conv"), "{err}");
        }
    }

    #[test]
    fn missing_required_inputs_are_named() {
        for keep in [0, 1] {
            let mut m = conv(vec![]);
            m.graph.as_mut().unwrap().node[0].input.truncate(keep);
            let err = model(&m).unwrap_err().to_string();
            assert!(err.contains("Conv needs 2 inputs"), "{err}");
        }
        let mut m = conv(vec![]);
        m.graph.as_mut().unwrap().node[0].input[1] = String::new();
        let err = model(&m).unwrap_err().to_string();
        assert!(err.contains("input 1 is missing"), "{err}");
    }

    #[test]
    fn element_counts_are_checked_against_the_data_before_decoding() {
        let mut m = conv(vec![]);
        m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 40];
        let err = model(&m).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        let mut m = conv(vec![]);
        m.graph.as_mut().unwrap().initializer[0].dims = vec![2, 2, 3, 4];
        let err = model(&m).unwrap_err().to_string();
        assert!(err.contains("need 48 values"), "{err}");
    }
}
