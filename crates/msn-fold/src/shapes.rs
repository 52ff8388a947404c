//! Static shapes: every value's shape that follows from the graph's fixed input shapes, the
//! constants' shapes and the ops' rules, for the ops image classifiers are made of. A value
//! whose shape depends on anything else (a symbolic dimension, an op not listed, a computed
//! reshape spec) is simply absent, and nothing downstream of it is guessed.

use crate::graph::Index;
use msn_onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use msn_onnx::proto::type_proto;
use msn_onnx::{attr_int, attr_ints, attr_string, tensor, GraphProto, NodeProto};
use std::collections::HashMap;

/// Value name -> shape.
pub type Shapes = HashMap<String, Vec<usize>>;

/// The largest dimension or element count this module computes with (2^40): beyond it, a
/// shape is treated as unknown rather than trusted.
const LIMIT: u64 = 1 << 40;

/// The shapes that follow from the graph's declared inputs (those with every dimension
/// fixed) and its constants.
pub fn infer(g: &GraphProto) -> Shapes {
    let idx = Index::new(g);
    let mut s = Shapes::new();
    for v in &g.input {
        if let Some(shape) = declared(v) {
            s.insert(v.name().to_string(), shape);
        }
    }
    for t in &g.initializer {
        // An initializer that is also an input can be fed another value of the same shape.
        if let Ok(dims) = tensor::shape(t) {
            s.insert(t.name().to_string(), dims);
        }
    }
    for node in &g.node {
        let Some(shapes) = node_shapes(node, g, &idx, &s) else {
            continue;
        };
        for (name, shape) in node.output.iter().zip(shapes) {
            if !name.is_empty() && shape.iter().all(|&d| d as u64 <= LIMIT) {
                s.insert(name.clone(), shape);
            }
        }
    }
    s
}

fn declared(v: &msn_onnx::ValueInfoProto) -> Option<Vec<usize>> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    t.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
            _ => None,
        })
        .collect()
}

/// `a` normalised against `rank` (negative counts from the end).
fn axis(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// NumPy broadcasting of several shapes.
fn broadcast<'a>(shapes: impl Iterator<Item = &'a Vec<usize>>) -> Option<Vec<usize>> {
    let shapes: Vec<&Vec<usize>> = shapes.collect();
    let rank = shapes.iter().map(|s| s.len()).max()?;
    (0..rank)
        .map(|i| {
            let mut dims = shapes
                .iter()
                .filter_map(|s| (i + s.len()).checked_sub(rank).map(|j| s[j]));
            dims.try_fold(1usize, |acc, d| match (acc, d) {
                (a, 1) => Some(a),
                (1, d) => Some(d),
                (a, d) if a == d => Some(a),
                _ => None,
            })
        })
        .collect()
}

/// Spatial output size of a window op along one axis.
fn window(
    input: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pads: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dil.checked_mul(k.checked_sub(1)?)? + 1;
    let room = (input + pads).checked_sub(span)?;
    let steps = if ceil {
        room.div_ceil(stride)
    } else {
        room / stride
    };
    Some(steps + 1)
}

/// Output shape of Conv, MaxPool or AveragePool over `x` with kernel `kernel`.
fn windowed(
    node: &NodeProto,
    x: &[usize],
    channels: usize,
    kernel: &[usize],
) -> Option<Vec<usize>> {
    let n = kernel.len();
    if x.len() != n + 2 || !matches!(attr_string(node, "auto_pad"), None | Some("NOTSET")) {
        return None;
    }
    let ints = |name: &str, default: usize, len: usize| -> Option<Vec<usize>> {
        match attr_ints(node, name) {
            [] => Some(vec![default; len]),
            v if v.len() == len => v.iter().map(|&d| usize::try_from(d).ok()).collect(),
            _ => None,
        }
    };
    let (strides, dil, pads) = (
        ints("strides", 1, n)?,
        ints("dilations", 1, n)?,
        ints("pads", 0, 2 * n)?,
    );
    if strides.contains(&0) || dil.contains(&0) {
        return None;
    }
    let ceil = attr_int(node, "ceil_mode", 0) == 1;
    let mut out = vec![x[0], channels];
    for i in 0..n {
        out.push(window(
            x[i + 2],
            kernel[i],
            strides[i],
            dil[i],
            pads[i] + pads[i + n],
            ceil,
        )?);
    }
    Some(out)
}

