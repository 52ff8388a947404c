//! A small builder for ONNX graphs. The exporter writes whole networks with it; tests use it for
//! hand-made graphs.
//!
//! ```
//! use msn_onnx::builder::{attr, GraphBuilder};
//! let mut b = GraphBuilder::new("tiny");
//! b.input("x", &[-1, 3]); // a negative dimension is the dynamic batch size `N`
//! let w = b.initializer_f32("w", &ndarray::Array2::<f32>::eye(3).into_dyn());
//! let y = b.node("Gemm", &["x", &w], "y", &[attr::int("transB", 1)]);
//! b.output(&y, &[-1, 3]);
//! let model = b.into_model(17);
//! assert_eq!(model.graph.unwrap().node.len(), 1);
//! ```

use crate::proto::tensor_proto::DataType;
use crate::proto::tensor_shape_proto::{dimension, Dimension};
use crate::proto::{
    type_proto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto,
};
use crate::{tensor, AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto};
use ndarray::ArrayD;

/// The IR version written by the builder (ONNX 1.13+, opset up to 19 reads it).
pub const IR_VERSION: i64 = 8;

/// Builds a graph node by node.
#[derive(Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    metadata: Vec<(String, String)>,
    producer: Option<(String, String)>,
}

/// A float tensor value description with the given shape; negative dimensions are symbolic `N`.
pub fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 {
                dimension::Value::DimParam("N".into())
            } else {
                dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float tensor value description of unknown shape (the runtime infers it).
pub fn float_value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Declares a float graph input.
    pub fn input(&mut self, name: &str, dims: &[i64]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.to_string()
    }

    /// Declares a float graph output.
    pub fn output(&mut self, name: &str, dims: &[i64]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds a float initializer and returns its name.
    pub fn initializer_f32(&mut self, name: &str, a: &ArrayD<f32>) -> String {
        self.graph.initializer.push(tensor::from_f32(name, a));
        name.to_string()
    }

    /// Adds an initializer of any element type from its little-endian bytes (`raw_data`) and
    /// returns its name.
    pub fn initializer_raw(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> String {
        self.graph.initializer.push(crate::TensorProto {
            name: Some(name.to_string()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an int64 initializer and returns its name.
    pub fn initializer_i64(&mut self, name: &str, a: &ArrayD<i64>) -> String {
        self.graph.initializer.push(tensor::from_i64(name, a));
        name.to_string()
    }

    /// Adds a node with one output, named like its output; returns the output's name.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: &[AttributeProto],
    ) -> String {
        self.node_full(output, op, inputs, &[output], attrs, "");
        output.to_string()
    }

    /// Adds a node with a name, several outputs and a doc string.
    pub fn node_full(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: &[AttributeProto],
        doc: &str,
    ) {
        self.graph.node.push(NodeProto {
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.to_vec(),
            doc_string: (!doc.is_empty()).then(|| doc.to_string()),
            ..Default::default()
        });
    }

    /// Sets a `metadata_props` entry of the model.
    pub fn metadata(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Sets the producer name and version written into the model.
    pub fn producer(&mut self, name: &str, version: &str) {
        self.producer = Some((name.to_string(), version.to_string()));
    }

    /// The graph built so far, without the model around it (metadata and producer dropped).
    pub fn into_graph(self) -> GraphProto {
        self.graph
    }

    /// Finishes the model with the default-domain opset `opset`.
    pub fn into_model(self, opset: i64) -> ModelProto {
        let (producer_name, producer_version) = self
            .producer
            .unwrap_or_else(|| ("msn".into(), env!("CARGO_PKG_VERSION").into()));
        ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some(producer_name),
            producer_version: Some(producer_version),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k),
                    value: Some(v),
                })
                .collect(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// Attribute constructors.
pub mod attr {
    use crate::proto::attribute_proto::AttributeType;
    use crate::{AttributeProto, TensorProto};

    fn base(name: &str, ty: AttributeType) -> AttributeProto {
        AttributeProto {
            name: Some(name.to_string()),
            r#type: Some(ty as i32),
            ..Default::default()
        }
    }

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            i: Some(v),
            ..base(name, AttributeType::Int)
        }
    }

    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            ints: v.to_vec(),
            ..base(name, AttributeType::Ints)
        }
    }

    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            f: Some(v),
            ..base(name, AttributeType::Float)
        }
    }

    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            s: Some(v.as_bytes().to_vec()),
            ..base(name, AttributeType::String)
        }
    }

    pub fn graph(name: &str, g: crate::GraphProto) -> AttributeProto {
        AttributeProto {
            g: Some(g),
            ..base(name, AttributeType::Graph)
        }
    }

    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto {
            t: Some(t),
            ..base(name, AttributeType::Tensor)
        }
    }
}
