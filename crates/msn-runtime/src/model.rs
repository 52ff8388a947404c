//! The one way a model reaches tract.
//!
//! ```text
//! bytes -> msn-onnx decode and validation -> msn-fold's passes, in memory
//!       -> guards for what tract computes wrongly -> tract, with fixed input facts -> plan
//! ```
//!
//! Every command and test that runs a model goes through [`Source::plan`]; nothing else in
//! the workspace builds a tract plan. The file on disk is never changed.

use crate::{guard, Error, Result};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use msn_onnx::proto::type_proto;
use msn_onnx::{ModelProto, ValueInfoProto};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

/// A tensor as a graph declares it: name, element type, and each dimension (`None` when
/// symbolic or absent).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// The ONNX element type (`FLOAT`, `INT64`, ...).
    pub dtype: String,
    pub dims: Option<Vec<Option<usize>>>,
}

impl TensorSpec {
    /// The most bytes a NumPy array for this input may hold: its element count (when every
    /// dimension is fixed) times 8, the widest element a file could give before conversion.
    pub fn max_bytes(&self) -> Option<u64> {
        self.dims
            .as_ref()?
            .iter()
            .try_fold(8u64, |n, d| n.checked_mul((*d)? as u64))
    }

    fn of(v: &ValueInfoProto) -> TensorSpec {
        let (dtype, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => (
                DataType::try_from(t.elem_type())
                    .map(|d| d.as_str_name().to_string())
                    .unwrap_or_else(|_| format!("unknown ({})", t.elem_type())),
                t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Dim::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
                            _ => None,
                        })
                        .collect()
                }),
            ),
            _ => ("not a tensor".to_string(), None),
        };
        TensorSpec {
            name: v.name().to_string(),
            dtype,
            dims,
        }
    }

    /// tract's element type for this tensor, if tract has one.
    pub fn datum_type(&self) -> Option<DatumType> {
        datum_type(&self.dtype)
    }
}

/// tract's element type for an ONNX element type name.
pub fn datum_type(onnx: &str) -> Option<DatumType> {
    Some(match onnx {
        "FLOAT" => f32::datum_type(),
        "DOUBLE" => f64::datum_type(),
        "FLOAT16" => f16::datum_type(),
        "INT8" => i8::datum_type(),
        "INT16" => i16::datum_type(),
        "INT32" => i32::datum_type(),
        "INT64" => i64::datum_type(),
        "UINT8" => u8::datum_type(),
        "UINT16" => u16::datum_type(),
        "UINT32" => u32::datum_type(),
        "UINT64" => u64::datum_type(),
        "BOOL" => bool::datum_type(),
        _ => return None,
    })
}

/// Which tract plan to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plan {
    /// msn-fold's passes and the guards, then tract's optimiser with every kernel of
    /// msn-kernels at the CPU's level (`MSN_CPU` caps it): what every command runs.
    #[default]
    Optimized,
    /// [`Plan::Optimized`] with the kernels these options choose
    /// (`msn_kernels::Options::none()`: tract's own kernels only, for A/B runs).
    With(msn_kernels::Options),
    /// [`Plan::Optimized`] in half precision (tract's `f32_to_f16` transform before its
    /// optimiser; callers still give and get f32), on tract's kernels. Native on aarch64 with
    /// ARMv8.2-A FP16 ([`crate::half_supported`]); emulated, far slower, elsewhere.
    Half,
    /// The model exactly as written, through tract's typed translation without its
    /// optimiser: the reference a fold is verified against.
    Reference,
}

impl Plan {
    /// The kernels of ours this plan gets, if it is optimised by tract in f32.
    fn kernels(self) -> Option<msn_kernels::Options> {
        match self {
            Plan::Optimized => Some(msn_kernels::Options::default()),
            Plan::With(options) => Some(options),
            Plan::Half | Plan::Reference => None,
        }
    }
}

