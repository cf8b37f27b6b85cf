//! Per-packet cost of the rules (the filter's guard stage) on clean traffic
//! with 0, 10, 1,000 and 10,000 rules, through `BPF_PROG_TEST_RUN`, against
//! the filter without rules and a bare `XDP_DROP` measured in the same run.
//!
//! The rule sets have the same shape at every size: two rules without a
//! destination port, which every packet of their protocol is checked
//! against (`drop tcp flags syn,fin`, `drop udp sport 53 not from set
//! resolvers`), and the rest one rule per (protocol, destination port),
//! `drop udp|tcp dport P from 198.51.100.0/24`, ports spread over the port
//! space. Clean traffic comes from sources no rule names, so no rule
//! decides it: each packet pays the guard's tail call, its parse, one index
//! read and the records of its port's group (1 or 2 here, at every size).
//!
//! Two ways of timing, both the kernel's own per-run figure:
//! - hot: one frame repeated `XDPG_BENCH_REPEAT` times in one call (every
//!   line it touches stays in cache: a best case);
//! - varied: `XDPG_BENCH_FRAMES` different frames (random sources in the
//!   documentation ranges, random destination ports, UDP and TCP SYN), one
//!   call each (repeat 1): the mean of the fastest 99 %, minus nothing; the
//!   bare drop and the no-rule filter are measured the same way, so the
//!   ratios compare like with like. The index (two halves of 258 KiB) still
//!   fits this machine's L2/L3, so this is not a cache-cold figure.
//!
//! A last table shows the case the index cannot help: many rules on the
//! packet's own destination port (one group holding them all, walked in
//! order). Per-source rules belong in the lists or a named set.
//!
//! `cargo bench --bench rules`. Settings: `XDPG_BENCH_REPEAT` (default
//! 1,000,000), `XDPG_BENCH_TRIALS` (default 5; the median is reported),
//! `XDPG_BENCH_FRAMES` (default 100,000), `XDPG_BENCH_QUICK=1`.

mod common;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use common::bpf::{DropProg, XDP_DROP, XDP_PASS};
use common::rules::{create_resolvers, port_rule, protocol_wide, rule_port};
use common::table::{print_markdown, Align, Table};
use common::{env_num, machine, median, quick, require_root};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::frame::Frame;
use xdpguard::testing::live::{test_run, RunOptions};
use xdpguard::{Filter, Rule};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SIZES: [usize; 4] = [0, 10, 1_000, 10_000];

fn udp(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    Frame::builder().macs(SRC_MAC, DST_MAC).ipv4(src, DST).udp(sport, dport).payload(&[0x5a; 22]).build().to_vec()
}

fn syn(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    Frame::builder().macs(SRC_MAC, DST_MAC).ipv4(src, DST).tcp(40000, dport).syn().payload(&[0x5a; 10]).build().to_vec()
}

/// `n` rules of the shape the module docs give.
fn rule_set(n: usize) -> Vec<Rule> {
    if n == 0 {
        return Vec::new();
    }
    let ports = n - 2;
    protocol_wide().into_iter().chain((0..ports).map(|k| port_rule(k, ports))).collect()
}

struct Timing {
    repeat: u32,
    trials: usize,
}

impl Timing {
    /// Median over trials of the kernel's mean ns per repetition; checks the verdict.
    fn hot(&self, prog: BorrowedFd<'_>, frame: &[u8], want: u32, repeat: u32) -> f64 {
        let mut samples = Vec::with_capacity(self.trials);
        for _ in 0..self.trials {
            let out = test_run(prog, frame, RunOptions::default().repeat(repeat)).expect("BPF_PROG_TEST_RUN");
            assert_eq!(out.retval, want, "unexpected verdict");
            samples.push(f64::from(out.duration_ns));
        }
        median(&mut samples)
    }
}

/// Mean kernel ns of one repeat-1 call per frame, fastest 99 %; every
/// verdict must be `want`.
fn varied(prog: BorrowedFd<'_>, frames: &[Vec<u8>], want: u32) -> f64 {
    let mut ns: Vec<u32> = frames
        .iter()
        .map(|f| {
            let out = test_run(prog, f, RunOptions::default()).expect("BPF_PROG_TEST_RUN");
            assert_eq!(out.retval, want, "a clean frame was not passed");
            out.duration_ns
        })
        .collect();
    ns.sort_unstable();
    let kept = &ns[..(ns.len() * 99 / 100).max(1)];
    kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64
}

/// Clean frames: random documentation-range sources outside 198.51.100.0/24,
/// random destination ports, half UDP (source port never 53), half TCP SYN.
fn clean_frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let src = if rng.random_bool(0.5) {
                Ipv4Addr::new(192, 0, 2, rng.random_range(3..=254))
            } else {
                Ipv4Addr::new(203, 0, 113, rng.random_range(1..=254))
            };
            let dport = rng.random_range(1..=65535);
            if i % 2 == 0 {
                udp(src, rng.random_range(1024..=65535), dport)
            } else {
                syn(src, dport)
            }
        })
        .collect()
}

fn ratio(ns: f64, base: f64) -> String {
    format!("{:.2}×", ns / base)
}

