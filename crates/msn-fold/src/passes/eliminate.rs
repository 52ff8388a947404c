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

/// Ops whose result is not a function of their inputs: never merged or evaluated.
pub(crate) const RANDOM: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

/// Merges duplicate subexpressions: a node with the same op, inputs and attributes as one
/// before it reads as that one (its readers are renamed). Returns how many nodes went.
///
/// Linear in the graph: one walk in graph order, a duplicate's inputs resolved through the
/// renames already made, so a duplicated chain merges in the same walk. Nodes with
/// subgraphs, random ops and nodes writing a graph output are left alone.
pub fn duplicates(g: &mut GraphProto) -> usize {
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut gone = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        if n.output.is_empty()
            || RANDOM.contains(&n.op_type())
            || subgraphs(n).next().is_some()
            || n.output.iter().any(|o| outputs.contains(o.as_str()))
        {
            continue;
        }
        let key = node_key(n, &rename);
        match seen.get(&key) {
            Some(&j) => {
                let first = &g.node[j];
                if first.output.len() != n.output.len()
                    || n.output
                        .iter()
                        .zip(&first.output)
                        .any(|(a, b)| !a.is_empty() && b.is_empty())
                {
                    continue;
                }
                for (a, b) in n.output.iter().zip(&first.output) {
                    if !a.is_empty() {
                        rename.insert(a.clone(), b.clone());
                    }
                }
                gone[i] = true;
            }
            None => {
                seen.insert(key, i);
            }
        }
    }
    let removed = gone.iter().filter(|&&x| x).count();
    if removed == 0 {
        return 0;
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
    rename_all(g, &rename);
    removed
}

/// What makes two nodes compute the same: domain, op, inputs (renamed) and attributes in
/// name order, as bytes.
fn node_key(n: &NodeProto, rename: &HashMap<String, String>) -> Vec<u8> {
    use prost::Message;
    let mut key = Vec::new();
    for s in [n.domain(), n.op_type()] {
        key.extend_from_slice(s.as_bytes());
        key.push(0);
    }
    for i in &n.input {
        key.extend_from_slice(rename.get(i).unwrap_or(i).as_bytes());
        key.push(0);
    }
    key.push(1);
    let mut attrs: Vec<_> = n.attribute.iter().collect();
    attrs.sort_by(|a, b| a.name().cmp(b.name()));
    for a in attrs {
        let bytes = a.encode_to_vec();
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(&bytes);
    }
    key
}

/// Optional outputs nobody reads are dropped (a Dropout's mask, a MaxPool's indices, a
/// LayerNormalization's mean and inverse deviation, a BatchNormalization's training
/// statistics, a recurrent op's states): trailing ones are removed, others named "".
/// Returns how many outputs went.
pub fn unused_outputs(g: &mut GraphProto) -> usize {
    const OPTIONAL: &[&str] = &[
        "Dropout",
        "MaxPool",
        "LayerNormalization",
        "BatchNormalization",
        "LSTM",
        "GRU",
        "RNN",
    ];
    let idx = Index::new(g);
    let mut removed = 0;
    for n in &mut g.node {
        if !OPTIONAL.contains(&n.op_type()) || !n.domain().is_empty() {
            continue;
        }
        for o in n.output.iter_mut().skip(1) {
            if !o.is_empty() && idx.uses(o) == 0 && !idx.outputs.contains(o.as_str()) {
                o.clear();
                removed += 1;
            }
        }
        while n.output.len() > 1 && n.output.last().is_some_and(|o| o.is_empty()) {
            n.output.pop();
        }
    }
    removed
}
