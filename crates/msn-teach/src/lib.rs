//! # msn-teach: a new classifier from a pretrained backbone and a folder of photos
//!
//! 1. [`folders`]: `DIR/train/<class>/*` (and `DIR/test/<class>/*`, or a held-out share).
//! 2. [`backbone`]: the backbone is cut at its feature tensor (by default the input of its
//!    last Gemm or MatMul: the pooled features) and run in tract on every image, once, with a
//!    few random crops and mirrors per image under augmentation; the features are cached.
//! 3. [`head`]: a linear head (or a hidden layer with MSN, BN or no norm) trained on the
//!    cached features by our autograd.
//! 4. [`assemble`]: the cut backbone and the head (written by msn-export, SN and MSN visible),
//!    folded by msn-fold into plain Gemms, with the labels and the preprocessing in its
//!    metadata; then the whole model, loaded as `msn-classify` loads it, is checked against
//!    the head on the cached features.

pub mod backbone;
pub mod folders;
pub mod head;

use msn_onnx::meta::{self, Color, ImageMeta};
use msn_onnx::ModelProto;
use msn_runtime::{Classifier, LoadOptions, PreprocessOverrides};
use std::path::PathBuf;
use std::time::Instant;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Backbone { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] msn_runtime::Error),
    #[error(transparent)]
    Onnx(#[from] msn_onnx::Error),
    #[error("{0}")]
    Check(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Prefix of every name the head adds to the backbone's graph.
pub const PREFIX: &str = "msn_teach";

/// Provenance written into the taught model's metadata.
pub const BACKBONE: &str = "msn.backbone";
pub const FEATURE: &str = "msn.feature";

/// The metadata that makes a model self-describing for `msn-classify`: the preprocessing in
/// force and the class names.
pub fn image_meta(p: &msn_runtime::Preprocess, labels: &[String]) -> ImageMeta {
    ImageMeta {
        input_shape: Some([p.channels, p.height, p.width]),
        color: Some(if p.channels == 1 {
            Color::Gray
        } else {
            Color::Rgb
        }),
        resize: Some(p.resize),
        scale: Some(p.scale),
        mean: Some(p.mean.clone()),
        std: Some(p.std.clone()),
        labels: Some(labels.to_vec()),
    }
}

/// The cut backbone with the head on its feature tensor, folded; `meta` and `extra` go into
/// the metadata (every other `msn.*` key of the backbone is dropped). The output is `logits`.
pub fn assemble(
    cut: &ModelProto,
    feature: &str,
    head: &msn_nn::Sequential,
    meta: &ImageMeta,
    extra: &[(&str, String)],
) -> Result<(ModelProto, msn_fold::Report)> {
    let mut model = cut.clone();
    let g = model.graph.get_or_insert_with(Default::default);
    let idx = msn_onnx::index::Index::new(g);
    if let Some(clash) = idx
        .producer
        .keys()
        .chain(idx.init.keys())
        .find(|n| n.starts_with(PREFIX))
    {
        return Err(Error::Check(format!(
            "the backbone already has a value named '{clash}'"
        )));
    }
    let taken = |n: &str| idx.producer.contains_key(n) || idx.init.contains_key(n);
    let output = if taken("logits") {
        format!("{PREFIX}.logits")
    } else {
        "logits".to_string()
    };
    let batch = g
        .input
        .iter()
        .find(|i| !idx.init.contains_key(i.name()))
        .and_then(fixed_batch)
        .unwrap_or(-1);
    drop(idx);
    // A feature that a Flatten to rows made is read as it is; anything else is flattened.
    let flat = msn_onnx::index::Index::new(g)
        .producer
        .get(feature)
        .map(|&i| &g.node[i])
        .is_some_and(|n| {
            n.op_type() == "Flatten"
                && n.attribute
                    .iter()
                    .find(|a| a.name() == "axis")
                    .is_none_or(|a| a.i() == 1)
        });
    let features = if flat {
        feature.to_string()
    } else {
        let features = format!("{PREFIX}.features");
        g.node.push(msn_onnx::NodeProto {
            name: Some(features.clone()),
            op_type: Some("Flatten".into()),
            input: vec![feature.to_string()],
            output: vec![features.clone()],
            attribute: vec![msn_onnx::builder::attr::int("axis", 1)],
            doc_string: Some("the backbone's features, one row per image".into()),
            ..Default::default()
        });
        features
    };
    let (fragment, last) =
        msn_export::export_fragment(head, &format!("{PREFIX}.head"), &features, 2);
    g.node.extend(fragment.node);
    g.initializer.extend(fragment.initializer);
    g.node.push(msn_onnx::NodeProto {
        name: Some(format!("{PREFIX}.output")),
        op_type: Some("Identity".into()),
        input: vec![last],
        output: vec![output.clone()],
        ..Default::default()
    });
    let classes = meta.labels.as_ref().map_or(0, Vec::len) as i64;
    g.output = vec![msn_onnx::builder::value_info(&output, &[batch, classes])];

    model
        .metadata_props
        .retain(|p| !p.key().starts_with("msn."));
    for (k, v) in meta.to_pairs() {
        meta::set(&mut model, k, v);
    }
    for (k, v) in extra {
        meta::set(&mut model, k, v.clone());
    }
    model.producer_name = Some("msn teach".into());
    model.producer_version = Some(env!("CARGO_PKG_VERSION").into());
    let report = msn_fold::fold(&mut model);
    Ok((model, report))
}

/// Everything `msn teach` is asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub backbone: PathBuf,
    pub data: PathBuf,
    pub output: PathBuf,
    pub feature: Option<String>,
    pub head: head::HeadConfig,
    /// Feature rows per training image: 1, or more with random crops and mirrors.
    pub views: usize,
    pub preprocess: PreprocessOverrides,
    /// Images per backbone run when its batch dimension is free.
    pub batch: usize,
    /// Share of each class held out for testing when there is no `test/` folder.
    pub test_fraction: f64,
    /// Test images on which the written model is checked against the head.
    pub verify: usize,
    pub progress: bool,
}

/// What `msn teach` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub output: PathBuf,
    pub classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    pub test_held_out: bool,
    pub skipped: Vec<(PathBuf, String)>,
    pub feature: String,
    pub feature_size: usize,
    pub views: usize,
    pub head: String,
    pub epochs: Vec<head::Epoch>,
    pub test_accuracy: Option<f32>,
    /// Largest |logit difference| between the written model (tract) and the head (autograd)
    /// on the checked images, and how many were checked.
    pub verify_max_abs_diff: f32,
    pub verified_images: usize,
    pub nodes: usize,
    pub bytes: usize,
    pub extract_seconds: f64,
    pub train_seconds: f64,
    pub total_seconds: f64,
}

