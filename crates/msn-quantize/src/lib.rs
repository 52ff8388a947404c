//! # msn-quantize: int8 models calibrated on the user's own images
//!
//! [`quantize`] folds a float model with msn-fold's passes, runs calibration images through it in
//! tract to observe every activation that will be quantized ([`calibrate`]), and rewrites it
//! ([`rewrite`]): weights symmetric int8 per output channel, activations u8 (asymmetric, so a
//! ReLU's floor is exact), biases int32. The result keeps the float input and output, the
//! metadata (plus `msn.quantized`), and is checked against the float model by [`compare`].

pub mod arith;
pub mod calibrate;
pub mod rewrite;

pub use arith::{QParams, QType};
pub use calibrate::Method;
pub use rewrite::{Format, Settings};

use msn_onnx::proto::StringStringEntryProto;
use msn_onnx::ModelProto;
use msn_runtime::model::{Plan, Source};
use ndarray::Array4;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] msn_runtime::Error),
    #[error(transparent)]
    Onnx(#[from] msn_onnx::Error),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The metadata key recording how a model was quantized.
pub const QUANTIZED: &str = "msn.quantized";

/// How to quantize.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub method: Method,
    pub settings: Settings,
    /// Quantize depthwise convolutions too (tract 0.23 runs them in int8 through im2col and a
    /// matrix product, far slower than its float depthwise kernel).
    pub depthwise: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            method: Method::MinMax,
            settings: Settings {
                format: Format::QOperator,
                per_channel: true,
                activations: QType::U8,
            },
            depthwise: false,
        }
    }
}

/// One quantized activation.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub name: String,
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: i32,
}

/// int8 against float on the same images.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Agreement {
    pub images: usize,
    /// Share of images whose top-1 class is the same.
    pub top1_agreement: f64,
    /// Share of images whose float top-1 class is among the int8 top 5.
    pub top5_agreement: f64,
    /// Largest |int8 - float| over every output value.
    pub max_abs_error: f32,
    /// Mean |int8 - float| over every output value.
    pub mean_abs_error: f32,
    /// Largest |softmax(int8) - softmax(float)|.
    pub max_probability_error: f32,
}

/// What [`quantize`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: Format,
    pub per_channel: bool,
    pub method: &'static str,
    pub activations: QType,
    pub calibration_images: usize,
    /// msn-fold's passes before quantizing (pass -> rewrites).
    pub folded: Vec<(String, usize)>,
    /// Op type -> nodes run in int8.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Op type -> nodes left in float.
    pub float_ops: BTreeMap<String, usize>,
    pub tensors: Vec<Activation>,
}

