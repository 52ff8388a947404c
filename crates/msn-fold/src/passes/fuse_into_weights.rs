//! Folds what follows a Conv, ConvTranspose or Gemm into its weight and bias:
//! an inference-mode `BatchNormalization`, or an `Add`, `Sub`, `Mul` or `Div` by a constant
//! that is per output channel or scalar (the mean-only batch norm of MSN is `Sub`, `Mul`,
//! `Add`). Run to a fixed point, a whole chain collapses into the layer.
//!
//! Each rule starts with the conditions under which the fold is exact; when one fails, the
//! graph is left as it is (with a warning when the pattern looked foldable but is not).

use crate::graph::{node_name, Index};
use msn_onnx::index::Names;
use msn_onnx::{attr_float, attr_int, tensor, GraphProto, NodeProto};
use ndarray::{Array1, ArrayD, Axis};

/// How a layer's output channels sit in its weight.
#[derive(Clone, Copy)]
enum Layout {
    /// Conv: `[O, I/g, kh, kw]`, output channel on axis 0.
    Conv,
    /// ConvTranspose: `[I, O/g, kh, kw]` with `g` groups.
    ConvTranspose(usize),
    /// Gemm with the weight as B: output channel on axis 0 if transB, else axis 1.
    Gemm { trans_b: bool },
}

fn layout(node: &NodeProto) -> Option<Layout> {
    match node.op_type() {
        "Conv" => Some(Layout::Conv),
        "ConvTranspose" => Some(Layout::ConvTranspose(
            attr_int(node, "group", 1).max(1) as usize
        )),
        "Gemm" => {
            // Only the plain `A * W (+ C)` form: A must not be transposed, alpha and beta fold later.
            (attr_int(node, "transA", 0) == 0).then(|| Layout::Gemm {
                trans_b: attr_int(node, "transB", 0) == 1,
            })
        }
        _ => None,
    }
}

fn out_channels(shape: &[usize], l: Layout) -> usize {
    match l {
        Layout::Conv => shape[0],
        Layout::ConvTranspose(g) => shape[1] * g,
        Layout::Gemm { trans_b } => shape[if trans_b { 0 } else { 1 }],
    }
}

/// Multiplies each output channel `o` of the weight by `s[o]`, in place.
fn scale_weight(mut w: ArrayD<f32>, l: Layout, s: &Array1<f32>) -> ArrayD<f32> {
    match l {
        Layout::Conv => {
            for (o, mut sub) in w.axis_iter_mut(Axis(0)).enumerate() {
                sub.mapv_inplace(|v| v * s[o]);
            }
        }
        Layout::ConvTranspose(g) => {
            let (i, og) = (w.shape()[0], w.shape()[1]);
            let ig = i / g;
            for (row, mut sub) in w.axis_iter_mut(Axis(0)).enumerate() {
                let group = row / ig;
                for (j, mut k) in sub.axis_iter_mut(Axis(0)).enumerate() {
                    k.mapv_inplace(|v| v * s[group * og + j]);
                }
            }
        }
        Layout::Gemm { trans_b } => {
            let axis = if trans_b { 0 } else { 1 };
            for (o, mut sub) in w.axis_iter_mut(Axis(axis)).enumerate() {
                sub.mapv_inplace(|v| v * s[o]);
            }
        }
    }
    w
}

/// The constant as one value per output channel, if it broadcasts that way over an output of
/// rank `rank` with channels on axis 1.
pub(crate) fn per_channel(c: &ArrayD<f32>, rank: usize, channels: usize) -> Option<Array1<f32>> {
    if c.ndim() > rank {
        return None;
    }
    let pad = rank - c.ndim();
    let mut chan = 1;
    for (i, &d) in c.shape().iter().enumerate() {
        let axis = i + pad;
        if axis == 1 {
            if d != 1 && d != channels {
                return None;
            }
            chan = d;
        } else if d != 1 {
            return None;
        }
    }
    let flat: Vec<f32> = c.iter().copied().collect();
    Some(if chan == 1 {
        Array1::from_elem(channels, flat[0])
    } else {
        Array1::from(flat)
    })
}

/// What the layer's consumer does, reduced to `y = s * x + t` per channel (or a negation).
struct Affine {
    scale: Array1<f32>,
    shift: Array1<f32>,
    what: &'static str,
}

impl Affine {
    fn new(scale: Array1<f32>, shift: Array1<f32>, what: &'static str) -> Self {
        Affine { scale, shift, what }
    }
}

