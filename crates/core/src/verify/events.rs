//! Appraise an RTMR3 event log: it must replay to the quote's RTMR3, and the policy's event
//! pins must hold. The quote proves RTMR3; only the replay ties the readable events to it.

use serde_json::Value;

use super::policy::{EventPin, EventPolicy};
use super::report::Report;
use crate::encoding::hex;
use crate::measure::rtmr3_log::{self, LogLine};

/// The check that the log replays to the quote's RTMR3.
pub const CHECK_EVENT_LOG: &str = "RTMR3 event log";

/// The agent's own first event: its version, configuration and policy digests, and the
/// insecure switches it runs with (docs/formats.md §11).
pub const EVENT_AGENT_CONFIG: &str = "agent-config";

/// The check that the agent runs with no insecure setting the client's other checks cannot
/// judge (docs/formats.md §2).
pub const CHECK_AGENT_SETTINGS: &str = "agent insecure settings";

/// The agent's insecure settings whose effect a client's other checks already judge. Any
/// other (`upstream.insecure_allow_non_loopback`, or a name this client does not know) is
/// refused unless the policy accepts it by name.
const JUDGED_ELSEWHERE: &[&str] = &[
    // A simulated TD's quotes pass only a client that trusts its test root.
    "tee.kind=sim",
    // The agent's own self-check; the client appraises the quote against its own root.
    "collateral.insecure_root",
    // No model event: a policy pinning the model refuses it.
    "model.insecure_unmeasured",
    // The GPUs are the GPU policy's to judge.
    "gpu.source=sim",
    "gpu.insecure_roots",
    "gpu.insecure_sim_dir",
    "gpu.insecure_serve_unattested",
];

/// Whether a client's other checks judge what the agent setting `name` weakens.
fn judged_elsewhere(name: &str) -> bool {
    JUDGED_ELSEWHERE.contains(&name)
}

/// Whether `policy` refuses an agent running with the insecure setting `name`: no other check
/// judges it, and the policy does not accept it by name.
fn refuses(name: &str, policy: &EventPolicy) -> bool {
    !judged_elsewhere(name)
        && !policy
            .insecure_accept_agent_settings
            .iter()
            .any(|a| a == name)
}

/// The agent's insecure settings among `settings` that `policy` refuses (check
/// [`CHECK_AGENT_SETTINGS`]). The agent asks this of its own policy before it measures
/// anything.
pub fn refused_agent_settings<'a>(
    settings: impl IntoIterator<Item = &'a str>,
    policy: &EventPolicy,
) -> Vec<&'a str> {
    settings
        .into_iter()
        .filter(|s| refuses(s, policy))
        .collect()
}

/// The check for one event type, e.g. `RTMR3 event "model"`.
pub fn event_check_name(kind: &str) -> String {
    format!("RTMR3 event {kind:?}")
}

/// Add the event-log checks to `report`. `log` is the JSON-lines log as served (no header);
/// `None` means the evidence carried none, which only matters when the policy pins events.
pub fn appraise_events(report: &mut Report, log: Option<&str>, policy: &EventPolicy) {
    if log.is_none() && !policy.pins_anything() {
        return;
    }
    let Some(rtmr3) = report.measurements.as_ref().map(|m| m.rtmr3.clone()) else {
        // The quote itself did not parse: there is no RTMR3 to replay against.
        report.not_evaluated.push(CHECK_EVENT_LOG.to_string());
        return;
    };
    let expected = format!("events that replay to RTMR3 {rtmr3}");
    let Some(text) = log else {
        report.push_check(
            CHECK_EVENT_LOG,
            false,
            expected,
            "no event log in the evidence, but the policy pins runtime events".into(),
        );
        return;
    };
    let lines = match rtmr3_log::parse_lines(text.lines().filter(|l| !l.is_empty()), 1) {
        Ok(l) => l,
        Err((line, detail)) => {
            report.push_check(
                CHECK_EVENT_LOG,
                false,
                expected,
                format!("malformed at line {line}: {detail}"),
            );
            return;
        }
    };
    let replayed = match rtmr3_log::replay_lines(&lines) {
        Ok(r) => hex(&r),
        Err(e) => {
            report.push_check(CHECK_EVENT_LOG, false, expected, e.to_string());
            return;
        }
    };
    let ok = replayed == rtmr3;
    report.push_check(
        CHECK_EVENT_LOG,
        ok,
        expected,
        if ok {
            format!("{} events replay to it", lines.len())
        } else {
            format!("{} events replay to {replayed}", lines.len())
        },
    );
    if !ok {
        // Events that do not explain RTMR3 say nothing about what ran: do not judge them.
        for pin in &policy.pin {
            report.not_evaluated.push(event_check_name(&pin.kind));
        }
        return;
    }
    appraise_insecure_settings(report, &lines, policy);
    for pin in &policy.pin {
        check_pin(report, &lines, pin);
    }
    if policy.pins_anything() && !policy.insecure_allow_unlisted {
        for line in &lines {
            let kind = &line.event.kind;
            if !policy.pin.iter().any(|p| &p.kind == kind) {
                report.push_check(
                    &event_check_name(kind),
                    false,
                    "only event types the policy pins (rtmr3_events.pin)".into(),
                    format!(
                        "unlisted event #{}: {}",
                        line.seq,
                        compact(&line.event.data)
                    ),
                );
            }
        }
    }
}

