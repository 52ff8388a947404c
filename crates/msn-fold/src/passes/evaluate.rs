//! Constant evaluation of whatever the graph computes from constants and fixed shapes, by
//! tract's type and value analysis.
//!
//! Attention and detection exports compute shapes, indices and masks at run time: `Shape`,
//! `Gather`, `Concat`, `Range`, `ConstantOfShape`, `Expand`, `ScatterND`, `Equal`, `Where`,
//! `Cast`, `Tile`... At the shapes the file fixes (or `--input-shape` fixes) all of that is
//! constant. [`crate::passes::constant_folding`] evaluates the ops image classifiers need with
//! our own code; this pass hands the rest to tract, whose analysis of an ONNX graph propagates
//! shapes and evaluates every node whose inputs are known (it covers the ONNX operator set
//! tract runs), and writes back the values that non-constant nodes read as initializers.
//!
//! Bounds: a value is written only if it is at most [`LIMIT_BYTES`] or no larger than the
//! largest input of the node computing it (a transposed or rescaled weight, not a broadcast
//! blow-up), so folding never grows a file by more than 1 MiB per node it removes; tract's
//! analysis itself reads no initializer past 4 MiB and is given no node that could make more
//! than 2^22 values by our bounds (a `Range`, `ConstantOfShape`, `Expand`, `Tile`... sized by
//! the file's constants). Not bounded: a size the graph computes from its shapes (tract
//! evaluates it whatever it comes to). `QuantizeLinear`/`DequantizeLinear` and the
//! random ops are never folded (a QDQ model's weights stay int8). A graph tract cannot
//! parse, or values it cannot determine, are simply left as they are.

use crate::graph::Index;
use msn_onnx::index::{outer_reads, subgraphs};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{GraphProto, ModelProto, NodeProto, TensorProto};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// The largest value this pass writes when it is larger than every input of its node.
pub const LIMIT_BYTES: usize = 1 << 20;

/// Ops never evaluated here besides the random ones: they mark quantization that must stay
/// in the graph, or are constants already.
const QUANT: &[&str] = &[
    "Constant",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// True for an op whose result is not a function of its inputs or must stay in the graph.
fn kept(op: &str) -> bool {
    QUANT.contains(&op) || crate::passes::eliminate::RANDOM.contains(&op)
}

/// What tract's analysis determined about the graph's values, by ONNX name: the values of
/// node outputs and initializers (only while this pass runs: later passes rewrite
/// initializers) and the fixed shapes and element types (which they keep).
#[derive(Default)]
pub struct Facts {
    values: HashMap<String, Arc<Tensor>>,
    shapes: HashMap<String, (Vec<usize>, Option<DataType>)>,
}

impl Facts {
    /// The shape of `name`, when fixed.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(|(s, _)| s.as_slice())
    }

    /// The element type of `name`, when known.
    pub fn data_type(&self, name: &str) -> Option<DataType> {
        self.shapes.get(name).and_then(|(_, t)| *t)
    }
}

/// Replaces the constant values that the rest of the graph reads by initializers; returns
/// how many nodes went (the ones only folded values fed go in dead-code elimination) and
/// the shapes tract fixed, for [`crate::passes::simplify`]. Nothing when the graph has
/// nothing either pass could change or tract cannot parse it.
pub fn run(model: &mut ModelProto) -> (usize, Option<Facts>) {
    let Some(g) = model.graph.as_ref() else {
        return (0, None);
    };
    let idx = Index::new(g);
    let worth = |n: &NodeProto| candidate(&idx, n) || crate::passes::simplify::candidate(n);
    if !g.node.iter().any(worth) {
        return (0, None);
    }
    // tract's analysis panics on some malformed graphs that our validation lets through (a
    // kernel larger than its padded input, found by the fuzz smoke): such a graph is folded
    // without it. (Builds with `panic = "abort"`, the boards' `dist`, cannot catch this.)
    let analysed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyse(model)));
    let Ok(Some(mut facts)) = analysed else {
        return (0, None);
    };
    let Some(g) = model.graph.as_mut() else {
        return (0, None);
    };
    let (removed, written) = plan(g, &idx, &facts.values);
    facts.values = HashMap::new();
    let n = removed.len();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !removed.contains(&(i - 1))
    });
    g.initializer.extend(written);
    (n, Some(facts))
}

