//! The backbone cut at its feature tensor, and the features of images run through it in tract.

use crate::folders::Example;
use crate::{Error, Result};
use image::DynamicImage;
use msn_onnx::index::Index;
use msn_onnx::ModelProto;
use msn_runtime::{Classifier, LoadOptions, Preprocess, PreprocessOverrides};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Ops between the last Gemm/MatMul and the output that do not change what the features are.
const AFTER_LAST_LAYER: [&str; 6] = [
    "Identity",
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Add",
    "Flatten",
];

/// The value a head reads: `name` if given (it must be computed by a node), else the input of
/// the last Gemm or MatMul before the first output (the pooled features of a classifier).
pub fn feature_value(model: &ModelProto, name: Option<&str>, path: &Path) -> Result<String> {
    let bad = |reason: String| Error::Backbone {
        path: path.to_path_buf(),
        reason,
    };
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("the model has no graph".into()))?;
    let idx = Index::new(g);
    if let Some(name) = name {
        return match idx.producer.get(name) {
            Some(_) => Ok(name.to_string()),
            None if idx.is_constant(name) => Err(bad(format!(
                "--feature '{name}' is a constant (an initializer), not a feature tensor"
            ))),
            None => Err(bad(format!(
                "--feature '{name}': no node computes a value of that name"
            ))),
        };
    }
    let hint = "; name the feature tensor with --feature";
    let output = g
        .output
        .first()
        .ok_or_else(|| bad(format!("the graph has no output{hint}")))?
        .name()
        .to_string();
    let mut value = output.clone();
    for _ in 0..=g.node.len() {
        let node = idx
            .producer
            .get(&value)
            .map(|&i| &g.node[i])
            .ok_or_else(|| {
                bad(format!(
                    "cannot find the feature tensor: no node computes '{value}'{hint}"
                ))
            })?;
        match node.op_type() {
            "Gemm" | "MatMul" => return Ok(node.input[0].clone()),
            op if AFTER_LAST_LAYER.contains(&op) => {
                // A bias Add after a MatMul: follow its computed operand.
                value = node
                    .input
                    .iter()
                    .find(|i| !i.is_empty() && !idx.is_constant(i))
                    .cloned()
                    .ok_or_else(|| bad(format!("cannot find the feature tensor: '{value}' is computed from constants{hint}")))?;
            }
            op => {
                return Err(bad(format!(
                    "cannot find the feature tensor: output '{output}' comes from a {op} node, not a Gemm or MatMul{hint}"
                )))
            }
        }
    }
    Err(bad(format!("cannot find the feature tensor{hint}")))
}

/// The backbone up to `feature`: that value is the only output, what only the rest needed is
/// gone, and so are the `msn.*` keys that described the old outputs (labels, provenance).
pub fn cut(model: &ModelProto, feature: &str) -> ModelProto {
    let mut m = model.clone();
    let g = m.graph.get_or_insert_with(Default::default);
    g.output = vec![msn_onnx::builder::float_value(feature)];
    msn_fold::passes::eliminate::dead_code(g);
    m.metadata_props.retain(|p| {
        !p.key().starts_with("msn.")
            || [
                msn_onnx::meta::INPUT_LAYOUT,
                msn_onnx::meta::INPUT_SHAPE,
                msn_onnx::meta::COLOR,
                msn_onnx::meta::RESIZE,
                msn_onnx::meta::SCALE,
                msn_onnx::meta::MEAN,
                msn_onnx::meta::STD,
            ]
            .contains(&p.key())
    });
    m
}

/// An image that could not be read, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The features of some images: one row per view, its class, and the images skipped.
pub struct Features {
    pub x: Array2<f32>,
    pub y: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

/// The cut backbone, planned by tract, with its preprocessing.
pub struct Extractor {
    clf: Classifier,
}

/// A random crop of 60-100% of the area (aspect ratio 3:4 to 4:3), mirrored half the time.
pub fn augment(img: &DynamicImage, rng: &mut ChaCha8Rng) -> DynamicImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let area: f64 = rng.random_range(0.6..=1.0);
    let ratio: f64 = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
    let cw = ((area * ratio).sqrt().min(1.0) * w).round().max(1.0) as u32;
    let ch = ((area / ratio).sqrt().min(1.0) * h).round().max(1.0) as u32;
    let x = rng.random_range(0..=img.width() - cw.min(img.width()));
    let y = rng.random_range(0..=img.height() - ch.min(img.height()));
    let out = img.crop_imm(x, y, cw, ch);
    if rng.random_bool(0.5) {
        out.fliph()
    } else {
        out
    }
}

impl Extractor {
    /// Plans the cut backbone (`path` names it in messages) for `batch` images per run (when
    /// its batch dimension is free), with `preprocess` over its metadata.
    pub fn new(
        cut: &ModelProto,
        path: &Path,
        batch: usize,
        preprocess: &PreprocessOverrides,
    ) -> Result<Self> {
        let options = LoadOptions {
            batch: Some(batch),
            preprocess: preprocess.clone(),
            labels: None,
            ..LoadOptions::default()
        };
        let clf = Classifier::from_bytes(msn_onnx::io::to_bytes(cut), path, &options)?;
        Ok(Extractor { clf })
    }

    /// Values per feature row.
    pub fn width(&self) -> usize {
        self.clf.classes()
    }

    /// The preprocessing in force.
    pub fn preprocess(&self) -> &Preprocess {
        self.clf.preprocess()
    }

    /// Features of preprocessed images.
    pub fn run(&self, images: &[Array3<f32>]) -> Result<Array2<f32>> {
        Ok(self.clf.run_many(images)?)
    }

    /// Features of `examples`, `views` rows per image: the image as is, then random crops and
    /// mirrors (seeded by `seed` and the image's position). Unreadable images are skipped.
    /// `progress` is told how many images are done.
    pub fn extract(
        &self,
        examples: &[Example],
        views: usize,
        seed: u64,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Features> {
        let views = views.max(1);
        let chunk = (self.clf.batch() * 4).max(16);
        let (mut rows, mut y, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        let pre = self.clf.preprocess();
        for (c, part) in examples.chunks(chunk).enumerate() {
            let decoded: Vec<_> = part
                .par_iter()
                .enumerate()
                .map(|(i, e)| {
                    let img = msn_runtime::preprocess::decode(&e.path)?;
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        seed ^ ((c * chunk + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    let mut out = vec![pre.apply(&img)];
                    for _ in 1..views {
                        out.push(pre.apply(&augment(&img, &mut rng)));
                    }
                    Ok::<_, msn_runtime::Error>(out)
                })
                .collect();
            let mut batch = Vec::new();
            for (e, d) in part.iter().zip(decoded) {
                match d {
                    Ok(v) => {
                        y.extend(std::iter::repeat_n(e.class, v.len()));
                        batch.extend(v);
                    }
                    Err(err) => skipped.push(Skipped {
                        path: e.path.clone(),
                        reason: err.to_string(),
                    }),
                }
            }
            if !batch.is_empty() {
                rows.push(self.run(&batch)?);
            }
            progress(part.len());
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let x = if views.is_empty() {
            Array2::zeros((0, self.width()))
        } else {
            ndarray::concatenate(ndarray::Axis(0), &views).expect("same width")
        };
        Ok(Features { x, y, skipped })
    }
}
