//! # msn-export: trained networks to standard ONNX
//!
//! The exported graph shows exactly what was trained, in standard ops (opset 17 by default):
//!
//! - spectral norm keeps the raw weight and the power-iteration vectors as initializers and
//!   computes `sigma = u . (W_mat v)` in the graph (`Reshape`, `MatMul`, `MatMul`), then `Div`;
//! - the mean-only batch norm of MSN is `Sub(running_mean)`, `Mul(g)`, `Add(b)` with
//!   `[1, C, 1, 1]` constants; BatchNorm is `BatchNormalization`;
//! - names come from the layer paths (`features.0.weight`), layers carry doc strings, and the
//!   model's metadata holds the preprocessing, labels and training provenance (see
//!   `msn_onnx::meta`), so `msn-classify` needs nothing else.
//!
//! `msn-fold` then turns all of this into plain Conv/Gemm weights.

use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::Array;
use msn_nn::layers::{Layer, Linear, Sequential, SpectralNorm, Weights};
use msn_onnx::builder::{attr, GraphBuilder};
use msn_onnx::meta::{self, Color, ImageMeta, Resize};
use msn_onnx::ModelProto;
use ndarray::IxDyn;

/// Export settings.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub opset: i64,
    /// `None`: a dynamic batch dimension `N`; `Some(n)`: fixed.
    pub batch: Option<usize>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: 17,
            batch: None,
        }
    }
}