/// The INT64 constant `name`, as a vector.
fn ints_of(g: &GraphProto, idx: &Index, name: &str) -> Option<Vec<i64>> {
    let t = idx.constant(g, name)?;
    Some(tensor::to_i64(t).ok()?.iter().copied().collect())
}

/// The output shapes of one node, when its inputs' shapes (and constant operands) are known.
fn node_shapes(
    node: &NodeProto,
    g: &GraphProto,
    idx: &Index,
    s: &Shapes,
) -> Option<Vec<Vec<usize>>> {
    let input = |i: usize| s.get(node.input.get(i)?.as_str());
    let x = || input(0);
    let one = |shape: Vec<usize>| Some(vec![shape]);
    match node.op_type() {
        "Relu"
        | "LeakyRelu"
        | "Sigmoid"
        | "Tanh"
        | "HardSigmoid"
        | "HardSwish"
        | "Elu"
        | "Selu"
        | "Gelu"
        | "Erf"
        | "Exp"
        | "Log"
        | "Sqrt"
        | "Neg"
        | "Abs"
        | "Reciprocal"
        | "Softmax"
        | "LogSoftmax"
        | "Identity"
        | "Clip"
        | "Cast"
        | "BatchNormalization"
        | "Dropout"
        | "LayerNormalization"
        | "InstanceNormalization"
        | "LRN"
        | "Mish"
        | "Softplus" => one(x()?.clone()),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu"
        | "Where" | "Equal" | "Less" | "Greater" => {
            let shapes: Option<Vec<&Vec<usize>>> = (0..node.input.len()).map(&input).collect();
            one(broadcast(shapes?.into_iter())?)
        }
        "Conv" => {
            let w = input(1)?;
            windowed(node, x()?, *w.first()?, w.get(2..)?)
        }
        .map(|o| vec![o]),
        "MaxPool" | "AveragePool" => {
            let k: Option<Vec<usize>> = attr_ints(node, "kernel_shape")
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect();
            let x = x()?;
            one(windowed(node, x, *x.get(1)?, &k?)?)
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = x()?;
            one(x
                .iter()
                .enumerate()
                .map(|(i, &d)| if i < 2 { d } else { 1 })
                .collect())
        }
        "Flatten" => {
            let x = x()?;
            let a = attr_int(node, "axis", 1);
            let a = axis(if a < 0 { a + x.len() as i64 } else { a }, x.len() + 1)?;
            one(vec![x[..a].iter().product(), x[a..].iter().product()])
        }
        "Gemm" => {
            let (a, b) = (input(0)?, input(1)?);
            let m = if attr_int(node, "transA", 0) == 1 {
                a.get(1)?
            } else {
                a.first()?
            };
            let n = if attr_int(node, "transB", 0) == 1 {
                b.first()?
            } else {
                b.get(1)?
            };
            one(vec![*m, *n])
        }
        "MatMul" => matmul(input(0)?, input(1)?).map(|o| vec![o]),
        "Concat" => {
            let shapes: Option<Vec<&Vec<usize>>> = (0..node.input.len()).map(&input).collect();
            let shapes = shapes?;
            let first = shapes.first()?;
            let a = axis(attr_int(node, "axis", 0), first.len())?;
            let mut out = (*first).clone();
            out[a] = 0;
            for sh in &shapes {
                let same = sh.len() == first.len()
                    && (0..first.len()).all(|i| i == a || sh[i] == first[i]);
                if !same {
                    return None;
                }
                out[a] += sh[a];
            }
            one(out)
        }
        "Transpose" => {
            let x = x()?;
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                [] => (0..x.len()).rev().collect(),
                p => p.iter().map(|&a| axis(a, x.len())).collect::<Option<_>>()?,
            };
            one(perm
                .iter()
                .map(|&p| x.get(p).copied())
                .collect::<Option<_>>()?)
        }
        "Reshape" => {
            let spec = ints_of(g, idx, node.input.get(1)?)?;
            one(reshape(x()?, &spec, attr_int(node, "allowzero", 0) == 1)?)
        }
        "Shape" => {
            let r = x()?.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
            let (start, end) = (
                clamp(attr_int(node, "start", 0)),
                clamp(attr_int(node, "end", r)),
            );
            one(vec![(end - start).max(0) as usize])
        }
        "Unsqueeze" | "Squeeze" => {
            let x = x()?;
            let axes = match node.input.get(1).filter(|a| !a.is_empty()) {
                Some(a) => ints_of(g, idx, a)?,
                None => attr_ints(node, "axes").to_vec(),
            };
            one(squeeze(x, &axes, node.op_type() == "Unsqueeze")?)
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" => {
            let x = x()?;
            let axes = match node.input.get(1).filter(|a| !a.is_empty()) {
                Some(a) => ints_of(g, idx, a)?,
                None => attr_ints(node, "axes").to_vec(),
            };
            let axes: Vec<usize> = match axes.is_empty() {
                true => (0..x.len()).collect(),
                false => axes
                    .iter()
                    .map(|&a| axis(a, x.len()))
                    .collect::<Option<_>>()?,
            };
            let keep = attr_int(node, "keepdims", 1) == 1;
            let out = (0..x.len()).filter_map(|i| match (axes.contains(&i), keep) {
                (false, _) => Some(x[i]),
                (true, true) => Some(1),
                (true, false) => None,
            });
            one(out.collect())
        }
        "Slice" => slice(node, g, idx, x()?).map(|o| vec![o]),
        _ => None,
    }
}

