//! # msn-fold: fold normalization into plain Conv/Gemm weights
//!
//! An ONNX-to-ONNX rewrite, on our exported models and on any other ONNX model:
//!
//! 1. [`passes::constant_folding`]: nodes with constant inputs become initializers (the
//!    exported spectral norm `W / (u . W_mat v)` becomes one weight); before it,
//!    [`passes::static_shapes`] turns `Shape` of a value whose shape the file fixes into a
//!    constant ([`shapes`] infers them), so shape arithmetic folds too;
//! 2. [`passes::fuse_into_weights`]: inference `BatchNormalization` and per-channel or scalar
//!    `Add`/`Sub`/`Mul`/`Div` after Conv, ConvTranspose and Gemm go into the weights and bias
//!    (the mean-only batch norm of MSN is such a chain);
//!    A 2-D `MatMul` by a constant followed by such a node becomes a Gemm first
//!    ([`passes::matmul_to_gemm`]), so `MatMul + Add + BatchNormalization` folds too; a
//!    scale before a Conv always folds into it, a shift only when the Conv pads nothing
//!    ([`passes::fuse_into_following_conv`]);
//! 3. [`passes::eliminate`]: Identity and inference Dropout removal, duplicate nodes, unused
//!    optional outputs, dead nodes and unused initializers;
//! 4. once, tract's type and value analysis of the graph ([`passes::evaluate`]): what our
//!    constant folding leaves (the shape, index and mask arithmetic of attention exports) is
//!    evaluated at the fixed shapes, and [`passes::simplify`] removes the no-ops those
//!    shapes reveal ([`Options::analyse`]; the runtime leaves it out).
//!
//! The passes run to a fixed point, each a sweep over one index of the graph. Nothing here
//! runs the model: tract only analyses it.
//! `msn_runtime::verify` proves a fold by running both models on the same inputs.

pub mod graph;
pub mod lipschitz;
pub mod passes;
pub mod shapes;

use msn_onnx::graph::op_histogram;
use msn_onnx::{meta, tensor, GraphProto, ModelProto};
use std::collections::BTreeMap;

/// What folding did to a model.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub ops_before: BTreeMap<String, usize>,
    pub ops_after: BTreeMap<String, usize>,
    pub initializer_bytes_before: usize,
    pub initializer_bytes_after: usize,
    /// Pass name -> number of rewrites, in the order first applied.
    pub passes: Vec<(String, usize)>,
    /// Patterns that looked foldable but were left alone, and why.
    pub warnings: Vec<String>,
    /// For each spectrally normalized layer of an exported model: its name and sigma.
    pub sigmas: Vec<(String, f32)>,
}

fn initializer_bytes(g: &GraphProto) -> usize {
    g.initializer.iter().map(stored_bytes).sum()
}

/// The bytes a tensor's data takes in the file.
pub(crate) fn stored_bytes(t: &msn_onnx::TensorProto) -> usize {
    t.raw_data.as_ref().map_or(0, Vec::len)
        + 4 * (t.float_data.len() + t.int32_data.len())
        + 8 * (t.int64_data.len() + t.double_data.len())
}

/// Sigma of every spectral-norm layer exported by msn-export (`<layer>.weight`, `.weight_u`,
/// `.weight_v`): `u . (W_mat v)`.
pub fn spectral_sigmas(g: &GraphProto) -> Vec<(String, f32)> {
    let find = |n: &str| {
        g.initializer
            .iter()
            .find(|t| t.name() == n)
            .and_then(|t| tensor::to_f32(t).ok())
    };
    let mut out = Vec::new();
    for t in &g.initializer {
        let Some(layer) = t.name().strip_suffix(".weight_u") else {
            continue;
        };
        let (Some(u), Some(v), Some(w)) = (
            find(t.name()),
            find(&format!("{layer}.weight_v")),
            find(&format!("{layer}.weight")),
        ) else {
            continue;
        };
        let (rows, cols) = (w.shape()[0], v.len());
        let Ok(w) = w.into_shape_with_order((rows, cols)) else {
            continue;
        };
        let Ok(v) = v.into_shape_with_order(cols) else {
            continue;
        };
        let sigma: f32 = u.iter().zip(w.dot(&v).iter()).map(|(a, b)| a * b).sum();
        out.push((layer.to_string(), sigma));
    }
    out
}

