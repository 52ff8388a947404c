//! What attention and detection exports need folded (issue 41): shape, index and mask
//! arithmetic at fixed shapes evaluated (by tract's analysis), the no-ops fixed shapes make
//! removed, chains of reshapes and transposes shortened, duplicates merged; and the bound
//! that keeps a folded constant from growing the file. Every rewrite is checked by running
//! the model before and after (onnxruntime checks the attention models of the corpus:
//! tests/python/compare_folders.py).

mod common;

use common::ops;
use msn_onnx::builder::{attr, GraphBuilder};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::ModelProto;
use ndarray::{arr0, arr1, ArrayD};

fn fold(m: &ModelProto) -> (ModelProto, std::collections::HashMap<String, usize>) {
    let mut f = m.clone();
    let report = msn_fold::fold(&mut f);
    msn_onnx::graph::GraphView::new(&f).expect("valid folded graph");
    let err = msn_runtime::verify::models(m, &f, 2, 7, &[]).expect("both models run");
    assert!(
        err < 1e-6,
        "the fold changed the outputs by {err}: {:?} {:?}",
        ops(&f),
        report.passes
    );
    (f, report.passes.into_iter().collect())
}

fn transpose(b: &mut GraphBuilder, x: &str, out: &str, perm: &[i64]) {
    b.node("Transpose", &[x], out, &[attr::ints("perm", perm)]);
}

fn filled(shape: &[usize], v: f32) -> ArrayD<f32> {
    ArrayD::from_elem(shape.to_vec(), v)
}

fn i64s(v: &[i64]) -> ArrayD<i64> {
    arr1(v).into_dyn()
}

/// A Swin-style mask built from shapes: `Range` over the input's height, `Cast`, `Equal`
/// against a `ConstantOfShape`, `Where`, `ScatterND` into it, `Expand` to the input's shape,
/// added to the input. At a fixed input shape all of it is one constant.
fn mask_model(batch: i64) -> ModelProto {
    let mut b = GraphBuilder::new("mask");
    b.input("x", &[batch, 2, 4, 4]);
    b.node("Shape", &["x"], "shape", &[]);
    b.initializer_i64("two", &arr0(2i64).into_dyn());
    b.node("Gather", &["shape", "two"], "h", &[attr::int("axis", 0)]);
    b.initializer_i64("zero", &arr0(0i64).into_dyn());
    b.initializer_i64("one", &arr0(1i64).into_dyn());
    b.node("Range", &["zero", "h", "one"], "rows", &[]);
    b.node(
        "Cast",
        &["rows"],
        "rowsf",
        &[attr::int("to", DataType::Float as i64)],
    );
    b.initializer_i64("axis0", &i64s(&[0]));
    b.node("Unsqueeze", &["h", "axis0"], "hv", &[]);
    b.node("ConstantOfShape", &["hv"], "zeros", &[]);
    b.node(
        "Cast",
        &["zeros"],
        "zerosi",
        &[attr::int("to", DataType::Int64 as i64)],
    );
    b.node("Equal", &["rows", "zerosi"], "first", &[]);
    b.initializer_f32("minus", &filled(&[4], -100.0));
    b.node("Where", &["first", "minus", "rowsf"], "row_mask", &[]);
    b.initializer_i64("at", &ArrayD::from_shape_vec(vec![1, 1], vec![3]).unwrap());
    b.initializer_f32("upd", &filled(&[1], 7.0));
    b.node("ScatterND", &["row_mask", "at", "upd"], "scattered", &[]);
    b.initializer_i64("col", &i64s(&[4, 1]));
    b.node("Reshape", &["scattered", "col"], "column", &[]);
    b.node("Expand", &["column", "shape"], "mask", &[]);
    b.node("Add", &["x", "mask"], "y", &[]);
    b.output("y", &[batch, 2, 4, 4]);
    b.into_model(17)
}