/// A decoded and validated model, not yet planned.
pub struct Source {
    origin: PathBuf,
    bytes: Vec<u8>,
    model: ModelProto,
    inputs: Vec<TensorSpec>,
}

/// What loading cost, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimes {
    /// Decoding and validating the file.
    pub read: f64,
    /// msn-fold's passes and the guards, re-encoding included.
    pub passes: f64,
    /// tract: reading, typing, optimising and planning.
    pub tract: f64,
}

impl LoadTimes {
    pub fn total(&self) -> f64 {
        self.read + self.passes + self.tract
    }
}

/// One node of tract's plan and the time it took (see [`Model::profile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    /// tract's node name (the ONNX node's, with a suffix where tract split it).
    pub name: String,
    /// tract's op (`Conv`, `OptMatMul`, `DepthWise`, ...).
    pub op: String,
    /// Median over the rounds.
    pub seconds: f64,
    /// tract's description of the op (shapes, the matrix kernel chosen, fused steps).
    pub info: Vec<String>,
}

/// A planned model: tract's runnable plan with the inputs it was planned for.
pub struct Model {
    origin: PathBuf,
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    times: LoadTimes,
    fold: Option<msn_fold::Report>,
    guarded: usize,
    /// Planned in half precision ([`Plan::Half`]): f32 tensors are converted on the way
    /// in and out.
    half: bool,
}

/// Marks the end of a phase of loading for `scripts/board_cost.sh` (only with
/// `MSN_INSN_MARKS` set; see [`msn_kernels::probe`]).
fn phase(name: &str) {
    if msn_kernels::probe::enabled() {
        msn_kernels::probe::mark();
        eprintln!("insn-phase\t{name}");
    }
}

