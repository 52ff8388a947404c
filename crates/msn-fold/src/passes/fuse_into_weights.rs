//! Folds what follows a Conv, ConvTranspose or Gemm into its weight and bias:
//! an inference-mode `BatchNormalization`, or an `Add`, `Sub`, `Mul` or `Div` by a constant
//! that is per output channel or scalar (the mean-only batch norm of MSN is `Sub`, `Mul`,
//! `Add`). Run to a fixed point, a whole chain collapses into the layer.
//!
//! Each rule starts with the conditions under which the fold is exact; when one fails, the
//! graph is left as it is (with a warning when the pattern looked foldable but is not).

use crate::graph::{fresh_name, node_name, set_init, Index};
use msn_onnx::{attr_float, attr_int, tensor, GraphProto, NodeProto};
use ndarray::{Array1, ArrayD, Axis, IxDyn};

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

fn affine_of(
    consumer: &NodeProto,
    g: &GraphProto,
    idx: &Index,
    y: &str,
    rank: usize,
    channels: usize,
    warnings: &mut Vec<String>,
) -> Option<Affine> {
    let ones = || Array1::from_elem(channels, 1.0f32);
    let zeros = || Array1::from_elem(channels, 0.0f32);
    match consumer.op_type() {
        "BatchNormalization" => {
            if attr_int(consumer, "training_mode", 0) != 0
                || consumer.output.iter().skip(1).any(|o| !o.is_empty())
            {
                warnings.push(format!(
                    "{}: BatchNormalization in training mode is left unfolded",
                    node_name(consumer)
                ));
                return None;
            }
            if consumer.input.first().map(String::as_str) != Some(y) || consumer.input.len() < 5 {
                return None;
            }
            let get = |i: usize| idx.float(g, &consumer.input[i]);
            let (Some(scale), Some(bias), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4))
            else {
                warnings.push(format!(
                    "{}: BatchNormalization statistics are not constant; left unfolded",
                    node_name(consumer)
                ));
                return None;
            };
            if [&scale, &bias, &mean, &var]
                .iter()
                .any(|a| a.len() != channels)
            {
                warnings.push(format!("{}: BatchNormalization has {} channels but its input has {channels}; left unfolded", node_name(consumer), scale.len()));
                return None;
            }
            let eps = attr_float(consumer, "epsilon", 1e-5);
            let flat = |a: ArrayD<f32>| Array1::from_iter(a.iter().copied());
            let (scale, bias, mean, var) = (flat(scale), flat(bias), flat(mean), flat(var));
            let s: Array1<f32> = &scale / &var.mapv(|v| (v + eps).sqrt());
            let t = &bias - &(&mean * &s);
            Some(Affine {
                scale: s,
                shift: t,
                what: "BatchNormalization",
            })
        }
        op @ ("Add" | "Sub" | "Mul" | "Div") => {
            let (a, b) = (consumer.input.first()?, consumer.input.get(1)?);
            let (c_name, x_first) = if a == y {
                (b, true)
            } else if b == y {
                (a, false)
            } else {
                return None;
            };
            if a == b {
                return None;
            }
            let c = per_channel(&idx.float(g, c_name)?, rank, channels)?;
            match (op, x_first) {
                ("Add", _) => Some(Affine {
                    scale: ones(),
                    shift: c,
                    what: "Add",
                }),
                ("Sub", true) => Some(Affine {
                    scale: ones(),
                    shift: -c,
                    what: "Sub",
                }),
                ("Sub", false) => Some(Affine {
                    scale: -ones(),
                    shift: c,
                    what: "Sub",
                }),
                ("Mul", _) => Some(Affine {
                    scale: c,
                    shift: zeros(),
                    what: "Mul",
                }),
                ("Div", true) if c.iter().all(|&v| v != 0.0) => Some(Affine {
                    scale: c.mapv(|v| 1.0 / v),
                    shift: zeros(),
                    what: "Div",
                }),
                _ => None,
            }
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

/// One fold, if any applies. Returns the kind folded.
fn fold_one(g: &mut GraphProto, warnings: &mut Vec<String>) -> Option<&'static str> {
    let idx = Index::new(g);
    for (pi, producer) in g.node.iter().enumerate() {
        let Some(l) = layout(producer) else { continue };
        let Some(y) = producer.output.first() else {
            continue;
        };
        if producer.output.len() != 1 || !idx.single_use(y) {
            continue;
        }
        let Some(wname) = producer.input.get(1) else {
            continue;
        };
        // Decide from the weight's shape; decode it (it may be large) only to fold.
        let Some(wshape) = idx.float_shape(g, wname) else {
            continue;
        };
        if wshape.len() < 2 {
            continue;
        }
        let bias_name = producer.input.get(2).filter(|s| !s.is_empty());
        let bias = match bias_name {
            Some(b) => match idx.float(g, b) {
                Some(b) => Some(b),
                None => continue,
            },
            None => None,
        };
        let channels = out_channels(&wshape, l);
        let rank = match l {
            Layout::Gemm { .. } => 2,
            _ => wshape.len(),
        };
        let (alpha, beta) = match l {
            Layout::Gemm { .. } => (
                attr_float(producer, "alpha", 1.0),
                attr_float(producer, "beta", 1.0),
            ),
            _ => (1.0, 1.0),
        };
        let bias_vec = match (&bias, l) {
            // Gemm's C broadcasts over [M, N]; one of shape [M, N] depends on the row.
            (Some(b), Layout::Gemm { .. }) => match per_channel(b, 2, channels) {
                Some(v) => v * beta,
                None => continue,
            },
            // A Conv bias is one value per output channel.
            (Some(b), _) if b.len() == channels => Array1::from_iter(b.iter().copied()),
            (Some(_), _) => continue,
            (None, _) => Array1::zeros(channels),
        };
        let ci = idx.consumers[y.as_str()][0];
        let consumer = &g.node[ci];
        let Some(aff) = affine_of(consumer, g, &idx, y, rank, channels, warnings) else {
            continue;
        };

        // The fold is exact: W' = s * alpha * W, b' = s * b + t.
        let Some(w) = idx.float(g, wname) else {
            continue;
        };
        let new_w = scale_weight(w, l, &(aff.scale.clone() * alpha));
        let new_b: Array1<f32> = &aff.scale * &bias_vec + &aff.shift;
        let consumer_out = consumer.output[0].clone();
        let (wname, bname) = (wname.clone(), bias_name.cloned());
        let what = aff.what;

        // Never change a weight or bias that another node also reads: write a copy instead.
        let w_target = if idx.uses(&wname) > 1 || idx.outputs.contains(&wname) {
            fresh_name(g, &format!("{wname}.folded"))
        } else {
            wname.clone()
        };
        let b_target = match &bname {
            Some(b) if idx.uses(b) == 1 && !idx.outputs.contains(b) => b.clone(),
            Some(b) => fresh_name(g, &format!("{b}.folded")),
            None => fresh_name(
                g,
                &format!("{}.bias", producer.name().trim_end_matches(".output")),
            ),
        };
        set_init(g, tensor::from_f32(&w_target, &new_w));
        set_init(
            g,
            tensor::from_f32(
                &b_target,
                &new_b
                    .into_dyn()
                    .into_shape_with_order(IxDyn(&[channels]))
                    .expect("1-D"),
            ),
        );
        let p = &mut g.node[pi];
        p.input[1] = w_target;
        if p.input.len() < 3 {
            p.input.resize(3, String::new());
        }
        p.input[2] = b_target;
        if matches!(l, Layout::Gemm { .. }) {
            p.attribute
                .retain(|a| a.name() != "alpha" && a.name() != "beta");
        }
        // The layer now writes the consumer's output directly; the consumer goes.
        p.output[0] = consumer_out;
        g.node.remove(ci);
        return Some(what);
    }
    None
}

/// Folds until nothing more applies.
pub fn run(g: &mut GraphProto, warnings: &mut Vec<String>) -> Counts {
    let mut counts = Counts::default();
    while let Some(what) = fold_one(g, warnings) {
        if what == "BatchNormalization" {
            counts.batch_norm += 1;
        } else {
            counts.affine += 1;
        }
    }
    counts
}
