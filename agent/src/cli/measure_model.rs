//! `tdx-agent measure-model`: the model manifest and its digest, as RTMR3 will record them.
//!
//! stdout carries only the manifest, so `tdx-agent measure-model DIR > m.txt` writes the same
//! bytes as the coreutils pipeline (docs/formats.md §10) and `sha256sum m.txt` gives the
//! digest; the digest itself goes to stderr, where a person running the command sees it.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{CliResult, Failure};
use tdx_core::encoding::hex;

#[derive(Debug, Args)]
pub struct MeasureModelArgs {
    /// The model directory (symbolic links are followed).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print one JSON object (manifest text, digest, counts) instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ModelJson {
    dir: String,
    files: usize,
    bytes: u64,
    manifest: String,
    manifest_sha256: String,
}

pub async fn run(a: MeasureModelArgs) -> CliResult {
    let dir = a.dir.clone();
    let m = tokio::task::spawn_blocking(move || tdx_core::measure::model::manifest(&dir))
        .await
        .map_err(Failure::error)?
        .map_err(Failure::error)?;
    let text = m.text();
    let digest = hex(&m.digest());
    let out = if a.json {
        let json = ModelJson {
            dir: a.dir.display().to_string(),
            files: m.files.len(),
            bytes: m.total_bytes,
            manifest: text,
            manifest_sha256: digest.clone(),
        };
        let mut s = serde_json::to_string_pretty(&json).map_err(Failure::error)?;
        s.push('\n');
        s
    } else {
        text
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Error(format!("writing the manifest: {e}")))?;
    if !a.json {
        eprintln!(
            "{} files, {} bytes under {}",
            m.files.len(),
            m.total_bytes,
            a.dir.display()
        );
        eprintln!("manifest sha256: {digest}");
    }
    Ok(())
}
