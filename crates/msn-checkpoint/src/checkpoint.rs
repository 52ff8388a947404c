//! Run directories and checkpoints.
//!
//! `config.json` says what is trained (architecture, norm, data set, preprocessing, labels,
//! optimizer); `checkpoint.safetensors` holds every named tensor of the model (parameters and
//! buffers such as `running_mean` and the SN vectors `weight_u`, `weight_v`), the optimizer's
//! state under `optimizer.*`, and in its metadata the progress (epoch, step, metrics so far).
//! Both are written atomically, so a run killed at any moment leaves the last good checkpoint.

use crate::{write_atomic, Error, Result};
use msn_autograd::Array;
use msn_nn::models::ModelConfig;
use msn_nn::{Module, Sequential};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The checkpoint format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "config.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// How raw pixels become the model's input (`x / 255 - mean) / std` per channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The training settings, saved so that `--resume` continues the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: String,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: String,
    pub seed: u64,
    pub augment: bool,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// Spectral-norm power iterations per training step.
    #[serde(default = "one")]
    pub sn_iterations: usize,
    /// Momentum of the running statistics of batch norm and MSN's mean-only batch norm.
    #[serde(default = "default_norm_momentum")]
    pub norm_momentum: f32,
    /// MSN's scale `g`: `learned` (from 1) or `fixed` (at its initial value).
    #[serde(default = "default_msn_scale")]
    pub msn_scale: String,
    /// MSN's initial `g`: `ones`, or `data` (1 / the std of each block's input on a first batch).
    #[serde(default = "default_msn_init")]
    pub msn_init: String,
    /// Linear learning-rate warm-up over this many steps (0: none).
    #[serde(default)]
    pub warmup_steps: usize,
}

fn one() -> usize {
    1
}

fn default_norm_momentum() -> f32 {
    0.1
}

fn default_msn_scale() -> String {
    "learned".into()
}

fn default_msn_init() -> String {
    "ones".into()
}

impl TrainSettings {
    /// Checks the options that a hand-edited `config.json` could get wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.sn_iterations == 0 || self.sn_iterations > 100 {
            return Err(format!(
                "sn_iterations {} is outside 1..=100",
                self.sn_iterations
            ));
        }
        if !(self.norm_momentum > 0.0 && self.norm_momentum <= 1.0) {
            return Err(format!(
                "norm_momentum {} is outside (0, 1]",
                self.norm_momentum
            ));
        }
        if !matches!(self.msn_scale.as_str(), "learned" | "fixed") {
            return Err(format!(
                "msn_scale '{}' (expected learned or fixed)",
                self.msn_scale
            ));
        }
        if !matches!(self.msn_init.as_str(), "ones" | "data") {
            return Err(format!(
                "msn_init '{}' (expected ones or data)",
                self.msn_init
            ));
        }
        Ok(())
    }
}

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub version: u32,
    pub model: ModelConfig,
    pub dataset: String,
    pub data_dir: String,
    pub preprocessing: Preprocessing,
    pub labels: Vec<String>,
    pub train: TrainSettings,
}

impl RunConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        if crate::gan::is_gan_config(&text) {
            return Err(Error::Checkpoint {
                path,
                reason: "this is a GAN run (msn train-gan), not a classifier".into(),
            });
        }
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if cfg.version != FORMAT_VERSION {
            return Err(Error::Checkpoint {
                path,
                reason: format!("checkpoint version {} is not supported (this build reads version {FORMAT_VERSION})", cfg.version),
            });
        }
        Ok(cfg)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serializes");
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
    }
}

/// Refuses to start a run in `out` when it already holds one.
pub fn ensure_new_run(out: &Path) -> Result<()> {
    if !out.join(CHECKPOINT_FILE).exists() {
        return Ok(());
    }
    let out = out.display();
    Err(Error::Config(format!(
        "{out} already holds a run; use --resume {out} to continue it, or another --out"
    )))
}

/// Where a run stands: the next epoch and step to run, and the metrics of finished epochs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    /// Running sums of the unfinished epoch, so a mid-epoch resume reports the same metrics.
    pub partial: Option<serde_json::Value>,
    pub history: Vec<serde_json::Value>,
}