impl Source {
    /// Reads and validates the model at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Source> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            cause: e,
        })?;
        Source::from_bytes(bytes, path)
    }

    /// Decodes and validates a model held in memory; `origin` names it in messages, and its
    /// folder holds the data files of tensors stored outside the model (external data).
    pub fn from_bytes(bytes: Vec<u8>, origin: &Path) -> Result<Source> {
        let mut model = msn_onnx::io::from_bytes_named(&bytes, &origin.display().to_string())?;
        // Tensors in data files beside the model: read in, and the bytes tract parses with them.
        let bytes = if msn_onnx::external::has_external_data(&model) {
            msn_onnx::external::inline(&mut model, origin).map_err(|e| Error::Invalid {
                path: origin.to_path_buf(),
                reason: e.to_string(),
            })?;
            msn_onnx::io::to_bytes(&model)
        } else {
            bytes
        };
        msn_onnx::validate::model(&model).map_err(|e| Error::Invalid {
            path: origin.to_path_buf(),
            reason: e.to_string(),
        })?;
        let inputs = msn_onnx::graph::GraphView::new(&model)?
            .real_inputs()
            .map(TensorSpec::of)
            .collect();
        Ok(Source {
            origin: origin.to_path_buf(),
            bytes,
            model,
            inputs,
        })
    }

    /// The model as decoded.
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// Where the model came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The inputs a caller feeds (graph inputs that are not initializers), in order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        let g = self.model.graph.as_ref().expect("validated: has a graph");
        g.output.iter().map(TensorSpec::of).collect()
    }

    /// Plans the model for inputs of exactly these shapes (one per input, in order).
    pub fn plan(&self, shapes: &[Vec<usize>], kind: Plan) -> Result<Model> {
        let start = Instant::now();
        self.check_count(shapes)?;
        let mut fold = None;
        let guarded;
        let rewritten = match kind {
            // tract's own translation, but what it cannot analyse at all is rewritten.
            Plan::Reference => {
                let mut model = self.model.clone();
                guarded = guard::vector_matmul(model.graph.as_mut().expect("has a graph"));
                (guarded > 0).then(|| msn_onnx::io::to_bytes(&model))
            }
            Plan::Optimized | Plan::With(_) | Plan::Half => {
                let mut model = self.model.clone();
                // tract's plan propagates constants itself: no second analysis here.
                let options = msn_fold::Options { analyse: false };
                let report = msn_fold::fold_with(&mut model, options);
                let folded = report.passes.iter().any(|(_, n)| *n > 0);
                guarded = guard::run(model.graph.as_mut().expect("has a graph"));
                fold = Some(report);
                (folded || guarded > 0).then(|| msn_onnx::io::to_bytes(&model))
            }
        };
        let passes = start.elapsed().as_secs_f64();
        phase("fold passes, guards");
        let start = Instant::now();
        let bytes = rewritten.as_deref().unwrap_or(&self.bytes);
        let err = |action| self.tract_error(action);
        let (typed, planned) = self.typed(bytes, shapes)?;
        phase("tract: parse, analyse");
        let half = kind == Plan::Half;
        let typed = if half {
            tract_onnx::tract_core::transform::get_transform("f32_to_f16")
                .map_err(err("convert the model to half precision"))?
                .ok_or_else(|| self.invalid("tract has no f32_to_f16 transform".into()))?
                .transform_into(typed)
                .map_err(err("convert the model to half precision"))?
        } else {
            typed
        };
        let typed = match kind {
            Plan::Optimized | Plan::With(_) => {
                let options = kind.kernels().expect("an f32 plan");
                let mut typed =
                    msn_kernels::declutter(typed, &options).map_err(err("declutter the model"))?;
                phase("tract: declutter");
                msn_kernels::rewrite(&mut typed, &options).map_err(err("put in our kernels"))?;
                phase("our kernels");
                let mut typed = typed.into_optimized().map_err(err("optimize the model"))?;
                phase("tract: optimize");
                msn_kernels::rewrite_optimized(&mut typed, &options)
                    .map_err(err("put in our kernels"))?;
                typed
            }
            Plan::Half => typed.into_optimized().map_err(err("optimize the model"))?,
            Plan::Reference => typed,
        };
        let plan = typed.into_runnable().map_err(err("plan the model"))?;
        phase("plan");
        let outputs = self
            .outputs()
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let fact = plan.model().output_fact(i).ok();
                TensorSpec {
                    dims: fact.and_then(|f| {
                        f.shape
                            .as_concrete()
                            .map(|s| s.iter().map(|&d| Some(d)).collect())
                    }),
                    ..spec
                }
            })
            .collect();
        Ok(Model {
            origin: self.origin.clone(),
            plan,
            inputs: planned,
            outputs,
            times: LoadTimes {
                read: 0.0,
                passes,
                tract: start.elapsed().as_secs_f64(),
            },
            fold,
            guarded,
            half,
        })
    }

    /// tract's error on this model while doing `action`.
    fn tract_error(&self, action: &'static str) -> impl Fn(TractError) -> Error + '_ {
        move |e: TractError| Error::Tract {
            path: self.origin.clone(),
            action,
            message: format!("{e:#}"),
        }
    }

    /// tract's typed translation of `bytes` (this model, or a rewrite of it) for inputs of
    /// these shapes, after checking them against the declared inputs; and the inputs as
    /// planned.
    fn typed(&self, bytes: &[u8], shapes: &[Vec<usize>]) -> Result<(TypedModel, Vec<TensorSpec>)> {
        let inputs = &self.inputs;
        let err = |action| self.tract_error(action);
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(err("load the model"))?;
        let mut planned = Vec::with_capacity(inputs.len());
        for (i, (spec, shape)) in inputs.iter().zip(shapes).enumerate() {
            let dt = spec.datum_type().ok_or_else(|| {
                self.invalid(format!(
                    "input '{}' has element type {}, which tract does not run",
                    spec.name, spec.dtype
                ))
            })?;
            if let Some(dims) = &spec.dims {
                let fits = dims.len() == shape.len()
                    && dims
                        .iter()
                        .zip(shape)
                        .all(|(d, &s)| d.is_none_or(|d| d == s));
                if !fits {
                    return Err(self.invalid(format!(
                        "input '{}' is declared {}, cannot run it at {shape:?}",
                        spec.name,
                        show_dims(dims)
                    )));
                }
            }
            model = model
                .with_input_fact(i, dt.fact(shape).into())
                .map_err(err("set the input shape"))?;
            planned.push(TensorSpec {
                dims: Some(shape.iter().map(|&d| Some(d)).collect()),
                ..spec.clone()
            });
        }
        let typed = model.into_typed().map_err(err("analyse the model"))?;
        Ok((typed, planned))
    }

    /// The shape of every value of the model as written (its inputs at `shapes`), by name, as
    /// tract infers them; values whose shape is not concrete are absent.
    pub fn value_shapes(&self, shapes: &[Vec<usize>]) -> Result<HashMap<String, Vec<usize>>> {
        self.check_count(shapes)?;
        let (typed, _) = self.typed(&self.bytes, shapes)?;
        let mut out = HashMap::new();
        for node in &typed.nodes {
            for (slot, fact) in node.outputs.iter().enumerate() {
                let outlet = OutletId::new(node.id, slot);
                let (Some(label), Some(shape)) =
                    (typed.outlet_label(outlet), fact.fact.shape.as_concrete())
                else {
                    continue;
                };
                out.insert(label.to_string(), shape.to_vec());
            }
        }
        for (spec, shape) in self.inputs.iter().zip(shapes) {
            out.insert(spec.name.clone(), shape.clone());
        }
        Ok(out)
    }

    /// The input shapes to plan for: the `given` ones (by name, or in order when unnamed),
    /// else the declared ones with a symbolic first (batch) dimension taken as 1. A symbolic
    /// dimension elsewhere needs a given shape.
    pub fn shapes(&self, given: &[(Option<String>, Vec<usize>)]) -> Result<Vec<Vec<usize>>> {
        let mut slots: Vec<Option<Vec<usize>>> = vec![None; self.inputs.len()];
        let mut unnamed = given.iter().filter(|(n, _)| n.is_none()).map(|(_, s)| s);
        for (name, shape) in given {
            let Some(name) = name else { continue };
            let Some(i) = self.inputs.iter().position(|s| &s.name == name) else {
                return Err(self.invalid(format!("the model has no input named '{name}'")));
            };
            slots[i] = Some(shape.clone());
        }
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            *slot = unnamed.next().cloned();
        }
        if unnamed.next().is_some() {
            return Err(self.invalid(format!(
                "{} shape(s) given for {} input(s)",
                given.len(),
                self.inputs.len()
            )));
        }
        self.inputs
            .iter()
            .zip(slots)
            .map(|(spec, slot)| match slot {
                Some(shape) => Ok(shape),
                None => self.declared_shape(spec),
            })
            .collect()
    }

    fn declared_shape(&self, spec: &TensorSpec) -> Result<Vec<usize>> {
        let dims = spec.dims.as_ref().ok_or_else(|| {
            self.invalid(format!("input '{}' declares no shape; give one", spec.name))
        })?;
        dims.iter()
            .enumerate()
            .map(|(i, d)| match (i, d) {
                (_, Some(d)) => Ok(*d),
                (0, None) => Ok(1),
                (_, None) => Err(self.invalid(format!(
                    "input '{}' is declared {}: dimension {i} is symbolic; give its shape",
                    spec.name,
                    show_dims(dims)
                ))),
            })
            .collect()
    }

    fn check_count(&self, shapes: &[Vec<usize>]) -> Result<()> {
        if shapes.len() == self.inputs.len() {
            return Ok(());
        }
        Err(self.invalid(format!(
            "the model has {} input(s), {} shape(s) given",
            self.inputs.len(),
            shapes.len()
        )))
    }

    /// Orders the given tensors as the model's inputs: named ones by name, unnamed ones in
    /// the order of the inputs not named, and checks each one's element type and rank (and
    /// the dimensions the file fixes). Every mismatch is an error naming the input.
    pub fn bind(&self, given: Vec<(Option<String>, Tensor)>) -> Result<Vec<Tensor>> {
        let specs = &self.inputs;
        let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
        let mut unnamed = Vec::new();
        for (name, t) in given {
            match name {
                Some(n) => {
                    let Some(i) = specs.iter().position(|s| s.name == n) else {
                        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                        return Err(self.invalid(format!(
                            "the model has no input '{n}' (its inputs: {})",
                            names.join(", ")
                        )));
                    };
                    if slots[i].replace(t).is_some() {
                        return Err(self.invalid(format!("input '{n}' is given twice")));
                    }
                }
                None => unnamed.push(t),
            }
        }
        let mut unnamed = unnamed.into_iter();
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            *slot = unnamed.next();
        }
        if unnamed.next().is_some() {
            return Err(self.invalid(format!(
                "more tensors given than the model has inputs ({})",
                specs.len()
            )));
        }
        specs
            .iter()
            .zip(slots)
            .map(|(spec, t)| {
                let t = t.ok_or_else(|| {
                    self.invalid(format!(
                        "input '{}' ({} {}) is missing",
                        spec.name,
                        spec.dtype,
                        spec.dims.as_deref().map(show_dims).unwrap_or_default()
                    ))
                })?;
                if Some(t.datum_type()) != spec.datum_type() {
                    return Err(self.invalid(format!(
                        "input '{}' is {}, the tensor given is {:?}",
                        spec.name,
                        spec.dtype,
                        t.datum_type()
                    )));
                }
                if let Some(dims) = &spec.dims {
                    let fits = dims.len() == t.rank()
                        && dims
                            .iter()
                            .zip(t.shape())
                            .all(|(d, &s)| d.is_none_or(|d| d == s));
                    if !fits {
                        return Err(self.invalid(format!(
                            "input '{}' is {} {}, the tensor given has shape {:?}",
                            spec.name,
                            spec.dtype,
                            show_dims(dims),
                            t.shape()
                        )));
                    }
                }
                Ok(t)
            })
            .collect()
    }

    fn invalid(&self, reason: String) -> Error {
        Error::Invalid {
            path: self.origin.clone(),
            reason,
        }
    }
}

