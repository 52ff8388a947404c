//! A loaded, optimised classifier: the model plan, its batch size, its preprocessing and labels.

use crate::model::{Model, Plan, Source};
use crate::preprocess::{stack, Preprocess};
use crate::{Error, Result};
use msn_onnx::meta::{Color, ImageMeta, Resize};
use ndarray::{Array2, Array3, Array4, Axis};
use std::path::{Path, PathBuf};

/// Preprocessing settings given by the user; each one set here wins over the model's metadata.
#[derive(Debug, Clone, Default)]
pub struct PreprocessOverrides {
    /// Resize the shorter side to this, then centre-crop.
    pub resize: Option<u32>,
    /// Centre-crop (or, without `resize`, plainly resize) to this square size.
    pub crop: Option<u32>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Convert images to grayscale (the model must take one channel).
    pub gray: bool,
}

/// How to load a classifier.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Images per run when the model's batch dimension is free (default 1).
    pub batch: Option<usize>,
    pub preprocess: PreprocessOverrides,
    /// A labels file (one class per line) that replaces the model's own labels.
    pub labels: Option<PathBuf>,
    /// How tract plans the model ([`Plan::Optimized`] unless an A/B run or `--f16` says).
    pub plan: Plan,
}

/// An ONNX image classifier, optimised by tract for a fixed batch size.
pub struct Classifier {
    path: PathBuf,
    model: Model,
    batch: usize,
    classes: usize,
    preprocess: Preprocess,
    labels: Vec<String>,
    meta: ImageMeta,
    load_seconds: f64,
}

/// The image input's dimensions as written in the file: `Some(n)` fixed, `None` symbolic.
fn input_dims(source: &Source) -> Result<Vec<Option<usize>>> {
    let not_image = |reason: String| Error::NotImageModel {
        path: source.origin().to_path_buf(),
        reason,
    };
    let inputs = source.inputs();
    let input = match inputs {
        [one] => one,
        [] => return Err(not_image("the graph has no input".into())),
        many => {
            return Err(not_image(format!(
                "the graph has {} inputs, expected one image",
                many.len()
            )))
        }
    };
    if input.dtype != "FLOAT" {
        return Err(not_image(format!(
            "input '{}' is {}, expected FLOAT",
            input.name, input.dtype
        )));
    }
    let dims = input.dims.clone().unwrap_or_default();
    if dims.len() != 4 {
        return Err(not_image(format!(
            "input '{}' has rank {}, expected 4 (N x C x H x W)",
            input.name,
            dims.len()
        )));
    }
    Ok(dims)
}