#[test]
fn mask_arithmetic_from_shapes_becomes_one_constant() {
    let (f, passes) = fold(&mask_model(1));
    assert_eq!(ops(&f), ["Add"]);
    assert!(passes["evaluate_constants"] >= 1, "{passes:?}");
    let g = f.graph.as_ref().unwrap();
    let mask = g
        .initializer
        .iter()
        .find(|t| t.name() == g.node[0].input[1]);
    let mask = msn_onnx::tensor::to_f32(mask.expect("the mask is an initializer")).unwrap();
    assert_eq!(mask.shape(), [1, 2, 4, 4]);
    assert_eq!(
        mask.iter().take(4).copied().collect::<Vec<_>>(),
        [-100.0, -100.0, -100.0, -100.0]
    );
    assert_eq!(mask[[0, 1, 3, 2]], 7.0);
    assert_eq!(mask[[0, 0, 2, 0]], 2.0);

    // A free batch size is never assumed: the mask's arithmetic stays.
    let mut f = mask_model(-1);
    msn_fold::fold(&mut f);
    assert!(ops(&f).contains(&"Shape".to_string()), "{:?}", ops(&f));
}

#[test]
fn a_folded_constant_never_grows_past_the_bound() {
    // 512 x 1024 floats (2 MiB) from 24 bytes of shape: evaluated by tract, not written.
    let mut b = GraphBuilder::new("big");
    b.input("x", &[512, 1024]);
    b.initializer_i64("shape", &i64s(&[512, 1024]));
    b.node("ConstantOfShape", &["shape"], "c", &[]);
    b.node("Add", &["x", "c"], "y", &[]);
    b.output("y", &[512, 1024]);
    let m = b.into_model(17);
    let mut f = m.clone();
    let report = msn_fold::fold(&mut f);
    assert_eq!(ops(&f), ["ConstantOfShape", "Add"]);
    assert!(report.initializer_bytes_after <= report.initializer_bytes_before);

    // At 256 KiB it is written: a FLOAT constant (ONNX's default fill; tract's own parse
    // reads it as DOUBLE, so the original is not run here), and the Add of zeros that
    // follows is a no-op.
    let mut b = GraphBuilder::new("small");
    b.input("x", &[256, 256]);
    b.initializer_i64("shape", &i64s(&[256, 1]));
    b.node("ConstantOfShape", &["shape"], "c", &[]);
    b.node("Mul", &["x", "c"], "a", &[]);
    b.output("a", &[256, 256]);
    let mut f = b.into_model(17);
    msn_fold::fold(&mut f);
    assert_eq!(ops(&f), ["Mul"]);
    let g = f.graph.as_ref().unwrap();
    assert_eq!(g.initializer[0].data_type(), DataType::Float as i32);

    let mut b = GraphBuilder::new("zeros");
    b.input("x", &[256, 256]);
    b.initializer_i64("shape", &i64s(&[256, 256]));
    let zero = msn_onnx::tensor::from_f32("", &ArrayD::from_elem(vec![1], 0.0));
    b.node(
        "ConstantOfShape",
        &["shape"],
        "c",
        &[attr::tensor("value", zero)],
    );
    b.node("Add", &["x", "c"], "a", &[]);
    b.node("Relu", &["a"], "y", &[]);
    b.output("y", &[256, 256]);
    let (f, _) = fold(&b.into_model(17));
    assert_eq!(ops(&f), ["Relu"]);
}

