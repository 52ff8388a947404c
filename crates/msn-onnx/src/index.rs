//! The one producer/consumer index of a graph, for code that reads or rewrites it (the fold
//! passes, the Lipschitz bound, the runtime's guards): initializers by name, who produces and
//! who reads each value, and the graph outputs. It is rebuilt after each rewrite (cheap next
//! to any rewrite that decodes a weight).
//!
//! Values read inside a node's subgraphs (the bodies of `If`, `Loop`, `Scan`) from the outer
//! scope count as read by that node, so a rewrite never deletes or renames a value that only
//! a body uses.

use crate::{tensor, AttributeProto, GraphProto, NodeProto, TensorProto};
use ndarray::ArrayD;
use std::collections::{HashMap, HashSet};

pub struct Index {
    /// Initializer name -> its position in `graph.initializer`.
    pub init: HashMap<String, usize>,
    /// Value name -> the node that produces it.
    pub producer: HashMap<String, usize>,
    /// Value name -> the nodes that read it, each once, in graph order.
    pub consumers: HashMap<String, Vec<usize>>,
    /// Value name -> how many input slots read it (a node reading it twice counts twice; a
    /// read from a subgraph body counts once per body).
    slots: HashMap<String, usize>,
    /// Graph output names.
    pub outputs: HashSet<String>,
    /// Graph input names (initializers declared as inputs included).
    pub inputs: HashSet<String>,
}

/// The subgraphs a node carries in its attributes (`If` branches, `Loop` and `Scan` bodies).
pub fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute
        .iter()
        .flat_map(|a: &AttributeProto| a.g.iter().chain(a.graphs.iter()))
}

/// The values a graph reads from its enclosing scope: inputs of its nodes (and of their own
/// subgraphs, recursively) that nothing inside it defines.
pub fn outer_reads(g: &GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    defined.extend(g.input.iter().map(|v| v.name()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    let mut out: Vec<String> = Vec::new();
    let push = |name: &str, out: &mut Vec<String>| {
        if !name.is_empty() && !defined.contains(name) && !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    };
    for n in &g.node {
        for i in &n.input {
            push(i, &mut out);
        }
        for sub in subgraphs(n) {
            for i in outer_reads(sub) {
                push(&i, &mut out);
            }
        }
    }
    for o in &g.output {
        push(o.name(), &mut out);
    }
    out
}

impl Index {
    pub fn new(g: &GraphProto) -> Self {
        let init = initializer_positions(g);
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut slots: HashMap<String, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.clone(), i);
            }
            let body_reads = subgraphs(n).flat_map(outer_reads);
            for inp in n
                .input
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .chain(body_reads)
            {
                *slots.entry(inp.clone()).or_default() += 1;
                let c = consumers.entry(inp).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
        }
        Index {
            init,
            producer,
            consumers,
            slots,
            outputs: g.output.iter().map(|o| o.name().to_string()).collect(),
            inputs: g.input.iter().map(|o| o.name().to_string()).collect(),
        }
    }

    /// True when `value` is read by exactly one input slot of one node and is not a graph
    /// output: folding through it changes nothing anyone else sees.
    pub fn single_use(&self, value: &str) -> bool {
        !self.outputs.contains(value) && self.uses(value) == 1
    }

    /// How many node input slots (and subgraph bodies) read `value`.
    pub fn uses(&self, value: &str) -> usize {
        self.slots.get(value).copied().unwrap_or(0)
    }

    /// The nodes that read `value`.
    pub fn consumers_of(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when `name` is a constant: an initializer that is not also a graph input (an
    /// input of that name may be overridden by the caller, so its value is not known).
    pub fn is_constant(&self, name: &str) -> bool {
        self.init.contains_key(name) && !self.inputs.contains(name)
    }

    /// The constant called `name`, if there is one.
    pub fn constant<'g>(&self, g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
        if !self.is_constant(name) {
            return None;
        }
        g.initializer.get(*self.init.get(name)?)
    }

    /// A FLOAT constant's values (other float types are left to code that keeps their type).
    pub fn float(&self, g: &GraphProto, name: &str) -> Option<ArrayD<f32>> {
        let t = self.constant(g, name)?;
        tensor::is_f32(t).then(|| tensor::to_f32(t).ok()).flatten()
    }

    /// The shape of a FLOAT constant, without decoding its data.
    pub fn float_shape(&self, g: &GraphProto, name: &str) -> Option<Vec<usize>> {
        let t = self.constant(g, name)?;
        if !tensor::is_f32(t) {
            return None;
        }
        tensor::shape(t).ok()
    }

    /// An INT64 or INT32 constant's values, widened to i64.
    pub fn int(&self, g: &GraphProto, name: &str) -> Option<ArrayD<i64>> {
        tensor::to_i64(self.constant(g, name)?).ok()
    }
}

/// Replaces (or adds) an initializer.
pub fn set_init(g: &mut GraphProto, t: TensorProto) {
    match g.initializer.iter_mut().find(|x| x.name() == t.name()) {
        Some(slot) => *slot = t,
        None => g.initializer.push(t),
    }
}

/// A name not yet used by any value of the graph (or of its subgraphs), built from `base`.
pub fn fresh_name(g: &GraphProto, base: &str) -> String {
    let mut taken: HashSet<String> = HashSet::new();
    collect_names(g, &mut taken);
    if !taken.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken.contains(n))
        .expect("some suffix is free")
}

/// Initializer name -> its position in `g.initializer`.
fn initializer_positions(g: &GraphProto) -> HashMap<String, usize> {
    g.initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect()
}

/// Fresh names and initializer updates for a batch of edits, in constant time each where
/// [`fresh_name`] and [`set_init`] scan the graph: the names taken and the initializers'
/// positions are collected once.
pub struct Names {
    taken: HashSet<String>,
    init: HashMap<String, usize>,
}

