//! `tdx-agent verify`: appraise a quote file offline.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, Failure, read_file};
use tdx_core::verify::{Collateral, Expectations, Policy, Verifier, time};
use tdx_net::pccs::{CollateralSource, PccsClient, Provenance};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["collateral", "pccs"]))]
pub struct VerifyArgs {
    /// The quote: binary, or hex text (optional 0x prefix, whitespace allowed).
    pub quote: PathBuf,
    /// Collateral bundle (JSON, the QuoteCollateralV3 fields with binary fields as hex).
    #[arg(long)]
    pub collateral: Option<PathBuf>,
    /// Fetch collateral from this PCCS (v4 API), e.g. https://pccs.example:8081.
    #[arg(long)]
    pub pccs: Option<String>,
    /// Where PCCS collateral is cached. Default: $XDG_CACHE_HOME/tdx-agent or ~/.cache/tdx-agent.
    #[arg(long)]
    pub collateral_cache: Option<PathBuf>,
    /// Verify as of this instant: unix seconds or RFC 3339. Default: now.
    #[arg(long)]
    pub at: Option<String>,
    /// Appraisal policy (TOML). Default: the built-in strict policy, which pins no measurement.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Trust this root CA (DER) instead of Intel's production root. Only for the simulated TD
    /// or test PKIs: a quote that verifies this way proves nothing about real hardware.
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// The RTMR3 event log (JSON lines, as the agent serves it): it must replay to the
    /// quote's RTMR3, and the policy's `rtmr3_events` pins are applied to it.
    #[arg(long, value_name = "FILE")]
    pub event_log: Option<PathBuf>,
    /// Require this exact REPORTDATA (128 hex digits).
    #[arg(long, value_name = "HEX")]
    pub expect_report_data: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: VerifyArgs) -> CliResult {
    let now = match &a.at {
        Some(t) => time::parse_instant(t).map_err(|e| Failure::Error(format!("--at: {e}")))?,
        None => time::now_unix(),
    };
    let policy = load_policy(a.policy.as_ref()).await?;
    let expect = Expectations {
        report_data: a
            .expect_report_data
            .as_deref()
            .map(tdx_core::encoding::hex_array::<64>)
            .transpose()
            .map_err(|e| Failure::Error(format!("--expect-report-data: {e}")))?,
    };
    let verifier = match &a.insecure_root {
        Some(p) => Verifier::with_insecure_root(read_file(p, "--insecure-root").await?),
        None => Verifier::production(),
    };
    let quote = tdx_core::quote::decode_file(read_file(&a.quote, "quote").await?);
    let event_log = match &a.event_log {
        Some(p) => Some(
            String::from_utf8(read_file(p, "event log").await?).map_err(|_| {
                Failure::rejected(format!("event log {}: not UTF-8 text", p.display()))
            })?,
        ),
        None => None,
    };

    let collateral = match (&a.collateral, &a.pccs) {
        (Some(path), _) => {
            let text = read_file(path, "collateral bundle").await?;
            let text = String::from_utf8(text).map_err(|_| {
                Failure::rejected(format!(
                    "collateral bundle {}: not UTF-8 text",
                    path.display()
                ))
            })?;
            Collateral::from_bundle_json(&text, &path.display().to_string())
                .map_err(Failure::rejected)?
        }
        (None, Some(url)) => {
            let client = PccsClient::new(url).map_err(Failure::error)?;
            let cache = a.collateral_cache.clone().or_else(default_cache_dir);
            let source = CollateralSource::new(client, cache);
            // A quote we cannot even read the PCK certificate of is malformed evidence.
            if let Err(e) = tdx_net::pccs::CollateralKey::for_quote(&quote) {
                let report = verifier.appraise_without_collateral(&quote, now, &e.to_string());
                print_report(&report, a.json);
                return Err(Failure::Rejected(report.summary()));
            }
            let (c, provenance) = source
                .for_quote(&quote, now)
                .await
                .map_err(Failure::error)?;
            if let Provenance::StaleFallback(why) = provenance {
                eprintln!("tdx-agent: warning: PCCS unreachable ({why}); using cached collateral");
            }
            c
        }
        (None, None) => {
            return Err(Failure::Error(
                "give --collateral FILE or --pccs URL".into(),
            ));
        }
    };

    let collateral = collateral.prepare().map_err(Failure::rejected)?;
    let mut report = verifier.appraise(&quote, &collateral, now, &policy, &expect);
    tdx_core::verify::events::appraise_events(
        &mut report,
        event_log.as_deref(),
        &policy.rtmr3_events,
    );
    print_report(&report, a.json);
    if a.policy.is_none() {
        eprintln!(
            "tdx-agent: warning: no --policy given: no measurement is pinned, so any genuine TD on an accepted platform passes"
        );
    }
    if report.accepted() {
        Ok(())
    } else {
        Err(Failure::Rejected(report.summary()))
    }
}

pub(super) fn print_report(report: &tdx_core::verify::Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
}

pub(super) async fn load_policy(path: Option<&PathBuf>) -> Result<Policy, Failure> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => {
            let bytes = read_file(p, "policy").await?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Failure::Error(format!("policy {}: not UTF-8 text", p.display())))?;
            Policy::from_toml(&text, &p.display().to_string()).map_err(Failure::error)
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tdx-agent"))
}
