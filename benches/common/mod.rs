//! Helpers shared by the benches: the bench-only eBPF programs, seeded
//! prefix sets, settings from the environment, and tables.
#![allow(dead_code)]

pub mod bpf;
pub mod prefixes;
pub mod rules;
pub mod table;

use std::process::Command;
use std::time::Duration;

/// Reads a setting from the environment, with a default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}

/// A comma-separated list setting.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default).split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// A number setting, panicking with the variable's name when it does not parse.
pub fn env_num<T: std::str::FromStr>(name: &str, default: &str) -> T {
    let v = env_or(name, default);
    v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number"))
}

pub fn env_secs(name: &str, default: &str) -> Duration {
    Duration::from_secs_f64(env_num::<f64>(name, default))
}

/// Whether `XDPG_BENCH_QUICK` asks for a smoke run.
pub fn quick() -> bool {
    matches!(env_or("XDPG_BENCH_QUICK", "0").as_str(), "1" | "true" | "yes")
}

/// Whether cargo started this as a benchmark (`cargo bench` passes
/// `--bench`). `cargo test --benches` / `--all-targets` runs bench binaries
/// without it; they then return at once instead of running for minutes.
pub fn started_by_cargo_bench() -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        eprintln!("not started by `cargo bench` (no --bench argument): nothing to do");
    }
    yes
}

/// Fails (does not skip) when the bench cannot run: it needs root for BPF,
/// XDP and namespaces.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this bench loads BPF programs and creates network namespaces: run it as root");
    }
}

/// One line describing the machine: CPU model, CPU count, kernel.
pub fn machine() -> String {
    let lscpu =
        Command::new("lscpu").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{} × {}, kernel {}", field("CPU(s)"), field("Model name"), kernel)
}

/// Median of a non-empty sample (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// The p-th percentile (0..=100) of a sorted sample, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

pub fn fmt_bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}
