//! A mutable working view of a graph for the passes: initializers by name, producers and
//! consumers, recomputed after each rewrite (graphs here are small enough that this is cheap).

use msn_onnx::{tensor, GraphProto, NodeProto, TensorProto};
use ndarray::ArrayD;
use std::collections::{HashMap, HashSet};

pub struct Index {
    pub init: HashMap<String, usize>,
    pub producer: HashMap<String, usize>,
    pub consumers: HashMap<String, Vec<usize>>,
    pub outputs: HashSet<String>,
}

impl Index {
    pub fn new(g: &GraphProto) -> Self {
        let init = g
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name().to_string(), i))
            .collect();
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.clone(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                let c = consumers.entry(inp.clone()).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
        }
        let outputs = g.output.iter().map(|o| o.name().to_string()).collect();
        Index {
            init,
            producer,
            consumers,
            outputs,
        }
    }

    /// True when `value` feeds exactly one node and is not a graph output: folding through it
    /// changes nothing anyone else sees.
    pub fn single_use(&self, value: &str) -> bool {
        !self.outputs.contains(value) && self.consumers.get(value).map_or(0, Vec::len) == 1
    }

    /// How many node inputs name `value`.
    pub fn uses(&self, value: &str) -> usize {
        self.consumers.get(value).map_or(0, Vec::len)
    }

    pub fn float(&self, g: &GraphProto, name: &str) -> Option<ArrayD<f32>> {
        let &i = self.init.get(name)?;
        let t = &g.initializer[i];
        tensor::is_float(t)
            .then(|| tensor::to_f32(t).ok())
            .flatten()
    }

    /// The shape of a float initializer, without decoding its data.
    pub fn float_shape(&self, g: &GraphProto, name: &str) -> Option<Vec<usize>> {
        let &i = self.init.get(name)?;
        let t = &g.initializer[i];
        if !tensor::is_float(t) || t.dims.iter().any(|&d| d < 0) {
            return None;
        }
        Some(t.dims.iter().map(|&d| d as usize).collect())
    }

    pub fn int(&self, g: &GraphProto, name: &str) -> Option<ArrayD<i64>> {
        let &i = self.init.get(name)?;
        tensor::to_i64(&g.initializer[i]).ok()
    }
}

/// Replaces (or adds) an initializer.
pub fn set_init(g: &mut GraphProto, t: TensorProto) {
    match g.initializer.iter_mut().find(|x| x.name() == t.name()) {
        Some(slot) => *slot = t,
        None => g.initializer.push(t),
    }
}

/// A name not yet used by any value of the graph, built from `base`.
pub fn fresh_name(g: &GraphProto, base: &str) -> String {
    let taken = |n: &str| {
        g.initializer.iter().any(|t| t.name() == n)
            || g.node.iter().any(|x| x.output.iter().any(|o| o == n))
            || g.input.iter().any(|v| v.name() == n)
    };
    if !taken(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// Renames every use of `from` to `to` in node inputs.
pub fn rename_uses(g: &mut GraphProto, from: &str, to: &str) {
    for n in &mut g.node {
        for i in &mut n.input {
            if i == from {
                *i = to.to_string();
            }
        }
    }
}

pub fn node_name(n: &NodeProto) -> String {
    if n.name().is_empty() {
        format!(
            "{} -> {}",
            n.op_type(),
            n.output.first().map(String::as_str).unwrap_or("")
        )
    } else {
        n.name().to_string()
    }
}
