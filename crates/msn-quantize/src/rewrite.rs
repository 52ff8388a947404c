//! The int8 graph: which nodes are quantized, which ranges calibration must observe, and the
//! rewrite itself.
//!
//! Every value exists in float under its own name, in int8 under a new name, or both; a node is
//! given the form it reads and a `QuantizeLinear` or `DequantizeLinear` is inserted the first
//! time a form is missing, so a chain of quantized layers stays in int8 and what is not
//! covered stays float. The model's inputs and outputs stay float.
//!
//! Covered: Conv (any group) with a constant weight, followed by a Relu or a Clip from 0
//! (folded into the output range); Gemm and MatMul with a constant weight (integer products,
//! float output: usually the classifier); MaxPool without padding on an int8 input. Residual
//! Adds, Concat, averages and other activations run in float between a `DequantizeLinear` and
//! the next quantized layer's `QuantizeLinear`.

use crate::arith::{self, QParams, QType};
use crate::{Error, Result};
use msn_onnx::builder::attr;
use msn_onnx::index::Index;
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{attr_float, attr_int, attr_ints, GraphProto, ModelProto, NodeProto, TensorProto};
use ndarray::{ArrayD, Ix2};
use std::collections::{HashMap, HashSet};

/// The layout of the int8 model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `QLinearConv`, `MatMulInteger`: the integer operators themselves.
    QOperator,
    /// Float operators between `QuantizeLinear`/`DequantizeLinear` pairs, int8 weights behind
    /// a `DequantizeLinear`.
    Qdq,
}

/// What the rewrite does to one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A Conv, and the activation folded into its output range if any.
    Conv { activation: Option<usize> },
    /// A Gemm or MatMul with a constant weight.
    MatMul,
    /// A MaxPool on an int8 input.
    MaxPool,
}

/// A node that runs in int8.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub node: usize,
    pub kind: Kind,
    /// The value whose int8 form the node writes (after a folded activation).
    pub output: String,
}

/// The decision for a graph: what runs in int8 and what calibration must observe.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub quantized: Vec<Quantized>,
    /// Values whose range calibration measures.
    pub observe: Vec<String>,
    /// Nodes left in float, by op type (for the report).
    pub float_ops: std::collections::BTreeMap<String, usize>,
}

fn clip_bounds(g: &GraphProto, idx: &Index, n: &NodeProto) -> Option<(f32, f32)> {
    if n.op_type() == "Relu" {
        return Some((0.0, f32::INFINITY));
    }
    if n.op_type() != "Clip" {
        return None;
    }
    let bound = |i: usize, attr: &str, default: f32| -> Option<f32> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            Some(name) => idx.float(g, name).and_then(|a| a.iter().next().copied()),
            None => Some(attr_float(n, attr, default)),
        }
    };
    let lo = bound(1, "min", f32::NEG_INFINITY)?;
    let hi = bound(2, "max", f32::INFINITY)?;
    (lo == 0.0).then_some((lo, hi))
}

fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain(), "" | "ai.onnx")
}

/// True for a grouped Conv with one input channel per group (depthwise).
fn is_depthwise(g: &GraphProto, idx: &Index, n: &NodeProto) -> bool {
    let group = attr_int(n, "group", 1);
    group > 1
        && idx
            .float_shape(g, &n.input[1])
            .is_some_and(|s| s.len() == 4 && s[1] == 1)
}

