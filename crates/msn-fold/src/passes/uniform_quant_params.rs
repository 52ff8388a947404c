//! Per-axis quantization parameters that repeat one value, made scalars.
//!
//! A `QuantizeLinear` or `DequantizeLinear` whose scale (and zero point) is a vector of one
//! value repeated computes what the per-tensor op with that value does. `msn quantize` writes
//! such a `DequantizeLinear` before a float convolution so that onnxruntime's
//! `WeightBiasQuantization` optimiser, which quantizes a float convolution behind a
//! per-tensor `DequantizeLinear` per tensor (and broke EfficientNet-Lite0's depthwise
//! convolutions), leaves it alone. tract turns a per-axis one into three element-wise ops;
//! the scalar form is its `DequantizeLinearF32`, which the runtime's depthwise kernel takes in.

use msn_onnx::index::{fresh_name, Index};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{GraphProto, TensorProto};

/// Every element's bytes (little-endian, the element's own width) of a 1-D constant of a
/// type stored as `raw_data` or, for 8- and 32-bit integers, `int32_data`.
fn elements(t: &TensorProto) -> Option<(usize, Vec<Vec<u8>>)> {
    let width = match DataType::try_from(t.data_type()).ok()? {
        DataType::Float | DataType::Int32 => 4,
        DataType::Uint8 | DataType::Int8 => 1,
        _ => return None,
    };
    if t.dims.len() != 1 || t.data_location.is_some_and(|l| l != 0) {
        return None;
    }
    let len = usize::try_from(t.dims[0]).ok()?;
    let bytes: Vec<u8> = if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty()) {
        raw.clone()
    } else if !t.float_data.is_empty() {
        t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        t.int32_data
            .iter()
            .flat_map(|&v| v.to_le_bytes()[..width].to_vec())
            .collect()
    };
    (bytes.len() == len * width).then(|| (width, bytes.chunks(width).map(|c| c.to_vec()).collect()))
}

/// One value repeated: that value's bytes.
fn uniform(t: &TensorProto) -> Option<Vec<u8>> {
    let (_, values) = elements(t)?;
    let first = values.first()?;
    (values.len() > 1 && values.iter().all(|v| v == first)).then(|| first.clone())
}

/// Makes the parameters of such ops scalars; returns how many ops changed.
pub fn run(g: &mut GraphProto) -> usize {
    let idx = Index::new(g);
    let mut found = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let quant = matches!(n.op_type(), "QuantizeLinear" | "DequantizeLinear");
        if !quant || !n.domain().is_empty() || n.input.len() < 2 {
            continue;
        }
        if n.attribute.iter().any(|a| a.name() == "block_size") {
            continue;
        }
        let params: Vec<&String> = n.input[1..].iter().filter(|s| !s.is_empty()).collect();
        let scalars: Option<Vec<(String, TensorProto)>> = params
            .iter()
            .map(|name| {
                let t = idx.constant(g, name)?;
                let value = uniform(t)?;
                Some((
                    name.to_string(),
                    TensorProto {
                        data_type: t.data_type,
                        raw_data: Some(value),
                        ..Default::default()
                    },
                ))
            })
            .collect();
        if let Some(scalars) = scalars {
            found.push((i, scalars));
        }
    }
    for (i, scalars) in &found {
        for (name, t) in scalars {
            let mut t = t.clone();
            let fresh = fresh_name(g, &format!("{name}_scalar"));
            t.name = Some(fresh.clone());
            g.initializer.push(t);
            for input in g.node[*i].input.iter_mut().skip(1) {
                if input == name {
                    *input = fresh.clone();
                }
            }
        }
        g.node[*i].attribute.retain(|a| a.name() != "axis");
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_onnx::builder::GraphBuilder;

    fn dq(scales: &[f32], zps: &[u8]) -> GraphProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[1, scales.len() as i64, 2, 2]);
        let raw: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        let s = b.initializer_raw("s", DataType::Float, &[scales.len()], raw);
        let z = b.initializer_raw("z", DataType::Uint8, &[zps.len()], zps.to_vec());
        let y = b.node(
            "DequantizeLinear",
            &[&x, &s, &z],
            "y",
            &[msn_onnx::builder::attr::int("axis", 1)],
        );
        b.output(&y, &[1, scales.len() as i64, 2, 2]);
        b.into_graph()
    }

    #[test]
    fn repeated_parameters_become_scalars_and_others_stay() {
        let mut g = dq(&[0.5, 0.5, 0.5], &[7, 7, 7]);
        assert_eq!(run(&mut g), 1);
        let n = &g.node[0];
        assert!(n.attribute.is_empty());
        let idx = Index::new(&g);
        let s = idx.constant(&g, &n.input[1]).unwrap();
        let z = idx.constant(&g, &n.input[2]).unwrap();
        assert!(s.dims.is_empty() && z.dims.is_empty());
        assert_eq!(s.raw_data(), 0.5f32.to_le_bytes());
        assert_eq!(z.raw_data(), [7]);
        assert_eq!(run(&mut g), 0, "scalars stay as they are");
        for (scales, zps) in [
            (&[0.5f32, 0.25, 0.5][..], &[7u8, 7, 7][..]),
            (&[0.5; 3], &[7, 8, 7]),
        ] {
            let mut g = dq(scales, zps);
            assert_eq!(run(&mut g), 0, "{scales:?} {zps:?}");
        }
    }
}
