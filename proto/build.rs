//! Generates the Rust code for `ratify.v1` with a vendored protoc, so no system
//! install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let files = [
        "proto/ratify/v1/common.proto",
        "proto/ratify/v1/coordinator.proto",
        "proto/ratify/v1/participant.proto",
        "proto/ratify/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    // prost-build reads PROTOC; a build script runs single-threaded, so setting it is safe.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