/// Decides which nodes of `g` (in topological order) run in int8; depthwise convolutions only
/// if `depthwise`.
pub fn analyze(g: &GraphProto, depthwise: bool) -> Analysis {
    let idx = Index::new(g);
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let mut a = Analysis::default();
    // Values that will have an int8 form written by a quantized node.
    let mut int8: HashSet<String> = HashSet::new();
    let mut observed: HashSet<String> = HashSet::new();
    let mut fused: HashSet<usize> = HashSet::new();
    let mut observe = |a: &mut Analysis, name: &str| {
        if observed.insert(name.to_string()) {
            a.observe.push(name.to_string());
        }
    };
    for (i, n) in g.node.iter().enumerate() {
        if fused.contains(&i) {
            continue;
        }
        let constant = |k: usize| {
            n.input
                .get(k)
                .filter(|s| !s.is_empty())
                .and_then(|s| idx.float(g, s))
        };
        let input_is_variable = n.input.first().is_some_and(|x| !idx.is_constant(x));
        let kind = if !is_default_domain(n) || !input_is_variable {
            None
        } else {
            match n.op_type() {
                "Conv" if n.output.len() == 1 && (depthwise || !is_depthwise(g, &idx, n)) => {
                    let w_ok = constant(1).is_some_and(|w| w.ndim() == 4);
                    let b_ok = n.input.len() < 3 || n.input[2].is_empty() || constant(2).is_some();
                    (w_ok && b_ok).then(|| {
                        let y = &n.output[0];
                        let activation = match idx.consumers_of(y) {
                            [c] if !outputs.contains(y.as_str()) => {
                                clip_bounds(g, &idx, &g.node[*c]).map(|_| *c)
                            }
                            _ => None,
                        };
                        Kind::Conv { activation }
                    })
                }
                "Gemm" => {
                    let ok = constant(1).is_some_and(|w| w.ndim() == 2)
                        && (n.input.len() < 3 || n.input[2].is_empty() || constant(2).is_some())
                        && attr_int(n, "transA", 0) == 0
                        && attr_float(n, "alpha", 1.0) == 1.0
                        && attr_float(n, "beta", 1.0) == 1.0;
                    ok.then_some(Kind::MatMul)
                }
                "MatMul" => constant(1)
                    .is_some_and(|w| w.ndim() == 2)
                    .then_some(Kind::MatMul),
                "MaxPool" => {
                    let ok = n.output.len() == 1
                        && int8.contains(&n.input[0])
                        && attr_ints(n, "pads").iter().all(|&p| p == 0)
                        && attr_int(n, "ceil_mode", 0) == 0
                        && attr_ints(n, "dilations").iter().all(|&d| d == 1);
                    ok.then_some(Kind::MaxPool)
                }
                _ => None,
            }
        };
        let Some(kind) = kind else {
            *a.float_ops.entry(n.op_type().to_string()).or_default() += 1;
            continue;
        };
        let x = n.input[0].clone();
        let output = match &kind {
            Kind::Conv {
                activation: Some(c),
            } => {
                fused.insert(*c);
                g.node[*c].output[0].clone()
            }
            _ => n.output[0].clone(),
        };
        if kind != Kind::MaxPool && !int8.contains(&x) {
            observe(&mut a, &x);
        }
        if matches!(kind, Kind::Conv { .. }) {
            observe(&mut a, &output);
        }
        if kind != Kind::MatMul {
            int8.insert(output.clone());
        }
        a.quantized.push(Quantized {
            node: i,
            kind,
            output,
        });
    }
    a
}

/// How the rewrite quantizes.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub format: Format,
    pub per_channel: bool,
    pub activations: QType,
}

struct Emitter<'g> {
    g: &'g GraphProto,
    idx: Index,
    settings: Settings,
    ranges: &'g HashMap<String, (f32, f32)>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashSet<String>,
    /// Values available in float under their own name.
    float: HashSet<String>,
    /// Values' int8 forms: name and parameters.
    int8: HashMap<String, (String, QParams)>,
    /// QDQ: the dequantized copy of an int8 value that a float op inside the pattern reads.
    dequantized: HashMap<String, String>,
    /// The scale and zero-point initializers of each quantized value, written once.
    params: HashMap<String, (String, String)>,
}

impl<'g> Emitter<'g> {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<msn_onnx::AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{output}_{op}")),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    fn init(&mut self, base: &str, dtype: DataType, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.fresh(base);
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn scale_init(&mut self, base: &str, scales: &[f32], vector: bool) -> String {
        let dims: &[usize] = if vector { &[scales.len()] } else { &[] };
        let raw = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.init(&format!("{base}_scale"), DataType::Float, dims, raw)
    }

