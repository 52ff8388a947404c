//! The networks of the paper's experiments, each a function of the normalization kind.

use crate::layers::{BatchNorm, Conv2d, Layer, Linear, MeanOnlyBatchNorm, Sequential};
use crate::NormKind;
use msn_autograd::ops::conv::ConvOptions;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a classifier: saved beside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `cnn3`, `vgg7` or `densenet-bc`.
    pub architecture: String,
    pub norm: NormKind,
    /// Channels, height, width of one input image.
    pub input_shape: [usize; 3],
    pub num_classes: usize,
    /// Width multiplier (vgg7, DCGAN) in percent; 100 is the paper's width.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Depth (densenet-bc): 3 dense blocks of (depth - 4) / 6 bottleneck layers.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Latent size of the DCGAN generator (its input is `[N, latent]`).
    #[serde(default = "default_latent")]
    pub latent: usize,
}

impl ModelConfig {
    /// A classifier of `architecture` with `norm` for images of `input_shape`, 10 classes,
    /// every other setting at its default.
    pub fn classifier(architecture: &str, norm: NormKind, input_shape: [usize; 3]) -> Self {
        ModelConfig {
            architecture: architecture.into(),
            norm,
            input_shape,
            num_classes: 10,
            width: default_width(),
            depth: default_depth(),
            latent: default_latent(),
        }
    }
}

fn default_latent() -> usize {
    128
}

fn default_width() -> usize {
    100
}

fn default_depth() -> usize {
    16
}

/// The slope of every LeakyReLU in the classifiers.
pub const LEAKY_SLOPE: f32 = 0.1;

/// `conv -> norm -> LeakyReLU`, where the norm decides the conv's extras: a bias without batch
/// statistics (none, sn), no bias when a mean is subtracted right after (bn, msn: the bias would
/// cancel), spectral norm on the weight for sn and msn.
pub fn conv_block(
    layers: &mut Vec<Layer>,
    input: usize,
    output: usize,
    kernel: usize,
    options: ConvOptions,
    norm: NormKind,
    rng: &mut ChaCha8Rng,
) {
    let bias = matches!(norm, NormKind::None | NormKind::Sn);
    let conv = Conv2d::new(input, output, kernel, options, bias, rng);
    match norm {
        NormKind::None => layers.push(Layer::Conv(conv)),
        NormKind::Sn => layers.push(Layer::Conv(conv.spectral(rng))),
        NormKind::Bn => {
            layers.push(Layer::Conv(conv));
            layers.push(Layer::BatchNorm(BatchNorm::new(output)));
        }
        NormKind::Msn => {
            layers.push(Layer::Conv(conv.spectral(rng)));
            layers.push(Layer::MeanOnlyBatchNorm(MeanOnlyBatchNorm::new(output)));
        }
    }
    layers.push(Layer::LeakyRelu(LEAKY_SLOPE));
}

fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// Builds the network a config describes, with weights drawn from `seed`.
pub fn build(config: &ModelConfig, seed: u64) -> Result<Sequential, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match config.architecture.as_str() {
        "cnn3" => Ok(cnn3(config, &mut rng)),
        "vgg7" => Ok(vgg7(config, &mut rng)),
        "densenet-bc" => densenet_bc(config, &mut rng),
        "dcgan-g" => dcgan_generator(config, &mut rng),
        "dcgan-d" => dcgan_discriminator(config, &mut rng),
        other => Err(format!(
            "unknown architecture '{other}' (expected cnn3, vgg7, densenet-bc, dcgan-g or dcgan-d)"
        )),
    }
}

/// The MNIST 3-layer CNN of the paper: conv5x5 1->16 p2, conv3x3 16->32 p2, conv4x4 32->32 s2
/// p2, each followed by the norm and LeakyReLU 0.1, then a linear layer to the classes.
pub fn cnn3(config: &ModelConfig, rng: &mut ChaCha8Rng) -> Sequential {
    let [c, h, w] = config.input_shape;
    let norm = config.norm;
    let mut l = Vec::new();
    conv_block(
        &mut l,
        c,
        16,
        5,
        ConvOptions::default().padding(2),
        norm,
        rng,
    );
    conv_block(
        &mut l,
        16,
        32,
        3,
        ConvOptions::default().padding(2),
        norm,
        rng,
    );
    conv_block(
        &mut l,
        32,
        32,
        4,
        ConvOptions::default().stride(2).padding(2),
        norm,
        rng,
    );
    let (mut h, mut w) = (conv_out(h, 5, 1, 2), conv_out(w, 5, 1, 2));
    (h, w) = (conv_out(h, 3, 1, 2), conv_out(w, 3, 1, 2));
    (h, w) = (conv_out(h, 4, 2, 2), conv_out(w, 4, 2, 2));
    l.push(Layer::Flatten);
    l.push(Layer::Linear(Linear::new(
        32 * h * w,
        config.num_classes,
        true,
        rng,
    )));
    Sequential::new(l)
}