fn main() {
    if !common::started_by_cargo_bench() {
        return;
    }
    require_root();
    let q = quick();
    let t = Timing {
        repeat: env_num("XDPG_BENCH_REPEAT", if q { "100000" } else { "1000000" }),
        trials: env_num("XDPG_BENCH_TRIALS", if q { "3" } else { "5" }),
    };
    let n_frames: usize = env_num("XDPG_BENCH_FRAMES", if q { "10000" } else { "100000" });
    let machine = machine();
    println!("xdpguard rules bench on {machine}");

    let bare = DropProg::load().expect("loading bench_drop");
    let plain = Filter::builder().guard(false).load().expect("loading the filter without a guard stage");
    let filter = Filter::builder().max_rules(12_000).load().expect("loading the filter");
    create_resolvers(&filter);

    let clean_src = Ipv4Addr::new(203, 0, 113, 9);
    // A UDP port with a rule at every size > 0 (the first port rule's), and
    // a TCP port no rule names.
    let ruled_udp = udp(clean_src, 40000, rule_port(0, 8));
    let free_tcp = syn(clean_src, 61_999);
    let amplification = udp(clean_src, 53, 40000);
    let frames = clean_frames(n_frames, 7);

    let bare_hot = t.hot(bare.prog.as_fd(), &ruled_udp, XDP_DROP, t.repeat);
    let bare_varied = varied(bare.prog.as_fd(), &frames, XDP_DROP);
    let plain_udp = t.hot(plain.program_fd(), &ruled_udp, XDP_PASS, t.repeat);
    let plain_tcp = t.hot(plain.program_fd(), &free_tcp, XDP_PASS, t.repeat);
    let plain_varied = varied(plain.program_fd(), &frames, XDP_PASS);

    let mut table = Table::new(
        "Rules on clean traffic (BPF_PROG_TEST_RUN): ns per packet, and the ratio to the filter without rules \
         measured in the same run",
        &[
            ("rules", Align::Left),
            ("compile + switch", Align::Right),
            ("hot: UDP, ruled port", Align::Right),
            ("ratio", Align::Right),
            ("hot: TCP SYN, free port", Align::Right),
            ("ratio", Align::Right),
            ("varied", Align::Right),
            ("ratio", Align::Right),
            ("varied − bare drop", Align::Right),
        ],
    );
    table.row(vec![
        "bare XDP_DROP".into(),
        "—".into(),
        format!("{bare_hot:.1}"),
        "—".into(),
        "—".into(),
        "—".into(),
        format!("{bare_varied:.1}"),
        "—".into(),
        "0.0".into(),
    ]);
    table.row(vec![
        "filter without a guard stage".into(),
        "—".into(),
        format!("{plain_udp:.1}"),
        ratio(plain_udp, plain_udp),
        format!("{plain_tcp:.1}"),
        ratio(plain_tcp, plain_tcp),
        format!("{plain_varied:.1}"),
        ratio(plain_varied, plain_varied),
        format!("{:.1}", plain_varied - bare_varied),
    ]);
    let mut drop_row = None;
    for n in SIZES {
        let started = Instant::now();
        filter.rules().replace(rule_set(n)).expect("replacing the rule set");
        let took = started.elapsed();
        assert_eq!(filter.rules().len().expect("len"), n);
        let hot_udp = t.hot(filter.program_fd(), &ruled_udp, XDP_PASS, t.repeat);
        let hot_tcp = t.hot(filter.program_fd(), &free_tcp, XDP_PASS, t.repeat);
        let v = varied(filter.program_fd(), &frames, XDP_PASS);
        if n == 10_000 {
            drop_row = Some(t.hot(filter.program_fd(), &amplification, XDP_DROP, t.repeat));
        }
        table.row(vec![
            format!("{n}"),
            if n == 0 { "—".into() } else { format!("{:.1} ms", took.as_secs_f64() * 1e3) },
            format!("{hot_udp:.1}"),
            ratio(hot_udp, plain_udp),
            format!("{hot_tcp:.1}"),
            ratio(hot_tcp, plain_tcp),
            format!("{v:.1}"),
            ratio(v, plain_varied),
            format!("{:.1}", v - bare_varied),
        ]);
    }
    let drop_ns = drop_row.expect("measured at 10,000 rules");
    table.note(format!(
        "hot: median of {} calls of {} repetitions of one frame; varied: {n_frames} different frames, one call \
         each, mean of the fastest 99 %.",
        t.trials, t.repeat
    ));
    table.note(
        "Rule sets: `drop tcp flags syn,fin`, `drop udp sport 53 not from set resolvers`, then one `drop udp|tcp \
         dport P from 198.51.100.0/24` per port; clean sources are outside 198.51.100.0/24. With 0 rules the \
         filter does not call the guard (its stage slot is empty).",
    );
    table.note(format!(
        "A UDP packet from port 53 (the amplification rule drops it, after a set lookup), 10,000 rules: {drop_ns:.1} \
         ns hot."
    ));

    // The case the index does not help with: every rule on one port.
    let mut worst = Table::new(
        "Many rules on the packet's own destination port (one group, walked in order): hot ns per packet",
        &[("rules on port 9000", Align::Left), ("ns", Align::Right), ("ns per rule walked", Align::Right)],
    );
    for n in [10usize, 100, 1_000] {
        let rules: Vec<Rule> =
            (0..n).map(|i| format!("drop udp dport 9000 from 198.51.100.{}", i % 256).parse().expect("rule")).collect();
        // Duplicates (same text) are allowed: each is a rule of its own.
        filter.rules().replace(rules).expect("replace");
        let frame = udp(clean_src, 40000, 9000);
        let repeat = (t.repeat / n as u32).max(1000);
        let ns = t.hot(filter.program_fd(), &frame, XDP_PASS, repeat);
        worst.row(vec![format!("{n}"), format!("{ns:.1}"), format!("{:.2}", (ns - plain_udp) / n as f64)]);
    }
    worst.note(
        "Rules that differ only in their source belong in the lists or a named set (one lookup whatever their \
         size); the index groups by protocol and destination port.",
    );
    filter.rules().clear().expect("clear");

    for tb in [&table, &worst] {
        println!("\n{}\n{}", tb.title, tb.aligned());
    }
    print_markdown(&[format!("Machine: {machine}.")], &[table, worst]);
}