    fn zero_point_init(&mut self, base: &str, zp: i32, dtype: QType, len: Option<usize>) -> String {
        let dims: Vec<usize> = len.into_iter().collect();
        let n = len.unwrap_or(1);
        let (dt, byte) = match dtype {
            QType::U8 => (DataType::Uint8, zp as u8),
            QType::I8 => (DataType::Int8, zp as i8 as u8),
        };
        self.init(&format!("{base}_zero_point"), dt, &dims, vec![byte; n])
    }

    /// The scale and zero-point initializers of value `name` quantized with `p`.
    fn value_params(&mut self, name: &str, p: QParams) -> (String, String) {
        if let Some(v) = self.params.get(name) {
            return v.clone();
        }
        let s = self.scale_init(name, &[p.scale], false);
        let z = self.zero_point_init(name, p.zero_point, p.dtype, None);
        self.params.insert(name.to_string(), (s.clone(), z.clone()));
        (s, z)
    }

    fn params_of(&self, name: &str) -> Result<QParams> {
        let &(lo, hi) = self
            .ranges
            .get(name)
            .ok_or_else(|| Error::Calibration(format!("no range was observed for '{name}'")))?;
        Ok(arith::activation_params(lo, hi, self.settings.activations))
    }

    /// The float form of `name`, inserting a DequantizeLinear under its own name if needed.
    fn need_float(&mut self, name: &str) -> String {
        if name.is_empty() || self.float.contains(name) || !self.int8.contains_key(name) {
            return name.to_string();
        }
        let (q, p) = self.int8[name].clone();
        let (s, z) = self.value_params(name, p);
        self.node("DequantizeLinear", &[&q, &s, &z], name, vec![]);
        self.float.insert(name.to_string());
        name.to_string()
    }

    /// [`Self::need_float`] with the DequantizeLinear's scale and zero point repeated for
    /// each of `channels` (axis 1), when `name` has not got a float form yet.
    fn need_float_per_channel(&mut self, name: &str, channels: usize) -> String {
        if name.is_empty() || self.float.contains(name) || !self.int8.contains_key(name) {
            return name.to_string();
        }
        if channels < 2 {
            return self.need_float(name);
        }
        let (q, p) = self.int8[name].clone();
        let s = self.scale_init(name, &vec![p.scale; channels], true);
        let z = self.zero_point_init(name, p.zero_point, p.dtype, Some(channels));
        self.node(
            "DequantizeLinear",
            &[&q, &s, &z],
            name,
            vec![attr::int("axis", 1)],
        );
        self.float.insert(name.to_string());
        name.to_string()
    }

    /// The int8 form of `name`, inserting a QuantizeLinear from its float form if needed.
    fn need_int8(&mut self, name: &str) -> Result<(String, QParams)> {
        if let Some(v) = self.int8.get(name) {
            return Ok(v.clone());
        }
        let p = self.params_of(name)?;
        let q = self.fresh(&format!("{name}_quantized"));
        let (s, z) = self.value_params(name, p);
        self.node("QuantizeLinear", &[name, &s, &z], &q, vec![]);
        self.int8.insert(name.to_string(), (q.clone(), p));
        Ok((q, p))
    }

    /// QDQ: a float copy of an int8 value for the float op of a pattern.
    fn dequantized(&mut self, name: &str) -> Result<String> {
        if let Some(d) = self.dequantized.get(name) {
            return Ok(d.clone());
        }
        let (q, p) = self.need_int8(name)?;
        let d = self.fresh(&format!("{name}_dequantized"));
        let (s, z) = self.value_params(name, p);
        self.node("DequantizeLinear", &[&q, &s, &z], &d, vec![]);
        self.dequantized.insert(name.to_string(), d.clone());
        Ok(d)
    }

