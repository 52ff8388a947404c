//! Simplifications that fixed shapes make exact (the ones onnxsim and onnxslim make):
//!
//! - no-ops become `Identity` (removed by [`crate::passes::eliminate::identities`]): `Add`
//!   or `Sub` of zeros and `Mul` or `Div` by ones that broadcast nothing, `Pad` by nothing,
//!   and `Slice` (forward steps only: a step of -1 reverses), `Expand`, `Reshape`, `Tile`,
//!   `Cast`, `Squeeze`/`Unsqueeze`, `Flatten` or `Transpose` whose output has its input's
//!   shape (and type) and, for `Transpose`, the identity order;
//! - a `Reshape` of a `Reshape` reads the first one's input (at the final shape, spelled
//!   out), a `Transpose` of a `Transpose` reads the first one's input with the two orders
//!   composed.
//!
//! Shapes and types come from tract's analysis ([`crate::passes::evaluate::Facts`]); a value
//! tract did not fix is never assumed. `x + 0` is `x` except that `-0 + 0` is `+0`, which no
//! op downstream tells apart from `-0` but a division by it: onnxsim makes the same choice.

use crate::graph::Index;
use crate::passes::evaluate::Facts;
use msn_onnx::index::subgraphs;
use msn_onnx::proto::attribute_proto::AttributeType;
use msn_onnx::{attr_ints, tensor, AttributeProto, GraphProto, NodeProto, TensorProto};
use std::collections::HashSet;

/// Applies the simplifications once over the graph; returns how many nodes changed.
/// Shapes come from `facts`, constants from the graph as it is now.
pub fn run(g: &mut GraphProto, facts: &Facts) -> usize {
    let mut changed = 0;
    let idx = Index::new(g);
    let found: Vec<(usize, String)> = g
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| no_op(g, &idx, n, facts).map(|x| (i, x)))
        .collect();
    for (i, x) in found {
        let n = &mut g.node[i];
        n.op_type = Some("Identity".into());
        n.domain = None;
        n.input = vec![x];
        n.attribute.clear();
        changed += 1;
    }
    changed + chains(g, facts)
}

/// Ops this pass may simplify.
pub fn candidate(n: &NodeProto) -> bool {
    n.domain().is_empty()
        && matches!(
            n.op_type(),
            "Add"
                | "Sub"
                | "Mul"
                | "Div"
                | "Pad"
                | "Slice"
                | "Expand"
                | "Reshape"
                | "Tile"
                | "Cast"
                | "Squeeze"
                | "Unsqueeze"
                | "Flatten"
                | "Transpose"
        )
}

/// The input a node passes through unchanged, when it is a no-op at these shapes.
fn no_op(g: &GraphProto, idx: &Index, n: &NodeProto, facts: &Facts) -> Option<String> {
    let out = n.output.first()?;
    let out_shape = facts.shape(out)?;
    let out_type = facts.data_type(out)?;
    // `x` passes through when it has the output's shape and type.
    let same =
        |x: &String| facts.shape(x) == Some(out_shape) && facts.data_type(x) == Some(out_type);
    let input = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
    let value = |i: usize| input(i).and_then(|s| idx.constant(g, s));
    match n.op_type() {
        "Add" | "Sub" | "Mul" | "Div" if n.input.len() == 2 && n.domain().is_empty() => {
            let neutral = if matches!(n.op_type(), "Add" | "Sub") {
                0.0
            } else {
                1.0
            };
            // x op c, and for + and * also c op x.
            let sides: &[(usize, usize)] = match n.op_type() {
                "Add" | "Mul" => &[(0, 1), (1, 0)],
                _ => &[(0, 1)],
            };
            sides.iter().find_map(|&(x, c)| {
                let x = input(x)?;
                (same(x) && value(c).is_some_and(|t| all_equal(t, neutral))).then(|| x.clone())
            })
        }
        "Pad" => {
            let x = input(0)?;
            let pads = value(1).and_then(ints);
            let none = match pads {
                Some(p) => p.iter().all(|&v| v == 0),
                None => n.input.len() < 2 && attr_ints(n, "pads").iter().all(|&v| v == 0),
            };
            (none && same(x)).then(|| x.clone())
        }
        // A Slice keeping the shape with a step of -1 reverses: only forward steps pass.
        "Slice" => {
            let x = input(0)?;
            let forward = match input(4) {
                None => true,
                Some(_) => value(4)
                    .and_then(ints)
                    .is_some_and(|s| s.iter().all(|&v| v >= 1)),
            };
            (forward && same(x)).then(|| x.clone())
        }
        "Expand" | "Reshape" | "Tile" | "Cast" | "Squeeze" | "Unsqueeze" | "Flatten" => {
            let x = input(0)?;
            same(x).then(|| x.clone())
        }
        "Transpose" => {
            let x = input(0)?;
            let perm = attr_ints(n, "perm");
            let identity = !perm.is_empty() && perm.iter().enumerate().all(|(i, &p)| p == i as i64);
            (identity && same(x)).then(|| x.clone())
        }
        _ => None,
    }
}

