//! The shipped Prometheus alert rules (deploy/prometheus/) are valid, and their unit tests
//! (every rule at its real durations) pass under promtool (Debian's `prometheus` package;
//! scripts/setup.sh --for-tests installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

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

/// Every metric the shipped rules and the Grafana dashboard query is one the agent or `watch`
/// exports (as documented in docs/operations.md and docs/watch.md, whose tables tests of
/// their own keep true), so neither queries a name that never comes.
#[test]
fn rules_and_dashboard_query_only_exported_metrics() {
    let repo = support::repo();
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap();
    let documented = format!("{}{}", read("docs/operations.md"), read("docs/watch.md"));
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
    for expr in exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tdx_agent_") || w.starts_with("tdx_watch_"))
        {
            // Histograms and counters carry suffixes the tables leave off.
            let base = name.trim_end_matches("_bucket").trim_end_matches("_total");
            // The agent's table names metrics without their prefix, watch's with it.
            let needle = match base.strip_prefix("tdx_agent_") {
                Some(short) => format!("`{short}"),
                None => format!("`{base}"),
            };
            assert!(
                documented.contains(&needle),
                "{name} is queried but no documented metric is called so"
            );
        }
    }
}
