//! Compiles the two services with protox, a protobuf compiler written in Rust, so that no
//! `protoc` is needed to build, and generates their prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["proto/validator/v1/validation_service.proto", "proto/nodemanager/nodemanager.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
