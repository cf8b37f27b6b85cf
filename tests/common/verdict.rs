//! What the filter's verdict tests (rules, rate limits, the SYN guard, drop
//! events) share: a small filter loaded for `BPF_PROG_TEST_RUN`, and the
//! test's literals parsed with a panic that names them.
//!
//! Use it from tests with `mod common { pub mod verdict; }`.

#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use xdpguard::testing::frame::{DST_V4, DST_V6};
use xdpguard::{Filter, IpNetwork, Rule};

/// A filter with small lists and room for `max_rules` rules, not attached.
pub fn load(max_rules: usize) -> Filter {
    Filter::builder()
        .v4_capacity(1024)
        .v6_capacity(1024)
        .max_rules(max_rules)
        .load()
        .unwrap_or_else(|e| panic!("loading the filter failed; these tests need root and a BPF-capable kernel: {e}"))
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn net(s: &str) -> IpNetwork {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn rule(s: &str) -> Rule {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The test kit's destination of the family of `src`.
pub fn dst_for(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V4(_) => IpAddr::V4(DST_V4),
        IpAddr::V6(_) => IpAddr::V6(DST_V6),
    }
}

/// Moves the guard's clock to just past the start of its next `period`
/// (the SYN guard's one-second rate windows, the rate limiter's 100 ms
/// sketch windows): the steps that follow run inside one window, however
/// slowly a loaded machine runs them (within the window's length).
pub fn align(f: &Filter, period: Duration) {
    let period = period.as_nanos() as u64;
    let now = f.guard_clock().unwrap().as_nanos() as u64;
    f.advance_clock(Duration::from_nanos(period - now % period + 1_000)).unwrap();
}
