//! docs/verification.md §8 runs as written: every `tdx-agent verify-gpu` command in it, from
//! the repository root, exits with the status the line after it gives, and a rejection names
//! the check it gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

/// (arguments, expected exit status, check named on stderr) for each command of §8.
fn documented_commands() -> Vec<(Vec<String>, i32, Option<String>)> {
    let text = std::fs::read_to_string(support::repo().join("docs/verification.md")).unwrap();
    let section = text
        .split("## 8. ")
        .nth(1)
        .expect("docs/verification.md has a section 8");
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let mut out = Vec::new();
    let mut command = String::new();
    for line in block.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# exit ") {
            let (code, check) = match rest.split_once(": ") {
                Some((c, n)) => (c, Some(n.to_string())),
                None => (rest, None),
            };
            let args: Vec<String> = command
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect();
            out.push((args, code.parse().unwrap(), check));
            command.clear();
        } else if line.starts_with("tdx-agent ") || !command.is_empty() {
            command.push_str(line.trim_end_matches('\\'));
            command.push(' ');
        }
    }
    out
}

#[test]
fn every_verify_gpu_example_exits_as_documented() {
    let commands = documented_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    for (args, code, check) in commands {
        assert_eq!(args[0], "verify-gpu");
        let out = Command::new(env!("CARGO_BIN_EXE_tdx-agent"))
            .args(&args)
            .current_dir(support::repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{stderr}");
        if let Some(check) = check {
            assert!(
                stderr.contains(&format!("rejected: {check} check failed")),
                "{args:?}: {stderr}"
            );
        }
    }
}
