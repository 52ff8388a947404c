//! Clean-up passes: removal of `Identity`, inference-mode `Dropout` and one-input `Concat`
//! (or `Sum`, `Mean`, `Max`, `Min`); dead nodes and unused
//! initializers. Graph inputs and outputs keep their names.

use crate::graph::{rename_all, Index};
use msn_onnx::index::{outer_reads, subgraphs};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Removes Identity nodes and Dropouts whose mask is unused. Returns how many were removed.
///
/// Linear in the graph: the pass-through nodes whose output is no graph output go in one
/// batch (their readers renamed in one walk, chains resolved as they are met); those that
/// write a graph output, a few at most, one at a time after.
pub fn identities(g: &mut GraphProto) -> usize {
    let outputs: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
    let removable = |g: &GraphProto, n: &NodeProto| {
        passthrough(g, n) && n.input.first().is_some_and(|i| !i.is_empty()) && !n.output.is_empty()
    };
    // dst -> the value it passes through, resolved to the start of its chain.
    let mut to: HashMap<String, String> = HashMap::new();
    let mut gone = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        if removable(g, n) && !outputs.contains(&n.output[0]) {
            let src = &n.input[0];
            let src = to.get(src).unwrap_or(src).clone();
            to.insert(n.output[0].clone(), src);
            gone[i] = true;
        }
    }
    // A chain written out of graph order: follow it to its end.
    let keys: Vec<String> = to.keys().cloned().collect();
    for k in keys {
        let mut v = to[&k].clone();
        let mut steps = 0;
        while let Some(next) = to.get(&v) {
            v = next.clone();
            steps += 1;
            if steps > to.len() {
                break; // a cycle: validation refuses those; leave it as it is
            }
        }
        to.insert(k, v);
    }
    let mut removed = gone.iter().filter(|&&x| x).count();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
    rename_all(g, &to);

    // Those that write a graph output: keep the output's name by making the producer of `src`
    // write it, when nothing else reads `src`.
    let inputs: HashSet<String> = g.input.iter().map(|o| o.name().to_string()).collect();
    let candidates: Vec<String> = g
        .node
        .iter()
        .filter(|n| removable(g, n))
        .map(|n| n.output[0].clone())
        .collect();
    for dst in candidates {
        let Some(i) = g
            .node
            .iter()
            .position(|n| n.output.first() == Some(&dst) && removable(g, n))
        else {
            continue;
        };
        let src = g.node[i].input[0].clone();
        let idx = Index::new(g);
        let src_ok = !inputs.contains(&src) && !idx.is_constant(&src) && !outputs.contains(&src);
        if let Some(&p) = idx
            .producer
            .get(&src)
            .filter(|_| src_ok && idx.uses(&src) == 1)
        {
            g.node.remove(i);
            let p = if p > i { p - 1 } else { p };
            for o in &mut g.node[p].output {
                if *o == src {
                    *o = dst.clone();
                }
            }
            removed += 1;
        } // else an Identity between two named graph values must stay
    }
    removed
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
///
/// Linear in the graph: each removed node gives back its reads, and a producer whose outputs
/// are then all unread is the next to go (a worklist, not a rescan per removal).
pub fn dead_code(g: &mut GraphProto) -> (usize, usize) {
    let idx = Index::new(g);
    let mut uses: HashMap<&str, usize> = HashMap::new();
    let reads = |n: &NodeProto| -> Vec<String> {
        n.input
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .chain(subgraphs(n).flat_map(outer_reads))
            .collect()
    };
    for n in &g.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            uses.insert(o, idx.uses(o));
        }
    }
    let dead = |n: &NodeProto, uses: &HashMap<&str, usize>| {
        n.output
            .iter()
            .all(|o| o.is_empty() || (uses.get(o.as_str()) == Some(&0) && !idx.outputs.contains(o)))
    };
    let mut gone = vec![false; g.node.len()];
    let mut work: Vec<usize> = (0..g.node.len())
        .filter(|&i| dead(&g.node[i], &uses))
        .collect();
    while let Some(i) = work.pop() {
        if gone[i] {
            continue;
        }
        gone[i] = true;
        for r in reads(&g.node[i]) {
            let Some(&p) = idx.producer.get(&r) else {
                continue;
            };
            if let Some(u) = uses.get_mut(r.as_str()) {
                *u = u.saturating_sub(1);
            }
            if !gone[p] && dead(&g.node[p], &uses) {
                work.push(p);
            }
        }
    }
    let nodes = gone.iter().filter(|&&x| x).count();
    drop(uses);
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
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
