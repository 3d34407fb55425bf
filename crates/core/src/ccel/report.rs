//! The replay result in two forms: JSON for programs and a text table for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::names::describe;
use super::{Event, EventLog};

/// Longest description shown on one line of the text table.
const TEXT_DESCRIPTION_MAX: usize = 100;

/// What `tdx-agent eventlog replay` prints: every event and the RTMRs the log replays to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Digest algorithms the Spec ID header declares, e.g. `["0x000c"]`.
    pub algorithms: Vec<String>,
    pub events: Vec<ReportEvent>,
    /// How many events extended a register (all but EV_NO_ACTION).
    pub replayed_events: usize,
    /// Final RTMR0..3, lowercase hex.
    pub rtmr: [String; 4],
}

/// One event of a [`ReplayReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEvent {
    pub seq: usize,
    pub offset: usize,
    pub mr_index: u32,
    /// 0..=3, or `None` for an EV_NO_ACTION event that names no RTMR.
    pub rtmr: Option<usize>,
    pub event_type: u32,
    pub event_type_name: String,
    /// False for EV_NO_ACTION, which replay skips.
    pub replayed: bool,
    /// Lowercase hex.
    pub sha384: String,
    pub data_size: usize,
    /// Text found in the data (variable name, action string, boot command), if any.
    pub description: Option<String>,
    /// The raw event data, lowercase hex.
    pub data: String,
}

impl ReportEvent {
    fn from_event(ev: &Event) -> Self {
        ReportEvent {
            seq: ev.seq,
            offset: ev.offset,
            mr_index: ev.mr_index,
            rtmr: ev.rtmr.map(|r| r.index()),
            event_type: ev.event_type,
            event_type_name: ev.type_name().to_owned(),
            replayed: !ev.is_no_action(),
            sha384: hex::encode(ev.sha384),
            data_size: ev.data_size(),
            description: describe(ev.event_type, &ev.data),
            data: hex::encode(&ev.data),
        }
    }
}

impl EventLog {
    /// Replays the log and describes every event.
    pub fn report(&self) -> ReplayReport {
        ReplayReport::new(self)
    }
}

impl ReplayReport {
    pub fn new(log: &EventLog) -> Self {
        let events: Vec<ReportEvent> = log.events.iter().map(ReportEvent::from_event).collect();
        let replayed_events = events.iter().filter(|e| e.replayed).count();
        ReplayReport {
            algorithms: log
                .spec_id
                .algorithms
                .iter()
                .map(|a| format!("{:#06x}", a.id))
                .collect(),
            events,
            replayed_events,
            rtmr: log.replay().map(hex::encode),
        }
    }

    /// A table of the events followed by the replayed RTMRs.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored rather than unwrapped.
        let _ = writeln!(
            out,
            "{:>4}  {:>7}  {:<6}  {:<32}  {:>6}  SHA-384",
            "SEQ", "OFFSET", "MR", "TYPE", "SIZE"
        );
        for ev in &self.events {
            let mr = match (ev.replayed, ev.rtmr) {
                (false, _) => "-".to_owned(),
                (true, Some(i)) => format!("RTMR{i}"),
                (true, None) => format!("MR{}", ev.mr_index),
            };
            let type_name = if ev.event_type_name == "unknown" {
                format!("{:#010x}", ev.event_type)
            } else {
                ev.event_type_name.clone()
            };
            let _ = writeln!(
                out,
                "{:>4}  {:>7}  {:<6}  {:<32}  {:>6}  {}",
                ev.seq,
                format!("{:#x}", ev.offset),
                mr,
                type_name,
                ev.data_size,
                ev.sha384
            );
            if let Some(desc) = &ev.description {
                let _ = writeln!(out, "{:>31}{}", "", one_line(desc));
            }
        }
        let _ = writeln!(
            out,
            "\n{} events, {} replayed (EV_NO_ACTION skipped)",
            self.events.len(),
            self.replayed_events
        );
        for (i, value) in self.rtmr.iter().enumerate() {
            let _ = writeln!(out, "RTMR{i}  {value}");
        }
        out
    }
}

/// The description squeezed onto one line: control characters become spaces, long text is
/// cut with an ellipsis.
fn one_line(desc: &str) -> String {
    let flat: String = desc
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut chars = flat.chars();
    let head: String = chars.by_ref().take(TEXT_DESCRIPTION_MAX).collect();
    if chars.next().is_some() {
        format!("{head}...")
    } else {
        head
    }
}
