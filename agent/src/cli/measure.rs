//! `tdx-agent quote` and `tdx-agent measurements`: what the TD itself reports.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::tee_args::TeeArgs;
use super::{CliResult, Failure, write_file};
use tdx_core::encoding::hex;

#[derive(Debug, Args)]
pub struct QuoteArgs {
    /// The 64 bytes of REPORTDATA, as 128 hex digits.
    #[arg(long, value_name = "HEX")]
    pub report_data: String,
    #[command(flatten)]
    pub tee: TeeArgs,
    /// Write the binary quote here instead of printing it as hex.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn quote(a: QuoteArgs) -> CliResult {
    let report_data = tdx_core::encoding::hex_array::<64>(&a.report_data)
        .map_err(|e| Failure::Error(format!("--report-data: {e}")))?;
    let tee = a.tee.open().await?;
    let quote = tee.quote(report_data).await.map_err(Failure::error)?;
    match a.out {
        Some(path) => {
            write_file(&path, quote.clone()).await?;
            eprintln!("wrote a {}-byte quote to {}", quote.len(), path.display());
        }
        None => println!("{}", hex(&quote)),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct MeasurementsArgs {
    #[command(flatten)]
    pub tee: TeeArgs,
    /// Print one JSON object.
    #[arg(long, conflicts_with = "toml")]
    pub json: bool,
    /// Print a policy's `[measurements]` table pinning this TD's image (MRTD, RTMR0-2), as
    /// `connect` and the Python transport require: run it on a reference TD booted from the
    /// image, then add the RTMR3 event pins (docs/connect.md).
    #[arg(long)]
    pub toml: bool,
}

#[derive(Serialize)]
struct MeasurementsJson {
    tee: &'static str,
    mrtd: String,
    rtmr0: String,
    rtmr1: String,
    rtmr2: String,
    rtmr3: String,
    mrconfigid: String,
    mrowner: String,
    mrownerconfig: String,
}

pub async fn measurements(a: MeasurementsArgs) -> CliResult {
    let tee = a.tee.open().await?;
    let m = tee.measurements().await.map_err(Failure::error)?;
    let out = MeasurementsJson {
        tee: match tee.kind() {
            tdx_tee::TeeKind::Configfs => "configfs",
            tdx_tee::TeeKind::Simulated => "simulated",
        },
        mrtd: hex(&m.mrtd),
        rtmr0: hex(&m.rtmr[0]),
        rtmr1: hex(&m.rtmr[1]),
        rtmr2: hex(&m.rtmr[2]),
        rtmr3: hex(&m.rtmr[3]),
        mrconfigid: hex(&m.mrconfigid),
        mrowner: hex(&m.mrowner),
        mrownerconfig: hex(&m.mrownerconfig),
    };
    if a.toml {
        println!(
            "# The TD image as measured by this TD (`tdx-agent measurements --toml`).\n\
             [measurements]\nmrtd = [\"{}\"]\nrtmr0 = [\"{}\"]\nrtmr1 = [\"{}\"]\nrtmr2 = [\"{}\"]",
            out.mrtd, out.rtmr0, out.rtmr1, out.rtmr2
        );
    } else if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(Failure::error)?
        );
    } else {
        println!("tee            {}", out.tee);
        for (k, v) in [
            ("MRTD", &out.mrtd),
            ("RTMR0", &out.rtmr0),
            ("RTMR1", &out.rtmr1),
            ("RTMR2", &out.rtmr2),
            ("RTMR3", &out.rtmr3),
            ("MRCONFIGID", &out.mrconfigid),
            ("MROWNER", &out.mrowner),
            ("MROWNERCONFIG", &out.mrownerconfig),
        ] {
            println!("{k:<14} {v}");
        }
    }
    Ok(())
}
