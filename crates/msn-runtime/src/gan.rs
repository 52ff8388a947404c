//! GAN generators on tract, and two measures of their samples that need no download: the
//! classifier score and the Fréchet distance, both on a classifier trained by us for the same
//! data set (the MNIST-world analogues of the Inception score and FID).
//!
//! - [`Generator`]: an ONNX generator, `[N, latent]` in, `[N, C, H, W]` in `[-1, 1]` out.
//! - [`FeatureClassifier`]: an ONNX classifier with a second output, its features: the global
//!   average of the activation that its last layer flattens (32 values for `cnn3`).
//! - [`classifier_score`]: `exp(E_x KL(p(y|x) || p(y)))`, from 1 (no class information) to the
//!   number of classes (confident and balanced).
//! - [`frechet_distance`]: `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)` between
//!   Gaussians fitted to two sets of features.

use crate::model::{Model, Plan, Source};
use crate::{Error, Result};
use msn_onnx::{ModelProto, NodeProto};
use ndarray::{s, Array1, Array2, Array4, ArrayView2, ArrayView4, Axis};
use std::path::{Path, PathBuf};

/// Runs `input` through `plan` in chunks of `batch` rows (the last one padded), returning each
/// output with the padding removed.
fn run_chunked(
    model: &Model,
    input: ArrayView4<f32>,
    batch: usize,
    outputs: usize,
) -> Result<Vec<ndarray::ArrayD<f32>>> {
    let n = input.shape()[0];
    let mut out: Vec<Vec<ndarray::ArrayD<f32>>> = vec![Vec::new(); outputs];
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let mut chunk =
            Array4::<f32>::zeros((batch, input.shape()[1], input.shape()[2], input.shape()[3]));
        chunk
            .slice_mut(s![..len, .., .., ..])
            .assign(&input.slice(s![start..start + len, .., .., ..]));
        let result = model.run_f32(chunk.into_dyn())?;
        for (slot, r) in out.iter_mut().zip(result) {
            slot.push(r.slice_axis(Axis(0), (..len).into()).to_owned());
        }
    }
    out.into_iter()
        .map(|parts| {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Inference(e.to_string()))
        })
        .collect()
}

/// An ONNX generator, optimised by tract for a fixed batch size.
pub struct Generator {
    path: PathBuf,
    model: Model,
    batch: usize,
    latent: usize,
    shape: [usize; 3],
}

impl Generator {
    /// Loads a generator file: one input `[N, latent]` with `latent` fixed, one `[N, C, H, W]`
    /// output. `batch` is used when the file's batch dimension is free.
    pub fn load(path: impl AsRef<Path>, batch: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            cause: e,
        })?;
        Self::from_bytes(bytes, path, batch)
    }

    /// Loads a generator held in memory; `path` names it in messages.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>, path: &Path, batch: usize) -> Result<Self> {
        let not_gen = |reason: String| Error::NotGenerator {
            path: path.to_path_buf(),
            reason,
        };
        let source = Source::from_bytes(bytes.into(), path)?;
        let inputs = source.inputs();
        let [input] = inputs else {
            return Err(not_gen(format!(
                "{} inputs, expected one latent vector",
                inputs.len()
            )));
        };
        let dims = input.dims.clone().unwrap_or_default();
        let latent = match dims.as_slice() {
            [n, Some(z)] => {
                if let Some(n) = n {
                    if *n != batch {
                        return Err(not_gen(format!("the batch size is fixed at {n}")));
                    }
                }
                *z
            }
            _ => {
                return Err(not_gen(format!(
                    "input '{}' is not [N, latent] with a fixed latent size",
                    input.name
                )))
            }
        };
        let model = source.plan(&[vec![batch, latent]], Plan::Optimized)?;
        let out: Vec<usize> = model
            .outputs()
            .first()
            .and_then(|o| o.dims.clone())
            .and_then(|d| d.into_iter().collect())
            .unwrap_or_default();
        let shape = match out.as_slice() {
            [n, c, h, w] if *n == batch => [*c, *h, *w],
            _ => {
                return Err(not_gen(format!(
                    "output shape {out:?} is not [{batch}, C, H, W]"
                )))
            }
        };
        Ok(Generator {
            path: path.to_path_buf(),
            model,
            batch,
            latent,
            shape,
        })
    }

    pub fn latent(&self) -> usize {
        self.latent
    }

    /// Channels, height and width of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Images for any number of latent vectors (`[N, latent]`): `[N, C, H, W]`.
    pub fn run(&self, z: ArrayView2<f32>) -> Result<Array4<f32>> {
        if z.shape()[1] != self.latent {
            return Err(Error::Inference(format!(
                "{}: latent vectors of size {}, the generator takes {}",
                self.path.display(),
                z.shape()[1],
                self.latent
            )));
        }
        let z4 = z.insert_axis(Axis(2)).insert_axis(Axis(3));
        let mut out = Vec::new();
        for start in (0..z.shape()[0]).step_by(self.batch) {
            let len = self.batch.min(z.shape()[0] - start);
            let mut chunk = Array2::<f32>::zeros((self.batch, self.latent));
            chunk
                .slice_mut(s![..len, ..])
                .assign(&z4.slice(s![start..start + len, .., 0, 0]));
            let result = self.model.run_f32(chunk.into_dyn())?;
            out.push(result[0].slice_axis(Axis(0), (..len).into()).to_owned());
        }
        let views: Vec<_> = out.iter().map(|a| a.view()).collect();
        let [c, h, w] = self.shape;
        ndarray::concatenate(Axis(0), &views)
            .map_err(|e| Error::Inference(e.to_string()))?
            .into_shape_with_order((z.shape()[0], c, h, w))
            .map_err(|e| Error::Inference(e.to_string()))
    }
}

