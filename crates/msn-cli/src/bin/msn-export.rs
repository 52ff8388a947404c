use clap::Parser;
use msn_cli::export::{run, ExportArgs};

/// Export a trained msn network to standard ONNX.
#[derive(Parser)]
#[command(name = "msn-export", version)]
struct Cli {
    #[command(flatten)]
    args: ExportArgs,
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
