//! Per-packet cost of each verdict path, through `BPF_PROG_TEST_RUN`.
//!
//! Filter: one frame per path, repeated many times in one call; the kernel
//! reports the average time per run. Repeating one packet keeps every cache
//! line it touches hot, so these are best-case (hot-cache) costs; the live
//! bench (`cargo bench --bench live`) measures cache-cold lookups.
//!
//! Load balancer: a program that rewrites the packet sees its own output on
//! the next repeat (the kernel reuses the buffer), so it is measured with many
//! `repeat = 1` calls instead, minus a bare `XDP_TX` program measured the same
//! way (the method of Katran's tester).
//!
//! `cargo bench --bench per_packet`; `XDPG_BENCH_REPEAT` (default 2,000,000)
//! and `XDPG_BENCH_TRIALS` (default 7; the median is reported) tune the
//! filter part, `XDPG_BENCH_LB_CALLS` (default 200,000 per path) the LB
//! part (`XDPG_BENCH_LB_CONNECTIONS`, default 1,048,576, sizes its
//! connection table), `XDPG_BENCH_QUICK=1` shortens both.

mod common;

// The test harness's namespaces and LB topology, shared with tests/
// (lb_topology.rs refers to its sibling as `super::netns`).
#[path = "../tests/common/lb_topology.rs"]
mod lb_topology;
#[path = "../tests/common/netns.rs"]
mod netns;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use common::bpf::{test_run, DropProg, LpmProg, TxProg, XDP_DROP, XDP_PASS};
use common::frames;
use common::prefixes::{Prefix4, Prefix6, Set4, Set6};
use common::table::{print_markdown, Align, Table};
use common::{env_num, machine, median, quick, require_root};
use lb_topology::{
    backend_v4, backend_v6, VerdictNet, CLIENT_MAC, CLIENT_V4, CLIENT_V6, IPIP_SRC_V4, IPIP_SRC_V6, VIP_V4, VIP_V6,
};
use netns::ensure_bpffs;
use xdpguard::{Filter, ForwardingMode, LoadBalancer, NewFlowLimit, Verdict, Vip, VipConfig, XdpAction};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

struct Timing {
    repeat: u32,
    trials: usize,
}

impl Timing {
    /// Median over trials of the kernel's average ns per repetition.
    fn hot(&self, prog: BorrowedFd<'_>, frame: &[u8]) -> (f64, u32) {
        let mut samples = Vec::with_capacity(self.trials);
        let mut retval = 0;
        for _ in 0..self.trials {
            let out = test_run(prog, frame, None, self.repeat, 0).expect("BPF_PROG_TEST_RUN");
            retval = out.retval;
            samples.push(f64::from(out.duration_ns));
        }
        (median(&mut samples), retval)
    }
}