fn show_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

impl Model {
    /// Reads, validates and plans the model at `path` for inputs of these shapes.
    pub fn load(path: impl AsRef<Path>, shapes: &[Vec<usize>], kind: Plan) -> Result<Model> {
        let start = Instant::now();
        phase("start");
        let source = Source::read(path)?;
        phase("read, decode, validate");
        let read = start.elapsed().as_secs_f64();
        let mut m = source.plan(shapes, kind)?;
        m.times.read = read;
        Ok(m)
    }

    /// Where the model came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The inputs as planned (fixed shapes).
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs, with their shapes when tract knows them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// What loading cost.
    pub fn times(&self) -> LoadTimes {
        self.times
    }

    /// What msn-fold's passes did before tract saw the model (`None` for a reference plan).
    pub fn fold_report(&self) -> Option<&msn_fold::Report> {
        self.fold.as_ref()
    }

    /// How many nodes the guards rewrote.
    pub fn guarded(&self) -> usize {
        self.guarded
    }

    /// Runs the model on tract tensors, one per input, after checking their types and shapes.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Inference(format!(
                "{}: {} input(s) given, the model takes {}",
                self.origin.display(),
                inputs.len(),
                self.inputs.len()
            )));
        }
        for (t, spec) in inputs.iter().zip(&self.inputs) {
            let want: Vec<usize> = spec.dims.iter().flatten().flatten().copied().collect();
            if t.shape() != want.as_slice() || Some(t.datum_type()) != spec.datum_type() {
                return Err(Error::Inference(format!(
                    "{}: input '{}' is {:?} of {:?}, the plan takes {want:?} of {}",
                    self.origin.display(),
                    spec.name,
                    t.shape(),
                    t.datum_type(),
                    spec.dtype
                )));
            }
        }
        let inputs = inputs
            .into_iter()
            .map(|t| self.to_plan(t))
            .collect::<Result<Vec<_>>>()?;
        let values = inputs.into_iter().map(|t| t.into_tvalue()).collect();
        let out = crate::on_executor(|| self.plan.run(values))
            .map_err(|e| Error::Inference(format!("{}: {e:#}", self.origin.display())))?;
        out.into_iter()
            .map(|v| self.for_caller(v.into_tensor()))
            .collect()
    }

    /// tract's op name of every node of the plan, in plan order.
    pub fn ops(&self) -> Vec<String> {
        let model = self.plan.model();
        model
            .nodes
            .iter()
            .map(|n| n.op().name().to_string())
            .collect()
    }

    /// True when the plan computes in half precision.
    pub fn is_half(&self) -> bool {
        self.half
    }

    /// An f32 input as the plan takes it (f16 in a half-precision plan).
    fn to_plan(&self, t: Tensor) -> Result<Tensor> {
        self.convert(t, f32::datum_type(), f16::datum_type())
    }

    /// An output as callers get it (f32 from a half-precision plan).
    fn for_caller(&self, t: Tensor) -> Result<Tensor> {
        self.convert(t, f16::datum_type(), f32::datum_type())
    }

    fn convert(&self, t: Tensor, from: DatumType, to: DatumType) -> Result<Tensor> {
        if !self.half || t.datum_type() != from {
            return Ok(t);
        }
        t.cast_to_dt(to)
            .map(|c| c.into_owned())
            .map_err(|e| Error::Inference(format!("{}: {e:#}", self.origin.display())))
    }

    /// Runs the model `rounds` times on `inputs`, timing every node of tract's plan: per node
    /// (in plan order) its name, tract's op name and the median of its times in seconds. With
    /// `MSN_INSN_MARKS` set, each node's evaluation is bracketed by [`msn_kernels::probe`] marks
    /// and named on stderr (`insn-mark ID OP NAME`), for `scripts/board_cost.sh`.
    pub fn profile(&self, inputs: Vec<Tensor>, rounds: usize) -> Result<Vec<NodeTime>> {
        let model = self.plan.model();
        let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); model.nodes.len()];
        let inference =
            |e: TractError| Error::Inference(format!("{}: {e:#}", self.origin.display()));
        let mut state = self.plan.spawn().map_err(inference)?;
        for _ in 0..rounds.max(1) {
            let values = inputs
                .iter()
                .map(|t| self.to_plan(t.clone()).map(|t| t.into_tvalue()))
                .collect::<Result<_>>()?;
            crate::on_executor(|| {
                state.run_plan_with_eval(values, |ctx, op_state, node, input| {
                    let start = Instant::now();
                    msn_kernels::probe::mark();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                    msn_kernels::probe::mark();
                    times[node.id].push(start.elapsed().as_secs_f64());
                    if msn_kernels::probe::enabled() {
                        // What the two marks bracketed, for scripts/board_cost.sh.
                        eprintln!(
                            "insn-mark\t{}\t{}\t{}",
                            node.id,
                            node.op().name(),
                            node.name
                        );
                    }
                    out
                })
            })
            .map_err(inference)?;
        }
        Ok(model
            .nodes
            .iter()
            .zip(times)
            .filter(|(_, t)| !t.is_empty())
            .map(|(node, mut t)| {
                t.sort_by(f64::total_cmp);
                NodeTime {
                    name: node.name.clone(),
                    op: node.op().name().to_string(),
                    seconds: t[t.len() / 2],
                    info: node.op().info().unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Runs a model with one f32 input and returns its f32 outputs.
    pub fn run_f32(&self, input: ndarray::ArrayD<f32>) -> Result<Vec<ndarray::ArrayD<f32>>> {
        self.run(vec![Tensor::from(input)])?
            .into_iter()
            .map(|t| {
                t.into_plain_array::<f32>()
                    .map_err(|e| Error::Inference(format!("{}: {e:#}", self.origin.display())))
            })
            .collect()
    }
}