/// A hostile file's `Range` and `ConstantOfShape` asking for 2^40 values are not handed to
/// tract's analysis (which allocated whatever they asked for): the rest of the graph is still
/// analysed (a dimension only tract knows, at a free batch size, becomes a constant), and the
/// huge ops stay as they are.
#[test]
fn a_huge_range_or_constant_of_shape_is_never_evaluated() {
    for op in ["Range", "ConstantOfShape"] {
        let mut b = GraphBuilder::new("huge");
        b.input("x", &[-1, 2, 4, 4]);
        b.node("Shape", &["x"], "shape", &[]);
        b.initializer_i64("two", &arr0(2i64).into_dyn());
        b.node("Gather", &["shape", "two"], "h", &[attr::int("axis", 0)]);
        b.node(
            "Cast",
            &["h"],
            "hf",
            &[attr::int("to", DataType::Float as i64)],
        );
        b.node("Mul", &["x", "hf"], "y", &[]);
        if op == "Range" {
            b.initializer_i64("zero", &arr0(0i64).into_dyn());
            b.initializer_i64("big", &arr0(1i64 << 40).into_dyn());
            b.initializer_i64("one", &arr0(1i64).into_dyn());
            b.node("Range", &["zero", "big", "one"], "r", &[]);
        } else {
            b.initializer_i64("dims", &i64s(&[1 << 20, 1 << 20]));
            let one = msn_onnx::tensor::from_i64("", &arr1(&[1i64]).into_dyn());
            b.node(
                "ConstantOfShape",
                &["dims"],
                "r",
                &[attr::tensor("value", one)],
            );
        }
        b.node("ReduceMax", &["r"], "m", &[attr::int("keepdims", 0)]);
        b.node(
            "Cast",
            &["m"],
            "mf",
            &[attr::int("to", DataType::Float as i64)],
        );
        b.node("Add", &["y", "mf"], "z", &[]);
        b.output("z", &[-1, 2, 4, 4]);
        let mut f = b.into_model(17);
        let report = msn_fold::fold(&mut f);
        msn_onnx::graph::GraphView::new(&f).expect("valid folded graph");
        let passes: std::collections::HashMap<_, _> = report.passes.into_iter().collect();
        assert!(passes["evaluate_constants"] >= 1, "{op}: {passes:?}");
        let ops = ops(&f);
        assert!(ops.contains(&op.to_string()), "{op}: {ops:?}");
        assert!(!ops.contains(&"Shape".to_string()), "{op}: {ops:?}");
    }
}

/// `x` through no-ops at fixed shapes, and the same ops where they are not no-ops.
fn no_ops_model() -> ModelProto {
    let mut b = GraphBuilder::new("noops");
    b.input("x", &[1, 2, 4, 4]);
    b.initializer_f32("w", &filled(&[2, 2, 1, 1], 0.5));
    b.node("Conv", &["x", "w"], "c", &[]);
    b.initializer_f32("zeros", &filled(&[2, 1, 1], 0.0));
    b.node("Add", &["zeros", "c"], "a", &[]);
    b.initializer_f32("ones", &filled(&[1], 1.0));
    b.node("Mul", &["a", "ones"], "m", &[]);
    b.initializer_i64("pads", &i64s(&[0; 8]));
    b.node("Pad", &["m", "pads"], "p", &[]);
    b.initializer_i64("starts", &i64s(&[0, 0]));
    b.initializer_i64("ends", &i64s(&[4, 100]));
    b.initializer_i64("axes", &i64s(&[2, 3]));
    b.node("Slice", &["p", "starts", "ends", "axes"], "s", &[]);
    transpose(&mut b, "s", "t1", &[0, 2, 3, 1]);
    transpose(&mut b, "t1", "t2", &[0, 3, 1, 2]);
    b.initializer_i64("flat", &i64s(&[1, 32]));
    b.node("Reshape", &["t2", "flat"], "r1", &[]);
    b.initializer_i64("back", &i64s(&[1, 2, 16]));
    b.node("Reshape", &["r1", "back"], "r2", &[]);
    // Not no-ops: zeros that broadcast the value up, a Slice that drops a row, a Slice that
    // keeps the shape but reverses.
    b.initializer_f32("wide", &filled(&[1, 2, 3, 16], 0.0));
    b.node("Unsqueeze", &["r2", "axes_u"], "u", &[]);
    b.initializer_i64("axes_u", &i64s(&[2]));
    b.node("Add", &["u", "wide"], "bcast", &[]);
    b.initializer_i64("s0", &i64s(&[1]));
    b.initializer_i64("e0", &i64s(&[3]));
    b.initializer_i64("a0", &i64s(&[2]));
    b.node("Slice", &["bcast", "s0", "e0", "a0"], "cut", &[]);
    b.initializer_i64("s1", &i64s(&[-1]));
    b.initializer_i64("e1", &i64s(&[i64::MIN]));
    b.initializer_i64("a1", &i64s(&[3]));
    b.initializer_i64("st1", &i64s(&[-1]));
    b.node("Slice", &["cut", "s1", "e1", "a1", "st1"], "y", &[]);
    b.output("y", &[1, 2, 2, 16]);
    b.into_model(17)
}

