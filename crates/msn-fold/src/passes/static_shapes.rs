//! Static-shape folding: a `Shape` whose input's shape is fixed (it follows from the graph's
//! declared input shapes, see [`crate::shapes`]) becomes an INT64 initializer. Constant
//! folding then folds what computes with it (`Gather`, `Add`, `Div`, `Concat`, the reshape
//! specs of a channel shuffle), so exports that read shapes at run time reach the node counts
//! of a model exported with constants.
//!
//! Only shapes the file fixes are used: a symbolic dimension (a free batch size) is never
//! assumed. `msn-fold --input-shape` fixes the inputs' shapes first.

use crate::graph::set_init;
use crate::shapes;
use msn_onnx::{attr_int, tensor, GraphProto};

/// Replaces every `Shape` node with a known input shape by a constant; returns how many.
pub fn run(g: &mut GraphProto) -> usize {
    let known = shapes::infer(g);
    let mut constants = Vec::new();
    g.node.retain(|node| {
        let shape = node
            .input
            .first()
            .filter(|_| node.op_type() == "Shape" && node.output.len() == 1)
            .and_then(|x| known.get(x.as_str()));
        let Some(shape) = shape else { return true };
        let r = shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (start, end) = (
            clamp(attr_int(node, "start", 0)),
            clamp(attr_int(node, "end", r)),
        );
        let dims: Vec<i64> = shape[start..end.max(start)]
            .iter()
            .map(|&d| d as i64)
            .collect();
        let value = ndarray::Array1::from(dims).into_dyn();
        constants.push(tensor::from_i64(&node.output[0], &value));
        false
    });
    let n = constants.len();
    for t in constants {
        set_init(g, t);
    }
    n
}
