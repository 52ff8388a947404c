//! What the fold tests share.
#![allow(dead_code)] // each test file uses its own part

use msn_onnx::ModelProto;

/// The model's op types, in order.
pub fn ops(m: &ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}
