//! Compiles `proto/*.proto` into Rust with tonic-prost-build.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so building needs nothing
//! installed beyond cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    let protos = [proto_dir.join("raft.proto"), proto_dir.join("peer.proto")];

    // prost-build finds protoc only through PROTOC; setting it here is sound because a
    // build script runs single-threaded. The vendored binary wins over a PROTOC from the
    // environment so every machine generates the same code.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    tonic_prost_build::configure()
        // The sender puts a message's `Bytes` payload into the protobuf message by
        // reference, and the receiver gets it back as `Bytes` sliced from the frame,
        // instead of a `Vec<u8>` copy on each side.
        .bytes(".fleetmq.peer.ForwardMessage")
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[proto_dir])?;
    Ok(())
}
