//! Constant folding: a node whose inputs are all initializers (or `Constant` nodes) is
//! evaluated here and replaced by initializers. This turns the exported spectral-norm
//! sub-graph (`Reshape`, `MatMul`, `MatMul`, `Div`) into one plain weight.

use crate::graph::Index;
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{attr_int, attr_ints, attribute, tensor, GraphProto, NodeProto, TensorProto};
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::HashMap;

#[derive(Clone)]
enum Value {
    F(ArrayD<f32>),
    I(ArrayD<i64>),
}

/// Applies a type-independent array expression (`$a` bound to the array) to either kind of
/// value, keeping its element type; the expression gives an `Option` of the new array.
macro_rules! same_type {
    ($v:expr, $a:ident => $e:expr) => {
        match $v {
            Value::F($a) => $e.map(Value::F),
            Value::I($a) => $e.map(Value::I),
        }
    };
}

impl Value {
    fn shape(&self) -> &[usize] {
        match self {
            Value::F(a) => a.shape(),
            Value::I(a) => a.shape(),
        }
    }

    fn f(&self) -> Option<&ArrayD<f32>> {
        match self {
            Value::F(a) => Some(a),
            Value::I(_) => None,
        }
    }

    fn i(&self) -> Option<&ArrayD<i64>> {
        match self {
            Value::I(a) => Some(a),
            Value::F(_) => None,
        }
    }

    /// The same values in another shape (same count).
    fn reshaped(&self, shape: &[usize]) -> Option<Value> {
        same_type!(self, a => reshape(a, shape))
    }
}

/// A constant this pass can compute with: FLOAT or INT64. Nodes reading any other type
/// (DOUBLE, FLOAT16, INT32, ...) are left alone, so every value keeps its element type.
fn read(t: &TensorProto) -> Option<Value> {
    if tensor::is_f32(t) {
        tensor::to_f32(t).ok().map(Value::F)
    } else if t.data_type() == DataType::Int64 as i32 {
        tensor::to_i64(t).ok().map(Value::I)
    } else {
        None
    }
}

/// The product of dimensions, `None` past [`MAX_ELEMENTS`] (or on overflow).
fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// The largest constant this pass computes (64 M values): a broadcast of two constants may
/// not blow up beyond what any real weight is.
const MAX_ELEMENTS: usize = 1 << 26;

fn resolve_shape(data_shape: &[usize], spec: &[i64]) -> Option<Vec<usize>> {
    let total = elements(data_shape)?;
    let mut out: Vec<usize> = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => out.push(*data_shape.get(i)?),
            -1 => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(usize::try_from(d).ok()?),
            _ => return None,
        }
    }
    if let Some(i) = infer {
        let known = elements(&out)?;
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (elements(&out)? == total).then_some(out)
}

fn reshape<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> Option<ArrayD<T>> {
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(shape))
        .ok()
}