impl Names {
    pub fn new(g: &GraphProto) -> Self {
        let mut taken = HashSet::new();
        collect_names(g, &mut taken);
        let init = initializer_positions(g);
        Names { taken, init }
    }

    /// A name no value has, built from `base` as [`fresh_name`] builds it; taken from now on.
    pub fn fresh(&mut self, base: &str) -> String {
        let name = if !self.taken.contains(base) {
            base.to_string()
        } else {
            (1..)
                .map(|i| format!("{base}_{i}"))
                .find(|n| !self.taken.contains(n))
                .expect("some suffix is free")
        };
        self.taken.insert(name.clone());
        name
    }

    /// Replaces (or adds) an initializer of `g`, which only these edits may have changed
    /// since [`Names::new`].
    pub fn set_init(&mut self, g: &mut GraphProto, t: TensorProto) {
        match self.init.get(t.name()) {
            Some(&i) => g.initializer[i] = t,
            None => {
                self.taken.insert(t.name().to_string());
                self.init.insert(t.name().to_string(), g.initializer.len());
                g.initializer.push(t);
            }
        }
    }
}

fn collect_names(g: &GraphProto, taken: &mut HashSet<String>) {
    taken.extend(g.initializer.iter().map(|t| t.name().to_string()));
    taken.extend(g.input.iter().map(|v| v.name().to_string()));
    taken.extend(g.output.iter().map(|v| v.name().to_string()));
    for n in &g.node {
        taken.extend(n.output.iter().cloned());
        taken.extend(n.input.iter().cloned());
        for sub in subgraphs(n) {
            collect_names(sub, taken);
        }
    }
}

/// Renames every read of `from` to `to`: node inputs, and reads from subgraph bodies where
/// the body does not define a value of that name itself.
pub fn rename_uses(g: &mut GraphProto, from: &str, to: &str) {
    for n in &mut g.node {
        for i in &mut n.input {
            if i == from {
                *i = to.to_string();
            }
        }
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                let shadowed = sub.initializer.iter().any(|t| t.name() == from)
                    || sub.input.iter().any(|v| v.name() == from)
                    || sub.node.iter().any(|m| m.output.iter().any(|o| o == from));
                if !shadowed {
                    rename_uses(sub, from, to);
                    for o in &mut sub.output {
                        if o.name() == from {
                            o.name = Some(to.to_string());
                        }
                    }
                }
            }
        }
    }
}

/// Renames every read of each key of `map` to its value, as [`rename_uses`] does one name, in
/// one walk of the graph: for many renames at once (a chain of removed nodes), where one walk
/// per name would be quadratic. The values must not themselves be keys.
pub fn rename_all(g: &mut GraphProto, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    for n in &mut g.node {
        for i in &mut n.input {
            if let Some(to) = map.get(i.as_str()) {
                *i = to.clone();
            }
        }
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                // A name the body defines itself shadows the outer one.
                let mut defined: HashSet<&str> = sub.initializer.iter().map(|t| t.name()).collect();
                defined.extend(sub.input.iter().map(|v| v.name()));
                for m in &sub.node {
                    defined.extend(m.output.iter().map(String::as_str));
                }
                let inner: HashMap<String, String> = map
                    .iter()
                    .filter(|(from, _)| !defined.contains(from.as_str()))
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect();
                rename_all(sub, &inner);
                for o in &mut sub.output {
                    if let Some(to) = inner.get(o.name()) {
                        o.name = Some(to.clone());
                    }
                }
            }
        }
    }
}

/// A readable name for a node: its own, or `OpType -> first output`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{attr, GraphBuilder};

    #[test]
    fn uses_count_input_slots_and_subgraph_reads() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[2]);
        let y = b.node("Add", &[&x, &x], "y", &[]);
        b.output(&y, &[2]);
        let mut m = b.into_model(17);
        let g = m.graph.as_mut().unwrap();
        let idx = Index::new(g);
        assert_eq!(idx.uses("x"), 2);
        assert_eq!(idx.consumers_of("x"), &[0]);
        assert!(!idx.single_use("x"));

        // An If whose branch reads `y` from the outer scope.
        let mut body = GraphProto::default();
        body.node.push(NodeProto {
            op_type: Some("Identity".into()),
            input: vec!["y".into()],
            output: vec!["z".into()],
            ..Default::default()
        });
        body.output.push(crate::builder::value_info("z", &[2]));
        let mut branch = attr::int("then_branch", 0);
        branch.i = None;
        branch.g = Some(body);
        g.node.push(NodeProto {
            op_type: Some("If".into()),
            input: vec!["cond".into()],
            output: vec!["w".into()],
            attribute: vec![branch],
            ..Default::default()
        });
        let idx = Index::new(g);
        assert_eq!(idx.uses("y"), 1, "read only inside the branch");
        assert_eq!(idx.consumers_of("y"), &[1]);
        rename_uses(g, "y", "y2");
        assert_eq!(
            g.node[1].attribute[0].g.as_ref().unwrap().node[0].input[0],
            "y2"
        );
        assert!(fresh_name(g, "z") != "z", "names inside bodies are taken");
    }

    #[test]
    fn an_initializer_that_is_also_an_input_is_not_a_constant() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", &[2]);
        let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![2], 1.0));
        let y = b.node("Add", &[&x, &w], "y", &[]);
        b.output(&y, &[2]);
        let mut m = b.into_model(17);
        let g = m.graph.as_mut().unwrap();
        assert!(Index::new(g).float(g, "w").is_some());
        g.input.push(crate::builder::value_info("w", &[2]));
        assert!(Index::new(g).float(g, "w").is_none());
    }
}
