//! Each condition under which a fold is exact, tested on a small hand-made graph: what folds is
//! verified numerically in tract; what must not fold is left in place.

mod common;

use common::ops;
use msn_onnx::builder::{attr, GraphBuilder};
use msn_onnx::proto::tensor_proto::DataLocation;
use msn_onnx::ModelProto;
use ndarray::{ArrayD, IxDyn};

fn arr(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s as f32 / u32::MAX as f32) - 0.5
    })
}

fn positive(shape: &[usize], seed: u32) -> ArrayD<f32> {
    arr(shape, seed).mapv(|v| v.abs() + 0.5)
}

/// input [1, 2, 5, 5] -> Conv(3 out, 3x3) named "conv" -> `conv.out`.
fn conv_graph() -> GraphBuilder {
    let mut b = GraphBuilder::new("t");
    b.input("x", &[1, 2, 5, 5]);
    b.initializer_f32("w", &arr(&[3, 2, 3, 3], 1));
    b.initializer_f32("b", &arr(&[3], 2));
    b.node(
        "Conv",
        &["x", "w", "b"],
        "conv.out",
        &[attr::ints("pads", &[1, 1, 1, 1])],
    );
    b
}

fn fold_and_verify(model: &ModelProto) -> (ModelProto, msn_fold::Report) {
    let mut folded = model.clone();
    let report = msn_fold::fold(&mut folded);
    msn_onnx::graph::GraphView::new(&folded).expect("folded graph is valid");
    let err = msn_runtime::verify::models(model, &folded, 3, 7, &[]).unwrap();
    assert!(err < 1e-5, "max relative error {err}");
    (folded, report)
}

/// Folds `m` and asserts that its BatchNormalization stays, with a warning naming `why`.
fn assert_left_unfolded(mut m: ModelProto, why: &str) {
    let report = msn_fold::fold(&mut m);
    assert!(ops(&m).contains(&"BatchNormalization".to_string()));
    let warned = report.warnings.iter().any(|w| w.contains(why));
    assert!(warned, "{:?}", report.warnings);
}

#[test]
fn batchnorm_and_an_affine_chain_fold_into_the_conv() {
    let mut b = conv_graph();
    let stats = [
        ("s", 3, true),
        ("o", 4, false),
        ("m", 5, false),
        ("v", 6, true),
    ];
    for (name, seed, pos) in stats {
        let a = if pos {
            positive(&[3], seed)
        } else {
            arr(&[3], seed)
        };
        b.initializer_f32(name, &a);
    }
    let bn_inputs = ["conv.out", "s", "o", "m", "v"];
    b.node("BatchNormalization", &bn_inputs, "bn", &[]);
    b.initializer_f32("k", &positive(&[1, 3, 1, 1], 7));
    b.node("Mul", &["bn", "k"], "mul", &[]);
    b.initializer_f32("c", &arr(&[3, 1, 1], 8));
    b.node("Sub", &["c", "mul"], "sub", &[]); // c - x: the weights change sign
    b.initializer_f32("d", &positive(&[], 9));
    b.node("Div", &["sub", "d"], "y", &[]);
    b.output("y", &[1, 3, 5, 5]);
    let (folded, report) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Conv"]);
    assert_eq!(
        folded.graph.as_ref().unwrap().node[0].output[0],
        "y",
        "graph output keeps its name"
    );
    assert_eq!(report.nodes_before, 5);
}