/// What the exporter needs to know about a network besides its layers.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub norm: String,
    pub dataset: String,
    /// Channels, height, width of one input.
    pub input_shape: [usize; 3],
    /// The input to the network: an image (with preprocessing) or a latent vector.
    pub input: InputKind,
    pub labels: Vec<String>,
    pub test_accuracy: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum InputKind {
    Image {
        scale: f32,
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    /// A generator's `[N, latent]` input.
    Latent(usize),
}

struct Exporter {
    b: GraphBuilder,
    /// Rank of the value the next layer reads: 4 for images, 2 after Flatten or Linear.
    rank: usize,
}

/// A per-channel vector as a constant that broadcasts over a rank-`rank` `[N, C, ...]` value.
fn channel_const(a: &Array, rank: usize) -> Array {
    let mut shape = vec![1; rank.max(2)];
    shape[1] = a.len();
    a.clone()
        .into_shape_with_order(IxDyn(&shape))
        .expect("per-channel vector")
}

impl Exporter {
    /// The weight a layer applies: the raw initializer, or `W / sigma` computed in the graph.
    fn weight(&mut self, name: &str, weight: &Array, sn: Option<&SpectralNorm>) -> String {
        let w = self.b.initializer_f32(&format!("{name}.weight"), weight);
        let Some(sn) = sn else { return w };
        let out = weight.shape()[0];
        let cols = weight.len() / out;
        let u = self.b.initializer_f32(
            &format!("{name}.weight_u"),
            &sn.u
                .value()
                .clone()
                .into_shape_with_order(IxDyn(&[1, out]))
                .expect("u"),
        );
        let v = self.b.initializer_f32(
            &format!("{name}.weight_v"),
            &sn.v
                .value()
                .clone()
                .into_shape_with_order(IxDyn(&[cols, 1]))
                .expect("v"),
        );
        let shape = self.b.initializer_i64(
            &format!("{name}.weight_mat_shape"),
            &ndarray::arr1(&[out as i64, cols as i64]).into_dyn(),
        );
        let doc = "spectral norm: W_sn = W / sigma, sigma = u . (W_mat v), W_mat = W reshaped to (out, in*kh*kw)";
        // W_mat = reshape(W), W_mat v, sigma = u (W_mat v), W_sn = W / sigma.
        let steps = [
            ("weight_mat", "Reshape", [w.as_str(), shape.as_str()]),
            ("weight_mat_v", "MatMul", ["", v.as_str()]),
            ("sigma", "MatMul", [u.as_str(), ""]),
            ("weight_sn", "Div", [w.as_str(), ""]),
        ];
        let mut last = String::new();
        for (what, op, inputs) in steps {
            let out = format!("{name}.{what}");
            // "" is the previous step's output.
            let inputs = inputs.map(|i| if i.is_empty() { last.as_str() } else { i });
            self.b.node_full(&out, op, &inputs, &[&out], &[], doc);
            last = out;
        }
        last
    }

    /// A layer with a weight: `op`'s inputs are `x`, the weight (through SN when on) and
    /// the bias if any; the doc string says whether SN is on.
    fn weighted(
        &mut self,
        (name, op, what): (&str, &str, &str),
        x: &str,
        l: &Weights,
        attrs: &[msn_onnx::AttributeProto],
    ) -> String {
        let wv = l.weight.value().clone();
        let mut inputs = vec![x.to_string(), self.weight(name, &wv, l.sn.as_ref())];
        if let Some(b) = &l.bias {
            inputs.push(self.b.initializer_f32(&format!("{name}.bias"), &b.value()));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = format!("{name}.output");
        let doc = match l.sn {
            Some(_) => format!("{what} with spectral norm"),
            None => what.to_string(),
        };
        self.b.node_full(name, op, &refs, &[&out], attrs, &doc);
        out
    }

    /// Conv or ConvTranspose (with its output padding) of `l`.
    fn conv(
        &mut self,
        (name, transposed): (&str, bool),
        x: &str,
        l: &Weights,
        o: ConvOptions,
    ) -> String {
        let pair = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
        let k = l.weight.shape();
        let [ph, pw] = pair(o.padding);
        let mut attrs = vec![
            attr::ints("kernel_shape", &[k[2] as i64, k[3] as i64]),
            attr::ints("strides", &pair(o.stride)),
            attr::ints("pads", &[ph, pw, ph, pw]),
            attr::ints("dilations", &pair(o.dilation)),
        ];
        if transposed {
            attrs.push(attr::ints("output_padding", &pair(o.output_padding)));
        }
        attrs.push(attr::int("group", o.groups as i64));
        let (op, what) = match transposed {
            true => ("ConvTranspose", "ConvTranspose2d"),
            false => ("Conv", "Conv2d"),
        };
        self.weighted((name, op, what), x, l, &attrs)
    }

    fn linear(&mut self, name: &str, x: &str, l: &Linear) -> String {
        let attrs = [attr::int("transB", 1)];
        self.weighted((name, "Gemm", "Linear"), x, l, &attrs)
    }

    fn simple(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[msn_onnx::AttributeProto],
        doc: &str,
    ) -> String {
        let out = format!("{name}.output");
        self.b.node_full(name, op, inputs, &[&out], attrs, doc);
        out
    }

    fn sequential(&mut self, prefix: &str, x: &str, seq: &Sequential) -> String {
        let mut x = x.to_string();
        for (i, layer) in seq.layers.iter().enumerate() {
            let name = if prefix.is_empty() {
                i.to_string()
            } else {
                format!("{prefix}.{i}")
            };
            x = self.layer(&name, &x, layer);
            self.rank = match layer {
                Layer::Flatten | Layer::Linear(_) => 2,
                Layer::Unflatten(_) => 4,
                _ => self.rank,
            };
        }
        x
    }

    fn layer(&mut self, name: &str, x: &str, layer: &Layer) -> String {
        match layer {
            Layer::Conv(l) => self.conv((name, false), x, l, l.options),
            Layer::ConvTranspose(l) => self.conv((name, true), x, l, l.options),
            Layer::Linear(l) => self.linear(name, x, l),
            Layer::BatchNorm(l) => {
                let g = self
                    .b
                    .initializer_f32(&format!("{name}.weight"), &l.weight.value());
                let b = self
                    .b
                    .initializer_f32(&format!("{name}.bias"), &l.bias.value());
                let m = self
                    .b
                    .initializer_f32(&format!("{name}.running_mean"), &l.running_mean.value());
                let v = self
                    .b
                    .initializer_f32(&format!("{name}.running_var"), &l.running_var.value());
                let attrs = [
                    attr::float("epsilon", l.eps),
                    attr::float("momentum", 1.0 - l.momentum),
                ];
                self.simple(
                    name,
                    "BatchNormalization",
                    &[x, &g, &b, &m, &v],
                    &attrs,
                    "BatchNorm (inference form)",
                )
            }
            Layer::MeanOnlyBatchNorm(l) => {
                let rank = self.rank;
                let m = self.b.initializer_f32(
                    &format!("{name}.running_mean"),
                    &channel_const(&l.running_mean.value(), rank),
                );
                let g = self.b.initializer_f32(
                    &format!("{name}.weight"),
                    &channel_const(&l.weight.value(), rank),
                );
                let b = self.b.initializer_f32(
                    &format!("{name}.bias"),
                    &channel_const(&l.bias.value(), rank),
                );
                let doc = "mean-only batch norm (MSN): y = g * (x - running_mean) + b";
                let mut y = x.to_string();
                for (step, op, c) in [("sub", "Sub", m), ("mul", "Mul", g), ("add", "Add", b)] {
                    let out = match op {
                        "Add" => format!("{name}.output"),
                        "Sub" => format!("{name}.centered"),
                        _ => format!("{name}.scaled"),
                    };
                    let node = format!("{name}.{step}");
                    self.b.node_full(&node, op, &[&y, &c], &[&out], &[], doc);
                    y = out;
                }
                y
            }
            Layer::Relu => self.simple(name, "Relu", &[x], &[], ""),
            Layer::LeakyRelu(s) => {
                self.simple(name, "LeakyRelu", &[x], &[attr::float("alpha", *s)], "")
            }
            Layer::Tanh => self.simple(name, "Tanh", &[x], &[], ""),
            Layer::Sigmoid => self.simple(name, "Sigmoid", &[x], &[], ""),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let (k, s, p) = (*kernel as i64, *stride as i64, *padding as i64);
                let attrs = [
                    attr::ints("kernel_shape", &[k, k]),
                    attr::ints("strides", &[s, s]),
                    attr::ints("pads", &[p, p, p, p]),
                ];
                self.simple(name, "MaxPool", &[x], &attrs, "")
            }
            Layer::AvgPool { kernel, stride } => {
                let (k, s) = (*kernel as i64, *stride as i64);
                self.simple(
                    name,
                    "AveragePool",
                    &[x],
                    &[
                        attr::ints("kernel_shape", &[k, k]),
                        attr::ints("strides", &[s, s]),
                    ],
                    "",
                )
            }
            Layer::GlobalAvgPool => self.simple(name, "GlobalAveragePool", &[x], &[], ""),
            Layer::Flatten => self.simple(name, "Flatten", &[x], &[attr::int("axis", 1)], ""),
            Layer::Dropout(_) => x.to_string(),
            Layer::Unflatten([c, h, w]) => {
                let shape = self.b.initializer_i64(
                    &format!("{name}.shape"),
                    &ndarray::arr1(&[-1, *c as i64, *h as i64, *w as i64]).into_dyn(),
                );
                self.simple(name, "Reshape", &[x, &shape], &[], "")
            }
            Layer::Dense(inner) => {
                let y = self.sequential(name, x, inner);
                self.simple(
                    &format!("{name}.concat"),
                    "Concat",
                    &[x, &y],
                    &[attr::int("axis", 1)],
                    "DenseNet layer: concat(x, f(x))",
                )
            }
        }
    }
}

/// Exports a network to an ONNX model whose input is `input` and output `output`.
pub fn export(model: &Sequential, info: &ModelInfo, options: &ExportOptions) -> ModelProto {
    let mut e = Exporter {
        b: GraphBuilder::new(&format!("{}-{}", info.architecture, info.norm)),
        rank: match info.input {
            InputKind::Image { .. } => 4,
            InputKind::Latent(_) => 2,
        },
    };
    e.b.producer("msn-export", env!("CARGO_PKG_VERSION"));
    let n = options.batch.map(|b| b as i64).unwrap_or(-1);
    let input_dims: Vec<i64> = match &info.input {
        InputKind::Image { .. } => {
            let [c, h, w] = info.input_shape;
            vec![n, c as i64, h as i64, w as i64]
        }
        InputKind::Latent(z) => vec![n, *z as i64],
    };
    e.b.input("input", &input_dims);
    let last = e.sequential("", "input", model);
    let out = if matches!(info.input, InputKind::Image { .. }) {
        "logits"
    } else {
        "output"
    };
    e.b.node_full("output", "Identity", &[&last], &[out], &[], "");
    let out_dims = match &info.input {
        InputKind::Image { .. } => vec![n, info.labels.len() as i64],
        InputKind::Latent(_) => vec![
            n,
            info.input_shape[0] as i64,
            info.input_shape[1] as i64,
            info.input_shape[2] as i64,
        ],
    };
    e.b.output(out, &out_dims);

    if let InputKind::Image { scale, mean, std } = &info.input {
        let m = ImageMeta {
            input_shape: Some(info.input_shape),
            color: Some(if info.input_shape[0] == 1 {
                Color::Gray
            } else {
                Color::Rgb
            }),
            resize: Some(Resize::Exact),
            scale: Some(*scale),
            mean: Some(mean.clone()),
            std: Some(std.clone()),
            labels: (!info.labels.is_empty()).then(|| info.labels.clone()),
        };
        for (k, v) in m.to_pairs() {
            e.b.metadata(k, v);
        }
    }
    e.b.metadata(meta::ARCHITECTURE, info.architecture.clone());
    e.b.metadata(meta::NORM, info.norm.clone());
    e.b.metadata(meta::DATASET, info.dataset.clone());
    if let Some(acc) = info.test_accuracy {
        e.b.metadata(meta::TEST_ACCURACY, format!("{acc:.4}"));
    }
    e.b.into_model(options.opset)
}

/// The nodes and initializers of `model` applied to the value `input` (of rank `rank`, 2 for
/// `[N, features]`), every name under `prefix`, as a graph fragment without inputs or outputs
/// to splice into another model (`msn teach` puts a head on a backbone this way). Returns the
/// fragment and the name of its output value.
pub fn export_fragment(
    model: &Sequential,
    prefix: &str,
    input: &str,
    rank: usize,
) -> (msn_onnx::GraphProto, String) {
    let mut e = Exporter {
        b: GraphBuilder::new(prefix),
        rank,
    };
    let out = e.sequential(prefix, input, model);
    (e.b.into_graph(), out)
}

/// Errors of exporting a run directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Run(#[from] msn_checkpoint::Error),
    #[error(transparent)]
    Onnx(#[from] msn_onnx::Error),
}

/// Which network of a GAN run to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GanPart {
    Generator,
    Discriminator,
}