/// The consumer of the layer's output `y` as a per-channel affine map, if it is one.
fn affine_of(
    consumer: &NodeProto,
    g: &GraphProto,
    idx: &Index,
    y: &str,
    (rank, channels): (usize, usize),
    warnings: &mut Vec<String>,
) -> Option<Affine> {
    match consumer.op_type() {
        "BatchNormalization" => batch_norm(consumer, g, idx, y, channels, warnings),
        "Add" | "Sub" | "Mul" | "Div" => arithmetic(consumer, g, idx, y, (rank, channels)),
        _ => None,
    }
}

/// An inference-mode BatchNormalization: `s = scale / sqrt(var + eps)`, `t = bias - mean * s`.
fn batch_norm(
    bn: &NodeProto,
    g: &GraphProto,
    idx: &Index,
    y: &str,
    channels: usize,
    warnings: &mut Vec<String>,
) -> Option<Affine> {
    let mut refuse = |why: String| {
        warnings.push(format!("{}: BatchNormalization {why}", node_name(bn)));
        None
    };
    if attr_int(bn, "training_mode", 0) != 0 || bn.output.iter().skip(1).any(|o| !o.is_empty()) {
        return refuse("in training mode is left unfolded".into());
    }
    if bn.input.first().map(String::as_str) != Some(y) || bn.input.len() < 5 {
        return None;
    }
    let get = |i: usize| idx.float(g, &bn.input[i]);
    let (Some(scale), Some(bias), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
        return refuse("statistics are not constant; left unfolded".into());
    };
    if let Some(a) = [&scale, &bias, &mean, &var]
        .into_iter()
        .find(|a| a.len() != channels)
    {
        let n = a.len();
        return refuse(format!(
            "has {n} channels but its input has {channels}; left unfolded"
        ));
    }
    let eps = attr_float(bn, "epsilon", 1e-5);
    let flat = |a: ArrayD<f32>| Array1::from_iter(a.iter().copied());
    let (scale, bias, mean, var) = (flat(scale), flat(bias), flat(mean), flat(var));
    let s: Array1<f32> = &scale / &var.mapv(|v| (v + eps).sqrt());
    let t = &bias - &(&mean * &s);
    Some(Affine::new(s, t, "BatchNormalization"))
}

/// `y + c`, `y - c`, `c - y`, `y * c`, `c * y` or `y / c` with `c` constant per channel.
fn arithmetic(
    node: &NodeProto,
    g: &GraphProto,
    idx: &Index,
    y: &str,
    (rank, channels): (usize, usize),
) -> Option<Affine> {
    let (a, b) = (node.input.first()?, node.input.get(1)?);
    if a == b || (a != y && b != y) {
        return None;
    }
    let (c_name, y_first) = if a == y { (b, true) } else { (a, false) };
    let c = per_channel(&idx.float(g, c_name)?, rank, channels)?;
    let (ones, zeros) = (Array1::ones(channels), Array1::zeros(channels));
    match (node.op_type(), y_first) {
        ("Add", _) => Some(Affine::new(ones, c, "Add")),
        ("Sub", true) => Some(Affine::new(ones, -c, "Sub")),
        ("Sub", false) => Some(Affine::new(-ones, c, "Sub")),
        ("Mul", _) => Some(Affine::new(c, zeros, "Mul")),
        ("Div", true) if c.iter().all(|&v| v != 0.0) => {
            Some(Affine::new(c.mapv(|v| 1.0 / v), zeros, "Div"))
        }
        _ => None,
    }
}

/// Counts of what was folded, by the consumer's op type.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub batch_norm: usize,
    pub affine: usize,
}

/// A Conv, ConvTranspose or Gemm whose weight and bias can absorb what follows it.
struct Layer {
    index: usize,
    layout: Layout,
    /// Its one output, read by one node.
    y: String,
    weight: String,
    bias: Option<String>,
    /// The bias per output channel (Gemm's times beta; zeros without one).
    bias_vec: Array1<f32>,
    /// Gemm's alpha (1 for a convolution).
    alpha: f32,
    channels: usize,
    /// The output's rank.
    rank: usize,
}

