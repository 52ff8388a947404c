//! `msn info`: what a model is, in a terminal.

use anyhow::Result;
use clap::Args;
use msn_runtime::info::{self, Info};
use msn_runtime::{Source, TensorSpec};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Describe an ONNX model: inputs, outputs, ops, parameters, multiply-accumulates, metadata.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The ONNX model
    #[arg(value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// An input's shape for the counts: `1,3,224,224` (inputs in order) or `NAME=1,3,224,224`
    /// (default: as declared, a symbolic batch dimension taken as 1)
    #[arg(long = "input-shape", value_name = "[NAME=]D,D,...", value_parser = crate::parse_shape)]
    pub input_shapes: Vec<(Option<String>, Vec<usize>)>,
    /// Every layer's multiply-accumulates (default: the 10 largest)
    #[arg(long)]
    pub all_layers: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

fn spec_json(spec: &TensorSpec, shape: Option<&Vec<usize>>) -> Value {
    let declared: Option<Vec<Value>> = spec.dims.as_ref().map(|d| {
        d.iter()
            .map(|d| d.map_or(json!("?"), |d| json!(d)))
            .collect()
    });
    let mut v = json!({"name": spec.name, "dtype": spec.dtype, "shape": declared});
    if let Some(s) = shape {
        v["planned_shape"] = json!(s);
    }
    v
}

fn to_json(info: &Info) -> Value {
    json!({
        "inputs": info.inputs.iter().zip(&info.shapes).map(|(s, p)| spec_json(s, Some(p))).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(|s| spec_json(s, None)).collect::<Vec<_>>(),
        "ops": info.ops,
        "nodes": info.ops.values().sum::<usize>(),
        "parameters": info.parameters,
        "parameter_bytes": info.parameter_bytes,
        "macs": info.macs,
        "layers": info.layers.iter().map(|l| json!({"name": l.name, "op": l.op, "output": l.output, "macs": l.macs})).collect::<Vec<_>>(),
        "metadata": info.metadata,
        "opset": info.opset.iter().map(|(d, v)| json!({"domain": d, "version": v})).collect::<Vec<_>>(),
        "producer": info.producer,
        "cpu": crate::cpu_json(),
    })
}

/// `1234567` as `1.23 M`.
fn si(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.2} G", n / 1e9),
        n if n >= 1e6 => format!("{:.2} M", n / 1e6),
        n if n >= 1e3 => format!("{:.1} k", n / 1e3),
        n => format!("{n}"),
    }
}

fn dims(spec: &TensorSpec) -> String {
    match &spec.dims {
        Some(d) => {
            let d: Vec<String> = d
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect();
            format!("[{}]", d.join(", "))
        }
        None => "(no shape)".into(),
    }
}

fn print(path: &std::path::Path, info: &Info, all_layers: bool) {
    println!("{}", path.display());
    let opset: Vec<String> = info
        .opset
        .iter()
        .map(|(d, v)| format!("{} {v}", if d.is_empty() { "ai.onnx" } else { d }))
        .collect();
    println!("  producer {}, opset {}", info.producer, opset.join(", "));
    println!("inputs");
    for (spec, shape) in info.inputs.iter().zip(&info.shapes) {
        println!(
            "  {:<24} {:<8} {} (counted at {shape:?})",
            spec.name,
            spec.dtype,
            dims(spec)
        );
    }
    println!("outputs");
    for spec in &info.outputs {
        println!("  {:<24} {:<8} {}", spec.name, spec.dtype, dims(spec));
    }
    let mut ops: Vec<(&String, &usize)> = info.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
    println!(
        "ops ({} nodes): {}",
        info.ops.values().sum::<usize>(),
        ops.join(", ")
    );
    println!(
        "parameters: {} ({:.2} MB)",
        si(info.parameters),
        info.parameter_bytes as f64 / 1e6
    );
    println!(
        "multiply-accumulates: {} in {} layers",
        si(info.macs),
        info.layers.len()
    );
    let mut layers: Vec<_> = info.layers.iter().collect();
    if !all_layers {
        layers.sort_by_key(|l| std::cmp::Reverse(l.macs));
        layers.truncate(10);
    }
    for l in &layers {
        println!(
            "  {:<40} {:<14} {:>10} {:>6.1}%  {:?}",
            l.name,
            l.op,
            si(l.macs),
            100.0 * l.macs as f64 / info.macs.max(1) as f64,
            l.output
        );
    }
    if !all_layers && info.layers.len() > layers.len() {
        println!(
            "  ... the 10 largest of {} (--all-layers)",
            info.layers.len()
        );
    }
    println!("kernels: {}", crate::cpu_description());
    if !info.metadata.is_empty() {
        println!("metadata");
        for (k, v) in &info.metadata {
            let v = v.replace('\n', ", ");
            let v = if v.chars().count() > 100 {
                format!("{}...", v.chars().take(100).collect::<String>())
            } else {
                v
            };
            println!("  {k}: {v}");
        }
    }
}

pub fn run(args: InfoArgs) -> Result<()> {
    let source = Source::read(&args.model)?;
    let shapes = source.shapes(&args.input_shapes)?;
    let info = info::describe(&source, &shapes)?;
    if args.json {
        println!("{}", to_json(&info));
    } else {
        print(&args.model, &info, args.all_layers);
    }
    Ok(())
}
