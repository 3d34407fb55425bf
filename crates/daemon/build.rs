//! Compiles proto/ with protox (pure Rust, no system protoc) and generates the tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: cargo reuses a compiled build script across
    // checkouts of the same workspace that share a target directory (worktrees, CI caches),
    // and a baked-in path would point at another checkout's proto/.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = format!("{manifest_dir}/../../proto");
    let file = format!("{proto_dir}/tdx_agent/v1/attestation.proto");
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile([file.as_str()], [proto_dir.as_str()])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
