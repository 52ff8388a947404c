//! What a model is, in a terminal (what Netron and `tract dump` show): inputs and outputs, the
//! op histogram, parameters, multiply-accumulates per layer and the metadata.
//!
//! Multiply-accumulates are counted as torchvision and fvcore count them: for each Conv,
//! ConvTranspose, Gemm and MatMul, one per weight tap per output value (`Conv`: output
//! values times `C_in / groups * kh * kw`; `ConvTranspose`: input values times
//! `C_out / groups * kh * kw`; `Gemm`/`MatMul`: output values times the inner dimension).
//! Shapes come from tract's shape inference at the given input shapes; elementwise ops,
//! pooling and normalisation are not counted.

use crate::model::{Source, TensorSpec};
use crate::Result;
use msn_onnx::{attr_int, validate, GraphProto, NodeProto};
use std::collections::{BTreeMap, HashMap};

/// One layer that multiplies and accumulates.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMacs {
    /// The ONNX node's name (its first output's name when it has none).
    pub name: String,
    pub op: String,
    /// Its output's shape at the given input shapes.
    pub output: Vec<usize>,
    pub macs: u64,
}

/// A model described.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// As the file declares them.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The input shapes the shapes and counts below are for.
    pub shapes: Vec<Vec<usize>>,
    /// Op type (with its domain when not the default one) -> nodes, subgraphs included.
    pub ops: BTreeMap<String, usize>,
    /// Values in initializers.
    pub parameters: u64,
    /// Their size as stored.
    pub parameter_bytes: u64,
    pub layers: Vec<LayerMacs>,
    /// The sum over `layers`.
    pub macs: u64,
    pub metadata: BTreeMap<String, String>,
    pub opset: Vec<(String, i64)>,
    pub producer: String,
}

/// Describes `source` with its inputs at `shapes`.
pub fn describe(source: &Source, shapes: &[Vec<usize>]) -> Result<Info> {
    let model = source.model();
    let g = model.graph.as_ref().expect("validated models have a graph");
    let mut values = source.value_shapes(shapes)?;
    // Initializers are constants in tract, not always labelled: their shapes are in the file.
    for t in &g.initializer {
        if let Ok(dims) = msn_onnx::tensor::shape(t) {
            values.entry(t.name().to_string()).or_insert(dims);
        }
    }
    let mut ops = BTreeMap::new();
    count_ops(g, &mut ops);
    let (mut parameters, mut parameter_bytes) = (0u64, 0u64);
    for t in &g.initializer {
        let n = validate::element_count(t).unwrap_or(0);
        parameters += n;
        parameter_bytes += n * validate::element_size(t.data_type()).unwrap_or(0) as u64;
    }
    let layers: Vec<LayerMacs> = g
        .node
        .iter()
        .filter_map(|node| layer_macs(node, &values))
        .collect();
    Ok(Info {
        inputs: source.inputs().to_vec(),
        outputs: source.outputs(),
        shapes: shapes.to_vec(),
        ops,
        parameters,
        parameter_bytes,
        macs: layers.iter().map(|l| l.macs).sum(),
        layers,
        metadata: model
            .metadata_props
            .iter()
            .map(|p| (p.key().to_string(), p.value().to_string()))
            .collect(),
        opset: model
            .opset_import
            .iter()
            .map(|o| (o.domain().to_string(), o.version()))
            .collect(),
        producer: format!("{} {}", model.producer_name(), model.producer_version())
            .trim()
            .to_string(),
    })
}

fn count_ops(g: &GraphProto, ops: &mut BTreeMap<String, usize>) {
    for node in &g.node {
        let op = match node.domain() {
            "" | "ai.onnx" => node.op_type().to_string(),
            d => format!("{d}.{}", node.op_type()),
        };
        *ops.entry(op).or_default() += 1;
        for sub in msn_onnx::index::subgraphs(node) {
            count_ops(sub, ops);
        }
    }
}

/// The multiply-accumulates of a Conv, ConvTranspose, Gemm or MatMul (or their int8 forms:
/// QLinearConv, ConvInteger, MatMulInteger, QLinearMatMul) whose shapes are known.
fn layer_macs(node: &NodeProto, values: &HashMap<String, Vec<usize>>) -> Option<LayerMacs> {
    let shape = |i: usize| values.get(node.input.get(i)?.as_str());
    let output = values.get(node.output.first()?.as_str())?;
    let count = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
    let per_value = match node.op_type() {
        // W [O, C/g, k...]: each output value takes C/g * k... taps.
        "Conv" | "ConvInteger" => count(&shape(1)?[1..]),
        // int8: x, x_scale, x_zero_point, W [O, C/g, k...], ...
        "QLinearConv" => count(&shape(3)?[1..]),
        "ConvTranspose" => {
            // W [C, O/g, k...]: each input value is spread over O/g * k... outputs.
            let per_input = count(&shape(1)?[1..]);
            let input = count(shape(0)?);
            return Some(named(node, output, input * per_input));
        }
        "Gemm" => {
            let a = shape(0)?;
            let trans_a = attr_int(node, "transA", 0) == 1;
            *a.get(if trans_a { 0 } else { 1 })? as u64
        }
        "MatMul" | "MatMulInteger" | "QLinearMatMul" => *shape(0)?.last()? as u64,
        _ => return None,
    };
    Some(named(node, output, count(output) * per_value))
}

fn named(node: &NodeProto, output: &[usize], macs: u64) -> LayerMacs {
    let name = match node.name() {
        "" => node.output[0].clone(),
        n => n.to_string(),
    };
    LayerMacs {
        name,
        op: node.op_type().to_string(),
        output: output.to_vec(),
        macs,
    }
}
