//! Compiles `proto/onnx.proto` into Rust types with prost, using protox so no system `protoc` is needed.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = root.join("onnx.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root]).expect("proto/onnx.proto must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost-build must generate code for onnx.proto");
}
