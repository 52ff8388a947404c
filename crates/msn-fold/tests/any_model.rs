//! Models msn-fold must leave exactly as they are (issue 15): values read only inside If or
//! Loop bodies, initializers a caller may override; DOUBLE and INT32 arithmetic folded in its
//! own types; and the shape arithmetic it folds once the shapes are fixed.

mod common;

use common::ops;
use msn_onnx::builder::{attr, value_info, GraphBuilder};
use msn_onnx::proto::tensor_proto::DataType;
use msn_onnx::proto::type_proto;
use msn_onnx::{GraphProto, ModelProto, TensorProto};
use ndarray::ArrayD;

fn ones(shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_elem(shape.to_vec(), 0.5)
}

/// A conv with a BatchNorm after it, so every model below has something msn-fold does fold.
fn conv_bn(b: &mut GraphBuilder) -> String {
    b.input("x", &[1, 2, 4, 4]);
    b.initializer_f32("w", &ones(&[2, 2, 1, 1]));
    for (n, v) in [("s", 1.5), ("o", 0.1), ("m", 0.2), ("v", 2.0)] {
        b.initializer_f32(n, &ArrayD::from_elem(vec![2], v));
    }
    b.node("Conv", &["x", "w"], "c", &[]);
    b.node("BatchNormalization", &["c", "s", "o", "m", "v"], "bn", &[])
}

/// Folds and returns the folded graph and the original's, both without what the fold is
/// meant to change (the conv, its BatchNorm and their tensors).
fn fold(m: &ModelProto) -> (ModelProto, msn_fold::Report) {
    let mut f = m.clone();
    let report = msn_fold::fold(&mut f);
    msn_onnx::graph::GraphView::new(&f).expect("valid folded graph");
    (f, report)
}

/// `name`'s tensor in `g`, by name.
fn init<'g>(g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    g.initializer.iter().find(|t| t.name() == name)
}