#[test]
fn no_ops_at_fixed_shapes_go_and_chains_shorten() {
    let m = no_ops_model();
    let (f, passes) = fold(&m);
    assert_eq!(
        ops(&f),
        ["Conv", "Reshape", "Unsqueeze", "Add", "Slice", "Slice"]
    );
    assert!(passes["simplify_no_ops"] >= 6, "{passes:?}");
    let g = f.graph.as_ref().unwrap();
    // The two reshapes are one, reading the conv at the final shape.
    assert_eq!(g.node[1].input[0], "c");
    let spec = g
        .initializer
        .iter()
        .find(|t| t.name() == g.node[1].input[1]);
    let spec = msn_onnx::tensor::to_i64(spec.unwrap()).unwrap();
    assert_eq!(spec.iter().copied().collect::<Vec<_>>(), [1, 2, 16]);
}

#[test]
fn transposes_compose_and_duplicates_merge() {
    let mut b = GraphBuilder::new("dup");
    b.input("x", &[1, 2, 3, 4]);
    transpose(&mut b, "x", "t1", &[0, 2, 3, 1]);
    transpose(&mut b, "t1", "t2", &[0, 2, 1, 3]);
    // The same Relu and Sigmoid twice, the second pair reading the first's duplicate.
    b.node("Relu", &["t2"], "r1", &[]);
    b.node("Relu", &["t2"], "r2", &[]);
    b.node("Sigmoid", &["r1"], "s1", &[]);
    b.node("Sigmoid", &["r2"], "s2", &[]);
    b.node("Add", &["s1", "s2"], "y", &[]);
    b.output("y", &[1, 4, 3, 2]);
    let (f, passes) = fold(&b.into_model(17));
    assert_eq!(ops(&f), ["Transpose", "Relu", "Sigmoid", "Add"]);
    assert_eq!(passes["eliminate_duplicates"], 2);
    let g = f.graph.as_ref().unwrap();
    assert_eq!(g.node[0].input[0], "x");
    assert_eq!(msn_onnx::attr_ints(&g.node[0], "perm"), [0, 3, 2, 1]);
    assert_eq!(g.node[3].input[0], g.node[3].input[1]);
}

#[test]
fn folding_twice_writes_the_same_bytes() {
    let a = {
        let mut m = mask_model(1);
        msn_fold::fold(&mut m);
        msn_onnx::io::to_bytes(&m)
    };
    for _ in 0..3 {
        let mut m = mask_model(1);
        msn_fold::fold(&mut m);
        assert_eq!(msn_onnx::io::to_bytes(&m), a);
    }
}

#[test]
fn quantize_and_dequantize_of_weights_stay() {
    // A QDQ model's int8 weights stay int8: DequantizeLinear of a constant is not folded.
    let mut b = GraphBuilder::new("qdq");
    b.input("x", &[1, 2, 4, 4]);
    b.initializer_raw("wq", DataType::Int8, &[2, 2, 1, 1], vec![1, 2, 3, 4]);
    b.initializer_f32("ws", &ArrayD::from_elem(vec![], 0.1));
    b.node("DequantizeLinear", &["wq", "ws"], "w", &[]);
    b.node("Conv", &["x", "w"], "y", &[]);
    b.output("y", &[1, 2, 4, 4]);
    let (f, _) = fold(&b.into_model(17));
    assert_eq!(ops(&f), ["DequantizeLinear", "Conv"]);
}
