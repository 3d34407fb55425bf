//! The shipped Prometheus alert rules (deploy/prometheus/) are valid, and their unit tests
//! (every rule at its real durations) pass under promtool (Debian's `prometheus` package;
//! scripts/setup.sh --for-tests installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::collections::BTreeMap;
use std::process::Command;

fn promtool(args: &[&str]) -> support::Run {
    let dir = support::repo().join("deploy/prometheus");
    support::run(Command::new("promtool").args(args).current_dir(&dir))
}

#[test]
fn the_shipped_rules_check_and_their_unit_tests_pass() {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool not found: apt-get install prometheus (scripts/setup.sh --for-tests; .ci/run does)"
    );
    let r = promtool(&["check", "rules", "tdx-agent.rules.yml"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("SUCCESS: 9 rules found"), "{r}");
    let r = promtool(&["test", "rules", "tdx-agent.rules.test.yml"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("SUCCESS"), "{r}");
}

/// The metric families a metrics table documents, as full names (`tdx_agent_quotes_total`)
/// with their type. A table row is `| \`name{labels}\` | type | ... |`; `prefix` is what the
/// table leaves off (the agent's table drops `tdx_agent_`, watch's names are written whole).
fn documented_families(doc: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(kind)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        if !matches!(*kind, "counter" | "gauge" | "histogram") {
            continue;
        }
        let name = name.trim_matches('`');
        let name = name.split('{').next().unwrap();
        families.insert(format!("{prefix}{name}"), kind.to_string());
    }
    families
}

/// The metric names `expr` queries that no documented family exports: an exact name, or a
/// histogram's `_bucket`/`_sum`/`_count` series.
fn undocumented(expr: &str, families: &BTreeMap<String, String>) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tdx_agent_") || w.starts_with("tdx_watch_"))
        .filter(|name| {
            if families.contains_key(*name) {
                return false;
            }
            let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|base| families.get(base))
                    .is_some_and(|kind| kind == "histogram")
            });
            !histogram_series
        })
        .map(str::to_string)
        .collect()
}

/// Every metric the shipped rules and the Grafana dashboard query is one the agent or `watch`
/// exports (as documented in docs/operations.md and docs/watch.md, whose tables tests of
/// their own keep true), so neither queries a name that never comes.
#[test]
fn rules_and_dashboard_query_only_exported_metrics() {
    let repo = support::repo();
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap();
    let agent = documented_families(&read("docs/operations.md"), "tdx_agent_");
    let watch = documented_families(&read("docs/watch.md"), "");
    // Parsing must have found the tables, else every query below would look undocumented
    // for the wrong reason (or, were the check inverted, pass for it).
    assert!(agent.len() >= 20, "{agent:?}");
    assert!(watch.len() >= 12, "{watch:?}");
    assert!(
        watch.keys().all(|n| n.starts_with("tdx_watch_")),
        "{watch:?}"
    );
    let mut families = agent;
    families.extend(watch);
    // Counters are documented with their `_total`, so a query names them exactly.
    for (name, kind) in &families {
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }

    // The matcher itself: a name that is a prefix or an extension of a documented one, or a
    // histogram suffix on a gauge, is not documented.
    for wrong in [
        "tdx_agent_read",
        "tdx_agent_ready_total",
        "tdx_agent_quotes",
        "tdx_agent_ready_bucket",
        "tdx_watch_last_resul",
    ] {
        assert_eq!(
            undocumented(&format!("max({wrong}{{job=\"x\"}})"), &families),
            [wrong],
            "{wrong} passed as documented"
        );
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/tdx-agent-fleet.json")).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 9, "{exprs:?}");
    exprs.push(read("deploy/prometheus/tdx-agent.rules.yml"));
    let mut queried = 0;
    for expr in &exprs {
        queried += undocumented(expr, &BTreeMap::new()).len();
        let missing = undocumented(expr, &families);
        assert!(
            missing.is_empty(),
            "{missing:?} queried but no documented metric is called so, in:\n{expr}"
        );
    }
    assert!(
        queried >= 20,
        "only {queried} metric names found in the queries"
    );
}
