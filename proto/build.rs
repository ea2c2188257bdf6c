//! Generates the Rust code for `ratify.v1` with a vendored protoc, so no system
//! install is needed, and the file descriptor set of the public services (for gRPC
//! server reflection). The internal Raft service is compiled on its own, so it is
//! not in that set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let public = [
        "proto/ratify/v1/common.proto",
        "proto/ratify/v1/coordinator.proto",
        "proto/ratify/v1/participant.proto",
    ];
    let internal = ["proto/ratify/v1/raft.proto"];
    for f in public.iter().chain(&internal) {
        println!("cargo:rerun-if-changed={f}");
    }
    // prost-build reads PROTOC; a build script runs single-threaded, so setting it is safe.
    std::env::set_var("PROTOC", protoc);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ratify_descriptor.bin"))
        .compile_protos(&public, &["proto"])?;
    tonic_prost_build::configure().compile_protos(&internal, &["proto"])?;
    Ok(())
}