#[test]
fn values_read_only_inside_if_and_loop_bodies_survive() {
    let mut b = GraphBuilder::new("g");
    let bn = conv_bn(&mut b);
    // `k` is read only inside the bodies; a fold that ignored them would delete it.
    b.initializer_f32("k", &ones(&[1]));
    let mut then_b = GraphBuilder::new("then");
    then_b.node("Mul", &[&bn, "k"], "t", &[]);
    then_b.output("t", &[1, 2, 4, 4]);
    let mut else_b = GraphBuilder::new("else");
    else_b.node("Add", &[&bn, "k"], "e", &[]);
    else_b.output("e", &[1, 2, 4, 4]);
    let mut g = b.into_model(17);
    let graph = g.graph.as_mut().unwrap();
    let mut cond = value_info("cond", &[]);
    if let Some(type_proto::Value::TensorType(t)) =
        cond.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(DataType::Bool as i32);
    }
    graph.input.push(cond);
    let then_g = then_b.into_model(17).graph.unwrap();
    let else_g = else_b.into_model(17).graph.unwrap();
    let mut if_node = msn_onnx::NodeProto {
        op_type: Some("If".into()),
        name: Some("if".into()),
        input: vec!["cond".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    if_node.attribute = vec![
        attr::graph("then_branch", then_g.clone()),
        attr::graph("else_branch", else_g.clone()),
    ];
    graph.node.push(if_node);
    graph.output.push(value_info("y", &[1, 2, 4, 4]));
    // A Loop whose body alone reads `j`: two trips of v = v * j.
    graph
        .initializer
        .push(msn_onnx::tensor::from_f32("j", &ones(&[1])));
    let trips = ndarray::arr0(2i64).into_dyn();
    graph
        .initializer
        .push(msn_onnx::tensor::from_i64("trips", &trips));
    let mut body = GraphBuilder::new("body");
    body.input("i", &[]);
    body.input("cond_in", &[]);
    body.input("v", &[1, 2, 4, 4]);
    body.node("Identity", &["cond_in"], "cond_out", &[]);
    body.node("Mul", &["v", "j"], "v_out", &[]);
    body.output("cond_out", &[]);
    body.output("v_out", &[1, 2, 4, 4]);
    let body_g = body.into_model(17).graph.unwrap();
    graph.node.push(msn_onnx::NodeProto {
        op_type: Some("Loop".into()),
        name: Some("loop".into()),
        input: vec!["trips".into(), String::new(), bn.clone()],
        output: vec!["z".into()],
        attribute: vec![attr::graph("body", body_g.clone())],
        ..Default::default()
    });
    graph.output.push(value_info("z", &[1, 2, 4, 4]));
    let (f, report) = fold(&g);
    let fg = f.graph.as_ref().unwrap();
    assert_eq!(
        report
            .passes
            .iter()
            .find(|p| p.0 == "fuse_batchnorm_into_weights")
            .unwrap()
            .1,
        1
    );
    assert!(init(fg, "k").is_some(), "k is read in the If bodies");
    assert!(init(fg, "j").is_some(), "j is read in the Loop body");
    let loop_node = fg.node.iter().find(|n| n.op_type() == "Loop").unwrap();
    assert_eq!(loop_node.attribute[0].g.as_ref().unwrap(), &body_g);
    let if_node = fg.node.iter().find(|n| n.op_type() == "If").unwrap();
    // The bodies read the BatchNorm's output name, which the folded conv now writes.
    assert_eq!(if_node.attribute[0].g.as_ref().unwrap(), &then_g);
    assert_eq!(if_node.attribute[1].g.as_ref().unwrap(), &else_g);
    assert!(fg
        .node
        .iter()
        .any(|n| n.op_type() == "Conv" && n.output[0] == bn));
}

#[test]
fn double_and_int32_arithmetic_folds_in_its_own_types() {
    let mut b = GraphBuilder::new("g");
    let bn = conv_bn(&mut b);
    let mut g = b.into_model(17);
    let graph = g.graph.as_mut().unwrap();
    // DOUBLE: d2 = d * d, then Cast to float and added; INT32: a Cast of an INT32 constant.
    let scalar = |name: &str, dtype: DataType| TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype as i32),
        dims: vec![1],
        ..Default::default()
    };
    let double = TensorProto {
        double_data: vec![0.1],
        ..scalar("d", DataType::Double)
    };
    let int32 = TensorProto {
        int32_data: vec![3],
        ..scalar("i", DataType::Int32)
    };
    graph.initializer.extend([double, int32]);
    let node = |op: &str, ins: &[&str], out: &str, attrs: Vec<msn_onnx::AttributeProto>| {
        msn_onnx::NodeProto {
            op_type: Some(op.into()),
            name: Some(out.into()),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        }
    };
    graph.node.extend([
        node("Mul", &["d", "d"], "d2", vec![]),
        node(
            "Cast",
            &["d2"],
            "df",
            vec![attr::int("to", DataType::Float as i64)],
        ),
        node(
            "Cast",
            &["i"],
            "if",
            vec![attr::int("to", DataType::Float as i64)],
        ),
        node("Add", &[&bn, "df"], "a", vec![]),
        node("Add", &["a", "if"], "y", vec![]),
    ]);
    graph.output.push(value_info("y", &[1, 2, 4, 4]));
    let (f, _) = fold(&g);
    let fg = f.graph.as_ref().unwrap();
    // The DOUBLE product and both casts are evaluated (by tract, in their own types, as
    // onnxruntime does: d*d in double, then rounded once), and both Adds of the constants
    // then go into the conv's bias with the BatchNorm.
    assert_eq!(ops(&f), ["Conv"]);
    assert!(
        init(fg, "d").is_none() && init(fg, "i").is_none(),
        "unused after the fold"
    );
    let err = msn_runtime::verify::models(&g, &f, 2, 1, &[]).unwrap();
    assert!(err < 1e-6, "{err}");
}