fn v4(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn udp4_from(src: Ipv4Addr) -> Vec<u8> {
    frames::udp4(SRC_MAC, DST_MAC, src, Ipv4Addr::new(192, 0, 2, 2), 40000, 9)
}

fn udp6_from(src: Ipv6Addr) -> Vec<u8> {
    frames::udp6(SRC_MAC, DST_MAC, src, "2001:db8::2".parse().expect("literal"), 40000, 9)
}

fn action(code: u32) -> &'static str {
    match code {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// A path to measure: its name, the frame, and the verdict the filter must
/// give it (checked before timing, so a table never shows the wrong path).
struct Path {
    name: &'static str,
    frame: Vec<u8>,
    want: u32,
}

fn filter_section(t: &Timing) -> Table {
    let v4_set = Set4::generate(100_000, 1);
    let v6_set = Set6::generate(10_000, 1);
    let filter = Filter::builder().load().expect("loading the filter");
    filter.blocklist().extend(v4_set.nets().chain(v6_set.nets())).expect("loading the blocklist");
    // Hand-placed entries for each path (the generated sets avoid the
    // documentation ranges, so these /24s hold nothing else).
    let block = |s: &str| filter.blocklist().insert(s.parse().expect("literal")).expect("insert");
    block("198.51.100.0/24"); // a whole /24: decided at level 1
    block("203.0.113.7/32"); // a host in a mixed /24: host buckets
    block("192.0.2.0/24");
    filter.allowlist().insert("192.0.2.10/32".parse().expect("literal")).expect("allow");
    block("2001:db8:1::/48");
    block("2001:db8:2::1/128");

    let mut rng_pick = 0u32;
    let clean4 = loop {
        // A deterministic address in no listed /24 at all.
        let a = 0x0B00_0001u32.wrapping_add(rng_pick << 8);
        rng_pick += 1;
        if !v4_set.covers(a) && !v4_set.prefixes.iter().any(|p| p.len == 32 && p.addr >> 8 == a >> 8) {
            break Ipv4Addr::from(a);
        }
    };
    let clean6: Ipv6Addr = "2a00:1450:4001:80b::1".parse().expect("literal");
    assert!(!v6_set.covers(u128::from(clean6)), "the clean IPv6 source is listed");
    let expect = |addr: IpAddr, want: &str| {
        let got = filter.verdict(addr).expect("verdict");
        let ok = match want {
            "pass" => got == Verdict::Pass,
            "allow" => matches!(got, Verdict::Allow(_)),
            _ => matches!(got, Verdict::Block(_)),
        };
        assert!(ok, "{addr}: expected {want}, the filter says {got:?}");
    };
    expect(clean4.into(), "pass");
    expect(v4([203, 0, 113, 9]).into(), "pass");
    expect(v4([192, 0, 2, 10]).into(), "allow");
    expect(v4([198, 51, 100, 9]).into(), "block");
    expect(v4([203, 0, 113, 7]).into(), "block");
    expect(clean6.into(), "pass");
    expect("2001:db8:1::5".parse::<IpAddr>().expect("literal"), "block");
    expect("2001:db8:2::1".parse::<IpAddr>().expect("literal"), "block");

    let paths = vec![
        Path { name: "pass, IPv4 (unlisted /24)", frame: udp4_from(clean4), want: XDP_PASS },
        Path { name: "pass, IPv4 (mixed /24, host miss)", frame: udp4_from(v4([203, 0, 113, 9])), want: XDP_PASS },
        Path { name: "allowlisted, IPv4 /32 inside a blocked /24", frame: udp4_from(v4([192, 0, 2, 10])), want: XDP_PASS },
        Path { name: "blocked, IPv4 /24 level", frame: udp4_from(v4([198, 51, 100, 9])), want: XDP_DROP },
        Path { name: "blocked, IPv4 host-bucket level", frame: udp4_from(v4([203, 0, 113, 7])), want: XDP_DROP },
        Path { name: "pass, IPv6 (probes every length in use)", frame: udp6_from(clean6), want: XDP_PASS },
        Path { name: "blocked, IPv6 /48", frame: udp6_from("2001:db8:1::5".parse().expect("literal")), want: XDP_DROP },
        Path { name: "blocked, IPv6 /128", frame: udp6_from("2001:db8:2::1".parse().expect("literal")), want: XDP_DROP },
        Path { name: "non-IP (ARP)", frame: frames::arp(SRC_MAC), want: XDP_PASS },
        Path { name: "malformed (truncated IPv4)", frame: frames::truncated4(SRC_MAC, DST_MAC), want: XDP_PASS },
    ];

    // Baselines measured the same way: a bare XDP_DROP, and the LPM trie
    // filter holding the same generated prefixes plus the hand-placed ones.
    let bare = DropProg::load().expect("loading bench_drop");
    let lpm = LpmProg::load(v4_set.prefixes.len() + 8, v6_set.prefixes.len() + 8, XDP_PASS).expect("loading bench_lpm");
    for &p in &v4_set.prefixes {
        lpm.insert_v4(p).expect("LPM insert");
    }
    for &p in &v6_set.prefixes {
        lpm.insert_v6(p).expect("LPM insert");
    }
    for (a, len) in [([198, 51, 100, 0], 24), ([203, 0, 113, 7], 32), ([192, 0, 2, 0], 24)] {
        lpm.insert_v4(Prefix4 { addr: u32::from_be_bytes(a), len }).expect("LPM insert");
    }
    lpm.insert_v6(Prefix6 { addr: u128::from("2001:db8:1::".parse::<Ipv6Addr>().expect("literal")), len: 48 }).expect("LPM insert");
    lpm.insert_v6(Prefix6 { addr: u128::from("2001:db8:2::1".parse::<Ipv6Addr>().expect("literal")), len: 128 }).expect("LPM insert");

    let (drop_ns, _) = t.hot(bare.prog.as_fd(), &udp4_from(clean4));
    let mut table = Table::new(
        "Filter, per verdict path (BPF_PROG_TEST_RUN, one frame repeated: HOT CACHE ONLY)",
        &[
            ("path", Align::Left),
            ("action", Align::Left),
            ("xdpguard ns", Align::Right),
            ("− bare drop", Align::Right),
            ("LPM trie ns", Align::Right),
        ],
    );
    table.row(vec!["bare XDP_DROP (baseline)".into(), "DROP".into(), format!("{drop_ns:.1}"), "0.0".into(), "—".into()]);
    for p in &paths {
        let (ns, ret) = t.hot(filter.program_fd(), &p.frame);
        assert_eq!(ret, p.want, "{}: the filter returned {}", p.name, action(ret));
        // The LPM program has no allowlist and treats everything it cannot
        // look up as a pass; only compare where it does the same work.
        let lpm_cell = if p.name.starts_with("allowlisted") {
            "—".to_string()
        } else {
            let (lns, lret) = t.hot(lpm.prog.as_fd(), &p.frame);
            format!("{lns:.1}{}", if lret != p.want { format!(" ({})", action(lret)) } else { String::new() })
        };
        table.row(vec![p.name.into(), action(ret).into(), format!("{ns:.1}"), format!("{:.1}", ns - drop_ns), lpm_cell]);
    }
    table.note(format!(
        "Median of {} runs of {} repetitions each. One frame repeated keeps its lookups in cache: these are best \
         cases. Random sources (a spoofed flood) cost far more; see the live bench.",
        t.trials, t.repeat
    ));
    table.note("Passed frames end in the filter's tail call to its (empty) next-stage slot, as when no LB is chained.");
    table.note("Prefixes loaded: 100k IPv4 (70% /32, 25% /24, 5% /16–/23) and 10k IPv6, plus the hand-placed entries each path needs.");
    table
}

/// Katran's balancer on this machine (default IPIP build, 3 reals), ns
/// above bare XDP_TX: the targets of issue 4.
const KATRAN_IPIP: [(&str, f64); 3] = [("LRU hit", 68.0), ("SYN", 155.0), ("LRU miss", 245.0)];

/// Load-balancer paths, per forwarding mode: many `repeat = 1` calls each
/// (a rewriting program must not see its own output), minus a bare XDP_TX
/// program measured the same way. Runs inside the LB namespace of a
/// `VerdictNet` (routes and permanent neighbours, so the FIB lookups
/// succeed); nothing is sent.
fn lb_section(calls: u32) -> Table {
    ensure_bpffs();
    let vn = VerdictNet::new("bpk", 3);
    let (eth0, eth0_mac) = (vn.eth0, vn.eth0_mac);
    let table = vn.lb.run(move || lb_measure(calls, eth0, eth0_mac));
    drop(vn);
    table
}

fn lb_measure(calls: u32, eth0: u32, eth0_mac: [u8; 6]) -> Table {
    let connections: u32 = env_num("XDPG_BENCH_LB_CONNECTIONS", "1048576");
    let tx = TxProg::load().expect("loading bench_tx");
    let ctx = frames::xdp_md(0, eth0);
    let sample = tcp_frame(eth0_mac, SocketAddr::new(CLIENT_V4.into(), 40000), SocketAddr::new(VIP_V4.into(), 80), false);
    let tx_ns = one_shot_ns(tx.prog.as_fd(), |_| sample.clone(), calls, Some(ctx));
    let mut table = Table::new(
        "Load balancer, per path (many repeat=1 calls each, minus bare XDP_TX measured the same way)",
        &[
            ("mode", Align::Left),
            ("path", Align::Left),
            ("action", Align::Left),
            ("ns/call", Align::Right),
            ("− bare XDP_TX", Align::Right),
            ("Katran IPIP target", Align::Right),
        ],
    );
    table.row(vec!["—".into(), "bare XDP_TX (baseline)".into(), "TX".into(), format!("{tx_ns:.1}"), "0.0".into(), "—".into()]);
    let cases: [(&str, ForwardingMode, IpAddr, Vec<IpAddr>); 4] = [
        ("IPIP (4in4)", ForwardingMode::Ipip, VIP_V4.into(), (1..=3).map(|i| backend_v4(i).into()).collect()),
        ("IPIP (6in6)", ForwardingMode::Ipip, VIP_V6.into(), (1..=3).map(|i| backend_v6(i).into()).collect()),
        ("L2 DSR (v4)", ForwardingMode::L2Dsr, VIP_V4.into(), (1..=3).map(|i| backend_v4(i).into()).collect()),
        ("NAT (v4)", ForwardingMode::Nat, VIP_V4.into(), (1..=3).map(|i| backend_v4(i).into()).collect()),
    ];
    for (label, mode, vip_addr, backends) in cases {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .connections(connections)
            .new_flow_limit(NewFlowLimit::Unlimited)
            .ipip_source(IPIP_SRC_V4.parse().expect("literal"))
            .ipip_source(IPIP_SRC_V6.parse().expect("literal"))
            .load()
            .expect("loading the load balancer");
        let vip = Vip::tcp(SocketAddr::new(vip_addr, 80));
        lb.add_vip(vip, VipConfig::new(mode)).expect("adding the VIP");
        let mut batch = lb.batch(&vip);
        for b in &backends {
            batch = batch.add(*b, 1);
        }
        batch.apply().expect("adding backends");
        let client_ip: IpAddr = if vip_addr.is_ipv4() { CLIENT_V4.into() } else { CLIENT_V6.into() };
        // Distinct flows: source port 1024.. and, past 64k, the next client
        // address (the LB never routes back to clients, so any will do).
        let flow_src = |i: u32| {
            let port = 1024 + (i % 64_000) as u16;
            let bump = i / 64_000;
            let ip = match client_ip {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 100 + bump)),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 100 + u128::from(bump))),
            };
            SocketAddr::new(ip, port)
        };
        let dst = SocketAddr::new(vip_addr, 80);
        let hit_src = SocketAddr::new(client_ip, 40000);
        // Establish the flow the hit path repeats.
        let first = lb.test_run_on(&tcp_frame(eth0_mac, hit_src, dst, true), eth0).expect("test run");
        let want = first.action;
        assert!(
            matches!(want, XdpAction::Redirect | XdpAction::Tx),
            "{label}: the LB should forward, got {want:?} ({:?})",
            lb.stats()
        );
        let conns_before = lb.connection_count();
        let hit = tcp_frame(eth0_mac, hit_src, dst, false);
        let paths: [(&str, FrameFor); 3] = [
            ("LRU hit", Box::new(|_| hit.clone())),
            ("SYN", Box::new(|i| tcp_frame(eth0_mac, flow_src(i), dst, true))),
            ("LRU miss", Box::new(|i| tcp_frame(eth0_mac, flow_src(2 * calls + 16 + i), dst, false))),
        ];
        for (path, frame_for) in paths {
            // Check the path forwards as expected before timing it.
            let probe = frame_for(0);
            let out = lb.test_run_on(&probe, eth0).expect("test run");
            assert_eq!(out.action, want, "{label} {path}: action");
            let fd = lb.program_fd();
            let ns = one_shot_ns(fd, |i| frame_for(i + 1), calls, Some(ctx));
            let target = if mode == ForwardingMode::Ipip {
                KATRAN_IPIP.iter().find(|(p, _)| *p == path).map(|(_, t)| format!("≤ {t:.0}")).unwrap_or_default()
            } else {
                "—".into()
            };
            table.row(vec![
                label.into(),
                path.into(),
                format!("{want:?}").to_uppercase(),
                format!("{ns:.1}"),
                format!("{:.1}", ns - tx_ns),
                target,
            ]);
        }
        let s = lb.stats().expect("LB stats");
        assert_eq!(s.dropped().packets, 0, "{label}: nothing dropped");
        assert!(
            lb.connection_count() >= conns_before + calls as usize,
            "{label}: the SYN and miss paths created connection entries"
        );
    }
    table.note(format!(
        "Mean of the fastest 99% of {calls} calls per path (kernel-reported time, whole ns per call). LRU hit: the same established \
         flow every call. SYN: a new flow with SYN set every call. LRU miss: a non-SYN packet of a flow the \
         connection table does not hold, a new source port every call. 3 backends, TCP VIP, connection table of \
         {connections} entries, routes and permanent neighbours in the LB namespace; the LB redirects out of the \
         backend-side interface."
    ));
    table.note("Katran's figures (default IPIP build, 3 reals, same method, same machine) come from issue 4.");
    table
}