fn note(report: &mut Report, pass: &str, n: usize) {
    match report.passes.iter_mut().find(|(p, _)| p == pass) {
        Some(entry) => entry.1 += n,
        None => report.passes.push((pass.to_string(), n)),
    }
}

/// What [`fold_with`] may do beyond the graph rewrite itself.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Run tract's type and value analysis once, to evaluate what our own constant
    /// folding does not ([`passes::evaluate`]) and to simplify no-ops at the shapes it
    /// fixes ([`passes::simplify`]). Costs a parse of the model; the runtime, whose tract
    /// plan propagates constants itself, leaves it out.
    pub analyse: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { analyse: true }
    }
}

/// Folds the model in place and reports what changed ([`Options::default`]: everything).
pub fn fold(model: &mut ModelProto) -> Report {
    fold_with(model, Options::default())
}

/// Folds the model in place with these options and reports what changed.
pub fn fold_with(model: &mut ModelProto, options: Options) -> Report {
    let g = model.graph.get_or_insert_with(Default::default);
    let mut evaluated = !options.analyse;
    let mut facts = None;
    let mut report = Report {
        nodes_before: g.node.len(),
        ops_before: op_histogram(g),
        initializer_bytes_before: initializer_bytes(g),
        sigmas: spectral_sigmas(g),
        ..Default::default()
    };
    loop {
        let g = model.graph.get_or_insert_with(Default::default);
        let mut changed = 0;
        let simple: [(&str, Pass); 7] = [
            ("eliminate_identity", passes::eliminate::identities),
            ("eliminate_duplicates", passes::eliminate::duplicates),
            (
                "eliminate_unused_outputs",
                passes::eliminate::unused_outputs,
            ),
            ("uniform_quant_params", passes::uniform_quant_params::run),
            ("static_shapes", passes::static_shapes::run),
            ("constant_folding", passes::constant_folding::run),
            ("matmul_to_gemm", passes::matmul_to_gemm::run),
        ];
        for (name, pass) in simple {
            let n = pass(g);
            note(&mut report, name, n);
            changed += n;
        }
        // tract's analysis, once: what our constant folding leaves of shape arithmetic.
        if !evaluated {
            evaluated = true;
            let (n, f) = passes::evaluate::run(model);
            note(&mut report, "evaluate_constants", n);
            changed += n;
            facts = f;
        }
        let g = model.graph.get_or_insert_with(Default::default);
        if let Some(facts) = &facts {
            let n = passes::simplify::run(g, facts);
            note(&mut report, "simplify_no_ops", n);
            changed += n;
        }
        let c = passes::fuse_into_weights::run(g, &mut report.warnings);
        note(&mut report, "fuse_batchnorm_into_weights", c.batch_norm);
        note(&mut report, "fuse_affine_into_weights", c.affine);
        changed += c.batch_norm + c.affine;
        let n = passes::fuse_into_following_conv::run(g, &mut report.warnings);
        note(&mut report, "fuse_affine_into_following_conv", n);
        changed += n;
        let (nodes, inits) = passes::eliminate::dead_code(g);
        note(&mut report, "eliminate_dead_nodes", nodes);
        note(&mut report, "eliminate_unused_initializers", inits);
        changed += nodes;
        if changed == 0 {
            break;
        }
    }
    let g = model.graph.get_or_insert_with(Default::default);
    report.warnings.sort();
    report.warnings.dedup();
    report.nodes_after = g.node.len();
    report.ops_after = op_histogram(g);
    report.initializer_bytes_after = initializer_bytes(g);
    meta::set(
        model,
        meta::FOLDED,
        format!("msn-fold {}", env!("CARGO_PKG_VERSION")),
    );
    report
}

