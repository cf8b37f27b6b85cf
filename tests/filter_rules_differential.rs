//! The rules in the kernel against a plain Rust model of their meaning, on
//! seeded random rule sets (rule text: the parser, the compiler and the
//! data plane all take part) and random packets, through BPF_PROG_TEST_RUN.
//!
//! The model is written from the documented semantics only (README, *Rules
//! beyond the source address*): allowlist, blocklist, then the first
//! terminal rule, count and monitored rules counting and going on, monitor
//! mode turning drops into would-drops; a packet without a readable
//! transport header matching no rule with ports, flags or types; a
//! `fragment` rule matching first and later fragments (not an IPv6 atomic
//! fragment), a `not fragment` one the rest. Each
//! packet's action and reason counter must agree, and every rule's counter
//! must equal the model's count at the end of each round. A failure prints
//! the seed, the rules and the packet. `XDPG_RULES_DIFF_SEED` and
//! `XDPG_RULES_DIFF_ROUNDS` replay or extend a run.
//!
//! Needs root; fails (never skips) without it.

use std::collections::HashMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::frame::{Ext, Frag, Frame, Icmp};
use xdpguard::{Filter, IpNetwork, Rule, XdpAction};

const V4_POOL: [&str; 6] =
    ["192.0.2.1", "192.0.2.130", "198.51.100.7", "198.51.100.200", "203.0.113.9", "203.0.113.250"];
const V6_POOL: [&str; 5] = ["2001:db8::1", "2001:db8::8001", "2001:db8:1::7", "2001:db8:2::9", "2001:db8:2:1::1"];
const PORTS: [u16; 8] = [0, 22, 53, 80, 123, 1900, 11211, 65535];
const ALLOW: [&str; 2] = ["192.0.2.128/25", "2001:db8::8000/113"];
const BLOCK: [&str; 2] = ["203.0.113.0/25", "2001:db8:1::/48"];
const SET: [&str; 3] = ["198.51.100.0/25", "2001:db8:2::/64", "203.0.113.250/32"];

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn covers(list: &[&str], a: IpAddr) -> bool {
    list.iter().map(|s| net(s)).any(|n| n.is_ipv4() == a.is_ipv4() && n.contains(a))
}

/// A packet as the model sees it.
#[derive(Debug, Clone)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    icmp_type: u8,
    /// A later fragment: no transport header.
    later_fragment: bool,
    /// A first fragment: offset 0, more fragments, its transport header
    /// whole (a later one is a fragment too).
    first_fragment: bool,
    /// IPv6 only: an atomic fragment header (offset 0, no more), a whole
    /// packet.
    atomic: bool,
}

impl Pkt {
    fn frame(&self) -> Vec<u8> {
        let mut b = Frame::builder().ip(self.src, self.dst);
        b = match self.proto {
            6 => b.tcp(self.sport, self.dport).tcp_flags(self.flags),
            17 => b.udp(self.sport, self.dport),
            1 | 58 => b.icmp(if self.icmp_type == 0 || self.icmp_type == 129 {
                Icmp::EchoReply { id: 1, seq: 1 }
            } else {
                Icmp::EchoRequest { id: 1, seq: 1 }
            }),
            p => b.protocol(p),
        };
        b = b.payload(b"differential");
        if self.later_fragment {
            b = if self.src.is_ipv4() {
                b.frag(Frag::Later { offset: 20, more: true })
            } else {
                b.ext(Ext::fragment(20, true))
            };
        } else if self.first_fragment {
            b = if self.src.is_ipv4() { b.frag(Frag::First) } else { b.ext(Ext::fragment(0, true)) };
        } else if self.atomic && !self.src.is_ipv4() {
            b = b.ext(Ext::fragment(0, false));
        }
        b.build().to_vec()
    }

    fn readable(&self) -> bool {
        !self.later_fragment
    }

    fn fragment(&self) -> bool {
        self.later_fragment || self.first_fragment
    }
}

fn random_packet(rng: &mut StdRng) -> Pkt {
    let v6 = rng.random_bool(0.4);
    let pick = |rng: &mut StdRng| -> IpAddr {
        if v6 {
            V6_POOL[rng.random_range(0..V6_POOL.len())].parse().unwrap()
        } else {
            V4_POOL[rng.random_range(0..V4_POOL.len())].parse().unwrap()
        }
    };
    let proto = [6u8, 6, 17, 17, if v6 { 58 } else { 1 }, 47][rng.random_range(0..6)];
    let icmp_type = match (proto, rng.random_bool(0.5)) {
        (1, true) => 8,
        (1, false) => 0,
        (58, true) => 128,
        (58, false) => 129,
        _ => 0,
    };
    Pkt {
        src: pick(rng),
        dst: pick(rng),
        proto,
        sport: PORTS[rng.random_range(0..PORTS.len())],
        dport: PORTS[rng.random_range(0..PORTS.len())],
        flags: [0x02, 0x12, 0x10, 0x03, 0x04, 0x11][rng.random_range(0..6)],
        icmp_type,
        later_fragment: rng.random_bool(0.1),
        first_fragment: rng.random_bool(0.1),
        atomic: v6 && rng.random_bool(0.1),
    }
}