fn bar(show: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Reads the folder, extracts and caches the features, trains the head, writes the model
/// (atomically) and checks it.
pub fn run(req: &Request) -> Result<Outcome> {
    let start = Instant::now();
    let folders = folders::scan(&req.data, req.test_fraction, req.head.seed)?;
    let bytes = std::fs::read(&req.backbone).map_err(|e| Error::Backbone {
        path: req.backbone.clone(),
        reason: e.to_string(),
    })?;
    let source = msn_runtime::Source::from_bytes(bytes, &req.backbone)?;
    let feature = backbone::feature_value(source.model(), req.feature.as_deref(), &req.backbone)?;
    let cut = backbone::cut(source.model(), &feature);
    let extractor = backbone::Extractor::new(&cut, &req.backbone, req.batch, &req.preprocess)?;

    let t = Instant::now();
    let total = folders.train.len() + folders.test.len();
    let pb = bar(req.progress, total, "features");
    let step = |n: usize| pb.inc(n as u64);
    let train = extractor.extract(&folders.train, req.views, req.head.seed, &step)?;
    let test = extractor.extract(&folders.test, 1, req.head.seed, &step)?;
    pb.finish_and_clear();
    let extract_seconds = t.elapsed().as_secs_f64();
    let skipped: Vec<_> = train.skipped.iter().chain(&test.skipped).collect();
    for s in &skipped {
        eprintln!("warning: skipped {}: {}", s.path.display(), s.reason);
    }
    for (class, name) in folders.classes.iter().enumerate() {
        if !train.y.contains(&class) {
            return Err(Error::Data {
                path: req.data.join("train").join(name),
                reason: "no readable image in this class folder".into(),
            });
        }
    }

    let t = Instant::now();
    let head = head::build(extractor.width(), folders.classes.len(), &req.head);
    let show = req.progress;
    let pb = bar(show, req.head.epochs, "head");
    let plain = show && pb.is_hidden();
    let test_set = (test.x.nrows() > 0).then_some((&test.x, test.y.as_slice()));
    let epochs = head::train(&head, (&train.x, &train.y), test_set, &req.head, &mut |e| {
        let acc = e
            .test_accuracy
            .map_or(String::new(), |a| format!(" test {:.4}", a));
        let line = format!(
            "epoch {}/{}: loss {:.4} train {:.4}{acc}",
            e.epoch, req.head.epochs, e.train_loss, e.train_accuracy
        );
        if plain {
            eprintln!("{line}");
        } else {
            pb.println(&line);
            pb.inc(1);
        }
    });
    pb.finish_and_clear();
    let train_seconds = t.elapsed().as_secs_f64();
    let test_accuracy = epochs.last().and_then(|e| e.test_accuracy);

    let stem = req
        .backbone
        .file_name()
        .map_or("backbone".into(), |s| s.to_string_lossy().into_owned());
    let mut extra = vec![
        (
            meta::ARCHITECTURE,
            format!("{stem} + {}", req.head.describe()),
        ),
        (meta::NORM, req.head.norm.to_string()),
        (
            meta::DATASET,
            req.data
                .file_name()
                .map_or(String::new(), |s| s.to_string_lossy().into_owned()),
        ),
        (BACKBONE, stem),
        (FEATURE, feature.clone()),
    ];
    if let Some(a) = test_accuracy {
        extra.push((meta::TEST_ACCURACY, format!("{a:.4}")));
    }
    let meta = image_meta(extractor.preprocess(), &folders.classes);
    let (model, _) = assemble(&cut, &feature, &head, &meta, &extra)?;
    let model_bytes = msn_onnx::io::to_bytes(&model);

    // The written model, loaded as msn-classify loads it (no flags), against the head.
    let checked: Vec<_> = folders
        .test
        .iter()
        .chain(&folders.train)
        .filter(|e| !skipped.iter().any(|s| s.path == e.path))
        .take(req.verify)
        .cloned()
        .collect();
    let clf = Classifier::from_bytes(model_bytes.clone(), &req.output, &LoadOptions::default())?;
    let f = extractor.extract(&checked, 1, 0, &|_| {})?;
    let want = head::logits(&head, &f.x);
    let images: Vec<_> = checked
        .iter()
        .map(|e| clf.preprocess().load(&e.path))
        .collect::<msn_runtime::Result<_>>()?;
    let got = clf.run_many(&images)?;
    let diff = (&got - &want).iter().fold(0.0f32, |m, d| m.max(d.abs()));
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    if diff.is_nan() || diff > 1e-3 * scale {
        return Err(Error::Check(format!(
            "the assembled model's logits differ from the head's by {diff:e} (largest logit {scale:e}): not written"
        )));
    }
    msn_onnx::io::write_atomic(&req.output, &model_bytes)?;

    Ok(Outcome {
        output: req.output.clone(),
        classes: folders.classes.clone(),
        train_images: folders.train.len() - train.skipped.len(),
        test_images: folders.test.len() - test.skipped.len(),
        test_held_out: folders.held_out,
        skipped: skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason.clone()))
            .collect(),
        feature,
        feature_size: extractor.width(),
        views: req.views.max(1),
        head: req.head.describe(),
        epochs,
        test_accuracy,
        verify_max_abs_diff: diff,
        verified_images: checked.len(),
        nodes: model.graph.as_ref().map_or(0, |g| g.node.len()),
        bytes: model_bytes.len(),
        extract_seconds,
        train_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The first dimension of a graph input, when it is fixed.
fn fixed_batch(v: &msn_onnx::ValueInfoProto) -> Option<i64> {
    use msn_onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    match t.shape.as_ref()?.dim.first()?.value {
        Some(Value::DimValue(n)) if n > 0 => Some(n),
        _ => None,
    }
}