/// A node tract may fold where our own folding did not: a `Shape` or `Size` (tract knows
/// more shapes than [`crate::shapes`]), or a node all of whose inputs are constants.
fn candidate(idx: &Index, n: &NodeProto) -> bool {
    let op = n.op_type();
    if kept(op) || subgraphs(n).next().is_some() {
        return false;
    }
    matches!(op, "Shape" | "Size")
        || (n.input.iter().any(|i| !i.is_empty())
            && n.input
                .iter()
                .filter(|i| !i.is_empty())
                .all(|i| idx.is_constant(i)))
}

/// The values, shapes and types of the graph's values that tract's analysis determined.
fn analyse(model: &ModelProto) -> Option<Facts> {
    let bytes = light(model)?.encode_to_vec();
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).ok()?;
    drop(bytes);
    if let Some(g) = proto.graph.as_mut() {
        spell_out_defaults(g);
    }
    let parsed = onnx.parse(&proto, None).ok()?;
    drop(proto);
    let mut tract = parsed.model;
    // Facts tract could not refine stay unknown; the values it did determine are exact.
    let _ = tract.analyse(true);
    let mut facts = Facts::default();
    for (name, &outlet) in &parsed.outlets_by_name {
        let Ok(fact) = tract.outlet_fact(outlet) else {
            continue;
        };
        if let Some(t) = fact.value.concretize() {
            facts.values.insert(name.clone(), t);
        }
        let dims = fact.shape.concretize().and_then(|dims| {
            dims.iter()
                .map(|d| d.to_i64().ok().and_then(|v| usize::try_from(v).ok()))
                .collect::<Option<Vec<usize>>>()
        });
        if let Some(dims) = dims {
            let dt = fact.datum_type.concretize().and_then(datum_onnx_type);
            facts.shapes.insert(name.clone(), (dims, dt));
        }
    }
    Some(facts)
}

/// The largest initializer whose data tract's copy of the graph gets: tract's analysis
/// evaluates nothing from a larger input, so of those it only needs the type and shape.
const DATA_BYTES: usize = 4 << 20;