#[test]
fn an_initializer_that_is_also_an_input_is_not_folded_unless_frozen() {
    let mut b = GraphBuilder::new("g");
    let bn = conv_bn(&mut b);
    b.initializer_f32("scale", &ones(&[1, 2, 1, 1]));
    b.node("Mul", &[&bn, "scale"], "y", &[]);
    b.output("y", &[1, 2, 4, 4]);
    let mut g = b.into_model(17);
    // `scale` is also a graph input: a caller may feed another value.
    g.graph
        .as_mut()
        .unwrap()
        .input
        .push(value_info("scale", &[1, 2, 1, 1]));
    let (f, _) = fold(&g);
    let fg = f.graph.as_ref().unwrap();
    assert!(
        fg.node.iter().any(|n| n.op_type() == "Mul"),
        "the overridable scale stays a Mul"
    );
    assert_eq!(init(fg, "scale"), init(g.graph.as_ref().unwrap(), "scale"));
    assert!(fg.input.iter().any(|v| v.name() == "scale"));

    let mut frozen = g.clone();
    assert_eq!(msn_fold::freeze_inputs(&mut frozen), 1);
    let (f, _) = fold(&frozen);
    assert_eq!(ops(&f), ["Conv"], "frozen, the scale folds into the conv");
}

/// `y = Reshape(conv(x), Concat(Gather(Shape(conv(x)), 0), [-1]))`: a flatten written with
/// shape arithmetic, as exporters write `x.view(x.size(0), -1)`.
fn shape_arithmetic(batch: i64) -> ModelProto {
    let mut b = GraphBuilder::new("g");
    b.input("x", &[batch, 2, 4, 4]);
    b.initializer_f32("w", &ones(&[2, 2, 1, 1]));
    b.node("Conv", &["x", "w"], "c", &[]);
    b.node("Shape", &["c"], "shape", &[]);
    b.initializer_i64("zero", &ndarray::arr0(0i64).into_dyn());
    b.node("Gather", &["shape", "zero"], "n", &[attr::int("axis", 0)]);
    b.initializer_i64("axes", &ndarray::arr1(&[0i64]).into_dyn());
    b.node("Unsqueeze", &["n", "axes"], "n1", &[]);
    b.initializer_i64("rest", &ndarray::arr1(&[-1i64]).into_dyn());
    b.node("Concat", &["n1", "rest"], "spec", &[attr::int("axis", 0)]);
    b.node("Reshape", &["c", "spec"], "y", &[]);
    b.output("y", &[batch, 32]);
    b.into_model(17)
}

#[test]
fn shape_arithmetic_folds_when_the_shapes_are_fixed_and_only_then() {
    let (f, report) = fold(&shape_arithmetic(1));
    assert_eq!(ops(&f), ["Conv", "Reshape"]);
    assert_eq!(
        report
            .passes
            .iter()
            .find(|p| p.0 == "static_shapes")
            .unwrap()
            .1,
        1
    );
    let spec = &f.graph.as_ref().unwrap().node[1].input[1];
    let spec = msn_onnx::tensor::to_i64(init(f.graph.as_ref().unwrap(), spec).unwrap()).unwrap();
    assert_eq!(spec.iter().copied().collect::<Vec<_>>(), [1, -1]);
    let err = msn_runtime::verify::models(&shape_arithmetic(1), &f, 3, 1, &[]).unwrap();
    assert!(err < 1e-6, "{err}");

    // A symbolic batch is never assumed: the arithmetic stays.
    let symbolic = shape_arithmetic(-1);
    let (f, _) = fold(&symbolic);
    assert!(ops(&f).contains(&"Shape".to_string()), "{:?}", ops(&f));
    // Fixed by the caller (msn-fold --input-shape), it folds.
    let mut fixed = symbolic.clone();
    msn_fold::fix_input_shapes(&mut fixed, &[(None, vec![3, 2, 4, 4])]).unwrap();
    assert_eq!(ops(&fold(&fixed).0), ["Conv", "Reshape"]);
    let wrong = msn_fold::fix_input_shapes(&mut fixed.clone(), &[(None, vec![3, 2, 4])]);
    assert!(wrong.unwrap_err().to_string().contains("rank 4"));
}