/// A pass that needs nothing but the graph and returns how many nodes it changed.
type Pass = fn(&mut GraphProto) -> usize;

/// Fixes the graph inputs' declared shapes: each `(name, shape)` (an unnamed one goes to the
/// first input not named) must have the input's rank and agree with its fixed dimensions;
/// symbolic ones take the given size. Folding then uses the shapes that follow (see
/// [`passes::static_shapes`]): the result runs at these shapes only.
pub fn fix_input_shapes(
    model: &mut ModelProto,
    given: &[(Option<String>, Vec<usize>)],
) -> Result<(), String> {
    use msn_onnx::proto::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use msn_onnx::proto::type_proto::Value;
    let g = model.graph.get_or_insert_with(Default::default);
    let inits: std::collections::HashSet<String> =
        g.initializer.iter().map(|t| t.name().to_string()).collect();
    let mut free: Vec<usize> = (0..g.input.len())
        .filter(|&i| !inits.contains(g.input[i].name()))
        .collect();
    for (name, shape) in given {
        let i = match name {
            Some(n) => g.input.iter().position(|v| v.name() == n),
            None => free.first().copied(),
        }
        .ok_or_else(|| match name {
            Some(n) => format!("the model has no input named '{n}'"),
            None => "more shapes given than the model has inputs".to_string(),
        })?;
        free.retain(|&j| j != i);
        let v = &mut g.input[i];
        let what = v.name().to_string();
        let Some(Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            return Err(format!("input '{what}' is not a tensor"));
        };
        let dims = &mut t.shape.get_or_insert_with(Default::default).dim;
        if !dims.is_empty() && dims.len() != shape.len() {
            return Err(format!(
                "input '{what}' has rank {}, the given shape {shape:?} has {}",
                dims.len(),
                shape.len()
            ));
        }
        dims.resize(shape.len(), Dimension::default());
        for (d, &want) in dims.iter_mut().zip(shape) {
            if matches!(d.value, Some(Dim::DimValue(v)) if v > 0 && v as usize != want) {
                return Err(format!(
                    "input '{what}' is declared with a dimension the given shape {shape:?} contradicts"
                ));
            }
            d.value = Some(Dim::DimValue(want as i64));
        }
    }
    Ok(())
}

/// Makes initializers that are also graph inputs plain constants (drops them from the
/// inputs), so that folding may use their values; returns how many. Without this, such an
/// initializer is only a default a caller can override, and no pass folds it.
pub fn freeze_inputs(model: &mut ModelProto) -> usize {
    let g = model.graph.get_or_insert_with(Default::default);
    let inits: std::collections::HashSet<String> =
        g.initializer.iter().map(|t| t.name().to_string()).collect();
    let before = g.input.len();
    g.input.retain(|v| !inits.contains(v.name()));
    before - g.input.len()
}

/// Why a model's input shape cannot be told.
#[derive(Debug, thiserror::Error)]
#[error("the model's input is not a fixed-size tensor: {0}")]
pub struct ShapeError(pub String);

/// The input shape of a model with batch 1 in place of a symbolic first dimension.
pub fn input_shape(model: &ModelProto) -> Result<Vec<usize>, ShapeError> {
    use msn_onnx::proto::tensor_shape_proto::dimension::Value as Dim;
    use msn_onnx::proto::type_proto::Value;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| ShapeError("no graph".into()))?;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let input = g
        .input
        .iter()
        .find(|v| !inits.contains(v.name()))
        .ok_or_else(|| ShapeError("no input".into()))?;
    let Some(Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(ShapeError(format!(
            "input '{}' is not a tensor",
            input.name()
        )));
    };
    let dims = &t
        .shape
        .as_ref()
        .ok_or_else(|| ShapeError("no shape".into()))?
        .dim;
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d.value {
            Some(Dim::DimValue(v)) if v > 0 => Ok(v as usize),
            _ if i == 0 => Ok(1),
            _ => Err(ShapeError(format!(
                "dimension {i} of '{}' is not fixed",
                input.name()
            ))),
        })
        .collect()
}
