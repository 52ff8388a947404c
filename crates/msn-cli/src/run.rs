//! `msn run`: any ONNX model on NumPy tensors, outputs to `.npy` / `.npz`.

use anyhow::{bail, Context, Result};
use clap::Args;
use msn_runtime::{npy, Plan, Source};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Run an ONNX model on NumPy inputs and write its outputs (any model tract runs).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The ONNX model
    #[arg(value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// An input tensor: X.npy (inputs in order), NAME=X.npy, or X.npz (keys are input names)
    #[arg(
        long = "input",
        short = 'i',
        value_name = "[NAME=]X.npy|X.npz",
        required = true
    )]
    pub inputs: Vec<String>,
    /// Where to write the outputs: OUT.npy (one output) or OUT.npz (keyed by output name)
    #[arg(short, long, value_name = "OUT.npy|OUT.npz")]
    pub output: PathBuf,
    /// Print the outputs' names, shapes and element types and the timing as JSON
    #[arg(long)]
    pub json: bool,
    /// Threads for tract's matrix products (0: every core, 1: single-threaded)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Compute in half precision (tract's f16 plan) on CPUs with f16 arithmetic: ARMv8.2-A
    /// boards (Raspberry Pi 5, Jetson Orin) or x86-64 with AVX512-FP16; refused elsewhere
    #[arg(long)]
    pub f16: bool,
    /// tract's plain plan of the file as written (no folding, no optimiser): a reference
    #[arg(long)]
    pub reference: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    msn_runtime::set_threads(args.threads);
    let optimized = crate::plan_for(args.f16)?;
    let start = Instant::now();
    let source = Source::read(&args.model)?;
    let mut given = Vec::new();
    for spec in &args.inputs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), f),
            _ => (None, spec.as_str()),
        };
        let file = PathBuf::from(file);
        // No array may be larger than the input it is for (any input, when unnamed).
        let limit = |key: Option<&str>| {
            let specs = source.inputs();
            let wanted = name.as_deref().or(key);
            let bytes = |s: &msn_runtime::TensorSpec| s.max_bytes().unwrap_or(npy::MAX_BYTES);
            match wanted.and_then(|k| specs.iter().find(|s| s.name == k)) {
                Some(spec) => bytes(spec),
                None => specs.iter().map(bytes).max().unwrap_or(0),
            }
        };
        let arrays = npy::read_limited(&file, &limit)?;
        if name.is_some() && arrays.len() != 1 {
            bail!(
                "{}: NAME=FILE takes a file with one array, this one holds {}",
                file.display(),
                arrays.len()
            );
        }
        for (key, t) in arrays {
            given.push((name.clone().or(key), t));
        }
    }
    let inputs = source.bind(given)?;
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let kind = if args.reference {
        Plan::Reference
    } else {
        optimized
    };
    let model = source.plan(&shapes, kind)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let outputs = model.run(inputs)?;
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    let named: Vec<(String, _)> = model
        .outputs()
        .iter()
        .map(|o| o.name.clone())
        .zip(outputs)
        .collect();
    npy::write(&args.output, &named)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.json {
        let outs: Vec<_> = named
            .iter()
            .map(|(n, t)| json!({"name": n, "shape": t.shape(), "dtype": format!("{:?}", t.datum_type()).to_lowercase()}))
            .collect();
        println!(
            "{}",
            json!({
                "model": args.model.display().to_string(),
                "output_file": args.output.display().to_string(),
                "outputs": outs,
                "load_ms": load_ms,
                "passes_ms": model.times().passes * 1e3,
                "tract_ms": model.times().tract * 1e3,
                "run_ms": run_ms,
            })
        );
    } else {
        for (n, t) in &named {
            println!("{n}: {:?} {:?}", t.datum_type(), t.shape());
        }
        println!(
            "wrote {} (load {load_ms:.1} ms, run {run_ms:.2} ms)",
            args.output.display()
        );
    }
    Ok(())
}
