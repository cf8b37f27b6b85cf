//! Running the CLI examples (examples/xdpguard.rs, examples/xdpguard-lb.rs)
//! from tests, each command as its own process.
//!
//! The binaries come from the same profile as the test binary, so CI builds
//! the examples first (`cargo build --release --examples`); locally run
//! `cargo build --examples` (or `--release` to match `cargo test --release`).
//!
//! Use it from tests with `mod common { pub mod cli; }`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An example binary built next to this test binary.
#[derive(Debug, Clone, Copy)]
pub struct ExampleBinary {
    /// The example's name, e.g. "xdpguard".
    pub name: &'static str,
}

impl ExampleBinary {
    pub const fn new(name: &'static str) -> ExampleBinary {
        ExampleBinary { name }
    }

    /// target/<profile>/deps/<test>-* -> target/<profile>/examples/<name>;
    /// panics with the build command when it is missing.
    pub fn path(&self) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let bin = profile_dir.join("examples").join(self.name);
        assert!(
            bin.is_file(),
            "{} is missing: build the examples first (`cargo build --examples`, or `cargo build --release --examples` \
             for `cargo test --release`)",
            bin.display()
        );
        bin
    }

    /// Runs one command, whatever its exit status; prints the command line
    /// and its output (shown when a test fails).
    pub fn run(&self, args: &[&str]) -> Output {
        // check-deps: built-here (an example of this crate)
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

/// What a command printed: stdout, then stderr.
fn printed(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
