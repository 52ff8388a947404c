//! `msn-export`: the same command as `msn export`.

fn main() -> std::process::ExitCode {
    msn_cli::single_main(
        "msn-export",
        "Export a trained msn network to standard ONNX.",
        msn_cli::export::run,
    )
}