/// An ONNX classifier that also returns its features (see the module documentation), with the
/// preprocessing of its metadata.
pub struct FeatureClassifier {
    path: PathBuf,
    model: Model,
    batch: usize,
    shape: [usize; 3],
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// Name of the features output this module adds.
const FEATURES: &str = "msn_features";

/// Adds the features output to a classifier: the global average pool of the tensor that the
/// last Gemm/MatMul's Flatten (or Reshape) takes.
fn add_features_output(model: &mut ModelProto, path: &Path) -> Result<()> {
    let not_clf = |reason: &str| Error::NotImageModel {
        path: path.to_path_buf(),
        reason: format!("cannot find its features: {reason}"),
    };
    let graph = model.graph.as_mut().ok_or_else(|| not_clf("no graph"))?;
    let idx = msn_onnx::index::Index::new(graph);
    let producer = |name: &str| idx.producer.get(name).map(|&i| graph.node[i].clone());
    let mut value = graph
        .output
        .first()
        .ok_or_else(|| not_clf("no output"))?
        .name()
        .to_string();
    let mut node = producer(&value).ok_or_else(|| not_clf("the output has no producer"))?;
    while matches!(node.op_type(), "Identity" | "Add" | "Softmax") {
        value = node.input[0].clone();
        node = producer(&value).ok_or_else(|| not_clf("expected a Gemm or MatMul last"))?;
    }
    if !matches!(node.op_type(), "Gemm" | "MatMul") {
        return Err(not_clf(&format!(
            "the last layer is {}, not Gemm or MatMul",
            node.op_type()
        )));
    }
    let flat = producer(&node.input[0])
        .filter(|n| matches!(n.op_type(), "Flatten" | "Reshape"))
        .ok_or_else(|| not_clf("the last layer's input is not a Flatten or Reshape"))?;
    let x = flat.input[0].clone();
    let pooled = format!("{FEATURES}_pooled");
    graph.node.push(NodeProto {
        name: Some("msn_features_pool".into()),
        op_type: Some("GlobalAveragePool".into()),
        input: vec![x],
        output: vec![pooled.clone()],
        ..Default::default()
    });
    graph.node.push(NodeProto {
        name: Some("msn_features_flatten".into()),
        op_type: Some("Flatten".into()),
        input: vec![pooled],
        output: vec![FEATURES.into()],
        attribute: vec![msn_onnx::builder::attr::int("axis", 1)],
        ..Default::default()
    });
    graph.output.truncate(1);
    graph
        .output
        .push(msn_onnx::builder::value_info(FEATURES, &[-1, -1]));
    Ok(())
}

impl FeatureClassifier {
    /// Loads a classifier held in memory (`path` names it in messages), batch size `batch`.
    pub fn from_bytes(bytes: &[u8], path: &Path, batch: usize) -> Result<Self> {
        let mut model = msn_onnx::io::from_bytes_named(bytes, &path.display().to_string())?;
        let meta = msn_onnx::meta::ImageMeta::from_model(&model)?;
        let shape = meta.input_shape.ok_or_else(|| Error::NotImageModel {
            path: path.to_path_buf(),
            reason: "no msn.input_shape in its metadata".into(),
        })?;
        let c = shape[0];
        let per_channel = |v: Option<Vec<f32>>, default: f32| {
            let v = v.unwrap_or(vec![default]);
            if v.len() == 1 {
                vec![v[0]; c]
            } else {
                v
            }
        };
        let (mean, std) = (per_channel(meta.mean, 0.0), per_channel(meta.std, 1.0));
        if mean.len() != c || std.len() != c {
            return Err(Error::NotImageModel {
                path: path.to_path_buf(),
                reason: format!("mean/std do not have {c} channels"),
            });
        }
        add_features_output(&mut model, path)?;
        let source = Source::from_bytes(msn_onnx::io::to_bytes(&model), path)?;
        let plan = source.plan(
            &[vec![batch, shape[0], shape[1], shape[2]]],
            Plan::Optimized,
        )?;
        Ok(FeatureClassifier {
            path: path.to_path_buf(),
            model: plan,
            batch,
            shape,
            mean,
            std,
        })
    }

