//! GAN run directories: `config.json` with `"kind": "gan"`, the generator's tensors under
//! `g.` and the discriminator's under `d.` in `checkpoint.safetensors`.

use crate::checkpoint::{self, Preprocessing, FORMAT_VERSION};
use crate::{write_atomic, Error, Result};
use msn_nn::models::ModelConfig;
use msn_nn::Sequential;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The `kind` of a GAN run's `config.json`.
pub const KIND: &str = "gan";
/// Where each epoch's sample grid goes, inside the run directory.
pub const SAMPLES_DIR: &str = "samples";
/// The latest sample grid, inside the run directory.
pub const SAMPLES_FILE: &str = "samples.png";
/// Samples in each epoch's grid (8 x 8).
pub const GRID_SAMPLES: usize = 64;

/// The GAN objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GanLoss {
    /// Non-saturating: D minimises `softplus(-D(x)) + softplus(D(G(z)))`, G `softplus(-D(G(z)))`.
    Softplus,
    /// Hinge: D minimises `relu(1 - D(x)) + relu(1 + D(G(z)))`, G `-D(G(z))`.
    Hinge,
}

impl std::str::FromStr for GanLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "softplus" => Ok(GanLoss::Softplus),
            "hinge" => Ok(GanLoss::Hinge),
            _ => Err(format!(
                "unknown GAN loss '{s}' (expected softplus or hinge)"
            )),
        }
    }
}

impl std::fmt::Display for GanLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GanLoss::Softplus => "softplus",
            GanLoss::Hinge => "hinge",
        })
    }
}

/// The training settings of a GAN run, saved so that `--resume` continues the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanSettings {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub loss: GanLoss,
    /// Discriminator steps per generator step.
    pub d_steps: usize,
    pub seed: u64,
    pub train_limit: Option<usize>,
}

/// `config.json` of a GAN run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    pub version: u32,
    /// Always [`KIND`]: tells a GAN run from a classifier run.
    pub kind: String,
    pub generator: ModelConfig,
    pub discriminator: ModelConfig,
    pub dataset: String,
    pub data_dir: String,
    /// How real images become the discriminator's input (pixels to `[-1, 1]`), and so how the
    /// generator's tanh output maps back to pixels.
    pub preprocessing: Preprocessing,
    /// The data set's class names (the GAN does not use them; `msn gan-score` does).
    pub labels: Vec<String>,
    pub train: GanSettings,
}

/// Whether the text of a `config.json` describes a GAN run.
pub fn is_gan_config(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("kind")?.as_str().map(|k| k == KIND))
        .unwrap_or(false)
}

/// Whether `dir` holds a GAN run.
pub fn is_gan_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(checkpoint::CONFIG_FILE))
        .map(|t| is_gan_config(&t))
        .unwrap_or(false)
}

impl GanConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(checkpoint::CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |reason: String| Error::Checkpoint {
            path: path.clone(),
            reason,
        };
        if !is_gan_config(&text) {
            return Err(bad("not a GAN run (no \"kind\": \"gan\")".into()));
        }
        let cfg: GanConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if cfg.version != FORMAT_VERSION {
            return Err(bad(format!(
                "checkpoint version {} is not supported (this build reads version {FORMAT_VERSION})",
                cfg.version
            )));
        }
        Ok(cfg)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serializes");
        write_atomic(&dir.join(checkpoint::CONFIG_FILE), text.as_bytes())
    }
}

/// Builds the generator and discriminator a config describes, with weights drawn from the seed.
pub fn build(cfg: &GanConfig) -> Result<(Sequential, Sequential)> {
    let seed = cfg.train.seed;
    let g = msn_nn::models::build(&cfg.generator, seed).map_err(Error::Config)?;
    let d =
        msn_nn::models::build(&cfg.discriminator, seed.wrapping_add(1)).map_err(Error::Config)?;
    Ok((g, d))
}

/// A trained GAN: its config, generator and discriminator, from a run directory.
pub fn load(dir: &Path) -> Result<(GanConfig, Sequential, Sequential)> {
    let cfg = GanConfig::load(dir)?;
    let (g, d) = build(&cfg)?;
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    let ckpt = checkpoint::load(&path)?;
    checkpoint::restore_part(&g, "g", &ckpt, &path)?;
    checkpoint::restore_part(&d, "d", &ckpt, &path)?;
    Ok((cfg, g, d))
}

/// The run directory of `path`: itself if a folder, else its parent (a checkpoint file).
pub fn run_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
}