#[test]
fn a_weight_shared_by_two_convs_is_cloned_not_changed() {
    let mut b = conv_graph();
    b.node(
        "Conv",
        &["x", "w"],
        "conv2.out",
        &[attr::ints("pads", &[1, 1, 1, 1])],
    );
    b.initializer_f32("k", &positive(&[1, 3, 1, 1], 3));
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.node("Add", &["y", "conv2.out"], "z", &[]);
    b.output("z", &[1, 3, 5, 5]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Conv", "Conv", "Add"]);
    let g = folded.graph.as_ref().unwrap();
    assert_ne!(
        g.node[0].input[1], g.node[1].input[1],
        "the second conv keeps the original weight"
    );
}

#[test]
fn a_value_with_two_consumers_or_a_graph_output_is_not_folded_through() {
    let mut b = conv_graph();
    b.initializer_f32("k", &positive(&[1, 3, 1, 1], 3));
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.node("Relu", &["conv.out"], "r", &[]);
    b.output("y", &[1, 3, 5, 5]);
    b.output("r", &[1, 3, 5, 5]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Conv", "Mul", "Relu"]);

    let mut b = conv_graph();
    b.initializer_f32("k", &positive(&[1, 3, 1, 1], 3));
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.output("conv.out", &[1, 3, 5, 5]);
    b.output("y", &[1, 3, 5, 5]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Conv", "Mul"]);
}

#[test]
fn constants_that_are_not_per_channel_are_not_folded() {
    let mut b = conv_graph();
    b.initializer_f32("k", &positive(&[1, 1, 5, 1], 3)); // varies along the height
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.output("y", &[1, 3, 5, 5]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Conv", "Mul"]);

    let mut b = conv_graph();
    b.initializer_f32("k", &positive(&[3], 3)); // [3] broadcasts along the width, not channels
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.output("y", &[1, 3, 5, 3]);
    let mut m = b.into_model(17);
    msn_fold::fold(&mut m);
    assert_eq!(ops(&m), vec!["Conv", "Mul"]);
}

fn bn_model(edit: impl FnOnce(&mut GraphBuilder) -> Vec<String>) -> ModelProto {
    let mut b = conv_graph();
    let inputs = edit(&mut b);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    b.node("BatchNormalization", &refs, "y", &[]);
    b.output("y", &[1, 3, 5, 5]);
    b.into_model(17)
}

#[test]
fn malformed_batchnorms_are_left_with_a_warning() {
    // Training mode.
    let mut m = bn_model(|b| {
        for (n, s) in [("s", 3), ("o", 4), ("m", 5), ("v", 6)] {
            b.initializer_f32(n, &positive(&[3], s));
        }
        ["conv.out", "s", "o", "m", "v"].map(String::from).to_vec()
    });
    m.graph.as_mut().unwrap().node[1]
        .attribute
        .push(attr::int("training_mode", 1));
    assert_left_unfolded(m, "training mode");

    // Statistics that are not constants.
    let m = bn_model(|b| {
        b.input("mean", &[3]);
        for (n, s) in [("s", 3), ("o", 4), ("v", 6)] {
            b.initializer_f32(n, &positive(&[3], s));
        }
        ["conv.out", "s", "o", "mean", "v"]
            .map(String::from)
            .to_vec()
    });
    assert_left_unfolded(m, "not constant");

    // Four channels of statistics for a three-channel conv.
    let m = bn_model(|b| {
        for (n, s) in [("s", 3), ("o", 4), ("m", 5), ("v", 6)] {
            b.initializer_f32(n, &positive(&[4], s));
        }
        ["conv.out", "s", "o", "m", "v"].map(String::from).to_vec()
    });
    assert_left_unfolded(m, "channels");
}

#[test]
fn a_weight_in_external_data_is_not_folded() {
    let mut b = conv_graph();
    b.initializer_f32("k", &positive(&[1, 3, 1, 1], 3));
    b.node("Mul", &["conv.out", "k"], "y", &[]);
    b.output("y", &[1, 3, 5, 5]);
    let mut m = b.into_model(17);
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.data_location = Some(DataLocation::External as i32);
    msn_fold::fold(&mut m);
    assert_eq!(ops(&m), vec!["Conv", "Mul"]);
}

#[test]
fn gemm_with_alpha_beta_and_transposed_weight_folds() {
    let mut b = GraphBuilder::new("g");
    b.input("x", &[2, 4]);
    b.initializer_f32("w", &arr(&[3, 4], 1));
    b.initializer_f32("c", &arr(&[3], 2));
    b.node(
        "Gemm",
        &["x", "w", "c"],
        "y0",
        &[
            attr::int("transB", 1),
            attr::float("alpha", 0.5),
            attr::float("beta", 2.0),
        ],
    );
    b.initializer_f32("k", &positive(&[3], 3));
    b.node("Mul", &["y0", "k"], "y", &[]);
    b.output("y", &[2, 3]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), vec!["Gemm"]);
}

/// x [2, 3, 2, 2] -> Flatten -> MatMul(W [12, 5]) -> Add(bias) -> `tail` ops -> y.
fn matmul_model(rank_known: bool, batchnorm: bool) -> ModelProto {
    let mut b = GraphBuilder::new("m");
    b.input("x", &[2, 3, 2, 2]);
    if rank_known {
        b.node("Flatten", &["x"], "f", &[]);
    } else {
        // A Reshape to [2, 12]: rank 2 at run time, but not known without shape inference.
        b.initializer_i64("shape", &ndarray::arr1(&[2i64, 12]).into_dyn());
        b.node("Reshape", &["x", "shape"], "f", &[]);
    }
    b.initializer_f32("w", &arr(&[12, 5], 1));
    b.node("MatMul", &["f", "w"], "mm", &[]);
    b.initializer_f32("bias", &arr(&[5], 2));
    b.node("Add", &["mm", "bias"], "lin", &[]);
    if batchnorm {
        b.initializer_f32("g", &positive(&[5], 3));
        b.initializer_f32("beta", &arr(&[5], 4));
        b.initializer_f32("mean", &arr(&[5], 5));
        b.initializer_f32("var", &positive(&[5], 6));
        b.node(
            "BatchNormalization",
            &["lin", "g", "beta", "mean", "var"],
            "y",
            &[],
        );
    } else {
        b.node("Relu", &["lin"], "y", &[]);
    }
    b.output("y", &[2, 5]);
    b.into_model(17)
}

#[test]
fn batchnorm_after_matmul_and_add_folds_into_a_gemm() {
    let (folded, report) = fold_and_verify(&matmul_model(true, true));
    assert_eq!(ops(&folded), vec!["Flatten", "Gemm"]);
    assert!(report.passes.contains(&("matmul_to_gemm".to_string(), 1)));
    // Without a BN, MatMul + Add folds the same way.
    let (folded, _) = fold_and_verify(&matmul_model(true, false));
    assert_eq!(ops(&folded), vec!["Flatten", "Gemm", "Relu"]);
    // When x's rank is not known to be 2, the MatMul is left alone.
    let (folded, _) = fold_and_verify(&matmul_model(false, true));
    assert!(
        ops(&folded).contains(&"MatMul".to_string()),
        "{:?}",
        ops(&folded)
    );
}

/// x [1, 4, 6, 6] -> `op`(x, c) -> Conv(w [6, 4/groups, 3, 3], pads) -> y.
fn affine_before_conv(op: &str, x_first: bool, pads: i64, groups: i64) -> ModelProto {
    let mut b = GraphBuilder::new("pre");
    b.input("x", &[1, 4, 6, 6]);
    b.initializer_f32("c", &positive(&[1, 4, 1, 1], 9));
    let ins = if x_first { ["x", "c"] } else { ["c", "x"] };
    b.node(op, &ins, "v", &[]);
    b.initializer_f32("w", &arr(&[6, 4 / groups as usize, 3, 3], 10));
    b.initializer_f32("b", &arr(&[6], 11));
    let attrs = [attr::ints("pads", &[pads; 4]), attr::int("group", groups)];
    b.node("Conv", &["v", "w", "b"], "y", &attrs);
    let out = if pads == 1 { 6 } else { 4 };
    b.output("y", &[1, 6, out, out]);
    b.into_model(17)
}

#[test]
fn a_scale_before_a_conv_folds_and_a_shift_only_without_padding() {
    for (op, x_first) in [("Mul", true), ("Mul", false), ("Div", true)] {
        for groups in [1, 2] {
            let (folded, _) = fold_and_verify(&affine_before_conv(op, x_first, 1, groups));
            assert_eq!(ops(&folded), vec!["Conv"], "{op} groups {groups}");
        }
    }
    for (op, x_first) in [("Add", true), ("Sub", true), ("Sub", false)] {
        let (folded, _) = fold_and_verify(&affine_before_conv(op, x_first, 0, 2));
        assert_eq!(ops(&folded), vec!["Conv"], "{op} without padding");
        // With padding the border would change: left in place, with a warning.
        let (folded, report) = fold_and_verify(&affine_before_conv(op, x_first, 1, 1));
        assert_eq!(ops(&folded), vec![op, "Conv"]);
        assert!(
            report.warnings.iter().any(|w| w.contains("padded Conv")),
            "{:?}",
            report.warnings
        );
    }
    // Div with the constant first (c / x) is not affine: left alone.
    let (folded, _) = fold_and_verify(&affine_before_conv("Div", false, 1, 1));
    assert_eq!(ops(&folded), vec!["Div", "Conv"]);
}

#[test]
fn a_concat_of_one_input_is_removed_and_one_of_two_kept() {
    let mut b = conv_graph();
    b.node("Concat", &["conv.out"], "cat1", &[attr::int("axis", 1)]);
    b.node(
        "Concat",
        &["cat1", "conv.out"],
        "cat2",
        &[attr::int("axis", 1)],
    );
    b.node("Relu", &["cat2"], "y", &[]);
    b.output("y", &[1, 6, 5, 5]);
    let (folded, _) = fold_and_verify(&b.into_model(17));
    assert_eq!(ops(&folded), ["Conv", "Concat", "Relu"]);
}
