//! The `tdx-agent` binary: parse the command line, run it on a tokio runtime. Everything it
//! does lives in the workspace's crates (README "Layout"); this crate is the subcommands.
#![forbid(unsafe_code)]

mod cli;
#[cfg(test)]
mod docs_tests;
#[cfg(test)]
#[path = "../../crates/core/src/test_support.rs"]
mod test_support;

use std::process::ExitCode;

use clap::Parser as _;

/// Without `TDX_AGENT_LOG`. rustls warns about what a peer did wrong (an IP address sent as
/// SNI, as wrk does, on every handshake): those lines are the peer's business, and a client
/// could fill the journal with them.
const DEFAULT_LOG: &str = "warn,rustls=error";

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TDX_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tdx-agent: error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    runtime.block_on(cli::run(cli))
}
