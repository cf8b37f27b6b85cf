//! The rate limiter under a spoofed flood: per-packet cost and state, through
//! `BPF_PROG_TEST_RUN`, against a bare `XDP_DROP` measured in the same run;
//! and a UDP/53 amplification flood against a drop rule.
//!
//! Every row runs the same `XDPG_BENCH_SOURCES` frames (default 1,000,000),
//! each from a different random IPv4 source (all 2^32 addresses: a spoofed
//! flood; the frames never leave the kernel's test run), one call each
//! (repeat 1): the kernel's own ns figure, the mean of the fastest 99 %.
//! Rows:
//! - bare `XDP_DROP` (the floor);
//! - the filter with `drop udp dport 53` (the rule walk, no limiter);
//! - `rate-limit 100/s udp dport 53` per source, and per /24: each packet pays
//!   the limiter (an LRU lookup that misses, the sketch's 4 counters);
//! - `drop udp sport 53 not from set resolvers` against DNS answers from
//!   random sources (the amplification recipe).
//!
//! After each limiter row: the buckets the flood left in the LRU (65,536
//! at most), the buckets made, and the heavy keys the per-window cap sent
//! to the sketch. `cargo bench --bench limits`. Settings:
//! `XDPG_BENCH_SOURCES`, `XDPG_BENCH_QUICK=1` (100,000).

mod common;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use common::bpf::{DropProg, XDP_DROP, XDP_PASS};
use common::table::{print_markdown, Align, Table};
use common::{env_num, machine, quick, require_root};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::frame::Frame;
use xdpguard::testing::live::{test_run, RunOptions};
use xdpguard::Filter;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn udp(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    Frame::builder().macs(SRC_MAC, DST_MAC).ipv4(src, DST).udp(sport, dport).payload(&[0x5a; 22]).build().to_vec()
}

/// Mean kernel ns of one repeat-1 call per frame (fastest 99 %), and how
/// many calls returned `want`.
fn varied(prog: BorrowedFd<'_>, frames: &[Vec<u8>], want: u32) -> (f64, usize) {
    let mut hits = 0;
    let mut ns: Vec<u32> = frames
        .iter()
        .map(|f| {
            let out = test_run(prog, f, RunOptions::default()).expect("BPF_PROG_TEST_RUN");
            hits += usize::from(out.retval == want);
            out.duration_ns
        })
        .collect();
    ns.sort_unstable();
    let kept = &ns[..(ns.len() * 99 / 100).max(1)];
    (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64, hits)
}

