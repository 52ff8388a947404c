use clap::{Parser, Subcommand};

/// msn: train, export, fold and run small image classifiers with Mean Spectral Normalization.
#[derive(Parser)]
#[command(name = "msn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images with an ONNX model (same as msn-classify)
    Classify(msn_cli::classify::ClassifyArgs),
    /// Measure a model's latency and throughput with tract
    Bench(msn_cli::bench::BenchArgs),
    /// Run any ONNX model on NumPy .npy/.npz inputs and write its outputs
    Run(msn_cli::run::RunArgs),
    /// Describe a model: inputs, outputs, ops, parameters, multiply-accumulates, metadata
    Info(msn_cli::info::InfoArgs),
    /// Export a trained network to ONNX (same as msn-export)
    #[cfg(feature = "train")]
    Export(msn_cli::export::ExportArgs),
    /// Fold normalization into Conv/Gemm weights (same as msn-fold)
    Fold(msn_cli::fold::FoldArgs),
    /// Quantize a float model to int8, calibrated on your images (same as msn-quantize)
    Quantize(msn_cli::quantize::QuantizeArgs),
    /// Train a classifier (cnn3, vgg7, densenet-bc) with a chosen normalization
    #[cfg(feature = "train")]
    Train(msn_cli::train::TrainArgs),
    /// Train one model with several normalizations and write a comparison table and figures
    #[cfg(feature = "train")]
    Experiment(msn_cli::experiment::ExperimentArgs),
    /// Teach a new classifier from a pretrained backbone and a folder of photos
    #[cfg(feature = "train")]
    Teach(msn_cli::teach::TeachArgs),
    /// Train a DCGAN (generator against an SN, MSN, BN or plain discriminator)
    #[cfg(feature = "train")]
    TrainGan(msn_cli::gan::TrainGanArgs),
    /// Write a grid of images from a generator (ONNX file or GAN run), run with tract
    #[cfg(feature = "train")]
    Generate(msn_cli::gan::GenerateArgs),
    /// Classifier score and Frechet distance of a generator's samples, on our classifier
    #[cfg(feature = "train")]
    GanScore(msn_cli::gan::GanScoreArgs),
    /// Draw test accuracy, mean drift and gradient sparsity figures of runs
    #[cfg(feature = "train")]
    Plot(msn_cli::experiment::PlotArgs),
}

fn main() -> std::process::ExitCode {
    msn_cli::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = msn_cli::check_environment() {
        return msn_cli::exit(Err(e));
    }
    msn_cli::exit(match cli.command {
        Command::Classify(args) => msn_cli::classify::run(args),
        Command::Bench(args) => msn_cli::bench::run(args),
        Command::Run(args) => msn_cli::run::run(args),
        Command::Info(args) => msn_cli::info::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => msn_cli::train::run(args),
        #[cfg(feature = "train")]
        Command::Export(args) => msn_cli::export::run(args),
        Command::Fold(args) => msn_cli::fold::run(args),
        Command::Quantize(args) => msn_cli::quantize::run(args),
        #[cfg(feature = "train")]
        Command::Experiment(args) => msn_cli::experiment::run_experiment(args),
        #[cfg(feature = "train")]
        Command::Plot(args) => msn_cli::experiment::run_plot(args),
        #[cfg(feature = "train")]
        Command::Teach(args) => msn_cli::teach::run(args),
        #[cfg(feature = "train")]
        Command::TrainGan(args) => msn_cli::gan::run_train_gan(args),
        #[cfg(feature = "train")]
        Command::Generate(args) => msn_cli::gan::run_generate(args),
        #[cfg(feature = "train")]
        Command::GanScore(args) => msn_cli::gan::run_gan_score(args),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