impl Progress {
    /// The running sums of the unfinished epoch saved in the checkpoint at `path` (taken out,
    /// so the next epoch starts afresh), or empty sums when the epoch starts at its beginning.
    pub fn take_partial<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        path: &Path,
    ) -> Result<T> {
        match self.partial.take() {
            Some(p) => serde_json::from_value(p).map_err(|e| Error::Checkpoint {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            None => Ok(T::default()),
        }
    }
}

fn to_bytes(a: &Array) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the model's state, the optimizer's state and the progress to `path`.
pub fn save(
    path: &Path,
    model: &Sequential,
    optimizer: &[(String, Array)],
    progress: &Progress,
) -> Result<()> {
    save_parts(path, &[("", model)], &[("optimizer", optimizer)], progress)
}

/// Writes several models' states (each tensor named `PREFIX.name`, or `name` for an empty
/// prefix), optimizer states (likewise) and the progress to `path`, atomically.
pub fn save_parts(
    path: &Path,
    models: &[(&str, &Sequential)],
    optimizers: &[(&str, &[(String, Array)])],
    progress: &Progress,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, model) in models {
        tensors.extend(
            model
                .named_state()
                .into_iter()
                .map(|(name, v, _)| (msn_nn::join(prefix, &name), v.shape(), to_bytes(&v.value()))),
        );
    }
    for (prefix, state) in optimizers {
        tensors.extend(
            state
                .iter()
                .map(|(n, a)| (msn_nn::join(prefix, n), a.shape().to_vec(), to_bytes(a))),
        );
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("sizes agree"),
            )
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert(
        "format".to_string(),
        format!("msn-checkpoint-{FORMAT_VERSION}"),
    );
    meta.insert(
        "progress".to_string(),
        serde_json::to_string(progress).expect("serializes"),
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// A loaded checkpoint: named tensors and progress.
pub struct Checkpoint {
    pub tensors: HashMap<String, Array>,
    pub progress: Progress,
}

/// Reads a checkpoint file, checking its format version.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Decodes a checkpoint held in memory; `path` names it in messages.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let format = meta.get("format").cloned().unwrap_or_default();
    if format != format!("msn-checkpoint-{FORMAT_VERSION}") {
        return Err(bad(format!("unknown checkpoint version '{format}' (this build reads msn-checkpoint-{FORMAT_VERSION})")));
    }
    let progress = match meta.get("progress") {
        Some(p) => {
            serde_json::from_str(p).map_err(|e| bad(format!("bad progress metadata: {e}")))?
        }
        None => Progress::default(),
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor '{name}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let a = Array::from_shape_vec(ndarray::IxDyn(view.shape()), values)
            .map_err(|e| bad(e.to_string()))?;
        tensors.insert(name, a);
    }
    Ok(Checkpoint { tensors, progress })
}

/// Copies the checkpoint's tensors into the model, checking that every one is present and has
/// the shape the config implies.
pub fn restore(model: &Sequential, ckpt: &Checkpoint, path: &Path) -> Result<()> {
    restore_part(model, "", ckpt, path)
}

/// [`restore`] for the tensors saved under `prefix` by [`save_parts`].
pub fn restore_part(
    model: &Sequential,
    prefix: &str,
    ckpt: &Checkpoint,
    path: &Path,
) -> Result<()> {
    for (name, var, _) in model.named_state() {
        let name = msn_nn::join(prefix, &name);
        let Some(a) = ckpt.tensors.get(&name) else {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor '{name}' is missing"),
            });
        };
        if a.shape() != var.shape().as_slice() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor '{name}' has shape {:?} but the config implies {:?}",
                    a.shape(),
                    var.shape()
                ),
            });
        }
        var.set_value(a.clone());
    }
    Ok(())
}

/// The optimizer's tensors in a checkpoint, with the `optimizer.` prefix removed, checked
/// against `model`'s parameters (see [`optimizer_state_part`]).
pub fn optimizer_state(
    ckpt: &Checkpoint,
    model: &Sequential,
    path: &Path,
) -> Result<Vec<(String, Array)>> {
    optimizer_state_part(ckpt, "optimizer", model, path)
}

