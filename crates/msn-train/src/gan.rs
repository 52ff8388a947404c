//! DCGAN training: a generator (ConvTranspose + BN + ReLU, tanh output) against a
//! discriminator (conv + the chosen norm + LeakyReLU 0.1), with the non-saturating loss in its
//! softplus form or the hinge loss, Adam (2e-4, betas 0.5 and 0.999) and N(0, 0.02) weights.
//!
//! A run directory holds `config.json` (`"kind": "gan"`), `checkpoint.safetensors` (generator
//! tensors under `g.`, discriminator under `d.`, optimizer states under `optimizer.g.` and
//! `optimizer.d.`, progress in the metadata), `metrics.jsonl` (one object per epoch) and
//! `samples/epoch-NNN.png` (a grid from a fixed latent batch, the generator in eval mode), with
//! `samples.png` the latest. As in the classifier trainer, everything random is drawn from
//! `(seed, epoch, step)`, so `--resume` continues exactly.

use crate::checkpoint::{self, Preprocessing, Progress, FORMAT_VERSION};
use crate::data::{self, BatchSpec, Dataset, Split};
use crate::epochs::{At, Images, Loop, Steps};
use crate::trainer::{step_rng, Outcome};
use crate::{write_atomic, Error, Result};
use msn_autograd::{no_grad, Array, Var};
pub use msn_checkpoint::gan::{
    build, is_gan_config, is_gan_run, load, run_dir, GanConfig, GanLoss, GanSettings, GRID_SAMPLES,
    KIND, SAMPLES_DIR, SAMPLES_FILE,
};
use msn_nn::models::ModelConfig;
use msn_nn::optim::{self, Adam, Optimizer};
use msn_nn::{Ctx, Module, NormKind, Sequential};
use ndarray::{ArrayView4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What `msn train-gan` asks for.
#[derive(Debug, Clone)]
pub struct GanRequest {
    pub dataset: String,
    pub data_dir: String,
    pub d_norm: NormKind,
    pub latent: usize,
    /// Channel widths of both networks in percent of DCGAN's (64, 128, 256).
    pub width: usize,
    pub train: GanSettings,
}

fn load_train(dataset: &str, dir: &str, t: &GanSettings) -> Result<Dataset> {
    let mut train = data::load(dataset, Path::new(dir), Split::Train)?;
    if let Some(n) = t.train_limit {
        train.truncate(n);
    }
    if train.len() < t.batch {
        return Err(Error::Data(format!(
            "{dir}: {} training images, fewer than one batch of {}",
            train.len(),
            t.batch
        )));
    }
    Ok(train)
}

fn batch_spec(cfg: &GanConfig) -> BatchSpec {
    BatchSpec {
        batch: cfg.train.batch,
        mean: cfg.preprocessing.mean.clone(),
        std: cfg.preprocessing.std.clone(),
        augment: None,
    }
}

fn optimizer(t: &GanSettings) -> Adam {
    Adam::new(t.beta1, t.beta2, 0.0)
}

/// Starts a new GAN run in `out` (which must not hold one) and trains it.
pub fn start(req: &GanRequest, out: &Path, stop: &AtomicBool, progress: bool) -> Result<Outcome> {
    checkpoint::ensure_new_run(out)?;
    if req.train.d_steps == 0 || req.train.batch == 0 || req.latent == 0 || req.width == 0 {
        return Err(Error::Config(
            "--d-steps, --batch, --latent and --width must be positive".into(),
        ));
    }
    let train = load_train(&req.dataset, &req.data_dir, &req.train)?;
    let shape = train.shape();
    let cfg = GanConfig {
        version: FORMAT_VERSION,
        kind: KIND.into(),
        generator: model_config("dcgan-g", NormKind::Bn, shape, req),
        discriminator: model_config("dcgan-d", req.d_norm, shape, req),
        dataset: req.dataset.clone(),
        data_dir: req.data_dir.clone(),
        preprocessing: Preprocessing {
            scale: 1.0 / 255.0,
            mean: vec![0.5; shape[0]],
            std: vec![0.5; shape[0]],
        },
        labels: train.classes.clone(),
        train: req.train.clone(),
    };
    let (g, d) = build(&cfg)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    cfg.save(out)?;
    let opts = [optimizer(&cfg.train), optimizer(&cfg.train)];
    run(
        &cfg,
        g,
        d,
        opts,
        Progress::default(),
        &Arc::new(train),
        out,
        stop,
        progress,
    )
}

fn model_config(arch: &str, norm: NormKind, shape: [usize; 3], req: &GanRequest) -> ModelConfig {
    ModelConfig {
        architecture: arch.into(),
        norm,
        input_shape: shape,
        num_classes: 1,
        width: req.width,
        depth: 16,
        latent: req.latent,
    }
}

/// Continues the GAN run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, stop: &AtomicBool, progress: bool) -> Result<Outcome> {
    let cfg = GanConfig::load(dir)?;
    let (g, d) = build(&cfg)?;
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    let mut opts = [optimizer(&cfg.train), optimizer(&cfg.train)];
    let prog = if path.exists() {
        let ckpt = checkpoint::load(&path)?;
        checkpoint::restore_part(&g, "g", &ckpt, &path)?;
        checkpoint::restore_part(&d, "d", &ckpt, &path)?;
        opts[0].load_state(checkpoint::optimizer_state_part(
            &ckpt,
            "optimizer.g",
            &g,
            &path,
        )?);
        opts[1].load_state(checkpoint::optimizer_state_part(
            &ckpt,
            "optimizer.d",
            &d,
            &path,
        )?);
        ckpt.progress
    } else {
        Progress::default()
    };
    let train = load_train(&cfg.dataset, &cfg.data_dir, &cfg.train)?;
    run(
        &cfg,
        g,
        d,
        opts,
        prog,
        &Arc::new(train),
        dir,
        stop,
        progress,
    )
}