/// VGG-7: 32, 32, M, 64, 64, M, 128, M, 256, M (3x3 convs, padding 1), then a linear layer;
/// channel counts scaled by `width` percent.
pub fn vgg7(config: &ModelConfig, rng: &mut ChaCha8Rng) -> Sequential {
    let [mut c, mut h, mut w] = config.input_shape;
    let scale = |n: usize| (n * config.width / 100).max(1);
    let mut l = Vec::new();
    for item in [
        Some(32),
        Some(32),
        None,
        Some(64),
        Some(64),
        None,
        Some(128),
        None,
        Some(256),
        None,
    ] {
        match item {
            Some(out) => {
                conv_block(
                    &mut l,
                    c,
                    scale(out),
                    3,
                    ConvOptions::default().padding(1),
                    config.norm,
                    rng,
                );
                c = scale(out);
            }
            None => {
                l.push(Layer::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                });
                (h, w) = (h / 2, w / 2);
            }
        }
    }
    l.push(Layer::Flatten);
    l.push(Layer::Linear(Linear::new(
        c * h * w,
        config.num_classes,
        true,
        rng,
    )));
    Sequential::new(l)
}

/// DenseNet-BC (growth 12, compression 0.8, 24 initial features): three dense blocks of
/// bottleneck layers (1x1 conv to 4*growth, 3x3 conv to growth, each conv + norm + LeakyReLU),
/// their outputs concatenated; transitions of a 1x1 conv and 2x2 average pooling.
pub fn densenet_bc(config: &ModelConfig, rng: &mut ChaCha8Rng) -> Result<Sequential, String> {
    const GROWTH: usize = 12;
    const COMPRESSION: f32 = 0.8;
    if config.depth < 10 || !(config.depth - 4).is_multiple_of(6) {
        return Err(format!(
            "densenet-bc depth must be 6n + 4 with n >= 1, got {}",
            config.depth
        ));
    }
    let per_block = (config.depth - 4) / 6;
    let [c_in, mut h, mut w] = config.input_shape;
    let norm = config.norm;
    let mut l = Vec::new();
    conv_block(
        &mut l,
        c_in,
        24,
        3,
        ConvOptions::default().padding(1),
        norm,
        rng,
    );
    let mut c = 24;
    for block in 0..3 {
        for _ in 0..per_block {
            let mut inner = Vec::new();
            conv_block(
                &mut inner,
                c,
                4 * GROWTH,
                1,
                ConvOptions::default(),
                norm,
                rng,
            );
            conv_block(
                &mut inner,
                4 * GROWTH,
                GROWTH,
                3,
                ConvOptions::default().padding(1),
                norm,
                rng,
            );
            l.push(Layer::Dense(Sequential::new(inner)));
            c += GROWTH;
        }
        if block < 2 {
            let out = (c as f32 * COMPRESSION).floor() as usize;
            conv_block(&mut l, c, out, 1, ConvOptions::default(), norm, rng);
            l.push(Layer::AvgPool {
                kernel: 2,
                stride: 2,
            });
            c = out;
            (h, w) = (h / 2, w / 2);
        }
    }
    let _ = (h, w);
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Flatten);
    l.push(Layer::Linear(Linear::new(c, config.num_classes, true, rng)));
    Ok(Sequential::new(l))
}

/// The DCGAN side lengths this crate builds: 28 (MNIST-like) and 32 (CIFAR-like).
fn dcgan_start(config: &ModelConfig) -> Result<(usize, usize), String> {
    match config.input_shape {
        [_, 28, 28] => Ok((7, 2)),
        [_, 32, 32] => Ok((4, 3)),
        [_, h, w] => Err(format!(
            "DCGAN models are built for 28x28 or 32x32 images, not {h}x{w}"
        )),
    }
}

/// A DCGAN channel count scaled by the config's `width` percent (100: the usual 64, 128, 256).
fn dcgan_width(config: &ModelConfig, channels: usize) -> usize {
    (channels * config.width / 100).max(1)
}

/// Re-draws every Conv, ConvTranspose and Linear weight from N(0, 0.02), as DCGAN does
/// (biases zero), and re-settles the spectral-norm vectors on the new weights.
fn dcgan_init(model: &Sequential, rng: &mut ChaCha8Rng) {
    for layer in &model.layers {
        let (w, b, sn) = match layer {
            Layer::Conv(l) => (&l.weight, &l.bias, l.sn.as_ref()),
            Layer::Linear(l) => (&l.weight, &l.bias, l.sn.as_ref()),
            Layer::ConvTranspose(l) => (&l.weight, &l.bias, None),
            _ => continue,
        };
        w.set_value(crate::init::normal(&w.shape(), 0.02, rng));
        if let Some(b) = b {
            let dim = b.value().raw_dim();
            b.set_value(msn_autograd::Array::zeros(dim));
        }
        if let Some(sn) = sn {
            sn.power_iteration(&w.value(), 15);
        }
    }
}

