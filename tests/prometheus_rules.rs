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
    assert!(r.stdout.contains("SUCCESS: 8 rules found"), "{r}");
    let r = promtool(&["test", "rules", "tdx-agent.rules.test.yml"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("SUCCESS"), "{r}");
}
