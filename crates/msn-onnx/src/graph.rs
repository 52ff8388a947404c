//! A read-only view of a model's graph: nodes in topological order, who produces and who
//! consumes each value, initializers by name, opsets and metadata. Building the view validates
//! the graph, so code that holds a `GraphView` can rely on a well-formed DAG.

use crate::index::Index;
use crate::{Error, GraphProto, ModelProto, NodeProto, Result, TensorProto};
use std::collections::HashMap;

/// A validated, indexed view of a model's main graph: the one [`Index`] plus a topological
/// order.
pub struct GraphView<'a> {
    model: &'a ModelProto,
    graph: &'a GraphProto,
    order: Vec<usize>,
    index: Index,
}

/// A human-readable name for a node: its own name, or `OpType#index` when it has none.
pub fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("{}#{index}", node.op_type())
    } else {
        node.name().to_string()
    }
}

/// Every value is produced once: by one node, or as a graph input or initializer.
fn check_single_producers(graph: &GraphProto) -> Result<()> {
    let mut defined: HashMap<&str, String> = graph
        .initializer
        .iter()
        .map(|t| t.name())
        .chain(graph.input.iter().map(|v| v.name()))
        .map(|n| (n, "a graph input or initializer".to_string()))
        .collect();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if let Some(first) = defined.insert(out, node_label(node, i)) {
                return Err(Error::DuplicateOutput {
                    name: out.clone(),
                    first,
                    second: node_label(node, i),
                });
            }
        }
    }
    Ok(())
}

impl<'a> GraphView<'a> {
    /// Indexes and validates the model's graph: every input of every node is provided, no value
    /// is produced twice, the graph is acyclic and every graph output is produced.
    pub fn new(model: &'a ModelProto) -> Result<Self> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::NoGraph {
            origin: "model".into(),
        })?;
        check_single_producers(graph)?;
        let index = Index::new(graph);
        let known = |name: &str| {
            index.producer.contains_key(name)
                || index.init.contains_key(name)
                || index.inputs.contains(name)
        };
        for (i, node) in graph.node.iter().enumerate() {
            if let Some(inp) = node.input.iter().find(|s| !s.is_empty() && !known(s)) {
                return Err(Error::DanglingInput {
                    node: node_label(node, i),
                    input: inp.clone(),
                });
            }
        }
        if let Some(out) = graph.output.iter().find(|o| !known(o.name())) {
            return Err(Error::DanglingOutput {
                name: out.name().to_string(),
            });
        }
        let order = topological_order(graph, &index.producer)?;
        Ok(GraphView {
            model,
            graph,
            order,
            index,
        })
    }

    /// The one index of this graph.
    pub fn index(&self) -> &Index {
        &self.index
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
        self.index.producer.get(value).copied()
    }

    /// The indices of the nodes that read `value` (each once; a read inside a node's
    /// subgraph counts for that node).
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.index.consumers_of(value)
    }

    /// The initializer called `name`, if there is one.
    pub fn initializer(&self, name: &str) -> Option<&'a TensorProto> {
        self.index
            .init
            .get(name)
            .map(|&i| &self.graph.initializer[i])
    }

    /// Graph inputs that are not also initializers: the values a caller must feed.
    pub fn real_inputs(&self) -> impl Iterator<Item = &'a crate::ValueInfoProto> + '_ {
        self.graph
            .input
            .iter()
            .filter(|v| !self.index.init.contains_key(v.name()))
    }

    /// True when `name` is a graph input.
    pub fn is_graph_input(&self, name: &str) -> bool {
        self.index.inputs.contains(name)
    }

    /// True when `name` is a graph output.
    pub fn is_graph_output(&self, name: &str) -> bool {
        self.index.outputs.contains(name)
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
fn topological_order(graph: &GraphProto, producers: &HashMap<String, usize>) -> Result<Vec<usize>> {
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
