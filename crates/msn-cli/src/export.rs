//! `msn-export` / `msn export`: a run directory or checkpoint to ONNX.

use anyhow::{bail, Context, Result};
use clap::Args;
use msn_export::{export_gan_run, export_run, ExportOptions, GanPart};
use std::path::PathBuf;

/// Export a trained network to standard ONNX (SN and MSN visible as standard ops).
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory made by `msn train`, or its checkpoint.safetensors
    #[arg(value_name = "RUN_DIR|CHECKPOINT")]
    pub run: PathBuf,
    /// The ONNX file to write (atomically)
    #[arg(short, long, value_name = "model.onnx")]
    pub output: PathBuf,
    /// ONNX opset of the default domain
    #[arg(long, default_value_t = 17)]
    pub opset: i64,
    /// Batch dimension: dynamic, or a fixed size
    #[arg(long, default_value = "dynamic", value_name = "dynamic|N")]
    pub batch: String,
    /// Write the folded model (msn-fold's passes applied, and verified in tract)
    #[arg(long)]
    pub folded: bool,
    /// For a GAN run (msn train-gan): export the discriminator instead of the generator
    #[arg(long)]
    pub discriminator: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let batch = match args.batch.as_str() {
        "dynamic" => None,
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => bail!("--batch must be 'dynamic' or a positive number, got '{n}'"),
        },
    };
    if !(7..=21).contains(&args.opset) {
        bail!("--opset {} is not supported (7 to 21)", args.opset);
    }
    let options = ExportOptions {
        opset: args.opset,
        batch,
    };
    let mut model = if args.discriminator {
        if !msn_train::gan::is_gan_run(&msn_train::gan::run_dir(&args.run)) {
            bail!(
                "{}: --discriminator needs a GAN run (made by msn train-gan)",
                args.run.display()
            );
        }
        export_gan_run(&args.run, GanPart::Discriminator, &options)?
    } else {
        export_run(&args.run, &options)?
    };
    if args.folded {
        let exported = model.clone();
        let report = msn_fold::fold(&mut model);
        let err = msn_runtime::verify::models(&exported, &model, 3, 1, &[])?;
        if err.is_nan() || err > 1e-4 {
            bail!("folding changed the model's output (max relative error {err:.3e}); nothing written");
        }
        eprintln!(
            "folded {} -> {} nodes (max relative error {err:.2e})",
            report.nodes_before, report.nodes_after
        );
    }
    msn_onnx::io::save(&model, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let graph = model.graph.as_ref().expect("exported models have a graph");
    eprintln!(
        "wrote {} ({} nodes, {} initializers)",
        args.output.display(),
        graph.node.len(),
        graph.initializer.len()
    );
    Ok(())
}