/// The `insecure` lists of the agent-config events, if the log has any.
fn insecure_settings(lines: &[LogLine]) -> Option<Vec<&Value>> {
    let mut lists = lines
        .iter()
        .filter(|l| l.event.kind == EVENT_AGENT_CONFIG)
        .filter_map(|l| l.event.data.get("insecure").and_then(Value::as_array))
        .peekable();
    lists.peek()?;
    Some(lists.flatten().collect())
}

/// The switches an agent measured as weakening its promises (`insecure` in its agent-config
/// events) are said in a warning in every report that replayed the log, whatever the policy:
/// the configuration hash alone hides them from a client that does not pin it (a policy
/// refuses them all with `insecure = []` in every table of its agent-config pin's `allowed`).
/// And those no other check of this client judges are refused unless the policy accepts each
/// by name (check [`CHECK_AGENT_SETTINGS`]): an agent whose model server is outside the TD
/// would pass every other check.
fn appraise_insecure_settings(report: &mut Report, lines: &[LogLine], policy: &EventPolicy) {
    let Some(listed) = insecure_settings(lines) else {
        // An agent older than the list: nothing to say or judge.
        return;
    };
    // The warning names them in the agent's order, each once (a set beside it: the list is
    // the server's, and long); the check, sorted by what it concluded of each.
    let mut seen = std::collections::HashSet::new();
    let mut in_order = Vec::new();
    let (mut judged, mut accepted, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for v in listed {
        let name = printable(v);
        if seen.insert(name.clone()) {
            in_order.push(name.clone());
        }
        match v.as_str() {
            Some(raw) if judged_elsewhere(raw) => judged.push(name),
            Some(raw) if !refuses(raw, policy) => accepted.push(name),
            _ => refused.push(name),
        }
    }
    if !in_order.is_empty() {
        report.push_warning(format!(
            "the agent's configuration (its agent-config event) has insecure settings: {}; \
             add `insecure = []` to every table of the agent-config pin's `allowed` (or pin \
             `allowed = [{{ insecure = [] }}]`) to refuse such a server",
            bounded(&in_order)
        ));
    }
    for list in [&mut judged, &mut accepted, &mut refused] {
        list.sort();
        list.dedup();
    }
    let expected = "no insecure agent setting that the other checks cannot judge, beyond \
                    rtmr3_events.insecure_accept_agent_settings"
        .to_string();
    let mut found = Vec::new();
    if !refused.is_empty() {
        found.push(format!(
            "{} (add to rtmr3_events.insecure_accept_agent_settings to accept{})",
            bounded(&refused),
            if refused
                .iter()
                .any(|r| r == "upstream.insecure_allow_non_loopback")
            {
                "; the agent may send prompts to a model server outside the TD"
            } else {
                ""
            }
        ));
    }
    if !accepted.is_empty() {
        found.push(format!("accepted by the policy: {}", bounded(&accepted)));
    }
    if !judged.is_empty() {
        found.push(format!("judged by other checks: {}", bounded(&judged)));
    }
    let found = if found.is_empty() {
        "none".to_string()
    } else {
        found.join("; ")
    };
    report.push_check(CHECK_AGENT_SETTINGS, refused.is_empty(), expected, found);
}

/// A setting's name as a report may print it: the log is the server's to write, and reports
/// go to terminals.
fn printable(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect(),
        None => compact(v),
    }
}

