//! PyTorch exports with BatchNorm (ResNet-style, MobileNet-style with depthwise convs, a
//! ConvTranspose generator, a conv weight shared by two convs) and a PyTorch MSN network, from
//! `tests/python/make_fold_models.py`: folding leaves no BatchNormalization (and, for MSN, no
//! Sub/Mul/Add/Div), and the folded model matches onnxruntime's output on the original.

use msn_e2e::{fixture, read_f32};
use msn_onnx::io;

fn check(name: &str, banned: &[&str]) {
    let original = io::load(fixture(&format!("fold/{name}.onnx"))).unwrap();
    let mut folded = original.clone();
    let report = msn_fold::fold(&mut folded);
    for op in banned {
        assert!(
            !report.ops_after.contains_key(*op),
            "{name}: {op} left: {:?}",
            report.ops_after
        );
    }
    let err = msn_runtime::verify::models(&original, &folded, 3, 2, &[]).unwrap();
    println!(
        "{name}: {} -> {} nodes, max relative error {err:e}",
        report.nodes_before, report.nodes_after
    );
    assert!(err < 1e-4, "{name}: {err}");

    // Against onnxruntime on the original, with the input the fixture script used.
    let shape = msn_fold::input_shape(&original).unwrap();
    let x = read_f32(&fixture(&format!("fold/{name}.input.f32")));
    let n = x.len() / shape[1..].iter().product::<usize>();
    let mut full = shape.clone();
    full[0] = n;
    let y = msn_e2e::run_tract(&io::to_bytes(&folded), &full, x);
    let reference = read_f32(&fixture(&format!("fold/{name}.output.f32")));
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = msn_e2e::max_abs_diff(&y, &reference) / scale;
    assert!(diff < 1e-4, "{name}: folded vs onnxruntime relative {diff}");
}

#[test]
fn resnet_block_net() {
    check("resnet_bn", &["BatchNormalization"]);
}

#[test]
fn mobilenet_with_depthwise_convs_and_bn1d_after_gemm() {
    check("mobilenet_bn", &["BatchNormalization"]);
}

#[test]
fn generator_with_conv_transpose() {
    check("generator_bn", &["BatchNormalization"]);
}

#[test]
fn conv_weight_shared_by_two_convs() {
    check("shared_weight_bn", &["BatchNormalization"]);
}

#[test]
fn pytorch_msn_network() {
    check(
        "msn_torch",
        &[
            "BatchNormalization",
            "Sub",
            "Div",
            "Mul",
            "Add",
            "MatMul",
            "ReduceSum",
        ],
    );
}
