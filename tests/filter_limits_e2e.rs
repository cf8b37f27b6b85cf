//! Rate limits and timed blocks end to end: the `xdpguard` CLI attaches the
//! filter to a server namespace's veth; a real UDP echo client from a fixed
//! source keeps getting answers while hping3 floods the rate-limited port
//! from spoofed sources (bounded: `-c`, under `timeout`; `--rand-source`
//! rewritten into 203.0.113.0/24 by tests/common/spoof.rs), and a
//! heavy spoofed source is limited; `xdpguard block --ttl 2s` blocks a
//! source until it expires, with no process running.
//!
//! Needs root and hping3 (.ci/deps); fails, never skips, without them.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod spoof;
    pub mod udp_echo;
}

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use common::udp_echo::{udp_echo_reaches, UdpEcho};
use xdpguard::testing::netns::*;
use xdpguard::Filter;

const UDP_PORT: u16 = 7101;

fn reaches(client: &NetNs, src: &str, tries: u32) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = "192.0.2.2".parse().unwrap();
    client.run(move || udp_echo_reaches(src, SocketAddr::new(dst, UDP_PORT), tries, Duration::from_millis(300)))
}

/// hping3 in namespace `ns` with the options `opts`, bounded by its count
/// and a timeout.
fn hping3(ns: &str, opts: &str) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", "hping3", "--udp", "-p", "7101", "-q"])
        .args(opts.split_whitespace())
        .arg("192.0.2.2")
        .output()
        .expect("run hping3 (installed by .ci/deps)")
}

#[test]
fn a_real_client_keeps_its_answers_through_a_spoofed_flood_and_timed_blocks_expire() {
    let pair = Pair::new("lim");
    pair.client.addr("eth0", "192.0.2.3/24");
    pair.server.static_neighbours("eth0", &["192.0.2.1", "192.0.2.3"], pair.client.mac("eth0"));
    pair.client.static_neighbours("eth0", &["192.0.2.2"], pair.server.mac("eth0"));
    let _echo = UdpEcho::start(&pair.server, UDP_PORT);
    let cli = XDPGUARD;
    let pin = ScratchDir::bpffs("lim");
    let p = pin.arg();
    cli.ok(&["attach", "--iface", "eth0", "--pin", p, "--netns", &pair.server.name, "--v4-capacity", "4096"]);
    assert!(reaches(&pair.client, "192.0.2.1", 5), "no rule, no block yet");

    // A timed block through the CLI: dropped until it expires, with no
    // process running; list shows the time left.
    let started = Instant::now();
    let out = cli.ok(&["block", "--pin", p, "--ttl", "2s", "192.0.2.1"]);
    assert!(out.contains("timed blocks: 1 entry for 2s (1 new, 0 renewed)"), "{out}");
    let listed = cli.ok(&["list", "--pin", p]);
    assert!(listed.contains("192.0.2.1/32 (expires in"), "{listed}");
    assert!(!reaches(&pair.client, "192.0.2.1", 1), "blocked for 2 s");
    assert!(reaches(&pair.client, "192.0.2.3", 3), "its neighbour is not");
    let stats = Filter::open_pinned(pin.path()).unwrap().stats().unwrap();
    assert!(stats.timed_blocked.packets >= 1, "{stats:?}");
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed()));
    assert!(reaches(&pair.client, "192.0.2.1", 5), "expired: passes again, no daemon involved");
    let v = cli.json(&["list", "--pin", p, "--json"]);
    assert_eq!(v["timed"].as_array().map(Vec::len), Some(0), "list reclaimed it: {v}");

    // A per-source limit on the echo port.
    cli.ok(&["rule", "add", "--pin", p, "rate-limit 300/s udp dport 7101"]);
    let filter = Filter::open_pinned(pin.path()).unwrap();

    // A spoofed flood from 256 sources, each under the limit (about 80
    // packets in a second or more), while the real client probes.
    common::spoof::confine(&pair.client);
    let flood = {
        let ns = pair.client.name.clone();
        std::thread::spawn(move || hping3(&ns, "--rand-source -c 20000 -i u50"))
    };
    let mut answered = 0;
    for _ in 0..8 {
        answered += usize::from(reaches(&pair.client, "192.0.2.3", 3));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = flood.join().unwrap();
    assert!(out.status.success() || out.status.code() == Some(1), "hping3: {out:?}");
    assert_eq!(answered, 8, "the real client got every answer during the flood");
    let s = filter.limiter_stats().unwrap();
    let st = filter.stats().unwrap();
    assert!(st.passed.packets >= 10_000, "the flood reached the filter: {st:?}");
    assert!(s.buckets <= 64, "spoofed sources under their limit make no state: {s:?}");

    // A heavy spoofed source is limited to its 300/s; the real client is not.
    let before = filter.stats().unwrap();
    let flood = {
        let ns = pair.client.name.clone();
        std::thread::spawn(move || hping3(&ns, "-a 192.0.2.1 -c 3000 -i u300"))
    };
    let mut answered = 0;
    for _ in 0..5 {
        answered += usize::from(reaches(&pair.client, "192.0.2.3", 3));
        std::thread::sleep(Duration::from_millis(100));
    }
    flood.join().unwrap();
    let limited = filter.stats().unwrap().since(&before).rate_limited.packets;
    assert!(limited >= 1500, "the heavy source was limited: {limited}");
    assert_eq!(answered, 5, "the real client was not");
    let rules = filter.rules().list().unwrap();
    assert!(rules[0].limited.packets >= limited, "the rule counts it too: {:?}", rules[0]);
    let v = cli.json(&["rule", "list", "--pin", p, "--json"]);
    assert_eq!(v["rules"][0]["rule"], "rate-limit 300/s per src/32/64 udp dport 7101", "{v}");
    assert!(v["rules"][0]["limited"]["packets"].as_u64().unwrap_or(0) >= limited, "{v}");
    drop(filter);
    cli.ok(&["detach", "--pin", p]);
}