impl Classifier {
    /// Loads, validates and optimises the model at `path`.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            cause: e,
        })?;
        Self::from_bytes(bytes, path, options)
    }

    /// Loads a model held in memory; `path` names it in messages.
    pub fn from_bytes(
        bytes: impl Into<Vec<u8>>,
        path: &Path,
        options: &LoadOptions,
    ) -> Result<Self> {
        let start = std::time::Instant::now();
        let not_image = |reason: String| Error::NotImageModel {
            path: path.to_path_buf(),
            reason,
        };
        let source = Source::from_bytes(bytes.into(), path)?;
        let meta = ImageMeta::from_model(source.model())?;
        let dims = input_dims(&source)?;
        let o = &options.preprocess;

        let meta_shape = meta.input_shape;
        let channels = dims[1]
            .or(meta_shape.map(|s| s[0]))
            .unwrap_or(if o.gray { 1 } else { 3 });
        if channels != 1 && channels != 3 {
            return Err(not_image(format!("{channels} channels, expected 1 or 3")));
        }
        if o.gray && channels != 1 {
            return Err(not_image(format!(
                "--gray given, but the model takes {channels} channels"
            )));
        }
        if meta.color == Some(Color::Gray) && channels != 1 {
            return Err(not_image(
                "metadata says gray, but the input has 3 channels".into(),
            ));
        }
        let crop = o.crop.map(|c| c as usize);
        let height = dims[2].or(meta_shape.map(|s| s[1])).or(crop);
        let width = dims[3].or(meta_shape.map(|s| s[2])).or(crop);
        let (Some(height), Some(width)) = (height, width) else {
            return Err(not_image(
                "its height and width are not fixed; give --crop N".into(),
            ));
        };
        if let Some(c) = crop {
            if (c, c) != (height, width) {
                return Err(not_image(format!(
                    "--crop {c}, but the model takes {height}x{width} images"
                )));
            }
        }
        let resize = match (o.resize, o.crop) {
            (Some(n), _) => Resize::ShorterThenCrop(n),
            (None, Some(_)) => Resize::Exact,
            (None, None) => meta.resize.unwrap_or(Resize::Exact),
        };
        let preprocess = Preprocess {
            channels,
            height,
            width,
            resize,
            scale: o.scale.or(meta.scale).unwrap_or(1.0 / 255.0),
            mean: o.mean.clone().or(meta.mean.clone()).unwrap_or(vec![0.0]),
            std: o.std.clone().or(meta.std.clone()).unwrap_or(vec![1.0]),
        };
        preprocess.validate()?;

        let batch = dims[0].unwrap_or(options.batch.unwrap_or(1).max(1));
        let model = source.plan(&[vec![batch, channels, height, width]], options.plan)?;
        let out_shape = model
            .outputs()
            .first()
            .and_then(|o| o.dims.clone())
            .and_then(|d| d.into_iter().collect::<Option<Vec<usize>>>())
            .ok_or_else(|| not_image("the output shape is not fixed".into()))?;
        if out_shape.first() != Some(&batch) {
            return Err(not_image(format!(
                "output shape {out_shape:?} does not start with the batch size {batch}"
            )));
        }
        let classes: usize = out_shape[1..].iter().product();

        let labels = match &options.labels {
            Some(file) => {
                let labels = crate::read_labels(file)?;
                if labels.len() != classes {
                    return Err(Error::LabelCount {
                        path: file.clone(),
                        count: labels.len(),
                        outputs: classes,
                    });
                }
                labels
            }
            None => match &meta.labels {
                Some(l) if l.len() == classes => l.clone(),
                Some(l) => {
                    return Err(Error::LabelCount {
                        path: path.to_path_buf(),
                        count: l.len(),
                        outputs: classes,
                    })
                }
                None => Vec::new(),
            },
        };
        Ok(Classifier {
            path: path.to_path_buf(),
            model,
            batch,
            classes,
            preprocess,
            labels,
            meta,
            load_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The model file this classifier was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Images per run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of classes (outputs per image).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The preprocessing in force (metadata merged with overrides).
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// The model's own `msn.*` metadata.
    pub fn meta(&self) -> &ImageMeta {
        &self.meta
    }

    /// Seconds spent loading, optimising and planning the model.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    /// The name of class `i` (`class i` when the model has no labels).
    pub fn label(&self, i: usize) -> String {
        self.labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("class {i}"))
    }

    /// The class names (empty when the model has none and no labels file was given).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The planned model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs one full batch (`batch x C x H x W`) and returns `batch x classes` logits.
    pub fn run(&self, input: Array4<f32>) -> Result<Array2<f32>> {
        let outputs = self.model.run_f32(input.into_dyn())?;
        let out = outputs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Inference(format!("{}: no output", self.path.display())))?;
        let n = out.shape()[0];
        out.into_shape_with_order((n, self.classes))
            .map_err(|e| Error::Inference(e.to_string()))
    }

    /// Runs any number of preprocessed images, in batches, and returns one logits row each.
    pub fn run_many(&self, images: &[Array3<f32>]) -> Result<Array2<f32>> {
        let mut out = Array2::<f32>::zeros((images.len(), self.classes));
        for (i, chunk) in images.chunks(self.batch).enumerate() {
            let logits = self.run(stack(chunk, self.batch))?;
            out.slice_mut(ndarray::s![
                i * self.batch..i * self.batch + chunk.len(),
                ..
            ])
            .assign(&logits.slice(ndarray::s![..chunk.len(), ..]));
        }
        Ok(out)
    }

    /// Runs one preprocessed image and returns its logits.
    pub fn run_one(&self, image: &Array3<f32>) -> Result<Vec<f32>> {
        let logits = self.run_many(std::slice::from_ref(image))?;
        Ok(logits.index_axis(Axis(0), 0).to_vec())
    }
}
