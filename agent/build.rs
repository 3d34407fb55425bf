//! Compiles proto/ with protox (pure Rust, no system protoc) and generates the tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let file = format!("{proto_dir}/tdx_agent/v1/attestation.proto");
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile([file.as_str()], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
