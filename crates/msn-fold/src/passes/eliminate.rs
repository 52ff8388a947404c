//! Clean-up passes: removal of `Identity`, inference-mode `Dropout` and one-input `Concat`
//! (or `Sum`, `Mean`, `Max`, `Min`); dead nodes and unused
//! initializers. Graph inputs and outputs keep their names.

use crate::graph::{rename_uses, Index};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{GraphProto, NodeProto};
use std::collections::HashSet;

/// Removes Identity nodes and Dropouts whose mask is unused. Returns how many were removed.
pub fn identities(g: &mut GraphProto) -> usize {
    let mut removed = 0;
    loop {
        let outputs: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
        let inputs: HashSet<String> = g.input.iter().map(|o| o.name().to_string()).collect();
        let pos = g.node.iter().position(|n| {
            passthrough(g, n)
                && n.input.first().is_some_and(|i| !i.is_empty())
                && !n.output.is_empty()
        });
        let Some(i) = pos else { return removed };
        let (src, dst) = (g.node[i].input[0].clone(), g.node[i].output[0].clone());
        if outputs.contains(&dst) {
            // Keep the graph output's name: make the producer of `src` write `dst` instead.
            let idx = Index::new(g);
            let src_ok =
                !inputs.contains(&src) && !idx.is_constant(&src) && !outputs.contains(&src);
            match idx.producer.get(&src) {
                Some(&p) if src_ok && idx.uses(&src) == 1 => {
                    g.node.remove(i);
                    let p = if p > i { p - 1 } else { p };
                    for o in &mut g.node[p].output {
                        if *o == src {
                            *o = dst.clone();
                        }
                    }
                }
                _ => return removed, // an Identity between two named graph values must stay
            }
        } else {
            g.node.remove(i);
            rename_uses(g, &dst, &src);
        }
        removed += 1;
    }
}

/// Whether the node passes its first input through unchanged: Identity, a Dropout in
/// inference mode with its mask unused, and a Concat, Sum, Mean, Max or Min of one input.
fn passthrough(g: &GraphProto, n: &NodeProto) -> bool {
    match n.op_type() {
        "Identity" => true,
        "Dropout" => n.output.iter().skip(1).all(|o| o.is_empty()) && !training(g, n),
        "Concat" | "Sum" | "Mean" | "Max" | "Min" => n.input.len() == 1 && n.output.len() == 1,
        _ => false,
    }
}

/// True unless the Dropout is known to run in inference mode: its `training_mode` input
/// (opset 12 on) is absent or a constant false. A computed one may be true.
fn training(g: &GraphProto, n: &NodeProto) -> bool {
    let Some(mode) = n.input.get(2).filter(|m| !m.is_empty()) else {
        return false;
    };
    let idx = Index::new(g);
    let Some(t) = idx.constant(g, mode) else {
        return true;
    };
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    let set = raw.iter().any(|&b| b != 0) || t.int32_data.iter().any(|&v| v != 0);
    t.data_type() != DataType::Bool as i32 || set
}

/// Removes nodes whose outputs nobody reads, then initializers nobody reads. Returns the
/// number of nodes and of initializers removed.
pub fn dead_code(g: &mut GraphProto) -> (usize, usize) {
    let mut nodes = 0;
    loop {
        let idx = Index::new(g);
        let dead = g.node.iter().position(|n| {
            n.output
                .iter()
                .all(|o| o.is_empty() || (idx.uses(o) == 0 && !idx.outputs.contains(o)))
        });
        match dead {
            Some(i) => {
                g.node.remove(i);
                nodes += 1;
            }
            None => break,
        }
    }
    let idx = Index::new(g);
    let before = g.initializer.len();
    g.initializer
        .retain(|t| idx.uses(t.name()) > 0 || idx.outputs.contains(t.name()));
    let live: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    let all_inits: HashSet<String> = idx.init.keys().cloned().collect();
    // Graph inputs that merely declared a removed initializer go too.
    g.input
        .retain(|v| !all_inits.contains(v.name()) || live.contains(v.name()));
    (nodes, before - g.initializer.len())
}
