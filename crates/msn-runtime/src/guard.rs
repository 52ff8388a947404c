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
//!
//! **A MatMul of two vectors.** ONNX (numpy) defines `MatMul` of two 1-D tensors as their dot
//! product, a scalar; tract 0.23 refuses to analyse it (`a_rank > 1 || b_rank > 1`).
//! PyTorch's `torch.dot` exports one. Where both ranks are known to be 1, the MatMul becomes
//! `Reshape(a, [1, -1])`, `Reshape(b, [-1, 1])`, MatMul, `Reshape(.., [])`. Unlike the first
//! guard, this one is needed by the reference plan too.

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

/// Every guard; returns how many nodes were rewritten.
pub fn run(g: &mut GraphProto) -> usize {
    channel_arithmetic(g) + vector_matmul(g)
}

/// Rewrites every MatMul of two tensors known to be vectors (see the module documentation);
/// returns how many.
pub fn vector_matmul(g: &mut GraphProto) -> usize {
    let shapes = msn_fold::shapes::infer(g);
    let rank = |v: &str| shapes.get(v).map(Vec::len);
    let hits: Vec<usize> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type() == "MatMul"
                && n.domain().is_empty()
                && n.input.len() == 2
                && n.output.len() == 1
                && rank(&n.input[0]) == Some(1)
                && rank(&n.input[1]) == Some(1)
        })
        .map(|(i, _)| i)
        .collect();
    for &i in hits.iter().rev() {
        let node = g.node[i].clone();
        let out = node.output[0].clone();
        let mut constant = |what: &str, shape: &[i64]| {
            let name = fresh_name(g, &format!("{out}.{what}"));
            let a = ndarray::Array1::from(shape.to_vec()).into_dyn();
            g.initializer.push(msn_onnx::tensor::from_i64(&name, &a));
            name
        };
        let (row, col, scalar) = (
            constant("row_shape", &[1, -1]),
            constant("column_shape", &[-1, 1]),
            constant("scalar_shape", &[]),
        );
        let step = |op: &str, inputs: [&str; 2], output: String| NodeProto {
            name: Some(output.clone()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output],
            ..Default::default()
        };
        let (a, b) = (
            fresh_name(g, &format!("{out}.row")),
            fresh_name(g, &format!("{out}.column")),
        );
        let product = fresh_name(g, &format!("{out}.product"));
        let nodes = [
            step("Reshape", [&node.input[0], &row], a.clone()),
            step("Reshape", [&node.input[1], &col], b.clone()),
            step("MatMul", [&a, &b], product.clone()),
            step("Reshape", [&product, &scalar], out),
        ];
        g.node.splice(i..=i, nodes);
    }
    hits.len()
}

/// Rewrites every `Sub(a, conv)` and `Div(a, conv)`; returns how many.
fn channel_arithmetic(g: &mut GraphProto) -> usize {
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
        assert_eq!(channel_arithmetic(g), 2);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(
            ops,
            ["Conv", "Neg", "Add", "Div", "Reciprocal", "Mul", "Sub"]
        );
        msn_onnx::graph::GraphView::new(&m).unwrap();
    }

    /// `y = (x . v) * x` with a vector input: tract cannot analyse the dot product as written.
    #[test]
    fn a_dot_product_of_vectors_runs_in_both_plans() {
        use crate::model::{Plan, Source};
        let mut b = GraphBuilder::new("dot");
        let x = b.input("x", &[4]);
        let v = b.initializer_f32("v", &ndarray::arr1(&[0.5f32, -1.0, 2.0, 0.25]).into_dyn());
        let d = b.node("MatMul", &[&x, &v], "d", &[]);
        let y = b.node("Mul", &[&d, &x], "y", &[]);
        b.output(&y, &[4]);
        let model = b.into_model(17);
        let mut g = model.graph.clone().unwrap();
        assert_eq!(vector_matmul(&mut g), 1);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["Reshape", "Reshape", "MatMul", "Reshape", "Mul"]);

        let source = Source::from_bytes(
            msn_onnx::io::to_bytes(&model),
            std::path::Path::new("dot.onnx"),
        )
        .unwrap();
        let input = ndarray::arr1(&[1.0f32, 2.0, 3.0, 4.0]).into_dyn();
        for kind in [Plan::Reference, Plan::Optimized] {
            let plan = source.plan(&[vec![4]], kind).unwrap();
            let out = plan.run_f32(input.clone()).unwrap();
            // x . v = 0.5 - 2 + 6 + 1 = 5.5
            assert_eq!(
                out[0].as_slice().unwrap(),
                &[5.5, 11.0, 16.5, 22.0],
                "{kind:?}"
            );
        }
    }
}