/// At most 16 names, then how many more.
fn bounded(names: &[String]) -> String {
    const MAX_NAMED: usize = 16;
    let shown = names
        .iter()
        .take(MAX_NAMED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(MAX_NAMED) {
        0 => shown,
        more => format!("{shown} (and {more} more)"),
    }
}

fn check_pin(report: &mut Report, lines: &[LogLine], pin: &EventPin) {
    let name = event_check_name(&pin.kind);
    let expected = if pin.allowed.is_empty() {
        "present (any data)".to_string()
    } else {
        format!(
            "data matching one of {}",
            pin.allowed
                .iter()
                .map(|a| compact(&Value::Object(a.clone())))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    };
    let of_kind: Vec<&LogLine> = lines.iter().filter(|l| l.event.kind == pin.kind).collect();
    if of_kind.is_empty() {
        if !pin.optional {
            report.push_check(&name, false, expected, "no such event in the log".into());
        }
        return;
    }
    let refused = of_kind.iter().find(|l| {
        !pin.allowed.is_empty() && !pin.allowed.iter().any(|a| matches(&l.event.data, a))
    });
    match refused {
        Some(l) => report.push_check(
            &name,
            false,
            expected,
            format!("event #{}: {}", l.seq, compact(&l.event.data)),
        ),
        None => report.push_check(
            &name,
            true,
            expected,
            format!("{} matching event(s)", of_kind.len()),
        ),
    }
}

/// Every key of `want` is in `data` with an equal value.
fn matches(data: &Value, want: &serde_json::Map<String, Value>) -> bool {
    let Some(have) = data.as_object() else {
        return false;
    };
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Short one-line JSON for reports; long values are cut so a hostile log cannot flood them.
fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 300 {
        return s;
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::rtmr3_log::{Event, replay};
    use crate::verify::policy::Policy;
    use crate::verify::report::{MeasurementsView, RootView, Verdict};
    use serde_json::json;

    fn line(seq: u64, kind: &str, data: Value) -> LogLine {
        let event = Event {
            kind: kind.into(),
            data,
        };
        LogLine {
            seq,
            rtmr: 3,
            digest: hex(&event.digest().unwrap()),
            event,
        }
    }

    fn log() -> (String, [u8; 48]) {
        let lines = [
            line(1, "agent-config", json!({"config_sha256": "aa"})),
            line(
                2,
                "model",
                json!({"manifest_sha256": "m1", "files": 3, "bytes": 10}),
            ),
        ];
        let digests: Vec<[u8; 48]> = lines.iter().map(|l| l.event.digest().unwrap()).collect();
        let text = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        (text, replay(digests.iter()))
    }

    fn report(rtmr3: [u8; 48]) -> Report {
        let z = hex(&[0u8; 48]);
        let m = MeasurementsView {
            mrtd: z.clone(),
            rtmr0: z.clone(),
            rtmr1: z.clone(),
            rtmr2: z.clone(),
            rtmr3: hex(&rtmr3),
            mrconfigid: z.clone(),
            mrowner: z.clone(),
            mrownerconfig: z.clone(),
            mrseam: z.clone(),
            report_data: z.clone(),
            td_attributes: String::new(),
            xfam: String::new(),
            tee_tcb_svn: String::new(),
            mrservicetd: z,
        };
        Report {
            verdict: Verdict::Accepted,
            tcb_status: None,
            advisory_ids: vec![],
            checks: vec![],
            not_evaluated: vec![],
            measurements: Some(m),
            quote_version: Some(4),
            root: RootView {
                kind: "insecure",
                sha256: String::new(),
            },
            collateral: None,
            verified_at: String::new(),
            warnings: vec![],
            gpus: vec![],
        }
    }

    fn policy(text: &str) -> EventPolicy {
        Policy::from_toml(text, "p.toml").unwrap().rtmr3_events
    }

    #[test]
    fn a_log_that_replays_passes_and_pins_match_as_subsets() {
        let (text, rtmr3) = log();
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(""));
        assert!(r.accepted(), "{r:?}");
        assert!(r.check(CHECK_EVENT_LOG).unwrap().ok);

        let p = policy(
            "[[rtmr3_events.pin]]\ntype = \"model\"\nallowed = [{ manifest_sha256 = \"m0\" }, { manifest_sha256 = \"m1\" }]\n\
             [[rtmr3_events.pin]]\ntype = \"agent-config\"\n",
        );
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &p);
        assert!(r.accepted(), "{:?}", r.failures().collect::<Vec<_>>());
        assert!(r.check("RTMR3 event \"model\"").unwrap().ok);
    }

    #[test]
    fn insecure_switches_are_warned_of_and_a_pin_of_none_refuses_them() {
        let events = |insecure: Value| {
            let l = line(
                1,
                "agent-config",
                json!({"config_sha256": "aa", "insecure": insecure}),
            );
            let rtmr3 = replay([l.event.digest().unwrap()].iter());
            (serde_json::to_string(&l).unwrap() + "\n", rtmr3)
        };
        let (text, rtmr3) = events(json!(["gpu.insecure_serve_unattested", "tee.kind=sim"]));
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(""));
        assert!(r.accepted(), "a warning, not a verdict");
        assert!(
            r.warnings
                .iter()
                .any(|w| w
                    .contains("insecure settings: gpu.insecure_serve_unattested, tee.kind=sim")),
            "{:?}",
            r.warnings
        );
        let none = policy(
            "[[rtmr3_events.pin]]\ntype = \"agent-config\"\nallowed = [{ insecure = [] }]\n",
        );
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &none);
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec!["RTMR3 event \"agent-config\""]);
        // What the server writes is bounded and printable in the warning.
        let mut hostile: Vec<Value> = (0..40).map(|i| json!(format!("x{i}"))).collect();
        hostile.push(json!("evil\u{1b}[2J\nline"));
        let (text, rtmr3) = events(Value::Array(hostile));
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(""));
        let w = r.warnings.join("\n");
        assert!(w.contains("x15 (and 25 more)"), "{w}");
        assert!(!w.contains('\u{1b}') && !w.contains("x16"), "{w}");
        let (text, rtmr3) = events(json!(["evil\u{1b}[2J\nline"]));
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(""));
        assert!(
            r.warnings.iter().any(|w| w.contains("evil?[2J?line")),
            "{:?}",
            r.warnings
        );
        // An agent with none passes that pin, and nothing is said.
        let (text, rtmr3) = events(json!([]));
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &none);
        assert!(r.accepted(), "{:?}", r.failures().collect::<Vec<_>>());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn insecure_settings_no_other_check_judges_are_refused_unless_the_policy_names_them() {
        let events = |data: Value| {
            let l = line(1, "agent-config", data);
            let rtmr3 = replay([l.event.digest().unwrap()].iter());
            (serde_json::to_string(&l).unwrap() + "\n", rtmr3)
        };
        let verdict = |insecure: Value, policy_text: &str| {
            let (text, rtmr3) = events(json!({"config_sha256": "aa", "insecure": insecure}));
            let mut r = report(rtmr3);
            appraise_events(&mut r, Some(&text), &policy(policy_text));
            r
        };
        // None at all: the check passes and says so.
        let r = verdict(json!([]), "");
        let c = r.check(CHECK_AGENT_SETTINGS).unwrap();
        assert!(c.ok && c.found == "none", "{c:?}");
        // Settings whose effect other checks judge (a test root, the GPU policy, a model pin).
        let r = verdict(json!(["tee.kind=sim", "gpu.insecure_serve_unattested"]), "");
        let c = r.check(CHECK_AGENT_SETTINGS).unwrap();
        assert!(c.ok, "{c:?}");
        assert!(
            c.found
                .contains("judged by other checks: gpu.insecure_serve_unattested, tee.kind=sim"),
            "{c:?}"
        );
        // A model server outside the TD: no other check sees it, so refused by default...
        let r = verdict(
            json!(["tee.kind=sim", "upstream.insecure_allow_non_loopback"]),
            "",
        );
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec![CHECK_AGENT_SETTINGS]);
        let c = r.check(CHECK_AGENT_SETTINGS).unwrap();
        assert!(
            c.found.contains("upstream.insecure_allow_non_loopback")
                && c.found.contains("outside the TD")
                && c.found.contains("insecure_accept_agent_settings"),
            "{c:?}"
        );
        // ...and accepted when the policy names it.
        let accept = "[rtmr3_events]\ninsecure_accept_agent_settings = [\"upstream.insecure_allow_non_loopback\"]\n";
        let r = verdict(json!(["upstream.insecure_allow_non_loopback"]), accept);
        assert!(r.accepted(), "{:?}", r.failures().collect::<Vec<_>>());
        assert!(
            r.check(CHECK_AGENT_SETTINGS)
                .unwrap()
                .found
                .contains("accepted by the policy")
        );
        // A name this client does not know (a newer agent's) is refused too, printably.
        let r = verdict(json!(["future.insecure_x\u{1b}[2J", 7]), accept);
        let c = r.check(CHECK_AGENT_SETTINGS).unwrap();
        assert!(!c.ok, "{c:?}");
        assert!(
            c.found.contains("7, future.insecure_x?[2J") && !c.found.contains('\u{1b}'),
            "{c:?}"
        );
        // A long hostile list is said in bounded form.
        let many: Vec<Value> = (0..1000).map(|i| json!(format!("n{i:04}"))).collect();
        let r = verdict(Value::Array(many), "");
        let c = r.check(CHECK_AGENT_SETTINGS).unwrap();
        assert!(!c.ok && c.found.contains("(and 984 more)"), "{c:?}");
        // An agent older than the list: nothing to judge, no check.
        let (text, rtmr3) = events(json!({"config_sha256": "aa"}));
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(""));
        assert!(r.check(CHECK_AGENT_SETTINGS).is_none() && r.accepted());
    }

    #[test]
    fn each_failure_names_its_event() {
        let (text, rtmr3) = log();
        // A different model digest.
        let p = policy(
            "[[rtmr3_events.pin]]\ntype = \"model\"\nallowed = [{ manifest_sha256 = \"other\" }]\n\
             [[rtmr3_events.pin]]\ntype = \"agent-config\"\n",
        );
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &p);
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec!["RTMR3 event \"model\""]);
        assert!(
            r.check("RTMR3 event \"model\"")
                .unwrap()
                .found
                .contains("m1")
        );

        // An unlisted type is refused unless explicitly allowed.
        let only_model = "[[rtmr3_events.pin]]\ntype = \"model\"\n";
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&text), &policy(only_model));
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec!["RTMR3 event \"agent-config\""]);
        let mut r = report(rtmr3);
        let lenient = format!("[rtmr3_events]\ninsecure_allow_unlisted = true\n{only_model}");
        appraise_events(&mut r, Some(&text), &policy(&lenient));
        assert!(r.accepted());

        // A required pin with no event, and an optional one.
        let mut r = report(rtmr3);
        let p = policy(&format!(
            "{only_model}[[rtmr3_events.pin]]\ntype = \"agent-config\"\n[[rtmr3_events.pin]]\ntype = \"vllm-cmdline\"\n"
        ));
        appraise_events(&mut r, Some(&text), &p);
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec!["RTMR3 event \"vllm-cmdline\""]);
        let mut r = report(rtmr3);
        let p = policy(&format!(
            "{only_model}[[rtmr3_events.pin]]\ntype = \"agent-config\"\n[[rtmr3_events.pin]]\ntype = \"vllm-cmdline\"\noptional = true\n"
        ));
        appraise_events(&mut r, Some(&text), &p);
        assert!(r.accepted());
    }

    #[test]
    fn a_log_that_does_not_replay_or_is_missing_fails_the_log_check() {
        let (text, _) = log();
        let mut r = report([7; 48]);
        let p = policy("[[rtmr3_events.pin]]\ntype = \"model\"\n");
        appraise_events(&mut r, Some(&text), &p);
        let failed: Vec<_> = r.failures().map(|c| c.name.clone()).collect();
        assert_eq!(failed, vec![CHECK_EVENT_LOG]);
        assert!(
            r.not_evaluated
                .contains(&"RTMR3 event \"model\"".to_string())
        );

        let mut r = report([0; 48]);
        appraise_events(&mut r, None, &p);
        assert!(!r.accepted());
        assert!(
            r.check(CHECK_EVENT_LOG)
                .unwrap()
                .found
                .contains("no event log")
        );
        // No log and no pins: nothing to say.
        let mut r = report([0; 48]);
        appraise_events(&mut r, None, &policy(""));
        assert!(r.checks.is_empty() && r.accepted());

        // An edited line is named.
        let (text, rtmr3) = log();
        let edited = text.replace("\"m1\"", "\"m2\"");
        let mut r = report(rtmr3);
        appraise_events(&mut r, Some(&edited), &policy(""));
        let c = r.check(CHECK_EVENT_LOG).unwrap();
        assert!(!c.ok && c.found.contains("line 2"), "{c:?}");
        // Junk never panics.
        for junk in ["{", "null", "[]\n[]", "\u{0}", "{\"seq\":1}"] {
            let mut r = report(rtmr3);
            appraise_events(&mut r, Some(junk), &policy(""));
            assert!(!r.accepted(), "{junk:?}");
        }
    }
}