/// The discriminator's loss on real and fake logits.
pub fn d_loss(loss: GanLoss, real: &Var, fake: &Var) -> Var {
    match loss {
        GanLoss::Softplus => {
            let ones = Array::ones(real.value().raw_dim());
            let zeros = Array::zeros(fake.value().raw_dim());
            real.bce_with_logits(&ones)
                .add(&fake.bce_with_logits(&zeros))
        }
        GanLoss::Hinge => real
            .neg()
            .add_scalar(1.0)
            .relu()
            .mean()
            .add(&fake.add_scalar(1.0).relu().mean()),
    }
}

/// The generator's loss on the discriminator's logits of its samples.
pub fn g_loss(loss: GanLoss, fake: &Var) -> Var {
    match loss {
        GanLoss::Softplus => fake.bce_with_logits(&Array::ones(fake.value().raw_dim())),
        GanLoss::Hinge => fake.mean().neg(),
    }
}

/// `n` latent vectors from N(0, 1), drawn from `rng`.
pub fn latent_batch(n: usize, latent: usize, rng: &mut ChaCha8Rng) -> Array {
    msn_nn::init::normal(&[n, latent], 1.0, rng)
}

/// The fixed latent batch behind every epoch's sample grid.
pub fn grid_latents(cfg: &GanConfig) -> Array {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed ^ 0x5A3B_1E55);
    latent_batch(GRID_SAMPLES, cfg.generator.latent, &mut rng)
}

/// Running sums of one epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct GanSums {
    d_loss: f64,
    g_loss: f64,
    /// Sums over samples of sigmoid(D(x)) and sigmoid(D(G(z))).
    d_real: f64,
    d_fake: f64,
    /// Real samples scored above 0 plus fakes below 0.
    d_correct: usize,
    /// Real samples seen (as many fakes).
    seen: usize,
    d_steps: usize,
    g_steps: usize,
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-x as f64).exp())
}

fn finite(v: f32, what: &str, epoch: usize, step: usize, lr: f32) -> Result<f32> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::Diverged(format!(
            "the {what} loss became {v} at epoch {} step {}; lower --lr (now {lr}) or use another --d-norm",
            epoch + 1,
            step + 1
        )))
    }
}

/// The GAN's part of the loop: a discriminator step (and every `d_steps` a generator step),
/// then the epoch's sample grid.
struct Adversarial<'a> {
    cfg: &'a GanConfig,
    g: Sequential,
    d: Sequential,
    params: [Vec<Var>; 2],
    opts: [Adam; 2],
    fixed_z: Array,
    dir: &'a Path,
}

