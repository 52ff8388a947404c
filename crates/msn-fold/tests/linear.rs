//! Passes that visit a node a bounded number of times: long chains of pass-through nodes and
//! of dead nodes fold in time linear in the graph, and with the same result as one at a time.

mod common;

use common::ops;
use msn_onnx::builder::GraphBuilder;
use ndarray::ArrayD;
use std::time::{Duration, Instant};

/// `n` Identity nodes between the input and a Conv + BatchNorm, and `n` dead Relus off the
/// chain; the chain's nodes listed in reverse graph order when `reversed`.
fn chain(n: usize, reversed: bool) -> msn_onnx::ModelProto {
    let mut b = GraphBuilder::new("chain");
    b.input("x", &[1, 2, 4, 4]);
    let mut prev = "x".to_string();
    for i in 0..n {
        prev = b.node("Identity", &[&prev], &format!("id{i}"), &[]);
        b.node("Relu", &[&prev], &format!("dead{i}"), &[]);
    }
    b.initializer_f32("w", &ArrayD::from_elem(vec![2, 2, 1, 1], 0.5));
    for (name, v) in [("s", 1.5), ("o", 0.1), ("m", 0.2), ("v", 2.0)] {
        b.initializer_f32(name, &ArrayD::from_elem(vec![2], v));
    }
    b.node("Conv", &[&prev, "w"], "c", &[]);
    b.node("BatchNormalization", &["c", "s", "o", "m", "v"], "y", &[]);
    b.output("y", &[1, 2, 4, 4]);
    let mut m = b.into_model(17);
    if reversed {
        let g = m.graph.as_mut().unwrap();
        let tail = g.node.split_off(g.node.len() - 2);
        g.node.reverse();
        g.node.extend(tail);
    }
    m
}

#[test]
fn a_chain_of_identities_and_dead_nodes_folds_to_one_conv_in_any_order() {
    for reversed in [false, true] {
        let mut m = chain(50, reversed);
        let report = msn_fold::fold(&mut m);
        assert_eq!(ops(&m), ["Conv"], "reversed: {reversed}");
        assert_eq!(m.graph.as_ref().unwrap().node[0].input[0], "x");
        let passes: std::collections::HashMap<_, _> = report.passes.into_iter().collect();
        assert_eq!(passes["eliminate_identity"], 50);
        // The dead Relus all read x once the Identities are gone: 49 merge as duplicates.
        assert_eq!(
            passes["eliminate_dead_nodes"] + passes["eliminate_duplicates"],
            50
        );
    }
}

#[test]
fn a_hundred_thousand_nodes_fold_in_linear_time() {
    // One node at a time (a rescan and a rename walk per removal) took minutes here; linear
    // passes take well under a second in a release build.
    let mut m = chain(50_000, false);
    let start = Instant::now();
    msn_fold::fold(&mut m);
    let took = start.elapsed();
    assert_eq!(ops(&m), ["Conv"]);
    assert!(took < Duration::from_secs(20), "{took:?}");
}