/// Builds the frame for call `i` of a path.
type FrameFor<'a> = Box<dyn Fn(u32) -> Vec<u8> + 'a>;

fn tcp_frame(lb_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, syn: bool) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => frames::tcp4(CLIENT_MAC, lb_mac, s, d, src.port(), dst.port(), syn),
        (IpAddr::V6(s), IpAddr::V6(d)) => frames::tcp6(CLIENT_MAC, lb_mac, s, d, src.port(), dst.port(), syn),
        _ => panic!("mixed families"),
    }
}

/// Kernel-reported ns of `calls` single-repetition runs, each on the frame
/// `frame_for(i)` (built before timing starts): the mean of the fastest 99%,
/// so the odd call hit by an interrupt or preemption does not skew it.
fn one_shot_ns(prog: BorrowedFd<'_>, frame_for: impl Fn(u32) -> Vec<u8>, calls: u32, ctx: Option<[u8; 24]>) -> f64 {
    let frames: Vec<Vec<u8>> = (0..calls).map(&frame_for).collect();
    let mut ns: Vec<u32> = frames
        .iter()
        .map(|f| {
            let ctx = ctx.map(|mut c| {
                c[4..8].copy_from_slice(&(f.len() as u32).to_ne_bytes()); // data_end
                c
            });
            test_run(prog, f, ctx.as_ref().map(|c| &c[..]), 1, 0).expect("BPF_PROG_TEST_RUN").duration_ns
        })
        .collect();
    ns.sort_unstable();
    let kept = &ns[..(ns.len() * 99 / 100).max(1)];
    kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64
}

fn main() {
    if !common::started_by_cargo_bench() {
        return;
    }
    require_root();
    let q = quick();
    let t = Timing {
        repeat: env_num("XDPG_BENCH_REPEAT", if q { "200000" } else { "2000000" }),
        trials: env_num("XDPG_BENCH_TRIALS", if q { "3" } else { "7" }),
    };
    let machine = machine();
    println!("xdpguard per-packet bench on {machine}");
    println!("NOTE: repeating one packet measures the hot-cache path only (every lookup hits the CPU cache).");
    let calls: u32 = env_num("XDPG_BENCH_LB_CALLS", if q { "20000" } else { "200000" });
    let tables = vec![filter_section(&t), lb_section(calls)];
    for table in &tables {
        println!("\n{}", table.aligned());
    }
    print_markdown(&[format!("Machine: {machine}.")], &tables);
}
