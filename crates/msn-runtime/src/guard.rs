//! Rewrites for what tract computes wrongly, applied after msn-fold's passes and before
//! tract sees the model. Each guard names the tract behaviour it protects against.
//!
//! **A constant minus (or divided by) a convolution.** tract 0.23's optimiser folds a
//! per-channel binary op that follows a group-1 Conv into the Conv's bias and kernel
//! (`declutter_channel_arithmetic_succ`). For `Sub(c, conv(x))` it sets the bias to
//! `c - b` but keeps the kernel (the kernel should be negated); for `Div(c, conv(x))` it
//! divides as if the op were linear, which it is not. msn-fold folds the per-channel
//! constant cases exactly, so what reaches this guard is the rest (a conv output read twice,
//! a computed operand): `Sub(a, y)` becomes `Add(a, Neg(y))` and `Div(a, y)` becomes
//! `Mul(a, Reciprocal(y))`, which tract computes right (it fuses no unary op into a Conv).

use msn_onnx::index::{fresh_name, Index};
use msn_onnx::{GraphProto, NodeProto};

/// Ops tract removes or looks through when it declutters, so a Conv behind them still
/// meets the binary op.
const TRANSPARENT: [&str; 3] = ["Identity", "Dropout", "Cast"];

/// True when `value` comes from a Conv, possibly through ops tract removes.
fn from_conv<'g>(g: &'g GraphProto, idx: &Index, mut value: &'g str) -> bool {
    for _ in 0..16 {
        let Some(&p) = idx.producer.get(value) else {
            return false;
        };
        let node = &g.node[p];
        match node.op_type() {
            "Conv" => return true,
            op if TRANSPARENT.contains(&op) => match node.input.first() {
                Some(i) => value = i,
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

/// Rewrites every `Sub(a, conv)` and `Div(a, conv)`; returns how many.
pub fn run(g: &mut GraphProto) -> usize {
    let idx = Index::new(g);
    let hits: Vec<usize> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            matches!(n.op_type(), "Sub" | "Div")
                && n.input.len() == 2
                && n.domain().is_empty()
                && from_conv(g, &idx, &n.input[1])
        })
        .map(|(i, _)| i)
        .collect();
    // From the back, so inserting a node keeps the earlier positions valid.
    for &i in hits.iter().rev() {
        let (unary, binary) = match g.node[i].op_type() {
            "Sub" => ("Neg", "Add"),
            _ => ("Reciprocal", "Mul"),
        };
        let y = g.node[i].input[1].clone();
        let name = fresh_name(g, &format!("{y}.{}", unary.to_lowercase()));
        let pre = NodeProto {
            name: Some(name.clone()),
            op_type: Some(unary.into()),
            input: vec![y],
            output: vec![name.clone()],
            ..Default::default()
        };
        let node = &mut g.node[i];
        node.op_type = Some(binary.into());
        node.input[1] = name;
        g.node.insert(i, pre);
    }
    hits.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_onnx::builder::GraphBuilder;

    #[test]
    fn constant_minus_and_over_a_conv_are_rewritten_and_nothing_else() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[1, 1, 3, 3]);
        let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![2, 1, 1, 1], 1.0));
        let c = b.initializer_f32("c", &ndarray::ArrayD::from_elem(vec![1, 2, 1, 1], 1.0));
        let y = b.node("Conv", &[&x, &w], "y", &[]);
        let s = b.node("Sub", &[&c, &y], "s", &[]);
        let d = b.node("Div", &[&c, &s], "d", &[]);
        let e = b.node("Div", &[&c, &y], "e", &[]);
        let f = b.node("Sub", &[&y, &c], "f", &[]);
        for v in [&d, &e, &f] {
            b.output(v, &[1, 2, 3, 3]);
        }
        let mut m = b.into_model(17);
        let g = m.graph.as_mut().unwrap();
        assert_eq!(run(g), 2);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(
            ops,
            ["Conv", "Neg", "Add", "Div", "Reciprocal", "Mul", "Sub"]
        );
        msn_onnx::graph::GraphView::new(&m).unwrap();
    }
}