/// Folds, calibrates on `images` (each `[1, C, H, W]`, preprocessed) and rewrites `source`.
pub fn quantize(
    source: &Source,
    images: &[Array4<f32>],
    options: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ModelProto, Report)> {
    let mut model = source.model().clone();
    let fold = msn_fold::fold(&mut model);
    let g = model.graph.as_ref().expect("validated: has a graph");
    let analysis = rewrite::analyze(g, options.depthwise);
    if analysis.quantized.is_empty() {
        return Err(Error::Unsupported(format!(
            "{}: no Conv, Gemm or MatMul with a constant weight to quantize",
            source.origin().display()
        )));
    }
    let ranges = calibrate::ranges(
        &model,
        source.origin(),
        &analysis.observe,
        images,
        options.method,
        progress,
    )?;
    let mut out = rewrite::rewrite(&model, &analysis, &ranges, options.settings)?;
    let mut quantized_ops = BTreeMap::new();
    for q in &analysis.quantized {
        *quantized_ops
            .entry(g.node[q.node].op_type().to_string())
            .or_insert(0) += 1;
        if let rewrite::Kind::Conv {
            activation: Some(a),
        } = q.kind
        {
            *quantized_ops
                .entry(format!("{} (folded into Conv)", g.node[a].op_type()))
                .or_insert(0) += 1;
        }
    }
    let tensors = analysis
        .observe
        .iter()
        .map(|name| {
            let (min, max) = ranges[name];
            let p = arith::activation_params(min, max, options.settings.activations);
            Activation {
                name: name.clone(),
                min,
                max,
                scale: p.scale,
                zero_point: p.zero_point,
            }
        })
        .collect();
    let report = Report {
        format: options.settings.format,
        per_channel: options.settings.per_channel,
        method: options.method.name(),
        activations: options.settings.activations,
        calibration_images: images.len(),
        folded: fold
            .passes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| (p.to_string(), *n))
            .collect(),
        quantized_ops,
        float_ops: analysis.float_ops.clone(),
        tensors,
    };
    let note = format!(
        "int8 ({}, weights {}, {} activations, {} calibration on {} images)",
        match report.format {
            Format::QOperator => "qoperator",
            Format::Qdq => "qdq",
        },
        if report.per_channel {
            "per channel"
        } else {
            "per tensor"
        },
        match report.activations {
            QType::U8 => "u8",
            QType::I8 => "s8",
        },
        report.method,
        images.len()
    );
    out.metadata_props.retain(|p| p.key() != QUANTIZED);
    out.metadata_props.push(StringStringEntryProto {
        key: Some(QUANTIZED.into()),
        value: Some(note),
    });
    Ok((out, report))
}

/// Runs two single-input models (float and its int8 form) on the same images in tract and
/// compares their first outputs.
pub fn compare(
    a: &Source,
    b: &Source,
    images: &[Array4<f32>],
) -> Result<(Agreement, Vec<usize>, Vec<usize>)> {
    let Some(first) = images.first() else {
        return Ok((Agreement::default(), vec![], vec![]));
    };
    let shape = [first.shape().to_vec()];
    let (pa, pb) = (
        a.plan(&shape, Plan::Optimized)?,
        b.plan(&shape, Plan::Optimized)?,
    );
    let (mut same, mut max, mut sum, mut count, mut pmax) = (0usize, 0f32, 0f64, 0usize, 0f32);
    let mut in_top5 = 0usize;
    let (mut top_a, mut top_b) = (Vec::new(), Vec::new());
    for image in images {
        let x = pa.run_f32(image.clone().into_dyn())?.swap_remove(0);
        let y = pb.run_f32(image.clone().into_dyn())?.swap_remove(0);
        let (xa, ya) = (
            x.iter().copied().collect::<Vec<_>>(),
            y.iter().copied().collect::<Vec<_>>(),
        );
        let (ta, tb) = (argmax(&xa), argmax(&ya));
        same += (ta == tb) as usize;
        in_top5 += msn_runtime::topk(&ya, 5).iter().any(|&(i, _)| i == ta) as usize;
        top_a.push(ta);
        top_b.push(tb);
        for (p, q) in xa.iter().zip(&ya) {
            let d = (p - q).abs();
            max = max.max(d);
            sum += d as f64;
            count += 1;
        }
        let (sa, sb) = (msn_runtime::softmax(&xa), msn_runtime::softmax(&ya));
        for (p, q) in sa.iter().zip(&sb) {
            pmax = pmax.max((p - q).abs());
        }
    }
    Ok((
        Agreement {
            images: images.len(),
            top1_agreement: same as f64 / images.len() as f64,
            top5_agreement: in_top5 as f64 / images.len() as f64,
            max_abs_error: max,
            mean_abs_error: (sum / count.max(1) as f64) as f32,
            max_probability_error: pmax,
        },
        top_a,
        top_b,
    ))
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Decodes a model held in memory for [`compare`] or the runtime; `origin` names it.
pub fn source(model: &ModelProto, origin: &Path) -> Result<Source> {
    Ok(Source::from_bytes(msn_onnx::io::to_bytes(model), origin)?)
}
