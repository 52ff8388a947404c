//! A model exported by PyTorch (`tests/python/make_foreign_model.py`) goes through our ONNX
//! crate unchanged and runs in our runtime with onnxruntime's outputs.

use msn_e2e::{fixture, max_abs_diff, read_f32};
use msn_onnx::{graph::GraphView, io, tensor};
use msn_runtime::{Classifier, LoadOptions};
use ndarray::Array4;

#[test]
fn load_save_reload_keeps_every_tensor_byte_identical() {
    let original = io::load(fixture("foreign/torch_cnn.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("copy.onnx");
    io::save(&original, &saved).unwrap();
    let reloaded = io::load(&saved).unwrap();
    assert_eq!(original, reloaded);

    let a = &original.graph.as_ref().unwrap().initializer;
    let b = &reloaded.graph.as_ref().unwrap().initializer;
    assert!(!a.is_empty());
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (tensor::to_f32(x).unwrap(), tensor::to_f32(y).unwrap());
        let bits = |t: &ndarray::ArrayD<f32>| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(x.shape(), y.shape());
        assert_eq!(bits(&x), bits(&y));
    }
    // Saving the reloaded model gives the same bytes again.
    assert_eq!(io::to_bytes(&original), io::to_bytes(&reloaded));

    let view = GraphView::new(&reloaded).unwrap();
    assert_eq!(view.opset(""), Some(17));
    assert_eq!(view.op_histogram()["Conv"], 2);
}

#[test]
fn runtime_output_matches_onnxruntime() {
    let clf = Classifier::load(
        fixture("foreign/torch_cnn.onnx"),
        &LoadOptions {
            batch: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((clf.batch(), clf.classes()), (4, 10));
    let x = Array4::from_shape_vec(
        (4, 3, 32, 32),
        read_f32(&fixture("foreign/torch_cnn.input.f32")),
    )
    .unwrap();
    let ours = clf.run(x).unwrap();
    let reference = read_f32(&fixture("foreign/torch_cnn.output.f32"));
    let diff = max_abs_diff(ours.as_slice().unwrap(), &reference);
    println!("max |tract - onnxruntime| = {diff:e}");
    assert!(diff < 1e-5, "{diff}");
}
