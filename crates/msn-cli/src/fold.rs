//! `msn-fold` / `msn fold`: fold normalization into Conv/Gemm weights, and prove it.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

/// Fold SN, MSN, BatchNorm and affine chains into plain Conv/Gemm weights (any ONNX model).
#[derive(Debug, Args)]
pub struct FoldArgs {
    /// The ONNX model to fold
    #[arg(value_name = "IN.onnx")]
    pub input: PathBuf,
    /// Where to write the folded model (atomically)
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Run both models in tract on N random inputs and fail if they differ
    #[arg(long, value_name = "N")]
    pub verify: Option<usize>,
    /// Largest relative error --verify accepts
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Write a JSON report
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Compute each folded Conv/Gemm layer's operator norm and their product, an upper bound
    /// on the network's Lipschitz constant (on by default for models with spectral norms)
    #[arg(long)]
    pub lipschitz: bool,
    /// Fix an input's shape before folding: `1,3,224,224` (inputs in order) or
    /// `NAME=1,3,224,224`. Shape arithmetic on values whose shape then follows folds away;
    /// the result runs at this shape only
    #[arg(long = "input-shape", value_name = "[NAME=]D,D,...", value_parser = crate::parse_shape)]
    pub input_shapes: Vec<(Option<String>, Vec<usize>)>,
    /// Treat initializers that are also graph inputs (defaults a caller may override) as
    /// constants: they leave the inputs and may be folded
    #[arg(long)]
    pub freeze_inputs: bool,
}

fn histogram(h: &std::collections::BTreeMap<String, usize>) -> String {
    h.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: FoldArgs) -> Result<()> {
    let original = msn_onnx::io::load(&args.input)?;
    msn_onnx::validate::model(&original)
        .with_context(|| format!("{}: invalid model", args.input.display()))?;
    let mut original = original;
    if let Err(e) = msn_fold::fix_input_shapes(&mut original, &args.input_shapes) {
        bail!("{}: --input-shape: {e}", args.input.display());
    }
    if args.freeze_inputs {
        let n = msn_fold::freeze_inputs(&mut original);
        println!("  --freeze-inputs: {n} initializer(s) no longer overridable inputs");
    }
    let mut folded = original.clone();
    let report = msn_fold::fold(&mut folded);
    msn_onnx::graph::GraphView::new(&folded)
        .context("the folded graph is invalid (a bug in msn-fold)")?;

    println!("{}", args.input.display());
    println!(
        "  nodes:             {} -> {}",
        report.nodes_before, report.nodes_after
    );
    println!(
        "  initializer bytes: {} -> {}",
        report.initializer_bytes_before, report.initializer_bytes_after
    );
    println!("  ops before: {}", histogram(&report.ops_before));
    println!("  ops after:  {}", histogram(&report.ops_after));
    for (pass, n) in report.passes.iter().filter(|(_, n)| *n > 0) {
        println!("  {pass}: {n}");
    }
    for (layer, sigma) in &report.sigmas {
        println!("  sigma {layer}: {sigma:.6}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let lipschitz = if args.lipschitz || !report.sigmas.is_empty() {
        let shape = msn_fold::input_shape(&folded)?;
        let graph = folded.graph.as_ref().expect("a folded model has a graph");
        let b = msn_fold::lipschitz::bound(graph, &shape);
        println!("  operator norms of the folded layers at input {shape:?} (power iteration):");
        for l in &b.layers {
            println!(
                "    {} ({}) at {:?}: {:.6}",
                l.node, l.op, l.input_shape, l.norm
            );
        }
        match (b.product, &b.reason) {
            (Some(p), _) => println!("  Lipschitz bound (product of the layer norms): {p:.6}"),
            (None, Some(r)) => println!("  no Lipschitz bound: {r}"),
            (None, None) => {}
        }
        Some(b)
    } else {
        None
    };

    let max_rel_error = match args.verify {
        Some(n) if n > 0 => {
            let err = msn_runtime::verify::models(&original, &folded, n, 1, &[])?;
            println!(
                "  verify: max relative error {err:.3e} on {n} random inputs (tolerance {:.1e})",
                args.tolerance
            );
            if err.is_nan() || err > args.tolerance {
                bail!("{}: the folded model differs from the original (max relative error {err:.3e} > {:.1e}); nothing written", args.input.display(), args.tolerance);
            }
            Some(err)
        }
        _ => None,
    };
    msn_onnx::io::save(&folded, &args.output)?;
    println!("wrote {}", args.output.display());

    if let Some(path) = &args.report {
        let passes: serde_json::Map<String, serde_json::Value> = report
            .passes
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let value = json!({
            "input": args.input.display().to_string(),
            "output": args.output.display().to_string(),
            "nodes_before": report.nodes_before,
            "nodes_after": report.nodes_after,
            "ops_before": report.ops_before,
            "ops_after": report.ops_after,
            "initializer_bytes_before": report.initializer_bytes_before,
            "initializer_bytes_after": report.initializer_bytes_after,
            "passes": passes,
            "warnings": report.warnings,
            "sigmas": report.sigmas.iter().map(|(l, s)| json!({"layer": l, "sigma": s})).collect::<Vec<_>>(),
            "max_rel_error": max_rel_error,
            "lipschitz": lipschitz.as_ref().map(|b| json!({
                "layers": b.layers.iter().map(|l| json!({
                    "node": l.node, "op": l.op, "input_shape": l.input_shape, "operator_norm": l.norm,
                })).collect::<Vec<_>>(),
                "bound": b.product,
                "reason": b.reason,
            })),
        });
        msn_onnx::io::write_atomic(path, serde_json::to_string_pretty(&value)?.as_bytes())?;
    }
    Ok(())
}
