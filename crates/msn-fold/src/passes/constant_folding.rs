//! Constant folding: a node whose inputs are all initializers (or `Constant` nodes) is
//! evaluated here and replaced by initializers. This turns the exported spectral-norm
//! sub-graph (`Reshape`, `MatMul`, `MatMul`, `Div`) into one plain weight.

use crate::graph::{set_init, Index};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::{attr_int, attr_ints, attribute, tensor, GraphProto, NodeProto};
use ndarray::{ArrayD, Axis, IxDyn};

#[derive(Clone)]
enum Value {
    F(ArrayD<f32>),
    I(ArrayD<i64>),
}

impl Value {
    fn shape(&self) -> &[usize] {
        match self {
            Value::F(a) => a.shape(),
            Value::I(a) => a.shape(),
        }
    }
}

/// A constant this pass can compute with: FLOAT or INT64. Nodes reading any other type
/// (DOUBLE, FLOAT16, INT32, ...) are left alone, so every value keeps its element type.
fn read(g: &GraphProto, idx: &Index, name: &str) -> Option<Value> {
    let t = idx.constant(g, name)?;
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
    match (a, b) {
        (Value::F(a), Value::F(b)) => {
            let (a, b) = bc(&a, &b)?;
            Some(Value::F(match op {
                "Add" => a + b,
                "Sub" => a - b,
                "Mul" => a * b,
                "Div" => a / b,
                "Pow" => ndarray::Zip::from(&a)
                    .and(&b)
                    .map_collect(|x, y| x.powf(*y)),
                _ => return None,
            }))
        }
        (Value::I(a), Value::I(b)) => {
            let (a, b) = bc(&a, &b)?;
            Some(Value::I(match op {
                "Add" => a + b,
                "Sub" => a - b,
                "Mul" => a * b,
                "Div" if b.iter().all(|&d| d != 0) => a / b,
                _ => return None,
            }))
        }
        _ => None,
    }
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

fn eval(node: &NodeProto, inputs: Vec<Value>) -> Option<Value> {
    let op = node.op_type();
    let first = inputs.first().cloned();
    match op {
        "Identity" => first,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            let mut it = inputs.into_iter();
            binary(op, it.next()?, it.next()?)
        }
        "Sqrt" => match first? {
            Value::F(a) => Some(Value::F(a.mapv(f32::sqrt))),
            _ => None,
        },
        "Neg" => match first? {
            Value::F(a) => Some(Value::F(a.mapv(|v| -v))),
            Value::I(a) => Some(Value::I(a.mapv(|v| -v))),
        },
        "Reciprocal" => match first? {
            Value::F(a) => Some(Value::F(a.mapv(|v| 1.0 / v))),
            _ => None,
        },
        "MatMul" => match (&inputs[0], inputs.get(1)?) {
            (Value::F(a), Value::F(b)) => matmul(a, b).map(Value::F),
            _ => None,
        },
        "Reshape" => {
            let Value::I(spec) = inputs.get(1)? else {
                return None;
            };
            let spec: Vec<i64> = spec.iter().copied().collect();
            let shape = resolve_shape(inputs[0].shape(), &spec)?;
            match &inputs[0] {
                Value::F(a) => reshape(a, &shape).map(Value::F),
                Value::I(a) => reshape(a, &shape).map(Value::I),
            }
        }
        "Flatten" => {
            let s = inputs[0].shape();
            // Flatten's axis lies in [-r, r]: a negative one counts from r, not r + 1.
            let a = attr_int(node, "axis", 1);
            let axis = norm_axis(if a < 0 { a + s.len() as i64 } else { a }, s.len() + 1)?;
            let shape = [s[..axis].iter().product(), s[axis..].iter().product()];
            match &inputs[0] {
                Value::F(a) => reshape(a, &shape).map(Value::F),
                Value::I(a) => reshape(a, &shape).map(Value::I),
            }
        }
        "Transpose" => {
            let rank = inputs[0].shape().len();
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                [] => (0..rank).rev().collect(),
                p => p
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Option<_>>()?,
            };
            match &inputs[0] {
                Value::F(a) => Some(Value::F(
                    a.clone()
                        .permuted_axes(IxDyn(&perm))
                        .as_standard_layout()
                        .into_owned(),
                )),
                Value::I(a) => Some(Value::I(
                    a.clone()
                        .permuted_axes(IxDyn(&perm))
                        .as_standard_layout()
                        .into_owned(),
                )),
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let s = inputs[0].shape().to_vec();
            let ax = axes(node, &inputs);
            let shape: Vec<usize> = if op == "Unsqueeze" {
                let rank = s.len() + ax.len();
                let mut ax: Vec<usize> = ax
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Option<_>>()?;
                ax.sort();
                let mut out = s.clone();
                for a in ax {
                    out.insert(a, 1);
                }
                out
            } else {
                let ax: Vec<usize> = if ax.is_empty() {
                    (0..s.len()).filter(|&i| s[i] == 1).collect()
                } else {
                    ax.iter()
                        .map(|&a| norm_axis(a, s.len()))
                        .collect::<Option<_>>()?
                };
                s.iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            };
            match &inputs[0] {
                Value::F(a) => reshape(a, &shape).map(Value::F),
                Value::I(a) => reshape(a, &shape).map(Value::I),
            }
        }
        "ReduceSum" | "ReduceL2" | "ReduceMean" => {
            let Value::F(a) = &inputs[0] else { return None };
            let keep = attr_int(node, "keepdims", 1) == 1;
            let mut ax: Vec<usize> = axes(node, &inputs)
                .iter()
                .map(|&x| norm_axis(x, a.ndim()))
                .collect::<Option<_>>()?;
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
        "Shape" => Some(Value::I(
            ndarray::Array1::from_iter(inputs[0].shape().iter().map(|&d| d as i64)).into_dyn(),
        )),
        "Gather" => {
            let Value::I(idx) = inputs.get(1)? else {
                return None;
            };
            let axis = norm_axis(attr_int(node, "axis", 0), inputs[0].shape().len())?;
            let n = inputs[0].shape()[axis] as i64;
            let picks: Vec<usize> = idx
                .iter()
                .map(|&i| if i < 0 { i + n } else { i })
                .map(|i| (0..n).contains(&i).then_some(i as usize))
                .collect::<Option<_>>()?;
            let gather = |a: &ArrayD<i64>| {
                let g = a.select(Axis(axis), &picks);
                if idx.ndim() == 0 {
                    g.index_axis(Axis(axis), 0).to_owned()
                } else {
                    g
                }
            };
            match &inputs[0] {
                Value::I(a) => Some(Value::I(gather(a))),
                Value::F(a) => {
                    let g = a.select(Axis(axis), &picks);
                    Some(Value::F(if idx.ndim() == 0 {
                        g.index_axis(Axis(axis), 0).to_owned()
                    } else {
                        g
                    }))
                }
            }
        }
        "Concat" => {
            let rank = inputs[0].shape().len();
            let axis = norm_axis(attr_int(node, "axis", 0), rank)?;
            if inputs.iter().all(|v| matches!(v, Value::I(_))) {
                let parts: Vec<_> = inputs
                    .iter()
                    .map(|v| {
                        if let Value::I(a) = v {
                            a.view()
                        } else {
                            unreachable!()
                        }
                    })
                    .collect();
                ndarray::concatenate(Axis(axis), &parts).ok().map(Value::I)
            } else if inputs.iter().all(|v| matches!(v, Value::F(_))) {
                let parts: Vec<_> = inputs
                    .iter()
                    .map(|v| {
                        if let Value::F(a) = v {
                            a.view()
                        } else {
                            unreachable!()
                        }
                    })
                    .collect();
                ndarray::concatenate(Axis(axis), &parts).ok().map(Value::F)
            } else {
                None
            }
        }
        "Cast" => {
            let to = attr_int(node, "to", 0) as i32;
            match (first?, to) {
                (Value::F(a), t) if t == DataType::Float as i32 => Some(Value::F(a)),
                (Value::I(a), t) if t == DataType::Float as i32 => {
                    Some(Value::F(a.mapv(|v| v as f32)))
                }
                (Value::I(a), t) if t == DataType::Int64 as i32 => Some(Value::I(a)),
                (Value::F(a), t) if t == DataType::Int64 as i32 => {
                    Some(Value::I(a.mapv(|v| v as i64)))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Turns `Constant` nodes into initializers, then folds every node with constant inputs.
/// Returns how many nodes were folded.
pub fn run(g: &mut GraphProto) -> usize {
    let mut folded = 0;
    loop {
        let idx = Index::new(g);
        let mut hit = None;
        for (i, node) in g.node.iter().enumerate() {
            if node.output.len() != 1 || node.domain() != "" && node.domain() != "ai.onnx" {
                continue;
            }
            if node.op_type() == "Constant" {
                if let Some(t) = attribute(node, "value").and_then(|a| a.t.clone()) {
                    hit = Some((i, None, Some(t)));
                    break;
                }
                continue;
            }
            // An empty optional input followed by a given one would shift positions: such
            // a node is left alone; trailing empty inputs are simply absent.
            let given =
                node.input.len() - node.input.iter().rev().take_while(|s| s.is_empty()).count();
            if node.input[..given].iter().any(|s| s.is_empty()) {
                continue;
            }
            let ins: Vec<&String> = node.input[..given].iter().collect();
            if ins.is_empty() || !ins.iter().all(|n| idx.is_constant(n.as_str())) {
                continue;
            }
            let Some(values) = ins
                .iter()
                .map(|n| read(g, &idx, n))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            if let Some(v) = eval(node, values) {
                hit = Some((i, Some(v), None));
                break;
            }
        }
        let Some((i, value, raw)) = hit else {
            return folded;
        };
        let node = g.node.remove(i);
        let out = &node.output[0];
        let t = match (value, raw) {
            (Some(Value::F(a)), _) => tensor::from_f32(out, &a),
            (Some(Value::I(a)), _) => tensor::from_i64(out, &a),
            (None, Some(mut t)) => {
                t.name = Some(out.clone());
                t
            }
            (None, None) => unreachable!("a hit has a value"),
        };
        set_init(g, t);
        folded += 1;
    }
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