/// Loads a GAN run directory (or its checkpoint file) and exports its generator (input
/// `[N, latent]`, output `[N, C, H, W]` in `[-1, 1]`) or its discriminator (input an image
/// preprocessed to `[-1, 1]`, output one logit, "real"); nothing is written.
pub fn export_gan_run(
    run: &std::path::Path,
    part: GanPart,
    options: &ExportOptions,
) -> Result<ModelProto, Error> {
    let dir = msn_checkpoint::gan::run_dir(run);
    let (cfg, g, d) = msn_checkpoint::gan::load(&dir)?;
    let (model, model_cfg, input) = match part {
        GanPart::Generator => (&g, &cfg.generator, InputKind::Latent(cfg.generator.latent)),
        GanPart::Discriminator => (
            &d,
            &cfg.discriminator,
            InputKind::Image {
                scale: cfg.preprocessing.scale,
                mean: cfg.preprocessing.mean.clone(),
                std: cfg.preprocessing.std.clone(),
            },
        ),
    };
    let info = ModelInfo {
        architecture: model_cfg.architecture.clone(),
        norm: model_cfg.norm.to_string(),
        dataset: cfg.dataset.clone(),
        input_shape: model_cfg.input_shape,
        input,
        labels: match part {
            GanPart::Generator => vec![],
            GanPart::Discriminator => vec!["real".into()],
        },
        test_accuracy: None,
    };
    Ok(export(model, &info, options))
}

/// Loads a run directory (or its checkpoint file) and exports it; nothing is written. A GAN
/// run exports its generator (see [`export_gan_run`]).
pub fn export_run(run: &std::path::Path, options: &ExportOptions) -> Result<ModelProto, Error> {
    if msn_checkpoint::gan::is_gan_run(&msn_checkpoint::gan::run_dir(run)) {
        return export_gan_run(run, GanPart::Generator, options);
    }
    let (cfg, model) = msn_checkpoint::checkpoint::load_model(run)?;
    let test_accuracy = msn_checkpoint::last_metrics(&msn_checkpoint::gan::run_dir(run))
        .and_then(|v| v["test_acc"].as_f64());
    let info = ModelInfo {
        architecture: cfg.model.architecture.clone(),
        norm: cfg.model.norm.to_string(),
        dataset: cfg.dataset.clone(),
        input_shape: cfg.model.input_shape,
        input: InputKind::Image {
            scale: cfg.preprocessing.scale,
            mean: cfg.preprocessing.mean.clone(),
            std: cfg.preprocessing.std.clone(),
        },
        labels: cfg.labels.clone(),
        test_accuracy,
    };
    Ok(export(&model, &info, options))
}