/// The tensors saved under `prefix.`, with the prefix removed, each checked before an
/// optimizer sees it: a per-parameter buffer (`sgd.momentum.I`, `adam.m.I`, `adam.v.I`) must
/// name a parameter of `model` and have its shape; `adam.step` must be one finite value.
/// Anything else is an error naming the file and the tensor.
pub fn optimizer_state_part(
    ckpt: &Checkpoint,
    prefix: &str,
    model: &Sequential,
    path: &Path,
) -> Result<Vec<(String, Array)>> {
    let params = model.parameters();
    let bad = |name: &str, why: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("optimizer tensor '{prefix}.{name}' {why}"),
    };
    let prefix_dot = format!("{prefix}.");
    let mut out = Vec::new();
    for (full, a) in &ckpt.tensors {
        let Some(name) = full.strip_prefix(&prefix_dot) else {
            continue;
        };
        if name == "adam.step" {
            if a.len() != 1 || !a.iter().all(|v| v.is_finite() && *v >= 0.0) {
                return Err(bad(name, "is not one non-negative step count".into()));
            }
        } else {
            let index = ["sgd.momentum.", "adam.m.", "adam.v."]
                .iter()
                .find_map(|k| name.strip_prefix(k))
                .ok_or_else(|| bad(name, "is not an optimizer buffer this build knows".into()))?;
            let p = index
                .parse::<usize>()
                .ok()
                .and_then(|i| params.get(i))
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("names no parameter (the model has {})", params.len()),
                    )
                })?;
            if a.shape() != p.shape().as_slice() {
                let (got, want) = (a.shape(), p.shape());
                return Err(bad(
                    name,
                    format!("has shape {got:?}, its parameter {want:?}"),
                ));
            }
        }
        out.push((name.to_string(), a.clone()));
    }
    Ok(out)
}

/// Loads a trained model from a run directory (or a checkpoint file inside one).
pub fn load_model(run: &Path) -> Result<(RunConfig, Sequential)> {
    let (dir, file) = if run.is_dir() {
        (run.to_path_buf(), run.join(CHECKPOINT_FILE))
    } else {
        (
            run.parent().unwrap_or(Path::new(".")).to_path_buf(),
            run.to_path_buf(),
        )
    };
    let cfg = RunConfig::load(&dir)?;
    let model = msn_nn::models::build(&cfg.model, 0).map_err(Error::Config)?;
    let ckpt = load(&file)?;
    restore(&model, &ckpt, &file)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_nn::layers::{Layer, Linear};
    use rand::SeedableRng;

    fn model() -> Sequential {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        Sequential::new(vec![Layer::Linear(Linear::new(3, 2, true, &mut rng))])
    }

    fn with(name: &str, shape: &[usize]) -> Checkpoint {
        let mut tensors = HashMap::new();
        tensors.insert(name.to_string(), Array::zeros(ndarray::IxDyn(shape)));
        Checkpoint {
            tensors,
            progress: Progress::default(),
        }
    }

    #[test]
    fn optimizer_buffers_must_name_a_parameter_of_its_shape() {
        let (m, p) = (model(), Path::new("ck.safetensors"));
        // Parameters: 0 weight [2, 3], 1 bias [2].
        let ok = optimizer_state(&with("optimizer.adam.m.0", &[2, 3]), &m, p).unwrap();
        assert_eq!(ok.len(), 1);
        assert!(optimizer_state(&with("optimizer.sgd.momentum.1", &[2]), &m, p).is_ok());
        assert!(optimizer_state(&with("optimizer.adam.step", &[1]), &m, p).is_ok());
        for (name, shape, why) in [
            (
                "optimizer.adam.m.99999999999",
                &[2usize, 3][..],
                "names no parameter",
            ),
            (
                "optimizer.adam.v.1",
                &[3][..],
                "has shape [3], its parameter [2]",
            ),
            ("optimizer.adam.x.0", &[2, 3][..], "not an optimizer buffer"),
            ("optimizer.adam.step", &[4][..], "step count"),
        ] {
            let err = optimizer_state(&with(name, shape), &m, p)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(why) && err.contains("ck.safetensors"),
                "{name}: {err}"
            );
        }
    }
}