    fn weight(&self, n: &NodeProto, k: usize) -> Result<ArrayD<f32>> {
        self.idx.float(self.g, &n.input[k]).ok_or_else(|| {
            Error::Unsupported(format!("'{}' is not a constant float tensor", n.input[k]))
        })
    }

    /// int8 weights with rows = output channels; returns (codes initializer, scales).
    fn int8_weight(&mut self, base: &str, w: &ArrayD<f32>, rows: usize) -> (String, Vec<f32>) {
        self.int8_weight_at_least(base, w, rows, &[])
    }

    /// [`Self::int8_weight`] with each row's scale at least `min[row]`.
    fn int8_weight_at_least(
        &mut self,
        base: &str,
        w: &ArrayD<f32>,
        rows: usize,
        min: &[f32],
    ) -> (String, Vec<f32>) {
        let flat: Vec<f32> = w.iter().copied().collect();
        let (q, scales) =
            arith::quantize_weights_at_least(&flat, rows, self.settings.per_channel, min);
        let raw = q.iter().map(|&v| v as u8).collect();
        let name = self.init(&format!("{base}_quantized"), DataType::Int8, w.shape(), raw);
        (name, scales)
    }

    fn int32_bias(&mut self, base: &str, b: &[f32], x_scale: f32, w_scales: &[f32]) -> String {
        let q = arith::quantize_bias(b, x_scale, w_scales);
        let raw = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(
            &format!("{base}_quantized"),
            DataType::Int32,
            &[b.len()],
            raw,
        )
    }

    fn float_node(&mut self, n: &NodeProto) {
        let mut n = n.clone();
        // A float Conv's input is dequantized per channel, the scale repeated: onnxruntime
        // (1.32) quantizes the weights of a float Conv behind a per-tensor DequantizeLinear
        // itself, per tensor, which breaks depthwise convolutions (EfficientNet-Lite0: its
        // int8 top-1 matched float on 6 of 22 images). msn-fold makes it a scalar again for
        // tract.
        if n.op_type() == "Conv" && n.domain().is_empty() {
            let channels = self.weight(&n, 1).ok().and_then(|w| {
                let group = attr_int(&n, "group", 1);
                Some(usize::try_from(group).ok()? * *w.shape().get(1)?)
            });
            if let Some(c) = channels {
                n.input[0] = self.need_float_per_channel(&n.input[0].clone(), c);
            }
        }
        for i in 0..n.input.len() {
            n.input[i] = self.need_float(&n.input[i].clone());
        }
        for o in &n.output {
            self.float.insert(o.clone());
        }
        self.nodes.push(n);
    }