/// The model as tract's analysis needs it: initializers past [`DATA_BYTES`] become graph
/// inputs of their type and shape, so a large model is neither copied nor parsed whole.
fn light(model: &ModelProto) -> Option<ModelProto> {
    use msn_onnx::proto::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
    let g = model.graph.as_ref()?;
    let declared: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
    let mut input = g.input.clone();
    let mut initializer = Vec::new();
    for t in &g.initializer {
        if crate::stored_bytes(t) <= DATA_BYTES {
            initializer.push(t.clone());
        } else if !declared.contains(t.name()) {
            let dim = t
                .dims
                .iter()
                .map(|&d| tensor_shape_proto::Dimension {
                    value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                    ..Default::default()
                })
                .collect();
            input.push(msn_onnx::ValueInfoProto {
                name: t.name.clone(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: t.data_type,
                        shape: Some(TensorShapeProto { dim }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    // The values of the nodes left out are read by name only: tract's parse makes each a
    // source of unknown type and shape.
    let node = bounded(g);
    Some(ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        functions: model.functions.clone(),
        graph: Some(GraphProto {
            name: g.name.clone(),
            node,
            initializer,
            sparse_initializer: g.sparse_initializer.clone(),
            input,
            output: g.output.clone(),
            value_info: g.value_info.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The most values tract's analysis may compute for one node: 2^22 (16 MiB of f32).
const EVAL_ELEMENTS: u64 = 1 << 22;

/// Ops whose output can be far larger than their inputs (a size, a shape, repeats, scales or
/// pads among them): tract evaluates them whatever the size they ask for.
const GENERATORS: &[&str] = &[
    "Range",
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Resize",
    "Upsample",
    "Pad",
    "OneHot",
    "EyeLike",
    "ConvTranspose",
    "MaxUnpool",
    "Col2Im",
    "CenterCropPad",
];

/// The nodes tract's copy of the graph keeps: all but every node that tract could evaluate
/// (all its inputs may be constant to it) and that would make more than [`EVAL_ELEMENTS`]
/// values by our own constants and shapes. Without this, tract's
/// analysis allocated and filled whatever a `Range` or `ConstantOfShape` of a hostile file
/// asked for (34 GB and 4.4 TB, found by the fuzz smoke).
fn bounded(g: &GraphProto) -> Vec<NodeProto> {
    let idx = Index::new(g);
    let shapes = crate::shapes::infer(g);
    // Upper bounds on the values of what tract may evaluate, by name (`u64::MAX`: unknown).
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    for t in &g.initializer {
        sizes.insert(
            t.name(),
            product(t.dims.iter().copied()).unwrap_or(u64::MAX),
        );
    }
    let mut kept_nodes = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let op = n.op_type();
        let mut inputs = n.input.iter().filter(|i| !i.is_empty());
        let constant = !crate::passes::eliminate::RANDOM.contains(&op)
            && (matches!(op, "Shape" | "Size") || inputs.all(|i| sizes.contains_key(i.as_str())));
        if constant {
            // The shapes we know are exact; a generator is left out when our constants bound
            // it past the limit, and any other op is evaluated (its bound, if any, serves
            // what it feeds). A generator whose size the graph computes (from its shapes)
            // stays: leaving those out cost attention graphs most of their folding.
            let known = n
                .output
                .iter()
                .filter(|o| !o.is_empty())
                .map(|o| {
                    shapes
                        .get(o)
                        .and_then(|s| product(s.iter().map(|&d| d as i64)))
                })
                .try_fold(0u64, |m, b| Some(m.max(b?)));
            let bound = known.or_else(|| size_bound(g, &idx, &sizes, n));
            let large = match (known, GENERATORS.contains(&op)) {
                (Some(b), _) => b > EVAL_ELEMENTS,
                (None, true) => bound.is_some_and(|b| b > EVAL_ELEMENTS),
                (None, false) => false,
            };
            if large {
                continue;
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                sizes.insert(o, bound.unwrap_or(u64::MAX));
            }
        }
        kept_nodes.push(n.clone());
    }
    kept_nodes
}

/// The product of `dims`; `None` for a negative one or past `u64`.
fn product(dims: impl IntoIterator<Item = i64>) -> Option<u64> {
    dims.into_iter()
        .try_fold(1u64, |p, d| p.checked_mul(u64::try_from(d).ok()?))
}

/// Ops whose output has as many values as their first input.
const SAME_SIZE: &[&str] = &[
    "Reshape",
    "Cast",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Flatten",
    "ScatterND",
    "ScatterElements",
    "Neg",
    "Abs",
    "Not",
    "Sqrt",
    "Exp",
    "Log",
    "Relu",
    "Sigmoid",
    "Floor",
    "Ceil",
    "Round",
];

/// Elementwise ops whose inputs broadcast: at most the product of their inputs' values.
const BROADCAST: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Max",
    "Min",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Where",
];

/// An upper bound on the values `n`'s largest output holds, from our own constants and the
/// bounds `sizes` of what it reads; `None` when they do not tell (or past `u64`).
fn size_bound(
    g: &GraphProto,
    idx: &Index,
    sizes: &HashMap<&str, u64>,
    n: &NodeProto,
) -> Option<u64> {
    let input = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
    let ints = |i: usize| idx.int(g, input(i)?);
    let size = |i: usize| {
        sizes
            .get(input(i)?.as_str())
            .copied()
            .filter(|&s| s < u64::MAX)
    };
    match n.op_type() {
        op if SAME_SIZE.contains(&op) => size(0),
        op if BROADCAST.contains(&op) => (0..n.input.len())
            .filter(|&i| input(i).is_some())
            .try_fold(1u64, |p, i| p.checked_mul(size(i)?)),
        "Range" => {
            let scalar = |i: usize| -> Option<f64> {
                let name = input(i)?;
                match idx.int(g, name) {
                    Some(a) => a.iter().next().map(|&v| v as f64),
                    None => idx.float(g, name)?.iter().next().map(|&v| v as f64),
                }
            };
            let (start, limit, delta) = (scalar(0)?, scalar(1)?, scalar(2)?);
            let count = ((limit - start) / delta).ceil();
            // NaN and infinities fail the comparison.
            (count.is_finite() && count < 1e18).then(|| count.max(0.0) as u64)
        }
        "ConstantOfShape" => product(ints(0)?.iter().copied()),
        // Each output dimension is the shape's where that is not 1, else the data's.
        "Expand" => size(0)?.checked_mul(product(ints(1)?.iter().map(|&d| d.max(1)))?),
        "Tile" => size(0)?.checked_mul(product(ints(1)?.iter().copied())?),
        _ => None,
    }
}

/// Makes ONNX defaults that tract reads differently explicit in tract's copy of the graph:
/// a `ConstantOfShape` without a value fills with FLOAT zeros (tract 0.23 makes them DOUBLE,
/// and a DOUBLE initializer where the graph computes in FLOAT would break the model).
fn spell_out_defaults(g: &mut tract_onnx::pb::GraphProto) {
    use tract_onnx::pb;
    for n in &mut g.node {
        if n.op_type == "ConstantOfShape" && !n.attribute.iter().any(|a| a.name == "value") {
            n.attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(pb::TensorProto {
                    dims: vec![1],
                    data_type: pb::tensor_proto::DataType::Float as i32,
                    float_data: vec![0.0],
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
}

/// Which nodes go and which values become initializers: starting from the nodes that stay
/// (those not wholly constant, and the producers of graph outputs), each constant value
/// they read is written, or, when it is too large or of a type ONNX files cannot hold, its
/// producer stays too and its own inputs are looked at in turn. Linear in the graph.
fn plan(
    g: &GraphProto,
    idx: &Index,
    values: &HashMap<String, Arc<Tensor>>,
) -> (HashSet<usize>, Vec<TensorProto>) {
    let constant = |n: &NodeProto| {
        !kept(n.op_type())
            && n.output.iter().any(|o| !o.is_empty())
            && n.output
                .iter()
                .filter(|o| !o.is_empty())
                .all(|o| values.contains_key(o))
    };
    let is_constant: Vec<bool> = g.node.iter().map(constant).collect();
    let mut kept: Vec<bool> = is_constant.iter().map(|c| !c).collect();
    for o in &g.output {
        if let Some(&p) = idx.producer.get(o.name()) {
            kept[p] = true;
        }
    }
    let mut work: Vec<usize> = (0..g.node.len()).filter(|&i| kept[i]).collect();
    // Producer -> whether all its outputs can be written.
    let mut writable: HashMap<usize, bool> = HashMap::new();
    let mut removed = HashSet::new();
    // Written values, in the order found (the output file is the same from run to run).
    let mut written: Vec<TensorProto> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    while let Some(i) = work.pop() {
        let n = &g.node[i];
        let reads = n
            .input
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .chain(subgraphs(n).flat_map(outer_reads));
        for v in reads {
            let Some(&p) = idx.producer.get(&v) else {
                continue;
            };
            if kept[p] || !is_constant[p] || done.contains(&v) {
                continue;
            }
            let ok = *writable
                .entry(p)
                .or_insert_with(|| can_write(g, idx, &g.node[p], values));
            if ok {
                if let Some(t) = to_proto(&v, &values[&v]) {
                    written.push(t);
                    done.insert(v);
                    removed.insert(p);
                    continue;
                }
            }
            kept[p] = true;
            work.push(p);
        }
    }
    // A producer some of whose outputs were written goes, so each of its outputs that
    // anything still reads must be written too (all of them can be).
    let mut gone: Vec<usize> = removed.iter().copied().collect();
    gone.sort_unstable();
    for p in gone {
        for o in g.node[p].output.iter().filter(|o| !o.is_empty()) {
            if !done.contains(o) && idx.uses(o) > 0 {
                if let Some(t) = to_proto(o, &values[o]) {
                    written.push(t);
                    done.insert(o.clone());
                }
            }
        }
    }
    (removed, written)
}

/// True when every output of `n` is small enough (see [`LIMIT_BYTES`]) and of a type an
/// initializer can hold.
fn can_write(
    g: &GraphProto,
    idx: &Index,
    n: &NodeProto,
    values: &HashMap<String, Arc<Tensor>>,
) -> bool {
    let largest_input = n
        .input
        .iter()
        .filter_map(|i| match values.get(i) {
            Some(t) => Some(bytes_of(t)),
            None => idx.constant(g, i).map(crate::stored_bytes),
        })
        .max()
        .unwrap_or(0);
    let limit = LIMIT_BYTES.max(largest_input);
    n.output.iter().filter(|o| !o.is_empty()).all(|o| {
        values
            .get(o)
            .is_some_and(|t| bytes_of(t) <= limit && onnx_type(t).is_some())
    })
}

fn bytes_of(t: &Tensor) -> usize {
    t.len().saturating_mul(t.datum_type().size_of())
}

/// The ONNX element type of a tract value (tract's symbolic dimensions are INT64 in ONNX).
fn onnx_type(t: &Tensor) -> Option<DataType> {
    datum_onnx_type(t.datum_type())
}

/// The ONNX element type of a tract type.
fn datum_onnx_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        DatumType::F16 => DataType::Float16,
        DatumType::I64 | DatumType::TDim => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::I16 => DataType::Int16,
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::Bool => DataType::Bool,
        _ => return None,
    })
}

/// The little-endian bytes of a plain tract tensor's values.
macro_rules! le {
    ($t:expr, $ty:ty) => {
        $t.try_as_plain_ram()
            .ok()?
            .as_slice::<$ty>()
            .ok()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
}

/// `t` as an initializer named `name`; `None` for a type ONNX files cannot hold or a
/// symbolic dimension.
fn to_proto(name: &str, t: &Tensor) -> Option<TensorProto> {
    let dt = onnx_type(t)?;
    let raw = match t.datum_type() {
        DatumType::F32 => le!(t, f32),
        DatumType::F64 => le!(t, f64),
        DatumType::F16 => t
            .try_as_plain_ram()
            .ok()?
            .as_slice::<f16>()
            .ok()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DatumType::I64 => le!(t, i64),
        DatumType::TDim => {
            let plain = t.try_as_plain_ram().ok()?;
            let dims = plain.as_slice::<TDim>().ok()?;
            let mut raw = Vec::with_capacity(dims.len() * 8);
            for d in dims {
                raw.extend_from_slice(&d.to_i64().ok()?.to_le_bytes());
            }
            raw
        }
        DatumType::I32 => le!(t, i32),
        DatumType::I16 => le!(t, i16),
        DatumType::I8 => le!(t, i8),
        DatumType::U8 => le!(t, u8),
        DatumType::U16 => le!(t, u16),
        DatumType::U32 => le!(t, u32),
        DatumType::U64 => le!(t, u64),
        DatumType::Bool => t
            .try_as_plain_ram()
            .ok()?
            .as_slice::<bool>()
            .ok()?
            .iter()
            .map(|&b| b as u8)
            .collect(),
        _ => return None,
    };
    Some(TensorProto {
        name: Some(name.to_string()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dt as i32),
        raw_data: Some(raw),
        ..Default::default()
    })
}