/// True when every element of a FLOAT or integer constant equals `v`.
fn all_equal(t: &TensorProto, v: f64) -> bool {
    if tensor::is_f32(t) {
        tensor::to_f32(t).is_ok_and(|a| a.iter().all(|&x| f64::from(x) == v))
    } else {
        tensor::to_i64(t).is_ok_and(|a| a.iter().all(|&x| x as f64 == v))
    }
}

/// An integer constant's values.
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    tensor::to_i64(t).ok().map(|a| a.iter().copied().collect())
}

/// Every value name of the graph and its subgraphs.
fn names(g: &GraphProto, out: &mut HashSet<String>) {
    out.extend(g.initializer.iter().map(|t| t.name().to_string()));
    out.extend(
        g.input
            .iter()
            .chain(&g.output)
            .map(|v| v.name().to_string()),
    );
    for n in &g.node {
        out.extend(n.input.iter().chain(&n.output).cloned());
        for sub in subgraphs(n) {
            names(sub, out);
        }
    }
}

/// `Reshape(Reshape(x))` and `Transpose(Transpose(x))` read `x`; returns how many changed.
fn chains(g: &mut GraphProto, facts: &Facts) -> usize {
    let idx = Index::new(g);
    let mut edits: Vec<(usize, NodeProto)> = Vec::new();
    let mut shapes = Vec::new();
    let mut taken = HashSet::new();
    names(g, &mut taken);
    for (i, n) in g.node.iter().enumerate() {
        let Some(first) = n.input.first().and_then(|x| idx.producer.get(x)) else {
            continue;
        };
        let p = &g.node[*first];
        if p.op_type() != n.op_type() || !p.domain().is_empty() || !n.domain().is_empty() {
            continue;
        }
        let Some(x) = p.input.first().filter(|s| !s.is_empty()) else {
            continue;
        };
        match n.op_type() {
            "Reshape" => {
                let Some(out) = facts
                    .shape(&n.output[0])
                    .filter(|s| s.iter().all(|&d| d > 0))
                else {
                    continue;
                };
                let spec = out.iter().map(|&d| d as i64).collect::<Vec<_>>();
                let mut name = format!("{}_shape", n.output[0]);
                while taken.contains(&name) {
                    name.push('_');
                }
                taken.insert(name.clone());
                shapes.push(tensor::from_i64(
                    &name,
                    &ndarray::Array1::from(spec).into_dyn(),
                ));
                let mut m = n.clone();
                m.input = vec![x.clone(), name];
                m.attribute.clear();
                edits.push((i, m));
            }
            "Transpose" => {
                let (p1, p2) = (attr_ints(p, "perm"), attr_ints(n, "perm"));
                if p1.is_empty() || p1.len() != p2.len() {
                    continue;
                }
                let Some(q) = p2
                    .iter()
                    .map(|&j| usize::try_from(j).ok().and_then(|j| p1.get(j).copied()))
                    .collect::<Option<Vec<i64>>>()
                else {
                    continue;
                };
                let mut m = n.clone();
                m.input = vec![x.clone()];
                m.attribute = vec![AttributeProto {
                    name: Some("perm".into()),
                    r#type: Some(AttributeType::Ints as i32),
                    ints: q,
                    ..Default::default()
                }];
                edits.push((i, m));
            }
            _ => {}
        }
    }
    let n = edits.len();
    for (i, m) in edits {
        g.node[i] = m;
    }
    g.initializer.extend(shapes);
    n
}