/// The node at `pi` as a [`Layer`], if its weight and bias are constant and fit its layout.
fn layer(g: &GraphProto, idx: &Index, pi: usize) -> Option<Layer> {
    let node = &g.node[pi];
    let layout = layout(node)?;
    let y = node.output.first()?;
    if node.output.len() != 1 || !idx.single_use(y) {
        return None;
    }
    let weight = node.input.get(1)?;
    // Decide from the weight's shape; decode it (it may be large) only to fold.
    let wshape = idx.float_shape(g, weight)?;
    if wshape.len() < 2 {
        return None;
    }
    let channels = out_channels(&wshape, layout);
    let bias = node.input.get(2).filter(|s| !s.is_empty());
    let gemm = matches!(layout, Layout::Gemm { .. });
    let (alpha, beta) = match gemm {
        true => (
            attr_float(node, "alpha", 1.0),
            attr_float(node, "beta", 1.0),
        ),
        false => (1.0, 1.0),
    };
    let bias_vec = match bias {
        None => Array1::zeros(channels),
        // Gemm's C broadcasts over [M, N]; one of shape [M, N] depends on the row.
        Some(b) if gemm => per_channel(&idx.float(g, b)?, 2, channels)? * beta,
        // A Conv bias is one value per output channel.
        Some(b) => {
            let b = idx.float(g, b)?;
            (b.len() == channels).then(|| Array1::from_iter(b.iter().copied()))?
        }
    };
    Some(Layer {
        index: pi,
        layout,
        y: y.clone(),
        weight: weight.clone(),
        bias: bias.cloned(),
        bias_vec,
        alpha,
        channels,
        rank: if gemm { 2 } else { wshape.len() },
    })
}

/// Folds `aff` into the layer: `W' = s * alpha * W`, `b' = s * b + t`; the layer then writes
/// the consumer's output and the consumer (at `ci`) goes. A weight or bias another node also
/// reads is never changed: the layer gets a copy.
fn rewrite(
    g: &mut GraphProto,
    idx: &Index,
    names: &mut Names,
    l: Layer,
    w: ArrayD<f32>,
    ci: usize,
    aff: &Affine,
) {
    let new_w = scale_weight(w, l.layout, &(&aff.scale * l.alpha));
    let new_b = (&aff.scale * &l.bias_vec + &aff.shift).into_dyn();
    let shared = |name: &str| idx.uses(name) > 1 || idx.outputs.contains(name);
    let w_target = match shared(&l.weight) {
        true => names.fresh(&format!("{}.folded", l.weight)),
        false => l.weight.clone(),
    };
    let b_target = match &l.bias {
        Some(b) if !shared(b) => b.clone(),
        Some(b) => names.fresh(&format!("{b}.folded")),
        None => {
            let layer_name = g.node[l.index].name().trim_end_matches(".output");
            names.fresh(&format!("{layer_name}.bias"))
        }
    };
    names.set_init(g, tensor::from_f32(&w_target, &new_w));
    names.set_init(g, tensor::from_f32(&b_target, &new_b));
    let consumer_out = g.node[ci].output[0].clone();
    let p = &mut g.node[l.index];
    p.input[1] = w_target;
    p.input.resize(p.input.len().max(3), String::new());
    p.input[2] = b_target;
    if matches!(l.layout, Layout::Gemm { .. }) {
        p.attribute
            .retain(|a| a.name() != "alpha" && a.name() != "beta");
    }
    p.output[0] = consumer_out;
}

/// One sweep over the graph with one index: every layer whose output only an affine op
/// reads takes it in. A node folded into or out of stays untouched for the rest of the sweep
/// (the index no longer describes it); the next sweep sees what this one made. Returns the
/// kinds folded.
fn sweep(g: &mut GraphProto, warnings: &mut Vec<String>) -> Vec<&'static str> {
    let idx = Index::new(g);
    let mut names = Names::new(g);
    let mut touched = vec![false; g.node.len()];
    let mut folded = Vec::new();
    for pi in 0..g.node.len() {
        if touched[pi] {
            continue;
        }
        let Some(l) = layer(g, &idx, pi) else {
            continue;
        };
        let ci = idx.consumers[l.y.as_str()][0];
        if touched[ci] {
            continue;
        }
        let shape = (l.rank, l.channels);
        let Some(aff) = affine_of(&g.node[ci], g, &idx, &l.y, shape, warnings) else {
            continue;
        };
        let Some(w) = idx.float(g, &l.weight) else {
            continue;
        };
        rewrite(g, &idx, &mut names, l, w, ci, &aff);
        touched[pi] = true;
        touched[ci] = true;
        folded.push((ci, aff.what));
    }
    let gone: std::collections::HashSet<usize> = folded.iter().map(|f| f.0).collect();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !gone.contains(&(i - 1))
    });
    folded.into_iter().map(|f| f.1).collect()
}

/// Folds until nothing more applies: a sweep per link of the longest chain of affine ops
/// after one layer, each sweep linear in the graph.
pub fn run(g: &mut GraphProto, warnings: &mut Vec<String>) -> Counts {
    let mut counts = Counts::default();
    loop {
        let folded = sweep(g, warnings);
        if folded.is_empty() {
            return counts;
        }
        for what in folded {
            if what == "BatchNormalization" {
                counts.batch_norm += 1;
            } else {
                counts.affine += 1;
            }
        }
    }
}