fn binary(op: &str, a: Value, b: Value) -> Option<Value> {
    fn bc<T: Clone>(a: &ArrayD<T>, b: &ArrayD<T>) -> Option<(ArrayD<T>, ArrayD<T>)> {
        let nd = a.ndim().max(b.ndim());
        let pad = |s: &[usize]| {
            let mut v = vec![1; nd - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (sa, sb) = (pad(a.shape()), pad(b.shape()));
        let shape: Vec<usize> = sa
            .iter()
            .zip(&sb)
            .map(|(&x, &y)| if x == 1 { y } else { x })
            .collect();
        elements(&shape)?;
        if sa
            .iter()
            .zip(&sb)
            .any(|(&x, &y)| x != y && x != 1 && y != 1)
        {
            return None;
        }
        let a = reshape(a, &sa)?.broadcast(IxDyn(&shape))?.to_owned();
        let b = reshape(b, &sb)?.broadcast(IxDyn(&shape))?.to_owned();
        Some((a, b))
    }
    match (op, a, b) {
        (_, Value::F(a), Value::F(b)) => {
            let (a, b) = bc(&a, &b)?;
            Some(Value::F(match op {
                "Pow" => ndarray::Zip::from(&a)
                    .and(&b)
                    .map_collect(|x, y| x.powf(*y)),
                _ => arithmetic(op, a, b)?,
            }))
        }
        // Integer division by zero has no value: not folded.
        ("Div", Value::I(_), Value::I(b)) if b.iter().any(|&d| d == 0) => None,
        (_, Value::I(a), Value::I(b)) => {
            let (a, b) = bc(&a, &b)?;
            arithmetic(op, a, b).map(Value::I)
        }
        _ => None,
    }
}

/// `a op b` elementwise for the four arithmetic operators (same shapes).
fn arithmetic<T>(op: &str, a: ArrayD<T>, b: ArrayD<T>) -> Option<ArrayD<T>>
where
    T: Clone + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
    T: std::ops::Mul<Output = T> + std::ops::Div<Output = T>,
{
    Some(match op {
        "Add" => a + b,
        "Sub" => a - b,
        "Mul" => a * b,
        "Div" => a / b,
        _ => return None,
    })
}

/// `MatMul` of 1-D and 2-D operands, with NumPy's rules for 1-D (a vector on the left is a
/// row, on the right a column, and that axis is dropped from the result).
fn matmul(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Option<ArrayD<f32>> {
    let as2 = |x: &ArrayD<f32>, row: bool| -> Option<ndarray::Array2<f32>> {
        match x.ndim() {
            1 if row => x
                .view()
                .into_shape_with_order((1, x.len()))
                .ok()
                .map(|v| v.to_owned()),
            1 => x
                .view()
                .into_shape_with_order((x.len(), 1))
                .ok()
                .map(|v| v.to_owned()),
            2 => x
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .ok()
                .map(|v| v.to_owned()),
            _ => None,
        }
    };
    let (a2, b2) = (as2(a, true)?, as2(b, false)?);
    if a2.ncols() != b2.nrows() {
        return None;
    }
    let c = a2.dot(&b2);
    let shape: Vec<usize> = match (a.ndim(), b.ndim()) {
        (1, 1) => vec![],
        (1, _) => vec![c.ncols()],
        (_, 1) => vec![c.nrows()],
        _ => vec![c.nrows(), c.ncols()],
    };
    c.into_shape_with_order(IxDyn(&shape)).ok()
}

/// The axes of Unsqueeze/Squeeze/Reduce: an attribute before opset 13, an input after.
fn axes(node: &NodeProto, inputs: &[Value]) -> Vec<i64> {
    match inputs.get(1) {
        Some(Value::I(a)) => a.iter().copied().collect(),
        _ => attr_ints(node, "axes").to_vec(),
    }
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Normalises the axes of Unsqueeze/Squeeze/Reduce against `rank`.
fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

fn unary(op: &str, v: Value) -> Option<Value> {
    match (op, v) {
        ("Neg", Value::I(a)) => Some(Value::I(a.mapv(|v| -v))),
        ("Neg", Value::F(a)) => Some(Value::F(a.mapv(|v| -v))),
        ("Sqrt", Value::F(a)) => Some(Value::F(a.mapv(f32::sqrt))),
        ("Reciprocal", Value::F(a)) => Some(Value::F(a.mapv(|v| 1.0 / v))),
        _ => None,
    }
}

fn reshape_node(inputs: &[Value]) -> Option<Value> {
    let spec: Vec<i64> = inputs.get(1)?.i()?.iter().copied().collect();
    let shape = resolve_shape(inputs[0].shape(), &spec)?;
    inputs[0].reshaped(&shape)
}

fn flatten(node: &NodeProto, x: &Value) -> Option<Value> {
    let s = x.shape();
    // Flatten's axis lies in [-r, r]: a negative one counts from r, not r + 1.
    let a = attr_int(node, "axis", 1);
    let axis = norm_axis(if a < 0 { a + s.len() as i64 } else { a }, s.len() + 1)?;
    x.reshaped(&[s[..axis].iter().product(), s[axis..].iter().product()])
}

fn transpose(node: &NodeProto, x: &Value) -> Option<Value> {
    let rank = x.shape().len();
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        [] => (0..rank).rev().collect(),
        p => norm_axes(p, rank)?,
    };
    same_type!(x, a => Some(a.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()))
}

fn unsqueeze(node: &NodeProto, inputs: &[Value]) -> Option<Value> {
    let s = inputs[0].shape();
    let ax = axes(node, inputs);
    let mut ax = norm_axes(&ax, s.len() + ax.len())?;
    ax.sort();
    let mut shape = s.to_vec();
    for a in ax {
        shape.insert(a, 1);
    }
    inputs[0].reshaped(&shape)
}

fn squeeze(node: &NodeProto, inputs: &[Value]) -> Option<Value> {
    let s = inputs[0].shape();
    let ax = match axes(node, inputs) {
        ax if ax.is_empty() => (0..s.len()).filter(|&i| s[i] == 1).collect(),
        ax => norm_axes(&ax, s.len())?,
    };
    let shape: Vec<usize> = (0..s.len())
        .filter(|i| !ax.contains(i))
        .map(|i| s[i])
        .collect();
    inputs[0].reshaped(&shape)
}

fn reduce(node: &NodeProto, inputs: &[Value]) -> Option<Value> {
    let op = node.op_type();
    let a = inputs[0].f()?;
    let keep = attr_int(node, "keepdims", 1) == 1;
    let mut ax = norm_axes(&axes(node, inputs), a.ndim())?;
    if ax.is_empty() {
        ax = (0..a.ndim()).collect();
    }
    ax.sort();
    let mut r = if op == "ReduceL2" {
        a.mapv(|v| v * v)
    } else {
        a.clone()
    };
    let count: usize = ax.iter().map(|&i| a.shape()[i]).product();
    for &i in ax.iter().rev() {
        r = r.sum_axis(Axis(i));
        if keep {
            r = r.insert_axis(Axis(i));
        }
    }
    Some(Value::F(match op {
        "ReduceL2" => r.mapv(f32::sqrt),
        "ReduceMean" => r / count as f32,
        _ => r,
    }))
}

fn gather(node: &NodeProto, inputs: &[Value]) -> Option<Value> {
    let idx = inputs.get(1)?.i()?;
    let axis = norm_axis(attr_int(node, "axis", 0), inputs[0].shape().len())?;
    let n = inputs[0].shape()[axis] as i64;
    let picks: Vec<usize> = idx
        .iter()
        .map(|&i| if i < 0 { i + n } else { i })
        .map(|i| (0..n).contains(&i).then_some(i as usize))
        .collect::<Option<_>>()?;
    // A scalar index drops the axis.
    let scalar = idx.ndim() == 0;
    same_type!(&inputs[0], a => Some(pick(a, axis, &picks, scalar)))
}

/// `a`'s entries `picks` along `axis`, the axis dropped for a `scalar` index.
fn pick<T: Clone>(a: &ArrayD<T>, axis: usize, picks: &[usize], scalar: bool) -> ArrayD<T> {
    let g = a.select(Axis(axis), picks);
    match scalar {
        true => g.index_axis(Axis(axis), 0).to_owned(),
        false => g,
    }
}

fn concat(node: &NodeProto, inputs: &[Value]) -> Option<Value> {
    fn join<T: Clone>(axis: usize, parts: Vec<&ArrayD<T>>) -> Option<ArrayD<T>> {
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(axis), &views).ok()
    }
    let axis = norm_axis(attr_int(node, "axis", 0), inputs[0].shape().len())?;
    if let Some(parts) = inputs.iter().map(Value::i).collect::<Option<Vec<_>>>() {
        return join(axis, parts).map(Value::I);
    }
    let parts = inputs.iter().map(Value::f).collect::<Option<Vec<_>>>()?;
    join(axis, parts).map(Value::F)
}

fn cast(node: &NodeProto, v: Value) -> Option<Value> {
    let to = attr_int(node, "to", 0) as i32;
    let (float, int) = (DataType::Float as i32, DataType::Int64 as i32);
    match v {
        Value::F(a) if to == float => Some(Value::F(a)),
        Value::I(a) if to == int => Some(Value::I(a)),
        Value::I(a) if to == float => Some(Value::F(a.mapv(|v| v as f32))),
        Value::F(a) if to == int => Some(Value::I(a.mapv(|v| v as i64))),
        _ => None,
    }
}

fn eval(node: &NodeProto, inputs: Vec<Value>) -> Option<Value> {
    let op = node.op_type();
    match op {
        "Identity" => inputs.into_iter().next(),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            let mut it = inputs.into_iter();
            binary(op, it.next()?, it.next()?)
        }
        "Sqrt" | "Neg" | "Reciprocal" => unary(op, inputs.into_iter().next()?),
        "MatMul" => matmul(inputs[0].f()?, inputs.get(1)?.f()?).map(Value::F),
        "Reshape" => reshape_node(&inputs),
        "Flatten" => flatten(node, &inputs[0]),
        "Transpose" => transpose(node, &inputs[0]),
        "Unsqueeze" => unsqueeze(node, &inputs),
        "Squeeze" => squeeze(node, &inputs),
        "ReduceSum" | "ReduceL2" | "ReduceMean" => reduce(node, &inputs),
        "Shape" => {
            let dims = inputs[0].shape().iter().map(|&d| d as i64);
            Some(Value::I(ndarray::Array1::from_iter(dims).into_dyn()))
        }
        "Gather" => gather(node, &inputs),
        "Concat" => concat(node, &inputs),
        "Cast" => cast(node, inputs.into_iter().next()?),
        _ => None,
    }
}

/// Turns `Constant` nodes into initializers, then folds every node with constant inputs.
/// Returns how many nodes were folded.
///
/// Linear in the graph: one sweep in graph order folds a whole chain of constant nodes (a
/// value folded is a constant for the nodes after it); another sweep follows only when a
/// graph written out of order left something.
pub fn run(g: &mut GraphProto) -> usize {
    let mut folded = 0;
    loop {
        let n = sweep(g);
        if n == 0 {
            return folded;
        }
        folded += n;
    }
}

fn sweep(g: &mut GraphProto) -> usize {
    let idx = Index::new(g);
    // Values folded in this sweep, in the order found.
    let mut added: Vec<TensorProto> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut gone = vec![false; g.node.len()];
    for (i, node) in g.node.iter().enumerate() {
        if node.output.len() != 1 || node.domain() != "" && node.domain() != "ai.onnx" {
            continue;
        }
        let out = &node.output[0];
        let t = if node.op_type() == "Constant" {
            let Some(mut t) = attribute(node, "value").and_then(|a| a.t.clone()) else {
                continue;
            };
            t.name = Some(out.clone());
            t
        } else {
            // An empty optional input followed by a given one would shift positions: such
            // a node is left alone; trailing empty inputs are simply absent.
            let given =
                node.input.len() - node.input.iter().rev().take_while(|s| s.is_empty()).count();
            if given == 0 || node.input[..given].iter().any(|s| s.is_empty()) {
                continue;
            }
            let constant = |name: &str| match by_name.get(name) {
                Some(&k) => Some(&added[k]),
                None => idx.constant(g, name),
            };
            let Some(values) = node.input[..given]
                .iter()
                .map(|n| constant(n).and_then(read))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            match eval(node, values) {
                Some(Value::F(a)) => tensor::from_f32(out, &a),
                Some(Value::I(a)) => tensor::from_i64(out, &a),
                None => continue,
            }
        };
        by_name.insert(out.clone(), added.len());
        added.push(t);
        gone[i] = true;
    }
    let n = added.len();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
    let mut existing: HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    for t in added {
        match existing.get(t.name()) {
            Some(&k) => g.initializer[k] = t,
            None => {
                existing.insert(t.name().to_string(), g.initializer.len());
                g.initializer.push(t);
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_specs_that_overflow_or_blow_up_are_not_folded() {
        // Found by the fuzz smoke (fuzz/corpus/fold/crash-reshape-overflow.bin).
        assert_eq!(resolve_shape(&[4], &[i64::MAX, i64::MAX, -1]), None);
        assert_eq!(resolve_shape(&[4], &[2, -1]), Some(vec![2, 2]));
        let a = Value::F(ArrayD::zeros(IxDyn(&[1 << 14, 1])));
        let b = Value::F(ArrayD::zeros(IxDyn(&[1, 1 << 14])));
        assert!(
            binary("Add", a, b).is_none(),
            "2^28 values is past the limit"
        );
    }
}
