//! `MatMul(x, B)` with a constant 2-D `B` and a 2-D `x` is `Gemm(x, B)`; rewritten so when the
//! MatMul's only consumer is something [`super::fuse_into_weights`] folds into a Gemm (a
//! BatchNormalization or an `Add`/`Sub`/`Mul`/`Div` by a constant): `MatMul + Add(bias) +
//! BatchNormalization` becomes one Gemm.
//!
//! The rank of `x` must be known to be 2: for a higher rank, a MatMul's output channels are on
//! the last axis while BatchNormalization's are on axis 1, and folding would be wrong. It is
//! known from the producer (Flatten and Gemm give 2-D outputs; elementwise ops keep their
//! input's rank), from a declared graph input, or from `value_info`.

use crate::graph::Index;
use msn_onnx::{GraphProto, NodeProto};

const ELEMENTWISE: [&str; 9] = [
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Identity",
    "Dropout",
    "Elu",
    "Selu",
    "Softplus",
];

fn declared_rank(g: &GraphProto, value: &str) -> Option<usize> {
    use msn_onnx::proto::type_proto::Value;
    g.input
        .iter()
        .chain(&g.value_info)
        .chain(&g.output)
        .find(|v| v.name() == value)
        .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => Some(t.shape.as_ref()?.dim.len()),
            _ => None,
        })
}

/// The rank of `value`, when it can be told without running shape inference.
fn rank(g: &GraphProto, idx: &Index, value: &str, depth: usize) -> Option<usize> {
    if let Some(r) = declared_rank(g, value) {
        return Some(r);
    }
    let node = &g.node[*idx.producer.get(value)?];
    match node.op_type() {
        "Flatten" | "Gemm" => Some(2),
        op if ELEMENTWISE.contains(&op) && depth < 64 => {
            rank(g, idx, node.input.first()?, depth + 1)
        }
        _ => None,
    }
}

fn enables_a_fold(consumer: &NodeProto, idx: &Index, y: &str) -> bool {
    match consumer.op_type() {
        "BatchNormalization" => consumer.input.first().map(String::as_str) == Some(y),
        "Add" | "Sub" | "Mul" | "Div" => consumer
            .input
            .iter()
            .any(|i| i != y && idx.is_constant(i.as_str())),
        _ => false,
    }
}

/// Rewrites every such MatMul; returns how many.
pub fn run(g: &mut GraphProto) -> usize {
    let idx = Index::new(g);
    let mut hits = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type() != "MatMul" || n.input.len() != 2 || n.output.len() != 1 {
            continue;
        }
        let y = &n.output[0];
        let b_is_2d = idx
            .float_shape(g, &n.input[1])
            .is_some_and(|s| s.len() == 2);
        if !b_is_2d || idx.is_constant(n.input[0].as_str()) || !idx.single_use(y) {
            continue;
        }
        let consumer = &g.node[idx.consumers[y.as_str()][0]];
        if enables_a_fold(consumer, &idx, y) && rank(g, &idx, &n.input[0], 0) == Some(2) {
            hits.push(i);
        }
    }
    for &i in &hits {
        g.node[i].op_type = Some("Gemm".into());
    }
    hits.len()
}
