//! `msn-classify`: the same command as `msn classify`.

fn main() -> std::process::ExitCode {
    msn_cli::single_main(
        "msn-classify",
        "Classify images with an ONNX model: prints the top-k labels for each image.",
        msn_cli::classify::run,
    )
}
