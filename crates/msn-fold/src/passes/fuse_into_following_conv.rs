//! Folds a per-channel (or scalar) affine op *before* a Conv into the Conv:
//! `Conv(x * s) = Conv'(x)` with `W'[o, c] = W[o, c] * s[c]`, always exact; and
//! `Conv(x + t) = Conv(x) + sum_{c,i,j} W[o, c, i, j] t[c]`, exact only when the Conv pads
//! nothing (a padded border would hold `t` before the fold and 0 after), so a shift before a
//! padded Conv is left with a warning. Input normalization `(x - mean) / std` in front of the
//! first layer is the common case.

use super::fuse_into_weights::per_channel;
use crate::graph::{fresh_name, node_name, set_init, Index};
use msn_onnx::{attr_int, attr_ints, attribute, tensor, GraphProto};
use ndarray::{Array1, Axis, IxDyn};

/// One fold, if any applies.
fn fold_one(g: &mut GraphProto, warnings: &mut Vec<String>) -> bool {
    let idx = Index::new(g);
    for (ai, op) in g.node.iter().enumerate() {
        let kind = op.op_type();
        if !matches!(kind, "Add" | "Sub" | "Mul" | "Div")
            || op.input.len() != 2
            || op.output.len() != 1
        {
            continue;
        }
        let v = &op.output[0];
        if !idx.single_use(v) {
            continue;
        }
        let ci = idx.consumers[v.as_str()][0];
        let conv = &g.node[ci];
        if conv.op_type() != "Conv"
            || conv.input.first() != Some(v)
            || conv.input.iter().skip(1).any(|i| i == v)
        {
            continue;
        }
        let (a, b) = (&op.input[0], &op.input[1]);
        let (x, c_name, x_first) = if idx.is_constant(b.as_str()) && !idx.is_constant(a.as_str()) {
            (a, b, true)
        } else if idx.is_constant(a.as_str()) && !idx.is_constant(b.as_str()) {
            (b, a, false)
        } else {
            continue;
        };
        let Some(wshape) = idx.float_shape(g, &conv.input[1]) else {
            continue;
        };
        if wshape.len() != 4 {
            continue;
        }
        let groups = attr_int(conv, "group", 1).max(1) as usize;
        let cg = wshape[1];
        let channels = cg * groups;
        let Some(c) = idx
            .float(g, c_name)
            .and_then(|c| per_channel(&c, 4, channels))
        else {
            continue;
        };
        // y = scale * x + shift, per input channel.
        let (scale, shift): (Array1<f32>, Option<Array1<f32>>) = match (kind, x_first) {
            ("Mul", _) => (c, None),
            ("Div", true) if c.iter().all(|&v| v != 0.0) => (c.mapv(|v| 1.0 / v), None),
            ("Add", _) => (Array1::ones(channels), Some(c)),
            ("Sub", true) => (Array1::ones(channels), Some(-c)),
            ("Sub", false) => (-Array1::ones(channels), Some(c)),
            _ => continue,
        };
        let padded = attr_ints(conv, "pads").iter().any(|&p| p != 0)
            || attribute(conv, "auto_pad").is_some_and(|a| a.s() != b"NOTSET" && a.s() != b"VALID");
        if shift.is_some() && padded {
            warnings.push(format!(
                "{}: {kind} before the padded Conv {} is not folded (the padding would change)",
                node_name(op),
                node_name(conv)
            ));
            continue;
        }
        let Some(mut w) = idx.float(g, &conv.input[1]) else {
            continue;
        };
        let bias_name = conv.input.get(2).filter(|b| !b.is_empty()).cloned();
        let bias = match &bias_name {
            Some(b) => match idx.float(g, b) {
                Some(v) if v.len() == wshape[0] => Some(v),
                _ => continue,
            },
            None => None,
        };
        let og = wshape[0] / groups;
        // The bias gains W applied to the shift (before scaling W by the scale).
        let mut new_b: Vec<f32> =
            bias.map_or_else(|| vec![0.0; wshape[0]], |b| b.iter().copied().collect());
        if let Some(t) = &shift {
            for (o, wo) in w.axis_iter(Axis(0)).enumerate() {
                let g0 = (o / og) * cg;
                for (k, wk) in wo.axis_iter(Axis(0)).enumerate() {
                    new_b[o] += wk.sum() * t[g0 + k];
                }
            }
        }
        for (o, mut wo) in w.axis_iter_mut(Axis(0)).enumerate() {
            let g0 = (o / og) * cg;
            for (k, mut wk) in wo.axis_iter_mut(Axis(0)).enumerate() {
                wk.mapv_inplace(|v| v * scale[g0 + k]);
            }
        }
        let (x, wname, conv_name) = (x.clone(), conv.input[1].clone(), node_name(conv));
        let w_target = if idx.uses(&wname) > 1 || idx.outputs.contains(&wname) {
            fresh_name(g, &format!("{wname}.folded"))
        } else {
            wname
        };
        let b_target = match &bias_name {
            Some(b) if idx.uses(b) == 1 && !idx.outputs.contains(b) => b.clone(),
            Some(b) => fresh_name(g, &format!("{b}.folded")),
            None => fresh_name(g, &format!("{conv_name}.bias")),
        };
        set_init(g, tensor::from_f32(&w_target, &w));
        let b_arr = ndarray::ArrayD::from_shape_vec(IxDyn(&[new_b.len()]), new_b).expect("1-D");
        set_init(g, tensor::from_f32(&b_target, &b_arr));
        let conv = &mut g.node[ci];
        conv.input[0] = x;
        conv.input[1] = w_target;
        if conv.input.len() < 3 {
            conv.input.resize(3, String::new());
        }
        conv.input[2] = b_target;
        g.node.remove(ai);
        return true;
    }
    false
}

/// Folds until nothing more applies; returns how many ops were folded.
pub fn run(g: &mut GraphProto, warnings: &mut Vec<String>) -> usize {
    let mut n = 0;
    while fold_one(g, warnings) {
        n += 1;
    }
    n
}