impl Steps for Adversarial<'_> {
    type Sums = GanSums;

    fn step(&mut self, sums: &mut GanSums, at: At, (x, _labels): Images) -> Result<String> {
        let (epoch, step, seconds) = (at.epoch, at.step, at.seconds);
        let (t, latent) = (&self.cfg.train, self.cfg.generator.latent);
        let [g_params, d_params] = &self.params;
        let n = x.shape()[0];
        let z = latent_batch(n, latent, &mut step_rng(t.seed ^ 0x6A17, epoch, step));
        let mut ctx = Ctx {
            training: true,
            rng: step_rng(t.seed ^ 0xD20F, epoch, step),
            record: None,
        };
        let fake = self.g.forward(&Var::constant(z), &mut ctx);

        // Discriminator step, on a real batch and a detached fake batch.
        let real_logits = self.d.forward(&Var::constant(x.into_dyn()), &mut ctx);
        let fake_logits = self.d.forward(&fake.detach(), &mut ctx);
        let loss = d_loss(t.loss, &real_logits, &fake_logits);
        let value = finite(loss.value()[[]], "discriminator", epoch, step, t.lr)?;
        loss.backward();
        self.opts[1].step(d_params, t.lr);
        optim::zero_grad(d_params);
        sums.d_loss += value as f64;
        sums.d_steps += 1;
        for &v in real_logits.value().iter() {
            sums.d_real += sigmoid(v);
            sums.d_correct += usize::from(v > 0.0);
        }
        for &v in fake_logits.value().iter() {
            sums.d_fake += sigmoid(v);
            sums.d_correct += usize::from(v < 0.0);
        }
        sums.seen += n;

        // Generator step through the updated discriminator.
        if (step + 1).is_multiple_of(t.d_steps) {
            let loss = g_loss(t.loss, &self.d.forward(&fake, &mut ctx));
            let value = finite(loss.value()[[]], "generator", epoch, step, t.lr)?;
            loss.backward();
            self.opts[0].step(g_params, t.lr);
            optim::zero_grad(g_params);
            optim::zero_grad(d_params);
            sums.g_loss += value as f64;
            sums.g_steps += 1;
        }
        Ok(format!(
            "D loss {:.3} G loss {:.3} D(x) {:.2} D(G(z)) {:.2} {:.0} img/s",
            sums.d_loss / sums.d_steps as f64,
            sums.g_loss / sums.g_steps.max(1) as f64,
            sums.d_real / sums.seen as f64,
            sums.d_fake / sums.seen as f64,
            sums.seen as f64 / seconds.max(1e-9)
        ))
    }

    fn finish_epoch(&mut self, sums: &GanSums, at: At) -> Result<(Value, String)> {
        let (epoch, seconds) = (at.epoch, at.seconds);
        let samples = generate(&self.g, &self.fixed_z);
        let name = format!("epoch-{:03}.png", epoch + 1);
        write_grid(&samples.view(), &self.dir.join(SAMPLES_DIR).join(name))?;
        write_grid(&samples.view(), &self.dir.join(SAMPLES_FILE))?;
        let seen = sums.seen as f64;
        let (d_loss, g_loss) = (
            sums.d_loss / sums.d_steps as f64,
            sums.g_loss / sums.g_steps.max(1) as f64,
        );
        let (d_real, d_fake) = (sums.d_real / seen, sums.d_fake / seen);
        let d_acc = sums.d_correct as f64 / (2.0 * seen);
        let metrics = json!({
            "epoch": epoch + 1,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": d_real,
            "d_fake": d_fake,
            "d_acc": d_acc,
            "d_steps": sums.d_steps,
            "g_steps": sums.g_steps,
            "epoch_seconds": seconds,
            "images_per_second": seen / seconds,
            "lr": self.cfg.train.lr,
        });
        let summary = format!(
            "D loss {d_loss:.4} G loss {g_loss:.4} D(x) {d_real:.3} D(G(z)) {d_fake:.3} D acc {d_acc:.3}"
        );
        Ok((metrics, summary))
    }

    fn save(&self, progress: &Progress) -> Result<()> {
        checkpoint::save_parts(
            &self.dir.join(checkpoint::CHECKPOINT_FILE),
            &[("g", &self.g), ("d", &self.d)],
            &[
                ("optimizer.g", &self.opts[0].state()),
                ("optimizer.d", &self.opts[1].state()),
            ],
            progress,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    cfg: &GanConfig,
    g: Sequential,
    d: Sequential,
    opts: [Adam; 2],
    prog: Progress,
    train: &Arc<Dataset>,
    dir: &Path,
    stop: &AtomicBool,
    show_progress: bool,
) -> Result<Outcome> {
    let spec = batch_spec(cfg);
    let mut steps = Adversarial {
        cfg,
        params: [g.parameters(), d.parameters()],
        g,
        d,
        opts,
        fixed_z: grid_latents(cfg),
        dir,
    };
    Loop {
        train,
        spec: &spec,
        seed: cfg.train.seed,
        epochs: cfg.train.epochs,
        dir,
        show_progress,
        stop,
    }
    .run(&mut steps, prog)
}

/// The generator's images for latent vectors `z` (`[N, latent]`), in eval mode: `[N, C, H, W]`
/// in `[-1, 1]`.
pub fn generate(g: &Sequential, z: &Array) -> ndarray::Array4<f32> {
    no_grad(|| {
        g.forward(&Var::constant(z.clone()), &mut Ctx::eval())
            .value()
            .clone()
            .into_dimensionality()
            .expect("the generator makes images")
    })
}

/// Lays images (`[N, C, H, W]` in `[-1, 1]`, C = 1 or 3) out in a grid of `ceil(sqrt(N))`
/// columns with 2-pixel gaps, as an 8-bit gray or RGB image.
pub fn grid(images: &ArrayView4<f32>) -> image::DynamicImage {
    let (n, c, h, w) = images.dim();
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    let rows = n.div_ceil(cols).max(1);
    let gap = 2;
    let (gw, gh) = (
        (cols * (w + gap) + gap) as u32,
        (rows * (h + gap) + gap) as u32,
    );
    let pixel = |v: f32| (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
    let mut gray = image::GrayImage::new(gw, gh);
    let mut rgb = image::RgbImage::new(gw, gh);
    for (i, img) in images.axis_iter(Axis(0)).enumerate() {
        let (x0, y0) = ((i % cols) * (w + gap) + gap, (i / cols) * (h + gap) + gap);
        for y in 0..h {
            for x in 0..w {
                let (px, py) = ((x0 + x) as u32, (y0 + y) as u32);
                if c == 1 {
                    gray.put_pixel(px, py, image::Luma([pixel(img[[0, y, x]])]));
                } else {
                    let p = |ch: usize| pixel(img[[ch.min(c - 1), y, x]]);
                    rgb.put_pixel(px, py, image::Rgb([p(0), p(1), p(2)]));
                }
            }
        }
    }
    if c == 1 {
        image::DynamicImage::ImageLuma8(gray)
    } else {
        image::DynamicImage::ImageRgb8(rgb)
    }
}

/// Writes the [`grid`] of `images` as a PNG to `path`, atomically (creating its folder).
pub fn write_grid(images: &ArrayView4<f32>, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut bytes = Vec::new();
    grid(images)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Data(format!("{}: cannot encode the PNG: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msn_autograd::gradcheck::check;
    use msn_autograd::ops::elementwise::spread;

    #[test]
    fn softplus_losses_are_the_closed_forms() {
        let real =
            Var::constant(Array::from_shape_vec(ndarray::IxDyn(&[2, 1]), vec![0.5, -1.0]).unwrap());
        let fake =
            Var::constant(Array::from_shape_vec(ndarray::IxDyn(&[2, 1]), vec![2.0, 0.0]).unwrap());
        let sp = |x: f32| (1.0 + x.exp()).ln();
        let want_d = (sp(-0.5) + sp(1.0)) / 2.0 + (sp(2.0) + sp(0.0)) / 2.0;
        let got = d_loss(GanLoss::Softplus, &real, &fake).value()[[]];
        assert!((got - want_d).abs() < 1e-6, "{got} vs {want_d}");
        let want_g = (sp(-2.0) + sp(0.0)) / 2.0;
        let got = g_loss(GanLoss::Softplus, &fake).value()[[]];
        assert!((got - want_g).abs() < 1e-6, "{got} vs {want_g}");
        // Hinge: relu(1 - 0.5) + relu(1 + 1) over 2, relu(1 + 2) + relu(1 + 0) over 2.
        let got = d_loss(GanLoss::Hinge, &real, &fake).value()[[]];
        assert!((got - (2.5 / 2.0 + 4.0 / 2.0)).abs() < 1e-6, "{got}");
        assert!((g_loss(GanLoss::Hinge, &fake).value()[[]] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        // Values kept away from the hinge's kinks at -1 and 1.
        let real = spread(&[3, 1], -0.7, 0.6, 3);
        let fake = spread(&[3, 1], -0.8, 0.5, 4);
        for loss in [GanLoss::Softplus, GanLoss::Hinge] {
            check("d_loss", &[&real, &fake], |v| d_loss(loss, &v[0], &v[1])).unwrap();
            check("g_loss", &[&fake], |v| g_loss(loss, &v[0])).unwrap();
        }
    }

    #[test]
    fn grid_places_each_image_and_maps_minus_one_to_black() {
        let mut imgs = ndarray::Array4::<f32>::from_elem((5, 1, 3, 4), -1.0);
        imgs[[4, 0, 2, 3]] = 1.0;
        let g = grid(&imgs.view()).into_luma8();
        // 5 images: 3 columns, 2 rows, 2-pixel gaps.
        assert_eq!(g.dimensions(), (3 * 6 + 2, 2 * 5 + 2));
        // Image 4 is row 1, column 1: its pixel (3, 2) is at (6 + 2 + 3, 5 + 2 + 2).
        assert_eq!(g.get_pixel(11, 9).0, [255]);
        assert_eq!(g.pixels().filter(|p| p.0 == [255]).count(), 1);
    }
}