fn main() {
    if !common::started_by_cargo_bench() {
        return;
    }
    require_root();
    // The sketch is per CPU: one CPU, as one RSS queue would.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin to CPU 0");
    let n: usize = env_num("XDPG_BENCH_SOURCES", if quick() { "100000" } else { "1000000" });
    let machine = machine();
    println!("xdpguard rate-limit bench on {machine}, {n} spoofed sources");

    let mut rng = StdRng::seed_from_u64(11);
    let sources: Vec<Ipv4Addr> = (0..n).map(|_| Ipv4Addr::from(rng.random::<u32>())).collect();
    let queries: Vec<Vec<u8>> = sources.iter().map(|&s| udp(s, rng.random_range(1024..=65535), 53)).collect();
    let answers: Vec<Vec<u8>> = sources.iter().map(|&s| udp(s, 53, rng.random_range(1024..=65535))).collect();

    let bare = DropProg::load().expect("loading bench_drop");
    let filter = Filter::builder().load().expect("loading the filter");
    let (bare_ns, _) = varied(bare.prog.as_fd(), &queries, XDP_DROP);

    let mut table = Table::new(
        "Rate limits under a spoofed flood (BPF_PROG_TEST_RUN, one call per frame, every frame a different random \
         source): ns per packet and the ratio to a bare XDP_DROP in the same run",
        &[
            ("program", Align::Left),
            ("ns", Align::Right),
            ("ratio", Align::Right),
            ("passed", Align::Right),
            ("buckets left", Align::Right),
            ("buckets made", Align::Right),
            ("sketch decided", Align::Right),
            ("wall", Align::Right),
        ],
    );
    let dash = || "—".to_string();
    table.row(vec![
        "bare XDP_DROP".into(),
        format!("{bare_ns:.1}"),
        "1.00×".into(),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
    ]);

    let cases: [(&str, &str, &[Vec<u8>], u32); 4] = [
        ("drop udp dport 53 (no limiter)", "drop udp dport 53", &queries, XDP_DROP),
        ("rate-limit 100/s udp dport 53 (per source)", "rate-limit 100/s udp dport 53", &queries, XDP_PASS),
        ("rate-limit 100/s per src/24 udp dport 53", "rate-limit 100/s per src/24/64 udp dport 53", &queries, XDP_PASS),
        (
            "drop udp sport 53 not from set resolvers (amplification)",
            "drop udp sport 53 not from set resolvers",
            &answers,
            XDP_DROP,
        ),
    ];
    let resolvers = filter.sets().create("resolvers").expect("set");
    resolvers.insert("192.0.2.53/32".parse().expect("literal")).expect("set entry");
    for (name, rule, frames, want) in cases {
        filter.rules().replace([rule.parse().expect("rule")]).expect("rule set");
        let before = filter.limiter_stats().expect("limiter stats");
        let started = Instant::now();
        let (ns, hits) = varied(filter.program_fd(), frames, want);
        let wall = started.elapsed();
        let after = filter.limiter_stats().expect("limiter stats");
        let limiter = rule.starts_with("rate-limit");
        let or_dash = |v: String| if limiter { v } else { dash() };
        table.row(vec![
            name.into(),
            format!("{ns:.1}"),
            format!("{:.2}×", ns / bare_ns),
            if want == XDP_PASS { format!("{hits}") } else { format!("{} dropped", hits) },
            or_dash(format!("{}", after.buckets)),
            or_dash(format!("{}", after.buckets_made - before.buckets_made)),
            or_dash(format!("{}", after.promote_capped - before.promote_capped)),
            format!("{:.1} s", wall.as_secs_f64()),
        ]);
    }
    // With a timed block present (the guard then looks every packet up in
    // the timed-block trie before the rules).
    filter.rules().replace(["drop udp dport 53".parse().expect("rule")]).expect("rule set");
    filter
        .timed_blocks()
        .insert("198.51.100.0/24".parse().expect("literal"), std::time::Duration::from_secs(3600))
        .expect("timed block");
    let (ns, hits) = varied(filter.program_fd(), &queries, XDP_DROP);
    table.row(vec![
        "drop udp dport 53, one timed block present".into(),
        format!("{ns:.1}"),
        format!("{:.2}×", ns / bare_ns),
        format!("{hits} dropped"),
        dash(),
        dash(),
        dash(),
        dash(),
    ]);
    filter.timed_blocks().remove("198.51.100.0/24".parse().expect("literal")).expect("remove");

    // Hot: one source, repeated (a client with a bucket, well within a huge
    // limit), against the drop rule, the same frame.
    let frame = udp(Ipv4Addr::new(203, 0, 113, 9), 40000, 53);
    let hot = |prog: BorrowedFd<'_>, want: u32| {
        let out = test_run(prog, &frame, RunOptions::default().repeat(1_000_000)).expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.retval, want);
        f64::from(out.duration_ns)
    };
    let bare_hot = hot(bare.prog.as_fd(), XDP_DROP);
    let drop_hot = hot(filter.program_fd(), XDP_DROP);
    filter.rules().replace(["rate-limit 1000000000/s udp dport 53".parse().expect("rule")]).expect("rule set");
    let limit_hot = hot(filter.program_fd(), XDP_PASS);
    let mut hot_table = Table::new(
        "One source repeated (hot caches; its bucket exists): ns per packet",
        &[("program", Align::Left), ("ns", Align::Right), ("ratio", Align::Right)],
    );
    for (name, ns) in [
        ("bare XDP_DROP", bare_hot),
        ("drop udp dport 53", drop_hot),
        ("rate-limit 1000000000/s udp dport 53 (within the limit: passed)", limit_hot),
    ] {
        hot_table.row(vec![name.into(), format!("{ns:.1}"), format!("{:.2}×", ns / bare_hot)]);
    }
    hot_table.note("1,000,000 repetitions of one frame in one call: the kernel's mean.");
    filter.rules().clear().expect("clear");
    table.note(format!(
        "{n} frames, one per random IPv4 source (seed 11), one call each, mean of the fastest 99 %; the thread \
         pinned to CPU 0 (the sketch is per CPU). Buckets left: entries in the 65,536-entry LRU afterwards; \
         made: promotions by the sketch; sketch decided: heavy keys past the per-window cap (1,024 per 100 ms)."
    ));
    println!("\n{}\n\n{}", table.aligned(), hot_table.aligned());
    print_markdown(&[format!("Machine: {machine}.")], &[table, hot_table]);
}
