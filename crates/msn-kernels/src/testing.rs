//! Plans for differential checks: one ONNX model planned by tract alone (unoptimised, the
//! reference; or optimised with none of our kernels) and with our kernels at a chosen CPU
//! level, run on the same inputs. The kernels' tests and the `kernels` fuzz target use it;
//! the runtime's loader (validation, folding, guards) is not involved.

use crate::Options;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::infer::Factoid;

/// How a model is planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// tract's typed model as translated, not optimised: the reference.
    Reference,
    /// Optimised by tract with our kernels at [`Options::default`].
    Optimized,
    /// Optimised by tract with these kernels (none: tract's own plan).
    With(Options),
}

/// An ONNX model held for planning, with the concrete shapes of its inputs.
pub struct Source {
    bytes: Vec<u8>,
    shapes: Vec<Vec<usize>>,
    types: Vec<DatumType>,
}

/// A planned model.
pub struct Planned {
    plan: Arc<TypedRunnableModel>,
}

impl Source {
    /// The model in `bytes`; every input must have a concrete shape.
    pub fn from_bytes(bytes: Vec<u8>) -> TractResult<Source> {
        let model = onnx().model_for_read(&mut &bytes[..])?;
        let mut shapes = vec![];
        let mut types = vec![];
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i)?;
            let shape = fact
                .shape
                .as_concrete_finite()?
                .with_context(|| format!("input {i} has no concrete shape"))?;
            shapes.push(shape.to_vec());
            types.push(fact.datum_type.concretize().unwrap_or(f32::datum_type()));
        }
        Ok(Source {
            bytes,
            shapes,
            types,
        })
    }

    /// The inputs' shapes.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.shapes.clone()
    }

    /// tract's typed model for inputs of `shapes`, translated and not optimised: what every
    /// plan starts from (planning one model several ways parses and analyses it once).
    pub fn typed(&self, shapes: &[Vec<usize>]) -> TractResult<TypedModel> {
        let mut model = onnx().model_for_read(&mut &self.bytes[..])?;
        for (i, (shape, dt)) in shapes.iter().zip(&self.types).enumerate() {
            model = model.with_input_fact(i, dt.fact(shape).into())?;
        }
        model.into_typed()
    }

    /// Plans the model for inputs of `shapes`.
    pub fn plan(&self, shapes: &[Vec<usize>], kind: Plan) -> TractResult<Planned> {
        Planned::new(self.typed(shapes)?, kind)
    }
}

/// tract's ONNX front end, built once.
fn onnx() -> &'static tract_onnx::Onnx {
    static ONNX: std::sync::OnceLock<tract_onnx::Onnx> = std::sync::OnceLock::new();
    ONNX.get_or_init(tract_onnx::onnx)
}

/// tract's declutter, our rewrites, tract's optimiser, our rewrites of the optimised model:
/// what the runtime's loader does after its own passes.
pub fn optimise(typed: TypedModel, options: &Options) -> TractResult<TypedModel> {
    optimise_decluttered(crate::declutter(typed, options)?, options)
}

/// [`optimise`] after [`crate::declutter`].
fn optimise_decluttered(mut typed: TypedModel, options: &Options) -> TractResult<TypedModel> {
    crate::rewrite(&mut typed, options)?;
    let mut typed = typed.into_optimized()?;
    crate::rewrite_optimized(&mut typed, options)?;
    Ok(typed)
}

/// One typed model planned several ways (tract's own plan, ours at each CPU level), as
/// [`Planned::new`] plans it, with tract's declutter run once for each of its two outcomes
/// ([`crate::keeps_channels_first`]) rather than once a plan.
pub struct Planner {
    typed: TypedModel,
    decluttered: Vec<(bool, TypedModel)>,
}

impl Planner {
    /// Plans from `typed` ([`Source::typed`]).
    pub fn new(typed: TypedModel) -> Planner {
        Planner {
            typed,
            decluttered: vec![],
        }
    }

    /// The model optimised with `options`, as [`optimise`] would.
    pub fn plan(&mut self, options: &Options) -> TractResult<Planned> {
        let key = crate::keeps_channels_first(&self.typed, options);
        let decluttered = match self.decluttered.iter().find(|(k, _)| *k == key) {
            Some((_, model)) => model.clone(),
            None => {
                let model = crate::declutter(self.typed.clone(), options)?;
                self.decluttered.push((key, model.clone()));
                model
            }
        };
        Ok(Planned {
            plan: optimise_decluttered(decluttered, options)?.into_runnable()?,
        })
    }
}

impl Planned {
    /// Plans a typed model from [`Source::typed`].
    pub fn new(typed: TypedModel, kind: Plan) -> TractResult<Planned> {
        let typed = match kind {
            Plan::Reference => typed,
            Plan::Optimized => optimise(typed, &Options::default())?,
            Plan::With(options) => optimise(typed, &options)?,
        };
        Ok(Planned {
            plan: typed.into_runnable()?,
        })
    }

    /// The op names of the plan's nodes, in order.
    pub fn ops(&self) -> Vec<String> {
        self.plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect()
    }

    /// Runs the plan.
    pub fn run(&self, inputs: Vec<Tensor>) -> TractResult<Vec<Tensor>> {
        let out = self
            .plan
            .run(inputs.into_iter().map(|t| t.into_tvalue()).collect())?;
        Ok(out.into_iter().map(|t| t.into_tensor()).collect())
    }
}

/// The largest difference between two outputs relative to the largest magnitude of the
/// first (floats; a NaN on one side only counts as infinitely far), or 0 / infinity for
/// equal / different integer outputs.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    if a.shape() != b.shape() || a.datum_type() != b.datum_type() {
        return f64::INFINITY;
    }
    if !a.datum_type().is_float() {
        return if a == b { 0.0 } else { f64::INFINITY };
    }
    let (Ok(a), Ok(b)) = (a.cast_to::<f64>(), b.cast_to::<f64>()) else {
        return f64::INFINITY;
    };
    let (Ok(a), Ok(b)) = (
        a.to_plain_array_view::<f64>(),
        b.to_plain_array_view::<f64>(),
    ) else {
        return f64::INFINITY;
    };
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    let err = a
        .iter()
        .zip(b.iter())
        .map(|(p, q)| match (p.is_nan(), q.is_nan()) {
            (true, true) => 0.0,
            (true, false) | (false, true) => f64::INFINITY,
            _ if p == q => 0.0,
            _ => (p - q).abs(),
        })
        .fold(0.0f64, f64::max);
    err / scale
}

/// `n` pseudo-random values in `[-1, 1)` from `seed` (a 64-bit LCG: the same values on
/// every machine).
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
