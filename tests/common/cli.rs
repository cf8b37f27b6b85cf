//! Running the command-line tools (src/bin/xdpguard.rs,
//! src/bin/xdpguard-lb.rs) from tests, each command as its own process.
//!
//! `cargo test` builds them (the self dev-dependency enables the `cli`
//! feature they require) and tells the tests where they are through
//! CARGO_BIN_EXE_<name>, so nothing needs building first.
//!
//! Use it from tests with `mod common { pub mod cli; }`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A tool started as its own process (a `--watch`, `top`, an exporter):
/// killed and reaped on drop, so a failed assertion leaves none running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command-line tool of this crate.
#[derive(Debug, Clone, Copy)]
pub struct Cli {
    /// The binary's name, e.g. "xdpguard".
    pub name: &'static str,
    path: &'static str,
}

/// `xdpguard`: the filter's tool.
pub const XDPGUARD: Cli = Cli { name: "xdpguard", path: env!("CARGO_BIN_EXE_xdpguard") };
/// `xdpguard-lb`: the load balancer's (and decapsulator's) tool.
pub const XDPGUARD_LB: Cli = Cli { name: "xdpguard-lb", path: env!("CARGO_BIN_EXE_xdpguard-lb") };

impl Cli {
    /// The binary cargo built for this test run.
    pub fn path(&self) -> &Path {
        Path::new(self.path)
    }

    /// Runs one command, whatever its exit status; prints the command line
    /// and its output (shown when a test fails).
    pub fn run(&self, args: &[&str]) -> Output {
        // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
        let out = Command::new(self.path()).args(args).output().expect("run the CLI");
        eprintln!("$ {} {}\n{}", self.name, args.join(" "), printed(&out));
        out
    }

    /// Runs one command and requires success; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{} {} failed:\n{}", self.name, args.join(" "), printed(&out));
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs one command (a `--json` one), requires success, and parses its
    /// stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// Requires that a command failed and that its stderr mentions each of
/// `words` (what was wrong, and the way out).
#[track_caller]
pub fn refused(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "stderr should mention `{w}`: {stderr}");
    }
}

/// What a command printed: stdout, then stderr.
fn printed(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
