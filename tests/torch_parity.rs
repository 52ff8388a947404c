//! Our layers, ops and optimizers against PyTorch (`tests/python/make_layer_fixtures.py`):
//! outputs, input and parameter gradients, running statistics and SN vectors within 1e-4
//! relative.

use msn_autograd::ops::conv::ConvOptions;
use msn_autograd::{Array, Var};
use msn_e2e::fixture;
use msn_nn::layers::{
    BatchNorm, Conv2d, ConvTranspose2d, Linear, MeanOnlyBatchNorm, SpectralNorm, Weights,
};
use msn_nn::optim::{Adam, Optimizer, Sgd};
use msn_nn::{Ctx, Module};
use serde_json::Value;

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("torch/layers.json")).unwrap()).unwrap()
}

fn arr(v: &Value) -> Array {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f32> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap() as f32)
        .collect();
    Array::from_shape_vec(ndarray::IxDyn(&shape), data).unwrap()
}

/// Asserts `ours` matches the reference within 1e-4 relative to the reference's largest value.
fn close(what: &str, ours: &Array, reference: &Value) {
    let r = arr(reference);
    assert_eq!(ours.shape(), r.shape(), "{what}: shape");
    let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    let diff = ours
        .iter()
        .zip(r.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{what}: max relative difference {:.2e}", diff / scale);
    assert!(diff / scale < 1e-4, "{what}: {diff} (scale {scale})");
}

/// Runs `forward`, back-propagates `sum(y * proj)` and checks y and the gradients of `x` and
/// the listed parameters.
fn check_layer(name: &str, c: &Value, x: &Var, y: Var, params: &[(&str, &Var)]) {
    close(&format!("{name} y"), &y.value(), &c["y"]);
    y.mul(&Var::constant(arr(&c["proj"]))).sum().backward();
    close(&format!("{name} dx"), &x.grad().unwrap(), &c["gx"]);
    for (key, p) in params {
        close(
            &format!("{name} d{key}"),
            &p.grad().unwrap(),
            &c[format!("g{key}")],
        );
    }
}

/// A case's weight and bias as a layer's parameters (no spectral norm).
fn weights(c: &Value) -> Weights {
    Weights {
        weight: Var::parameter(arr(&c["weight"])),
        bias: Some(Var::parameter(arr(&c["bias"]))),
        sn: None,
    }
}

#[test]
fn conv2d_with_groups_and_dilation() {
    let c = &cases()["conv2d"];
    let x = Var::parameter(arr(&c["x"]));
    let conv = Conv2d {
        params: weights(c),
        options: ConvOptions::default()
            .stride(2)
            .padding(2)
            .dilation(2)
            .groups(2),
    };
    let y = conv.forward(&x, &mut Ctx::train(0));
    check_layer(
        "conv2d",
        c,
        &x,
        y,
        &[
            ("weight", &conv.weight),
            ("bias", conv.bias.as_ref().unwrap()),
        ],
    );
}

#[test]
fn conv_transpose2d() {
    let c = &cases()["conv_transpose2d"];
    let x = Var::parameter(arr(&c["x"]));
    let conv = ConvTranspose2d {
        params: weights(c),
        options: ConvOptions::default()
            .stride(2)
            .padding(1)
            .output_padding(1)
            .groups(2),
    };
    let y = conv.forward(&x, &mut Ctx::train(0));
    check_layer(
        "conv_transpose2d",
        c,
        &x,
        y,
        &[
            ("weight", &conv.weight),
            ("bias", conv.bias.as_ref().unwrap()),
        ],
    );
}

#[test]
fn linear() {
    let c = &cases()["linear"];
    let x = Var::parameter(arr(&c["x"]));
    let lin = Linear { params: weights(c) };
    let y = lin.forward(&x, &mut Ctx::train(0));
    check_layer(
        "linear",
        c,
        &x,
        y,
        &[
            ("weight", &lin.weight),
            ("bias", lin.bias.as_ref().unwrap()),
        ],
    );
}

#[test]
fn batchnorm2d_train_and_eval() {
    for mode in ["train", "eval"] {
        let c = &cases()[format!("batchnorm2d_{mode}")];
        let x = Var::parameter(arr(&c["x"]));
        let bn = BatchNorm {
            weight: Var::parameter(arr(&c["weight"])),
            bias: Var::parameter(arr(&c["bias"])),
            running_mean: Var::constant(arr(&c["running_mean"])),
            running_var: Var::constant(arr(&c["running_var"])),
            ..BatchNorm::new(3)
        };
        let mut ctx = if mode == "train" {
            Ctx::train(0)
        } else {
            Ctx::eval()
        };
        let y = bn.forward(&x, &mut ctx);
        check_layer(
            &format!("batchnorm2d {mode}"),
            c,
            &x,
            y,
            &[("weight", &bn.weight), ("bias", &bn.bias)],
        );
        close(
            &format!("batchnorm2d {mode} running_mean"),
            &bn.running_mean.value(),
            &c["running_mean_after"],
        );
        close(
            &format!("batchnorm2d {mode} running_var"),
            &bn.running_var.value(),
            &c["running_var_after"],
        );
    }
}

#[test]
fn mean_only_batchnorm() {
    let c = &cases()["mean_only_bn_train"];
    let x = Var::parameter(arr(&c["x"]));
    let bn = MeanOnlyBatchNorm {
        weight: Var::parameter(arr(&c["weight"])),
        bias: Var::parameter(arr(&c["bias"])),
        running_mean: Var::constant(arr(&c["running_mean"])),
        momentum: 0.1,
    };
    let y = bn.forward(&x, &mut Ctx::train(0));
    check_layer(
        "mean-only bn",
        c,
        &x,
        y,
        &[("weight", &bn.weight), ("bias", &bn.bias)],
    );
    close(
        "mean-only bn running_mean",
        &bn.running_mean.value(),
        &c["running_mean_after"],
    );
}

#[test]
fn spectral_norm_one_power_iteration_from_the_same_u() {
    let c = &cases()["spectral_norm_conv"];
    let x = Var::parameter(arr(&c["x"]));
    let conv = Conv2d {
        params: Weights {
            weight: Var::parameter(arr(&c["weight"])),
            bias: Some(Var::constant(arr(&c["bias"]))),
            sn: Some(SpectralNorm {
                u: Var::constant(arr(&c["u"])),
                v: Var::constant(arr(&c["v"])),
                n_power_iterations: 1,
                eps: 1e-12,
            }),
        },
        options: ConvOptions::default().padding(1),
    };
    let y = conv.forward(&x, &mut Ctx::train(0));
    let sn = conv.sn.as_ref().unwrap();
    close("spectral norm u", &sn.u.value(), &c["u_after"]);
    close("spectral norm v", &sn.v.value(), &c["v_after"]);
    check_layer("spectral norm conv", c, &x, y, &[("weight", &conv.weight)]);
}

#[test]
fn cross_entropy() {
    let c = &cases()["cross_entropy"];
    let logits = Var::parameter(arr(&c["logits"]));
    let target: Vec<usize> = c["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let loss = logits.cross_entropy(&target);
    let expected = c["loss"].as_f64().unwrap() as f32;
    assert!((loss.value()[[]] - expected).abs() < 1e-5 * expected.abs().max(1.0));
    loss.backward();
    close("cross entropy grad", &logits.grad().unwrap(), &c["glogits"]);
}

fn optimizer_case(name: &str, mut opt: Box<dyn Optimizer>, lr: f32) {
    let c = &cases()[format!("{name}_steps")];
    let w = Var::parameter(arr(&c["w0"]));
    for (step, g) in c["grads"].as_array().unwrap().iter().enumerate() {
        w.zero_grad();
        // Our own gradient of sum(w * w * (step + 1)) must equal PyTorch's, then the step.
        w.mul(&w).scale((step + 1) as f32).sum().backward();
        close(&format!("{name} grad {step}"), &w.grad().unwrap(), g);
        opt.step(std::slice::from_ref(&w), lr);
    }
    close(
        &format!("{name} weights after two steps"),
        &w.value(),
        &c["w_after"],
    );
}

#[test]
fn sgd_with_momentum_and_weight_decay() {
    optimizer_case("sgd", Box::new(Sgd::new(0.9, false, 0.01)), 0.1);
}

#[test]
fn adam() {
    optimizer_case("adam", Box::new(Adam::new(0.8, 0.99, 0.0)), 0.01);
}