    fn conv(&mut self, n: &NodeProto, activation: Option<&NodeProto>, output: &str) -> Result<()> {
        let (xq, xp) = self.need_int8(&n.input[0])?;
        let w = self.weight(n, 1)?;
        let m = w.shape()[0];
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => Some(self.weight(n, 2)?),
            None => None,
        };
        // Scales large enough that every channel's int32 bias fits.
        let min = match &bias {
            Some(b) => arith::bias_min_scales(&b.iter().copied().collect::<Vec<_>>(), xp.scale),
            None => Vec::new(),
        };
        let (wq, ws) = self.int8_weight_at_least(&n.input[1], &w, m, &min);
        let yp = self.params_of(output)?;
        let vector = self.settings.per_channel;
        let yq = self.fresh(&format!("{output}_quantized"));
        match self.settings.format {
            Format::QOperator => {
                let (xs, xz) = self.value_params(&n.input[0], xp);
                let wsn = self.scale_init(&n.input[1], &ws, vector);
                let wz = self.zero_point_init(&n.input[1], 0, QType::I8, vector.then_some(m));
                let (ys, yz) = self.value_params(output, yp);
                let mut inputs = vec![xq, xs, xz, wq, wsn, wz, ys, yz];
                if let Some(b) = &bias {
                    let b: Vec<f32> = b.iter().copied().collect();
                    inputs.push(self.int32_bias(&n.input[2], &b, xp.scale, &ws));
                }
                let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
                let mut node = NodeProto {
                    op_type: Some("QLinearConv".into()),
                    name: Some(format!("{}_quant", msn_onnx::index::node_name(n))),
                    input: refs.iter().map(|s| s.to_string()).collect(),
                    output: vec![yq.clone()],
                    attribute: n.attribute.clone(),
                    ..Default::default()
                };
                node.domain = None;
                self.nodes.push(node);
            }
            Format::Qdq => {
                let xd = self.dequantized(&n.input[0])?;
                let axis = vec![attr::int("axis", 0)];
                let wsn = self.scale_init(&n.input[1], &ws, vector);
                let wz = self.zero_point_init(&n.input[1], 0, QType::I8, vector.then_some(m));
                let wd = self.fresh(&format!("{}_dequantized", n.input[1]));
                self.node(
                    "DequantizeLinear",
                    &[&wq, &wsn, &wz],
                    &wd,
                    if vector { axis.clone() } else { vec![] },
                );
                let mut inputs = vec![xd, wd];
                if let Some(b) = &bias {
                    let b: Vec<f32> = b.iter().copied().collect();
                    let bq = self.int32_bias(&n.input[2], &b, xp.scale, &ws);
                    let bscales: Vec<f32> = ws.iter().map(|s| s * xp.scale).collect();
                    let bs = self.scale_init(&n.input[2], &bscales, vector);
                    let zeros = vec![0u8; if vector { 4 * m } else { 4 }];
                    let dims: Vec<usize> = if vector { vec![m] } else { vec![] };
                    let bz = self.init(
                        &format!("{}_zero_point", n.input[2]),
                        DataType::Int32,
                        &dims,
                        zeros,
                    );
                    let bd = self.fresh(&format!("{}_dequantized", n.input[2]));
                    self.node(
                        "DequantizeLinear",
                        &[&bq, &bs, &bz],
                        &bd,
                        if vector { axis } else { vec![] },
                    );
                    inputs.push(bd);
                }
                let conv_out = self.fresh(&format!("{}_float", n.output[0]));
                let mut conv = n.clone();
                conv.input = inputs;
                conv.output = vec![conv_out.clone()];
                self.nodes.push(conv);
                let pre = match activation {
                    Some(act) => {
                        let out = self.fresh(&format!("{output}_float"));
                        let mut act = act.clone();
                        act.input[0] = conv_out;
                        act.output = vec![out.clone()];
                        self.nodes.push(act);
                        out
                    }
                    None => conv_out,
                };
                let (ys, yz) = self.value_params(output, yp);
                self.node("QuantizeLinear", &[&pre, &ys, &yz], &yq, vec![]);
            }
        }
        self.int8.insert(output.to_string(), (yq, yp));
        Ok(())
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<()> {
        let gemm = n.op_type() == "Gemm";
        let w = self.weight(n, 1)?;
        let w = w.into_dimensionality::<Ix2>().expect("checked: 2-D");
        // Output channels first.
        let trans_b = gemm && attr_int(n, "transB", 0) == 1;
        let rows = if trans_b { w.clone() } else { w.t().to_owned() };
        let (m, k) = (rows.shape()[0], rows.shape()[1]);
        let (xq, xp) = self.need_int8(&n.input[0])?;
        let vector = self.settings.per_channel;
        let y = n.output[0].clone();
        match self.settings.format {
            Format::QOperator => {
                // [K, M] codes for MatMulInteger.
                let (codes, ws) = self.int8_weight(&n.input[1], &rows.clone().into_dyn(), m);
                let sums = self.code_row_sums(&codes, m, k);
                let codes_t = self.transpose_codes(&codes, m, k);
                // tract sums the weights on every run when the activations' zero point is
                // not the neutral one (128 for u8, which it shifts to i8, or 0 for i8): 2.4 ms
                // for EfficientNet-Lite0's classifier. So the product is written around the
                // neutral point and the difference, (neutral - zero_point) * column sums, is a
                // constant added after scaling.
                let neutral = match xp.dtype {
                    QType::U8 => 128,
                    QType::I8 => 0,
                };
                let xz = self.zero_point_init(&n.input[0], neutral, xp.dtype, None);
                let wz = self.zero_point_init(&n.input[1], 0, QType::I8, None);
                let acc = self.fresh(&format!("{y}_int32"));
                self.node("MatMulInteger", &[&xq, &codes_t, &xz, &wz], &acc, vec![]);
                let f = self.fresh(&format!("{y}_accumulated"));
                self.node(
                    "Cast",
                    &[&acc],
                    &f,
                    vec![attr::int("to", DataType::Float as i64)],
                );
                let scales: Vec<f32> = (0..m)
                    .map(|j| xp.scale * ws[if vector { j } else { 0 }])
                    .collect();
                let s = self.scale_init(&format!("{y}_product"), &scales, true);
                let shift = (neutral - xp.zero_point) as f64;
                let correction = (shift != 0.0).then(|| {
                    let c: Vec<f32> = (0..m)
                        .map(|j| (scales[j] as f64 * shift * sums[j] as f64) as f32)
                        .collect();
                    self.scale_init(&format!("{y}_zero_point_correction"), &c, true)
                });
                let bias = n.input.get(2).filter(|s| !s.is_empty()).cloned();
                // y = f * s (+ correction) (+ bias), the last step writing `y`.
                let mut terms: Vec<String> = correction.into_iter().collect();
                if let Some(b) = bias {
                    terms.push(self.need_float(&b));
                }
                let mut acc = if terms.is_empty() {
                    y.clone()
                } else {
                    self.fresh(&format!("{y}_scaled"))
                };
                self.node("Mul", &[&f, &s], &acc, vec![]);
                let last = terms.len();
                for (i, t) in terms.into_iter().enumerate() {
                    let out = if i + 1 == last {
                        y.clone()
                    } else {
                        self.fresh(&format!("{y}_corrected"))
                    };
                    self.node("Add", &[&acc, &t], &out, vec![]);
                    acc = out;
                }
            }
            Format::Qdq => {
                // The codes in W's own layout: [M, K] with transB, else [K, M].
                let (codes, ws) = self.int8_weight(&n.input[1], &rows.clone().into_dyn(), m);
                let codes = if trans_b {
                    codes
                } else {
                    self.transpose_codes(&codes, m, k)
                };
                let wsn = self.scale_init(&n.input[1], &ws, vector);
                let wz = self.zero_point_init(&n.input[1], 0, QType::I8, vector.then_some(m));
                let wd = self.fresh(&format!("{}_dequantized", n.input[1]));
                let axis = if trans_b { 0 } else { 1 };
                self.node(
                    "DequantizeLinear",
                    &[&codes, &wsn, &wz],
                    &wd,
                    if vector {
                        vec![attr::int("axis", axis)]
                    } else {
                        vec![]
                    },
                );
                let xd = self.dequantized(&n.input[0])?;
                let mut node = n.clone();
                node.input[0] = xd;
                node.input[1] = wd;
                if let Some(b) = node.input.get(2).cloned() {
                    node.input[2] = self.need_float(&b);
                }
                self.nodes.push(node);
            }
        }
        self.float.insert(y);
        Ok(())
    }

