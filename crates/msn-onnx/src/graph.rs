//! A read-only view of a model's graph: nodes in topological order, who produces and who
//! consumes each value, initializers by name, opsets and metadata. Building the view validates
//! the graph, so code that holds a `GraphView` can rely on a well-formed DAG.

use crate::{Error, GraphProto, ModelProto, NodeProto, Result, TensorProto};
use std::collections::{HashMap, HashSet};

/// A validated, indexed view of a model's main graph.
pub struct GraphView<'a> {
    model: &'a ModelProto,
    graph: &'a GraphProto,
    order: Vec<usize>,
    producers: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
    graph_inputs: HashSet<&'a str>,
    graph_outputs: HashSet<&'a str>,
}

/// A human-readable name for a node: its own name, or `OpType#index` when it has none.
pub fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("{}#{index}", node.op_type())
    } else {
        node.name().to_string()
    }
}

impl<'a> GraphView<'a> {
    /// Indexes and validates the model's graph: every input of every node is provided, no value
    /// is produced twice, the graph is acyclic and every graph output is produced.
    pub fn new(model: &'a ModelProto) -> Result<Self> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::NoGraph {
            origin: "model".into(),
        })?;
        let initializers: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name(), t)).collect();
        let graph_inputs: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
        let graph_outputs: HashSet<&str> = graph.output.iter().map(|v| v.name()).collect();

        let mut producers: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if let Some(&first) = producers.get(out.as_str()) {
                    return Err(Error::DuplicateOutput {
                        name: out.clone(),
                        first: node_label(&graph.node[first], first),
                        second: node_label(node, i),
                    });
                }
                if initializers.contains_key(out.as_str()) || graph_inputs.contains(out.as_str()) {
                    return Err(Error::DuplicateOutput {
                        name: out.clone(),
                        first: "a graph input or initializer".into(),
                        second: node_label(node, i),
                    });
                }
                producers.insert(out, i);
            }
        }

        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for inp in node.input.iter().filter(|s| !s.is_empty()) {
                let known = producers.contains_key(inp.as_str())
                    || initializers.contains_key(inp.as_str())
                    || graph_inputs.contains(inp.as_str());
                if !known {
                    return Err(Error::DanglingInput {
                        node: node_label(node, i),
                        input: inp.clone(),
                    });
                }
                let list = consumers.entry(inp).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        for out in &graph.output {
            let name = out.name();
            if !producers.contains_key(name)
                && !initializers.contains_key(name)
                && !graph_inputs.contains(name)
            {
                return Err(Error::DanglingOutput {
                    name: name.to_string(),
                });
            }
        }

        let order = topological_order(graph, &producers)?;
        Ok(GraphView {
            model,
            graph,
            order,
            producers,
            consumers,
            initializers,
            graph_inputs,
            graph_outputs,
        })
    }

    /// The graph this view indexes.
    pub fn graph(&self) -> &'a GraphProto {
        self.graph
    }

    /// Node indices in an order where every node comes after the producers of its inputs.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Nodes in topological order.
    pub fn nodes_in_order(&self) -> impl Iterator<Item = &'a NodeProto> + '_ {
        self.order.iter().map(|&i| &self.graph.node[i])
    }

    /// The index of the node that produces `value`, if a node does.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.producers.get(value).copied()
    }

    /// The indices of the nodes that read `value` (each once).
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The initializer called `name`, if there is one.
    pub fn initializer(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).copied()
    }

    /// Graph inputs that are not also initializers: the values a caller must feed.
    pub fn real_inputs(&self) -> impl Iterator<Item = &'a crate::ValueInfoProto> + '_ {
        self.graph
            .input
            .iter()
            .filter(|v| !self.initializers.contains_key(v.name()))
    }

    /// True when `name` is a graph input.
    pub fn is_graph_input(&self, name: &str) -> bool {
        self.graph_inputs.contains(name)
    }

    /// True when `name` is a graph output.
    pub fn is_graph_output(&self, name: &str) -> bool {
        self.graph_outputs.contains(name)
    }

    /// The opset version imported for `domain` (`""` is the default ONNX domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.model
            .opset_import
            .iter()
            .find(|o| o.domain() == domain || (domain == "ai.onnx" && o.domain().is_empty()))
            .map(|o| o.version())
    }

    /// The value of a `metadata_props` entry.
    pub fn metadata(&self, key: &str) -> Option<&'a str> {
        metadata(self.model, key)
    }

    /// How many nodes of each op type the graph has, sorted by op type.
    pub fn op_histogram(&self) -> std::collections::BTreeMap<String, usize> {
        op_histogram(self.graph)
    }
}

/// The value of a model's `metadata_props` entry `key`.
pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key() == key)
        .map(|p| p.value())
}

/// How many nodes of each op type a graph has.
pub fn op_histogram(graph: &GraphProto) -> std::collections::BTreeMap<String, usize> {
    let mut h = std::collections::BTreeMap::new();
    for n in &graph.node {
        *h.entry(n.op_type().to_string()).or_insert(0) += 1;
    }
    h
}

/// Kahn's algorithm; a node left over sits on a cycle.
fn topological_order(graph: &GraphProto, producers: &HashMap<&str, usize>) -> Result<Vec<usize>> {
    let n = graph.node.len();
    let mut indegree = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        for inp in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producers.get(inp.as_str()) {
                indegree[i] += 1;
                users[p].push(i);
            }
        }
    }
    // Visit in file order among ready nodes, so already-sorted graphs keep their order.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < n {
        let stuck = (0..n)
            .find(|&i| indegree[i] > 0)
            .expect("some node is left");
        return Err(Error::Cycle {
            node: node_label(&graph.node[stuck], stuck),
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;

    fn chain() -> ModelProto {
        let mut b = GraphBuilder::new("chain");
        b.input("x", &[1, 4]);
        let y = b.node("Relu", &["x"], "relu", &[]);
        let z = b.node("Neg", &[&y], "neg", &[]);
        b.output(&z, &[1, 4]);
        b.into_model(17)
    }

    #[test]
    fn producers_consumers_and_order() {
        let m = chain();
        let v = GraphView::new(&m).unwrap();
        assert_eq!(v.order(), &[0, 1]);
        assert_eq!(v.producer("relu"), Some(0));
        assert_eq!(v.consumers("relu"), &[1]);
        assert!(v.is_graph_output("neg"));
        assert_eq!(v.opset(""), Some(17));
    }

    #[test]
    fn a_cycle_is_reported() {
        let mut m = chain();
        let g = m.graph.as_mut().unwrap();
        g.node[0].input[0] = "neg".into();
        let err = GraphView::new(&m).err().unwrap().to_string();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn dangling_inputs_and_duplicate_outputs_are_reported() {
        let mut m = chain();
        m.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
        let err = GraphView::new(&m).err().unwrap().to_string();
        assert!(err.contains("'nowhere'"), "{err}");

        let mut m = chain();
        m.graph.as_mut().unwrap().node[1].output[0] = "relu".into();
        let err = GraphView::new(&m).err().unwrap().to_string();
        assert!(err.contains("produced twice"), "{err}");
    }

    #[test]
    fn unsorted_nodes_are_ordered() {
        let mut m = chain();
        m.graph.as_mut().unwrap().node.reverse();
        assert_eq!(GraphView::new(&m).unwrap().order(), &[1, 0]);
    }
}
