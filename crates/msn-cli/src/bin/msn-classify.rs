use clap::Parser;
use msn_cli::classify::{run, ClassifyArgs};

/// Classify images with an ONNX model: prints the top-k labels for each image.
#[derive(Parser)]
#[command(name = "msn-classify", version)]
struct Cli {
    #[command(flatten)]
    args: ClassifyArgs,
}

fn main() -> std::process::ExitCode {
    msn_cli::exit(run(Cli::parse().args))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