    /// Replaces the int8 initializer `codes` ([rows, cols]) by its transpose, returning its
    /// new name.
    /// The sum of each row of the `rows x cols` int8 codes in initializer `codes`.
    fn code_row_sums(&self, codes: &str, rows: usize, cols: usize) -> Vec<i64> {
        let t = self
            .inits
            .iter()
            .find(|t| t.name() == codes)
            .expect("just added");
        let raw = t.raw_data.as_deref().unwrap_or_default();
        (0..rows)
            .map(|r| {
                raw[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&b| b as i8 as i64)
                    .sum()
            })
            .collect()
    }

    fn transpose_codes(&mut self, codes: &str, rows: usize, cols: usize) -> String {
        let at = self
            .inits
            .iter()
            .position(|t| t.name() == codes)
            .expect("just added");
        let t = &mut self.inits[at];
        let raw = t.raw_data.take().unwrap_or_default();
        let a = ndarray::Array2::from_shape_vec((rows, cols), raw).expect("rows x cols codes");
        let tr = a.t().as_standard_layout().iter().copied().collect();
        t.raw_data = Some(tr);
        t.dims = vec![cols as i64, rows as i64];
        codes.to_string()
    }

    fn maxpool(&mut self, n: &NodeProto) -> Result<()> {
        let (xq, xp) = self.need_int8(&n.input[0])?;
        let out = self.fresh(&format!("{}_quantized", n.output[0]));
        let mut node = n.clone();
        node.input[0] = xq;
        node.output = vec![out.clone()];
        self.nodes.push(node);
        self.int8.insert(n.output[0].clone(), (out, xp));
        Ok(())
    }
}