fn ports_text(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=3);
    (0..n)
        .map(|_| {
            let p = PORTS[rng.random_range(0..PORTS.len())];
            if rng.random_bool(0.3) {
                format!("{p}-{}", p.saturating_add(rng.random_range(0..100)))
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A random rule, as text.
fn random_rule(rng: &mut StdRng) -> String {
    let mut w: Vec<String> = Vec::new();
    if rng.random_bool(0.1) {
        w.push("monitor".into());
    }
    w.push(["drop", "drop", "pass", "count"][rng.random_range(0..4)].into());
    let v6 = rng.random_bool(0.35);
    let proto =
        ["", "tcp", "tcp", "udp", "udp", if v6 { "icmpv6" } else { "icmp" }, "proto 47"][rng.random_range(0..7)];
    if rng.random_bool(0.15) {
        w.push(if v6 { "ipv6" } else { "ipv4" }.into());
    }
    if !proto.is_empty() {
        w.push(proto.into());
    }
    // `fragment` names no port, flag or type (refused: later fragments
    // carry none); `not fragment` may.
    let fragment = rng.random_range(0..8);
    match fragment {
        0 | 1 => w.push("fragment".into()),
        2 => w.push("not fragment".into()),
        _ => {}
    }
    let transport = fragment > 1;
    let prefix = |rng: &mut StdRng| -> String {
        if v6 {
            ["2001:db8::/32", "2001:db8:2::/48", "2001:db8::8000/113", "2001:db8:1::7/128"][rng.random_range(0..4)]
                .into()
        } else {
            ["192.0.2.0/24", "198.51.100.0/25", "203.0.113.128/25", "198.51.100.7/32"][rng.random_range(0..4)].into()
        }
    };
    match rng.random_range(0..6) {
        0 => w.push(format!("from {}", prefix(rng))),
        1 => w.push(format!("not from {}", prefix(rng))),
        2 => w.push("from set trusted".into()),
        3 => w.push("not from set trusted".into()),
        _ => {}
    }
    if rng.random_bool(0.25) {
        w.push(format!("{}to {}", if rng.random_bool(0.5) { "not " } else { "" }, prefix(rng)));
    }
    if transport && (proto == "tcp" || proto == "udp") {
        if rng.random_bool(0.3) {
            w.push(format!("sport {}", ports_text(rng)));
        }
        if rng.random_bool(0.6) {
            w.push(format!("dport {}", ports_text(rng)));
        }
    }
    if transport && proto == "tcp" && rng.random_bool(0.4) {
        w.push(
            ["flags syn", "flags syn/syn,ack", "flags syn,fin", "flags none/ack", "flags rst"][rng.random_range(0..5)]
                .into(),
        );
    }
    if transport && proto.starts_with("icmp") && rng.random_bool(0.5) {
        w.push(if v6 { "type 128" } else { "type 8" }.into());
    }
    w.join(" ")
}

/// Whether `rule` matches `p`, from the documented semantics.
fn matches(rule: &Rule, p: &Pkt) -> bool {
    if let Some(f) = rule.effective_family() {
        if (f == xdpguard::IpFamily::V4) != p.src.is_ipv4() {
            return false;
        }
    }
    if let Some(proto) = rule.protocol {
        if proto.number() != p.proto {
            return false;
        }
    }
    // `fragment`: first or later; an IPv6 atomic fragment is whole.
    if rule.fragment.is_some_and(|f| f != p.fragment()) {
        return false;
    }
    if let Some(s) = &rule.source {
        let hit = match &s.source {
            xdpguard::Source::Prefix(n) => n.is_ipv4() == p.src.is_ipv4() && n.contains(p.src),
            xdpguard::Source::Set(_) => covers(&SET, p.src),
        };
        if hit == s.negated {
            return false;
        }
    }
    if let Some(d) = rule.destination {
        let hit = d.prefix.is_ipv4() == p.dst.is_ipv4() && d.prefix.contains(p.dst);
        if hit == d.negated {
            return false;
        }
    }
    let ports = p.readable() && matches!(p.proto, 6 | 17);
    if let Some(sp) = &rule.source_ports {
        if !ports || !sp.contains(p.sport) {
            return false;
        }
    }
    if let Some(dp) = &rule.destination_ports {
        if !ports || !dp.contains(p.dport) {
            return false;
        }
    }
    if let Some(f) = rule.tcp_flags {
        if !(p.readable() && p.proto == 6 && f.matches(p.flags)) {
            return false;
        }
    }
    if let Some(t) = &rule.icmp_types {
        if !(p.readable() && matches!(p.proto, 1 | 58) && t.contains(u16::from(p.icmp_type))) {
            return false;
        }
    }
    true
}

/// The model's verdict: (action, reason row, rules that counted it).
fn model(rules: &[Rule], p: &Pkt, monitor: bool) -> (XdpAction, &'static str, Vec<usize>) {
    if covers(&ALLOW, p.src) {
        return (XdpAction::Pass, "allowlisted", vec![]);
    }
    if covers(&BLOCK, p.src) {
        return match (monitor, p.src.is_ipv4()) {
            (true, _) => (XdpAction::Pass, "would_drop_blocked", vec![]),
            (false, true) => (XdpAction::Drop, "blocked_v4", vec![]),
            (false, false) => (XdpAction::Drop, "blocked_v6", vec![]),
        };
    }
    let mut hits = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !matches(r, p) {
            continue;
        }
        hits.push(i);
        if r.monitor || r.action == xdpguard::RuleAction::Count {
            continue;
        }
        return match (r.action, monitor) {
            (xdpguard::RuleAction::Pass, _) => (XdpAction::Pass, "rule_passed", hits),
            (_, true) => (XdpAction::Pass, "would_drop_rule", hits),
            _ => (XdpAction::Drop, "rule_dropped", hits),
        };
    }
    (XdpAction::Pass, "passed", hits)
}

#[test]
fn kernel_rules_agree_with_the_model() {
    let seed: u64 = std::env::var("XDPG_RULES_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261129);
    let rounds: usize = std::env::var("XDPG_RULES_DIFF_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut rng = StdRng::seed_from_u64(seed);
    let f = Filter::builder().v4_capacity(256).v6_capacity(256).max_rules(128).load().expect("load (needs root)");
    for a in ALLOW {
        f.allowlist().insert(net(a)).unwrap();
    }
    for b in BLOCK {
        f.blocklist().insert(net(b)).unwrap();
    }
    f.sets().create("trusted").unwrap().extend(SET.iter().map(|s| net(s))).unwrap();
    let mut packets = 0;
    for round in 0..rounds {
        let n = rng.random_range(1..=if round % 8 == 0 { 60 } else { 12 });
        let texts: Vec<String> = (0..n).map(|_| random_rule(&mut rng)).collect();
        let rules: Vec<Rule> = texts.iter().map(|t| t.parse().unwrap_or_else(|e| panic!("{t}: {e}"))).collect();
        for (t, r) in texts.iter().zip(&rules) {
            assert_eq!(r.to_string().parse::<Rule>().unwrap(), *r, "{t} round-trips through Display");
        }
        f.rules().replace(rules.clone()).unwrap();
        f.rules().reset_counters().unwrap();
        let monitor = round % 5 == 4;
        f.set_monitor(monitor);
        let ids: Vec<_> = f.rules().list().unwrap().into_iter().map(|e| e.id).collect();
        let mut want_hits: HashMap<usize, u64> = HashMap::new();
        let context = || format!("seed {seed}, round {round}, monitor {monitor}, rules:\n  {}", texts.join("\n  "));
        for _ in 0..300 {
            let p = random_packet(&mut rng);
            let (action, reason, hits) = model(&rules, &p, monitor);
            let before = f.stats().unwrap();
            let run = f.test_run(&p.frame()).unwrap();
            let moved: Vec<&str> = f
                .stats()
                .unwrap()
                .since(&before)
                .rows()
                .iter()
                .filter(|(_, c)| c.packets != 0)
                .map(|(name, _)| *name)
                .collect();
            assert_eq!((run.action, moved.as_slice()), (action, &[reason][..]), "{p:?}\n{}", context());
            for h in hits {
                *want_hits.entry(h).or_default() += 1;
            }
            packets += 1;
        }
        let got = f.rules().list().unwrap();
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.id, ids[i]);
            let want = want_hits.get(&i).copied().unwrap_or(0);
            assert_eq!(e.hits.packets, want, "rule {i} `{}` counter\n{}", texts[i], context());
        }
    }
    f.set_monitor(false);
    eprintln!("{packets} packets over {rounds} rule sets agreed (seed {seed})");
}
