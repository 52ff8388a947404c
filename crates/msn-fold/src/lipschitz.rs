//! An upper bound on a network's Lipschitz constant (in the l2 norm): the product of each
//! layer's operator norm, on a chain of layers.
//!
//! SN's sigma is the largest singular value of the weight reshaped to `(out, in*kh*kw)`, not
//! the norm of the convolution as an operator on images, which depends on stride, padding and
//! the input size. So each Conv's norm is found here by power iteration with the convolution
//! and its transpose (the adjoint) at the layer's actual input size; Gemm's is its matrix
//! norm. Activations are 1-Lipschitz (sigmoid 1/4); pooling and flattening get their exact
//! or worst-case constants. Graphs with branches (a value used twice, Concat, Add of two
//! computed values) get per-layer norms but no product bound, which would not be valid.

use msn_onnx::index::Index;
use msn_onnx::{attr_float, attr_int, attr_ints, GraphProto, NodeProto};
use ndarray::{s, Array2, ArrayD, IxDyn};
use std::collections::HashMap;

/// One layer's contribution to the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub node: String,
    pub op: String,
    /// The layer's input shape (batch 1).
    pub input_shape: Vec<usize>,
    /// Its operator norm (an upper bound for the non-linear ops).
    pub norm: f64,
}

/// Per-layer norms and, on a chain, their product.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bound {
    pub layers: Vec<LayerNorm>,
    /// The product of the per-layer norms, when the graph is a chain of supported ops.
    pub product: Option<f64>,
    /// Why there is no product, when there is none.
    pub reason: Option<String>,
}

const ITERATIONS: usize = 50;
/// The largest input (in elements, batch 1) the bound is computed for.
const MAX_ELEMENTS: usize = 1 << 24;

/// The arrays of this module: f32 values of any rank.
type Array = ArrayD<f32>;

fn ints(node: &NodeProto, name: &str, n: usize, default: usize) -> Vec<usize> {
    let v = attr_ints(node, name);
    if v.is_empty() {
        vec![default; n]
    } else {
        v.iter().map(|&x| x.max(0) as usize).collect()
    }
}

fn pseudo_random(shape: &[usize], seed: u64) -> Array {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array::from_shape_simple_fn(IxDyn(shape), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    })
}

