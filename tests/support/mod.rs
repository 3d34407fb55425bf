//! Shared helpers for the end-to-end tests: run the real binary, find the vendored vectors.
#![allow(dead_code)]

use std::fmt;
use std::process::Command;

/// The outcome of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tdx-agent")
}

pub fn tdx_agent(args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin()));
    Run {
        // A signal (a crash) has no code: report it as -1 so no assertion mistakes it for 0/1/2.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn vector_path(rel: &str) -> String {
    format!("{}/../tests/vectors/{rel}", env!("CARGO_MANIFEST_DIR"))
}