fn matmul(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let (a2, b2) = (a.len() == 1, b.len() == 1);
    let a: Vec<usize> = if a2 { vec![1, a[0]] } else { a.to_vec() };
    let b: Vec<usize> = if b2 { vec![b[0], 1] } else { b.to_vec() };
    let (ra, rb) = (a.len(), b.len());
    if ra < 2 || rb < 2 || a[ra - 1] != b[rb - 2] {
        return None;
    }
    let mut out =
        broadcast([a[..ra - 2].to_vec(), b[..rb - 2].to_vec()].iter()).unwrap_or_default();
    if !a2 {
        out.push(a[ra - 2]);
    }
    if !b2 {
        out.push(b[rb - 1]);
    }
    Some(out)
}

fn reshape(x: &[usize], spec: &[i64], allow_zero: bool) -> Option<Vec<usize>> {
    let total: usize = x.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 if !allow_zero => out.push(*x.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d >= 0 => out.push(usize::try_from(d).ok()?),
            _ => return None,
        }
    }
    let known: usize = out.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

fn squeeze(x: &[usize], axes: &[i64], unsqueeze: bool) -> Option<Vec<usize>> {
    if unsqueeze {
        let rank = x.len() + axes.len();
        let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Option<_>>()?;
        axes.sort();
        let mut out = x.to_vec();
        for a in axes {
            if a > out.len() {
                return None;
            }
            out.insert(a, 1);
        }
        return Some(out);
    }
    let axes: Vec<usize> = match axes.is_empty() {
        true => (0..x.len()).filter(|&i| x[i] == 1).collect(),
        false => axes
            .iter()
            .map(|&a| axis(a, x.len()))
            .collect::<Option<_>>()?,
    };
    if axes.iter().any(|&a| x[a] != 1) {
        return None;
    }
    Some(
        (0..x.len())
            .filter(|i| !axes.contains(i))
            .map(|i| x[i])
            .collect(),
    )
}

/// Slice with constant starts, ends, axes and steps (opset 10 on) or attributes (before).
fn slice(node: &NodeProto, g: &GraphProto, idx: &Index, x: &[usize]) -> Option<Vec<usize>> {
    // A constant input (opset 10 on): `Some(None)` when absent, `None` when not constant.
    let given = |i: usize| -> Option<Option<Vec<i64>>> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => Some(Some(ints_of(g, idx, name)?)),
            None => Some(None),
        }
    };
    let (starts, ends, axes, steps) = if node.input.len() == 1 {
        let a = |name: &str| attr_ints(node, name).to_vec();
        (
            a("starts"),
            a("ends"),
            Some(a("axes")).filter(|v| !v.is_empty()),
            None,
        )
    } else {
        (given(1)??, given(2)??, given(3)?, given(4)?)
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return None;
    }
    let mut out = x.to_vec();
    for i in 0..starts.len() {
        let a = axis(axes[i], x.len())?;
        let (n, step) = (x[a] as i64, steps[i]);
        if step <= 0 {
            return None; // negative steps are rare in classifiers: not inferred
        }
        let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n);
        let (s, e) = (clamp(starts[i]), clamp(ends[i]));
        out[a] = if e > s {
            ((e - s + step - 1) / step) as usize
        } else {
            0
        };
    }
    Some(out)
}