/// Rewrites `model` (float, folded) into its int8 form with the observed `ranges`.
pub fn rewrite(
    model: &ModelProto,
    analysis: &Analysis,
    ranges: &HashMap<String, (f32, f32)>,
    settings: Settings,
) -> Result<ModelProto> {
    let g = model.graph.as_ref().expect("validated: has a graph");
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .unwrap_or(1);
    if opset < 10 {
        return Err(Error::Unsupported(format!(
            "the integer operators need opset 10 or later; the model has opset {opset}"
        )));
    }
    if settings.format == Format::Qdq && settings.per_channel && opset < 13 {
        return Err(Error::Unsupported(format!(
            "per-channel QDQ needs opset 13 or later (DequantizeLinear's axis); the model has opset {opset}: use --per-tensor or --format qoperator"
        )));
    }
    let mut names: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    for n in &g.node {
        names.extend(n.input.iter().cloned());
        names.extend(n.output.iter().cloned());
    }
    names.extend(g.input.iter().map(|i| i.name().to_string()));
    let mut e = Emitter {
        g,
        idx: Index::new(g),
        settings,
        ranges,
        nodes: Vec::new(),
        inits: Vec::new(),
        names,
        float: g
            .input
            .iter()
            .map(|i| i.name().to_string())
            .chain(g.initializer.iter().map(|t| t.name().to_string()))
            .collect(),
        int8: HashMap::new(),
        dequantized: HashMap::new(),
        params: HashMap::new(),
    };
    let by_node: HashMap<usize, &Quantized> =
        analysis.quantized.iter().map(|q| (q.node, q)).collect();
    let fused: HashSet<usize> = analysis
        .quantized
        .iter()
        .filter_map(|q| match q.kind {
            Kind::Conv { activation } => activation,
            _ => None,
        })
        .collect();
    for (i, n) in g.node.iter().enumerate() {
        if fused.contains(&i) {
            continue;
        }
        match by_node.get(&i) {
            Some(q) => match &q.kind {
                Kind::Conv { activation } => {
                    e.conv(n, activation.map(|c| &g.node[c]), &q.output)?
                }
                Kind::MatMul => e.matmul(n)?,
                Kind::MaxPool => e.maxpool(n)?,
            },
            None => e.float_node(n),
        }
    }
    for o in &g.output {
        e.need_float(o.name());
    }
    // Keep only the initializers still read.
    let mut read: HashSet<String> = HashSet::new();
    for n in &e.nodes {
        read.extend(n.input.iter().cloned());
        read.extend(msn_onnx::index::subgraphs(n).flat_map(msn_onnx::index::outer_reads));
    }
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("has a graph");
    let mut inits: Vec<TensorProto> = g
        .initializer
        .iter()
        .filter(|t| read.contains(t.name()))
        .cloned()
        .collect();
    inits.extend(e.inits);
    og.initializer = inits;
    og.node = e.nodes;
    og.value_info.clear();
    // Keep graph inputs that are initializers only if still read.
    og.input
        .retain(|i| read.contains(i.name()) || !g.initializer.iter().any(|t| t.name() == i.name()));
    Ok(out)
}
