//! `tdx-agent eventlog replay`: parse a CCEL boot event log and replay it to RTMR0-3.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliResult, Failure, read_file};
use tdx_core::ccel::EventLog;

#[derive(Debug, Subcommand)]
pub enum EventlogCommand {
    /// Replay a CCEL event log (e.g. /sys/firmware/acpi/tables/data/CCEL) to RTMR0-3 and list
    /// its events.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The TCG2 crypto-agile event log (the CCEL data table).
    pub file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(c: EventlogCommand) -> CliResult {
    match c {
        EventlogCommand::Replay(a) => {
            let bytes = read_file(&a.file, "event log").await?;
            // A malformed log is malformed evidence: exit 1, naming the event and field.
            let log = EventLog::parse(&bytes)
                .map_err(|e| Failure::Rejected(format!("event log {}: {e}", a.file.display())))?;
            let report = log.report();
            if a.json {
                let json = serde_json::to_string_pretty(&report).map_err(Failure::error)?;
                println!("{json}");
            } else {
                print!("{}", report.render_text());
            }
            Ok(())
        }
    }
}