/// DCGAN generator: `[N, latent]` viewed as `[N, latent, 1, 1]` -> ConvTranspose to
/// `[N, C0, s, s]` -> (BN, ReLU, ConvTranspose 4x4 stride 2) per doubling -> Tanh, for 28x28
/// (s = 7, two doublings) or 32x32 (s = 4, three). `C0` is 64 << doublings at width 100.
pub fn dcgan_generator(config: &ModelConfig, rng: &mut ChaCha8Rng) -> Result<Sequential, String> {
    use crate::layers::ConvTranspose2d;
    let (s, doublings) = dcgan_start(config)?;
    let c_out = config.input_shape[0];
    let mut c = dcgan_width(config, 64) << doublings;
    let mut l = vec![
        Layer::Unflatten([config.latent, 1, 1]),
        Layer::ConvTranspose(ConvTranspose2d::new(
            config.latent,
            c,
            s,
            ConvOptions::default(),
            false,
            rng,
        )),
    ];
    for i in 0..doublings {
        l.push(Layer::BatchNorm(BatchNorm::new(c)));
        l.push(Layer::Relu);
        let next = if i + 1 == doublings { c_out } else { c / 2 };
        let opts = ConvOptions::default().stride(2).padding(1);
        l.push(Layer::ConvTranspose(ConvTranspose2d::new(
            c,
            next,
            4,
            opts,
            i + 1 == doublings,
            rng,
        )));
        c = next;
    }
    l.push(Layer::Tanh);
    let model = Sequential::new(l);
    dcgan_init(&model, rng);
    Ok(model)
}

/// DCGAN discriminator: 4x4 stride-2 convs (64, 128, 256 channels at width 100), each with the chosen norm
/// and LeakyReLU 0.1, then a linear layer to one logit.
pub fn dcgan_discriminator(
    config: &ModelConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Sequential, String> {
    dcgan_start(config)?;
    let [mut c, mut h, _] = config.input_shape;
    let mut l = Vec::new();
    for out in [64, 128, 256].map(|n| dcgan_width(config, n)) {
        conv_block(
            &mut l,
            c,
            out,
            4,
            ConvOptions::default().stride(2).padding(1),
            config.norm,
            rng,
        );
        c = out;
        h = conv_out(h, 4, 2, 1);
    }
    l.push(Layer::Flatten);
    l.push(Layer::Linear(Linear::new(c * h * h, 1, true, rng)));
    let model = Sequential::new(l);
    dcgan_init(&model, rng);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ctx, Module};
    use msn_autograd::Var;

    fn config(arch: &str, norm: NormKind, shape: [usize; 3]) -> ModelConfig {
        ModelConfig {
            architecture: arch.into(),
            norm,
            input_shape: shape,
            num_classes: 10,
            width: 25,
            depth: 10,
            latent: 16,
        }
    }

    #[test]
    fn dcgan_shapes() {
        for size in [28, 32] {
            let g = build(&config("dcgan-g", NormKind::Bn, [1, size, size]), 0).unwrap();
            let z = Var::constant(msn_autograd::ops::elementwise::spread(
                &[3, 16],
                -1.0,
                1.0,
                2,
            ));
            let img = g.forward(&z, &mut Ctx::train(0));
            assert_eq!(img.shape(), vec![3, 1, size, size]);
            assert!(img.value().iter().all(|v| v.abs() <= 1.0));
            for norm in [NormKind::None, NormKind::Bn, NormKind::Sn, NormKind::Msn] {
                let d = build(&config("dcgan-d", norm, [1, size, size]), 0).unwrap();
                assert_eq!(d.forward(&img, &mut Ctx::eval()).shape(), vec![3, 1]);
            }
        }
        assert!(build(&config("dcgan-g", NormKind::Bn, [1, 20, 20]), 0).is_err());
    }

    #[test]
    fn every_model_and_norm_gives_logits_of_the_right_shape() {
        for norm in [NormKind::None, NormKind::Bn, NormKind::Sn, NormKind::Msn] {
            for (arch, shape) in [
                ("cnn3", [1, 28, 28]),
                ("vgg7", [3, 32, 32]),
                ("densenet-bc", [3, 32, 32]),
            ] {
                let m = build(&config(arch, norm, shape), 0).unwrap();
                let x = Var::constant(msn_autograd::ops::elementwise::spread(
                    &[2, shape[0], shape[1], shape[2]],
                    0.0,
                    1.0,
                    1,
                ));
                for mut ctx in [Ctx::train(0), Ctx::eval()] {
                    assert_eq!(
                        m.forward(&x, &mut ctx).shape(),
                        vec![2, 10],
                        "{arch} {norm}"
                    );
                }
            }
        }
    }

    #[test]
    fn cnn3_parameter_counts() {
        // conv weights 400 + 4608 + 16384, linear 8192 * 10 + 10.
        let base = 400 + 4608 + 16384 + 81920 + 10;
        let count = |norm| {
            build(&config("cnn3", norm, [1, 28, 28]), 0)
                .unwrap()
                .num_parameters()
        };
        assert_eq!(count(NormKind::None), base + 16 + 32 + 32);
        assert_eq!(count(NormKind::Sn), base + 16 + 32 + 32);
        assert_eq!(count(NormKind::Bn), base + 2 * (16 + 32 + 32));
        assert_eq!(count(NormKind::Msn), base + 2 * (16 + 32 + 32));
    }
}