    /// Channels, height and width of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Logits `[N, classes]` and features `[N, F]` of images `[N, C, H, W]` with pixel values
    /// in `[0, 1]` (normalised here as the classifier's metadata says).
    pub fn run(&self, pixels: ArrayView4<f32>) -> Result<(Array2<f32>, Array2<f32>)> {
        let [c, h, w] = self.shape;
        if pixels.shape()[1..] != [c, h, w] {
            return Err(Error::Inference(format!(
                "{}: images are {:?}, the classifier takes {c}x{h}x{w}",
                self.path.display(),
                &pixels.shape()[1..]
            )));
        }
        let mut x = pixels.to_owned();
        for (ch, mut plane) in x.axis_iter_mut(Axis(1)).enumerate() {
            let (m, s) = (self.mean[ch], self.std[ch]);
            plane.mapv_inplace(|v| (v - m) / s);
        }
        let mut out = run_chunked(&self.model, x.view(), self.batch, 2)?.into_iter();
        let mut next = || -> Result<Array2<f32>> {
            let a = out.next().expect("two outputs");
            let n = a.shape()[0];
            let f = a.len() / n.max(1);
            a.into_shape_with_order((n, f))
                .map_err(|e| Error::Inference(e.to_string()))
        };
        let logits = next()?;
        let features = next()?;
        Ok((logits, features))
    }
}

/// `exp(E_x KL(p(y|x) || p(y)))` of rows of logits.
pub fn classifier_score(logits: ArrayView2<f32>) -> f64 {
    let probs: Vec<Vec<f64>> = logits
        .outer_iter()
        .map(|row| {
            crate::softmax(row.as_slice().unwrap_or(&row.to_vec()))
                .into_iter()
                .map(|p| p as f64)
                .collect()
        })
        .collect();
    let n = probs.len().max(1) as f64;
    let k = logits.shape()[1];
    let marginal: Vec<f64> = (0..k)
        .map(|j| probs.iter().map(|p| p[j]).sum::<f64>() / n)
        .collect();
    let kl: f64 = probs
        .iter()
        .map(|p| {
            p.iter()
                .zip(&marginal)
                .filter(|(&pj, _)| pj > 0.0)
                .map(|(&pj, &mj)| pj * (pj / mj).ln())
                .sum::<f64>()
        })
        .sum::<f64>()
        / n;
    kl.exp()
}

/// Mean and (unbiased) covariance of the rows of `x`.
pub fn gaussian(x: ArrayView2<f32>) -> (Array1<f64>, Array2<f64>) {
    let x = x.mapv(|v| v as f64);
    let n = x.shape()[0];
    let mean = x.mean_axis(Axis(0)).expect("at least one row");
    let centred = &x - &mean;
    let cov = centred.t().dot(&centred) / (n.saturating_sub(1).max(1)) as f64;
    (mean, cov)
}

fn to_matrix(a: &Array2<f64>) -> nalgebra::DMatrix<f64> {
    let (r, c) = a.dim();
    nalgebra::DMatrix::from_fn(r, c, |i, j| a[[i, j]])
}

/// The Fréchet distance between Gaussians `(mu1, s1)` and `(mu2, s2)`.
pub fn frechet_distance(
    mu1: &Array1<f64>,
    s1: &Array2<f64>,
    mu2: &Array1<f64>,
    s2: &Array2<f64>,
) -> f64 {
    let diff: f64 = (mu1 - mu2).mapv(|v| v * v).sum();
    let (a, b) = (to_matrix(s1), to_matrix(s2));
    let sym = |m: nalgebra::DMatrix<f64>| (&m + m.transpose()) * 0.5;
    let eig = nalgebra::SymmetricEigen::new(sym(a.clone()));
    let sqrt_vals = eig.eigenvalues.map(|v| v.max(0.0).sqrt());
    let a_half = &eig.eigenvectors
        * nalgebra::DMatrix::from_diagonal(&sqrt_vals)
        * eig.eigenvectors.transpose();
    let m = sym(&a_half * &b * &a_half);
    let tr_sqrt: f64 = nalgebra::SymmetricEigen::new(m)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    diff + a.trace() + b.trace() - 2.0 * tr_sqrt
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn classifier_score_spans_one_to_the_class_count() {
        // Every sample uncertain: 1. Every sample sure and the classes balanced: 4.
        assert!((classifier_score(Array2::<f32>::zeros((8, 4)).view()) - 1.0).abs() < 1e-9);
        let sure = Array2::from_shape_fn((8, 4), |(i, j)| if i % 4 == j { 50.0 } else { 0.0 });
        assert!((classifier_score(sure.view()) - 4.0).abs() < 1e-6);
        // Sure but always the same class: 1 again.
        let collapsed = Array2::from_shape_fn((8, 4), |(_, j)| if j == 2 { 50.0 } else { 0.0 });
        assert!((classifier_score(collapsed.view()) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn frechet_distance_of_diagonal_gaussians_has_a_closed_form() {
        let (mu1, mu2) = (array![0.0, 1.0, 2.0], array![1.0, 1.0, 0.0]);
        let (d1, d2) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
        let s1 = Array2::from_diag(&Array1::from(d1.to_vec()));
        let s2 = Array2::from_diag(&Array1::from(d2.to_vec()));
        // |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (4 + 1 + 0).
        let want = 5.0 + 4.0 + 1.0;
        assert!((frechet_distance(&mu1, &s1, &mu2, &s2) - want).abs() < 1e-9);
        assert!(frechet_distance(&mu1, &s1, &mu1, &s1).abs() < 1e-9);
    }

    #[test]
    fn frechet_distance_of_non_commuting_covariances_matches_scipy() {
        // Reference from scipy: np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real).
        let s1 = array![[2.0, 0.5], [0.5, 1.0]];
        let s2 = array![[1.0, -0.3], [-0.3, 0.5]];
        let mu = array![0.0, 0.0];
        let got = frechet_distance(&mu, &s1, &mu, &s2);
        assert!((got - 0.553_301_412_770_546_2).abs() < 1e-9, "{got}");
    }

    #[test]
    fn gaussian_is_the_sample_mean_and_unbiased_covariance() {
        let x = array![[1.0f32, 2.0], [3.0, 6.0], [5.0, 4.0]];
        let (m, c) = gaussian(x.view());
        assert_eq!(m, array![3.0, 4.0]);
        assert_eq!(c, array![[4.0, 2.0], [2.0, 4.0]]);
    }
}