fn l2(a: &Array) -> f64 {
    a.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

/// Largest singular value of `op` (with adjoint `adj`) on inputs of `shape`, by power
/// iteration on `adj(op(x))`.
fn power_iteration(
    shape: &[usize],
    op: impl Fn(&Array) -> Array,
    adj: impl Fn(&Array) -> Array,
) -> f64 {
    let mut x = pseudo_random(shape, 1);
    let n = l2(&x).max(1e-30);
    x.mapv_inplace(|v| (v as f64 / n) as f32);
    let mut sigma = 0.0;
    for _ in 0..ITERATIONS {
        let y = op(&x);
        sigma = l2(&y);
        let z = adj(&y);
        let n = l2(&z);
        if n == 0.0 {
            return 0.0;
        }
        x = z.mapv(|v| (v as f64 / n) as f32);
    }
    sigma
}

/// A convolution's geometry, from its ONNX attributes and input shape.
struct ConvSpec {
    weight: Array,
    stride: [usize; 2],
    dilation: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
    groups: usize,
}

impl ConvSpec {
    fn from_node(node: &NodeProto, weight: Array, input: &[usize]) -> Result<ConvSpec, String> {
        if weight.ndim() != 4 || input.len() != 4 {
            return Err("only 2-D convolutions are supported".into());
        }
        let (kh, kw) = (weight.shape()[2], weight.shape()[3]);
        let stride = ints(node, "strides", 2, 1);
        let dilation = ints(node, "dilations", 2, 1);
        let mut pads = ints(node, "pads", 4, 0);
        let groups = attr_int(node, "group", 1);
        let (o_ch, cg) = (weight.shape()[0], weight.shape()[1]);
        if groups < 1
            || o_ch % groups as usize != 0
            || cg.checked_mul(groups as usize) != Some(input[1])
        {
            return Err(format!(
                "group {groups} does not fit a {o_ch}x{cg} weight on {} input channels",
                input[1]
            ));
        }
        if stride.len() != 2 || dilation.len() != 2 || pads.len() != 4 {
            return Err("strides, dilations and pads must have 2, 2 and 4 values".into());
        }
        if stride.iter().chain(&dilation).any(|&v| v == 0) || kh == 0 || kw == 0 {
            return Err("strides, dilations and kernel sizes must be at least 1".into());
        }
        // Far beyond any real layer; keeps the index arithmetic below from overflowing.
        const LIMIT: usize = 1 << 20;
        if stride
            .iter()
            .chain(&dilation)
            .chain(&pads)
            .chain(&input[2..])
            .any(|&v| v > LIMIT)
            || input[2] == 0
            || input[3] == 0
        {
            return Err("strides, dilations, pads or the input size are out of range".into());
        }
        let auto = msn_onnx::attribute(node, "auto_pad")
            .map(|a| String::from_utf8_lossy(a.s()).to_string())
            .unwrap_or_default();
        if auto.starts_with("SAME") {
            for (a, size, k) in [(0, input[2], kh), (1, input[3], kw)] {
                let out = size.div_ceil(stride[a]);
                let span = dilation[a] * (k - 1) + 1;
                let total = ((out - 1) * stride[a] + span).saturating_sub(size);
                let (lo, hi) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                pads[a] = lo;
                pads[a + 2] = hi;
            }
        } else if auto == "VALID" {
            pads = vec![0; 4];
        }
        for a in 0..2 {
            let span = dilation[a] * (weight.shape()[2 + a] - 1) + 1;
            if input[2 + a] + pads[a] + pads[a + 2] < span {
                return Err("the kernel is larger than the padded input".into());
            }
        }
        Ok(ConvSpec {
            weight,
            stride: [stride[0], stride[1]],
            dilation: [dilation[0], dilation[1]],
            pads: [pads[0], pads[1], pads[2], pads[3]],
            groups: groups as usize,
        })
    }

    /// The padded input's height and width.
    fn padded(&self, input: &[usize]) -> [usize; 2] {
        [
            input[2] + self.pads[0] + self.pads[2],
            input[3] + self.pads[1] + self.pads[3],
        ]
    }

    /// Output shape for an input shape.
    fn output(&self, input: &[usize]) -> Vec<usize> {
        let p = self.padded(input);
        let w = self.weight.shape();
        let o = |a: usize| (p[a] - (self.dilation[a] * (w[2 + a] - 1) + 1)) / self.stride[a] + 1;
        vec![input[0], w[0], o(0), o(1)]
    }

    /// Visits every (input index, output index, weight index) triple of the convolution on
    /// the zero-padded input of `padded` size: the forward and the adjoint are the same walk,
    /// one gathering and one scattering.
    fn for_each_tap(
        &self,
        padded: [usize; 2],
        out: [usize; 2],
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let w = self.weight.shape();
        let (o_ch, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
        let og = o_ch / self.groups;
        for o in 0..o_ch {
            let g = o / og;
            for c in 0..cg {
                let ci = g * cg + c;
                for i in 0..kh {
                    for j in 0..kw {
                        let wi = ((o * cg + c) * kh + i) * kw + j;
                        for y in 0..out[0] {
                            let py = y * self.stride[0] + i * self.dilation[0];
                            let row_in = (ci * padded[0] + py) * padded[1];
                            let row_out = (o * out[0] + y) * out[1];
                            for x in 0..out[1] {
                                let px = x * self.stride[1] + j * self.dilation[1];
                                f(row_in + px, row_out + x, wi);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Conv (zero padding made explicit, so asymmetric pads work too), batch 1.
    fn apply(&self, x: &Array) -> Array {
        let sh = x.shape();
        let p = self.padded(sh);
        let mut xp = Array::zeros(IxDyn(&[sh[0], sh[1], p[0], p[1]]));
        xp.slice_mut(s![
            ..,
            ..,
            self.pads[0]..self.pads[0] + sh[2],
            self.pads[1]..self.pads[1] + sh[3]
        ])
        .assign(x);
        let out_shape = self.output(sh);
        let mut y = Array::zeros(IxDyn(&out_shape));
        let (xs, ws) = (
            xp.as_slice().expect("standard"),
            self.weight.as_standard_layout(),
        );
        let ws = ws.as_slice().expect("standard");
        let ys = y.as_slice_mut().expect("standard");
        self.for_each_tap(p, [out_shape[2], out_shape[3]], |xi, yi, wi| {
            ys[yi] += ws[wi] * xs[xi];
        });
        y
    }

    /// The adjoint: each output scatters back through the taps it gathered, then the crop.
    fn adjoint(&self, y: &Array, input: &[usize]) -> Array {
        let p = self.padded(input);
        let mut full = Array::zeros(IxDyn(&[input[0], input[1], p[0], p[1]]));
        let y = y.as_standard_layout();
        let ys = y.as_slice().expect("standard");
        let w = self.weight.as_standard_layout();
        let ws = w.as_slice().expect("standard");
        let fs = full.as_slice_mut().expect("standard");
        self.for_each_tap(p, [y.shape()[2], y.shape()[3]], |xi, yi, wi| {
            fs[xi] += ws[wi] * ys[yi];
        });
        full.slice(s![
            ..,
            ..,
            self.pads[0]..self.pads[0] + input[2],
            self.pads[1]..self.pads[1] + input[3]
        ])
        .to_owned()
        .into_dyn()
    }
}

/// The operator norm of a Conv node's weight at `input` (shape with batch 1).
fn conv_norm(
    node: &NodeProto,
    weight: Array,
    input: &[usize],
) -> Result<(f64, Vec<usize>), String> {
    // The norm does not depend on the batch (the operator is block diagonal over it).
    let mut one = input.to_vec();
    if let Some(b) = one.first_mut() {
        *b = 1;
    }
    let spec = ConvSpec::from_node(node, weight, &one)?;
    let mut out = spec.output(&one);
    let norm = power_iteration(&one, |x| spec.apply(x), |y| spec.adjoint(y, &one));
    out[0] = input[0];
    Ok((norm, out))
}

/// Largest singular value of a matrix by power iteration on `m^T m`.
pub fn matrix_norm(m: &Array2<f32>) -> f64 {
    let to = |a: Array2<f32>| a.into_dyn();
    power_iteration(
        &[m.ncols(), 1],
        |x| to(m.dot(&x.view().into_dimensionality::<ndarray::Ix2>().expect("2-D"))),
        |y| {
            to(m.t()
                .dot(&y.view().into_dimensionality::<ndarray::Ix2>().expect("2-D")))
        },
    )
}

fn pool_windows(node: &NodeProto) -> (Vec<usize>, Vec<usize>) {
    let k = ints(node, "kernel_shape", 2, 1);
    let s = ints(node, "strides", k.len(), 1);
    (k, s)
}

fn pool_output(node: &NodeProto, input: &[usize]) -> Result<Vec<usize>, String> {
    let (k, s) = pool_windows(node);
    let pads = ints(node, "pads", 4, 0);
    if input.len() != 4 || k.len() != 2 || s.len() != 2 || pads.len() != 4 {
        return Err("only 2-D pooling of NCHW inputs is supported".into());
    }
    let ceil = attr_int(node, "ceil_mode", 0) == 1;
    let mut out = input.to_vec();
    for a in 0..2 {
        let span = (input[2 + a] + pads[a] + pads[a + 2])
            .checked_sub(k[a])
            .filter(|_| s[a] > 0)
            .ok_or("the pooling window does not fit its input")?;
        out[2 + a] = if ceil {
            span.div_ceil(s[a])
        } else {
            span / s[a]
        } + 1;
    }
    Ok(out)
}

/// Computes per-layer operator norms along the graph for an input of `input_shape`, and
/// their product when the graph is a chain.
pub fn bound(g: &GraphProto, input_shape: &[usize]) -> Bound {
    let idx = Index::new(g);
    let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
    let Some(input) = g.input.iter().find(|v| !idx.init.contains_key(v.name())) else {
        return Bound {
            reason: Some("the graph has no input".into()),
            ..Default::default()
        };
    };
    // Power iteration holds a few tensors of each layer's size: refuse absurd inputs.
    let elements = input_shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS);
    if elements.is_none() {
        return Bound {
            reason: Some(format!(
                "the input {input_shape:?} is too large for the bound"
            )),
            ..Default::default()
        };
    }
    shapes.insert(input.name().to_string(), input_shape.to_vec());
    let mut out = Bound::default();
    let mut product = 1.0f64;
    let mut chain_error: Option<String> = None;
    let weight = |name: &str| idx.float(g, name);
    for node in &g.node {
        let name = crate::graph::node_name(node);
        let op = node.op_type();
        let data: Vec<&String> = node
            .input
            .iter()
            .filter(|i| !i.is_empty() && !idx.is_constant(i))
            .collect();
        if data.len() != 1 {
            chain_error.get_or_insert(format!(
                "{name} ({op}) combines {} computed values: not a chain",
                data.len()
            ));
            break;
        }
        if idx.uses(data[0]) > 1 {
            chain_error.get_or_insert(format!("{} feeds several nodes: not a chain", data[0]));
        }
        let Some(x) = shapes.get(data[0].as_str()).cloned() else {
            chain_error.get_or_insert(format!("{name} ({op}): input shape unknown"));
            break;
        };
        let result: Result<(f64, Vec<usize>), String> = match op {
            "Conv" => match node.input.get(1).and_then(|w| weight(w)) {
                Some(w) => conv_norm(node, w, &x),
                None => Err(format!("{name}: weight is not a constant")),
            },
            "Gemm" => match node.input.get(1).and_then(|w| weight(w)) {
                Some(w) if w.ndim() == 2 && attr_int(node, "transA", 0) == 0 => {
                    let w = w.into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    // y = alpha * x B (+ C): the norm of B as a map from rows of x.
                    let b = if attr_int(node, "transB", 0) == 1 {
                        w
                    } else {
                        w.t().to_owned()
                    };
                    let alpha = attr_float(node, "alpha", 1.0).abs() as f64;
                    Ok((
                        alpha * matrix_norm(&b),
                        vec![x.first().copied().unwrap_or(1), b.nrows()],
                    ))
                }
                _ => Err(format!("{name}: Gemm without a constant 2-D B")),
            },
            "Relu" | "LeakyRelu" | "Tanh" | "Identity" | "Dropout" => {
                let slope = attr_float(node, "alpha", 0.01).abs() as f64;
                Ok((
                    if op == "LeakyRelu" {
                        slope.max(1.0)
                    } else {
                        1.0
                    },
                    x.clone(),
                ))
            }
            "Sigmoid" => Ok((0.25, x.clone())),
            "Flatten" => {
                let axis = attr_int(node, "axis", 1).clamp(0, x.len() as i64) as usize;
                Ok((
                    1.0,
                    vec![x[..axis].iter().product(), x[axis..].iter().product()],
                ))
            }
            "GlobalAveragePool" if x.len() < 3 => Err(format!("{name}: input rank below 3")),
            "GlobalAveragePool" => {
                let area: usize = x[2..].iter().product();
                let mut o = x[..2].to_vec();
                o.extend(std::iter::repeat_n(1, x.len() - 2));
                Ok((1.0 / (area as f64).sqrt(), o))
            }
            "MaxPool" | "AveragePool" => {
                let (k, s) = pool_windows(node);
                // An input lies in at most `m` windows; max and mean are 1- and
                // 1/sqrt(window)-Lipschitz per window.
                let m: usize = k.iter().zip(&s).map(|(k, s)| k.div_ceil(*s)).product();
                let window: usize = k.iter().product();
                let norm = if op == "MaxPool" {
                    (m as f64).sqrt()
                } else {
                    (m as f64 / window as f64).sqrt()
                };
                pool_output(node, &x).map(|o| (norm, o))
            }
            other => Err(format!("{name}: no Lipschitz constant for {other}")),
        };
        match result {
            Ok((norm, shape)) => {
                if matches!(op, "Conv" | "Gemm") {
                    out.layers.push(LayerNorm {
                        node: name,
                        op: op.to_string(),
                        input_shape: x,
                        norm,
                    });
                }
                product *= norm;
                if let Some(o) = node.output.first() {
                    shapes.insert(o.clone(), shape);
                }
            }
            Err(e) => {
                chain_error.get_or_insert(e);
                break;
            }
        }
    }
    match chain_error {
        Some(e) => out.reason = Some(e),
        None => out.product = Some(product),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense matrix of a conv at an input shape, column by column from basis inputs: an
    /// operator built from the forward conv alone, without the transpose under test.
    fn dense(spec: &ConvSpec, input: &[usize]) -> Array2<f32> {
        let n: usize = input.iter().product();
        let cols: Vec<Array> = (0..n)
            .map(|i| {
                let mut e = Array::zeros(IxDyn(input));
                e.as_slice_mut().unwrap()[i] = 1.0;
                spec.apply(&e)
            })
            .collect();
        let m = cols[0].len();
        let mut d = Array2::zeros((m, n));
        for (j, c) in cols.iter().enumerate() {
            d.column_mut(j)
                .assign(&ndarray::ArrayView1::from(c.as_slice().unwrap()));
        }
        d
    }

    fn spread(shape: &[usize], seed: u64) -> Array {
        pseudo_random(shape, seed)
    }

    #[test]
    fn the_adjoint_is_the_transpose_and_the_norm_the_dense_one() {
        use msn_onnx::builder::attr;
        // (pads, stride, groups, input, weight)
        for (pads, stride, groups, input, wshape) in [
            ([1, 1, 1, 1], 1, 1, [1, 2, 5, 5], [3, 2, 3, 3]),
            ([2, 2, 2, 2], 2, 1, [1, 2, 6, 5], [3, 2, 4, 4]),
            ([0, 1, 1, 0], 2, 2, [1, 4, 5, 6], [4, 2, 3, 3]),
        ] {
            let node = NodeProto {
                op_type: Some("Conv".into()),
                attribute: vec![
                    attr::ints("pads", &pads),
                    attr::ints("strides", &[stride, stride]),
                    attr::int("group", groups),
                ],
                ..Default::default()
            };
            let w = spread(&wshape, 7);
            let spec = ConvSpec::from_node(&node, w.clone(), &input).unwrap();
            // <A x, y> == <x, A^T y> for random x, y.
            let x = spread(&input, 3);
            let ax = spec.apply(&x);
            let y = spread(ax.shape(), 4);
            let ax_y: f64 = ax.iter().zip(y.iter()).map(|(a, b)| (a * b) as f64).sum();
            let aty = spec.adjoint(&y, &input);
            let x_aty: f64 = x.iter().zip(aty.iter()).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (ax_y - x_aty).abs() < 1e-4 * ax_y.abs().max(1.0),
                "{ax_y} vs {x_aty}"
            );
            // The power iteration's norm equals the dense operator's largest singular value.
            let (norm, out) = conv_norm(&node, w, &input).unwrap();
            assert_eq!(out, ax.shape());
            let want = matrix_norm(&dense(&spec, &input));
            assert!((norm - want).abs() < 1e-3 * want, "{norm} vs dense {want}");
        }
    }

    #[test]
    fn a_matrix_norm_is_its_largest_singular_value() {
        // diag(3, 2) rotated: singular values 3 and 2.
        let (c, s) = (0.6f32, 0.8f32);
        let r = ndarray::array![[c, -s], [s, c]];
        let m = r
            .dot(&ndarray::array![[3.0f32, 0.0], [0.0, 2.0]])
            .dot(&r.t());
        assert!((matrix_norm(&m) - 3.0).abs() < 1e-4);
    }

    #[test]
    fn a_chain_gets_a_product_and_a_branch_does_not() {
        use msn_onnx::builder::{attr, GraphBuilder};
        let mut b = GraphBuilder::new("chain");
        let x = b.input("x", &[1, 1, 4, 4]);
        let w = b.initializer_f32("w", &spread(&[2, 1, 3, 3], 5));
        let h = b.node("Conv", &[&x, &w], "c", &[attr::ints("pads", &[1, 1, 1, 1])]);
        let h = b.node("Relu", &[&h], "r", &[]);
        let h = b.node("Flatten", &[&h], "f", &[]);
        let g = b.initializer_f32("g", &spread(&[32, 3], 6));
        let y = b.node("Gemm", &[&h, &g], "y", &[]);
        b.output(&y, &[1, 3]);
        let graph = b.into_model(17).graph.unwrap();
        let r = bound(&graph, &[1, 1, 4, 4]);
        assert_eq!(r.layers.len(), 2, "{r:?}");
        let want = r.layers[0].norm * r.layers[1].norm;
        assert!((r.product.unwrap() - want).abs() < 1e-9);

        let mut b = GraphBuilder::new("branch");
        let x = b.input("x", &[1, 1, 4, 4]);
        let r1 = b.node("Relu", &[&x], "r1", &[]);
        let r2 = b.node("Relu", &[&x], "r2", &[]);
        let y = b.node("Add", &[&r1, &r2], "y", &[]);
        b.output(&y, &[1, 1, 4, 4]);
        let r = bound(&b.into_model(17).graph.unwrap(), &[1, 1, 4, 4]);
        assert!(r.product.is_none() && r.reason.is_some(), "{r:?}");
    }
}
