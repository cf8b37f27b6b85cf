//! The rules (the filter's guard stage) through BPF_PROG_TEST_RUN on the
//! real programs with their live maps: the filter tail-calls the guard for
//! packets neither list decided.
//!
//! Every case is a fixture row (xdpguard::testing::fixture): the XDP
//! action, the frame unchanged (neither program rewrites), exactly one
//! filter reason counter moved by one packet of the frame's length; and,
//! checked beside the table, exactly the named rules' counters moved by one
//! packet each. Tables cover the issue's four examples (IPv4 and IPv6),
//! every match field, every action, the evaluation order (lists first,
//! count and monitored rules going on, first terminal match winning),
//! monitor mode, packets whose transport header cannot be read, fragment
//! rules (IPv4 and IPv6, first, later and atomic fragments), named sets
//! and whole-set replaces, and the filter's path with no rules.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

mod common {
    pub mod verdict;
}

use std::collections::HashMap;
use std::net::IpAddr;

use common::verdict::{dst_for, ip, net, rule};
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::*;
use xdpguard::{Counter, Filter, RuleError, RuleId, XdpAction};

fn load() -> Filter {
    common::verdict::load(256)
}

fn udp(src: &str, sport: u16, dport: u16) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).udp(sport, dport).payload(PAYLOAD).build()
}

fn tcp(src: &str, dport: u16, flags: u8) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).tcp(40000, dport).tcp_flags(flags).payload(PAYLOAD).build()
}

fn tcp_to(src: &str, dst: &str, dport: u16) -> Frame {
    Frame::builder().ip(ip(src), ip(dst)).tcp(40000, dport).syn().payload(PAYLOAD).build()
}

fn echo(src: &str) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).icmp(Icmp::EchoRequest { id: 7, seq: 1 }).payload(PAYLOAD).build()
}

fn echo_reply(src: &str) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).icmp(Icmp::EchoReply { id: 7, seq: 1 }).payload(PAYLOAD).build()
}

fn proto(src: &str, number: u8) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).protocol(number).payload(PAYLOAD).build()
}

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

/// A table of fixture rows plus the rule counters each row must move.
struct Table<'f> {
    f: &'f Filter,
    table: FixtureTable<'f, Filter>,
    rule_failures: Vec<String>,
}

impl<'f> Table<'f> {
    fn new(f: &'f Filter, name: &str) -> Self {
        Table { f, table: FixtureTable::new(f, name), rule_failures: Vec::new() }
    }

    fn hits(&self) -> HashMap<RuleId, Counter> {
        self.f.rules().list().expect("list rules").into_iter().map(|e| (e.id, e.hits)).collect()
    }

    /// `frame` gets `action`, comes back unchanged, moves the filter's
    /// `reason` counter and exactly the counters of `rules`, each by one
    /// packet of the frame's length.
    fn expect(&mut self, what: &str, frame: &[u8], action: XdpAction, reason: &'static str, rules: &[RuleId]) {
        let before = self.hits();
        self.table.run(Fixture::new(what, frame).action(action).unchanged().counts(&[reason]));
        let after = self.hits();
        for (id, now) in &after {
            let was = before.get(id).copied().unwrap_or_default();
            let moved = *now - was;
            let want =
                if rules.contains(id) { Counter { packets: 1, bytes: frame.len() as u64 } } else { Counter::default() };
            if moved != want {
                self.rule_failures.push(format!("{what}: rule {id} moved by {moved:?}, expected {want:?}"));
            }
        }
    }

    fn drop(&mut self, what: &str, frame: &[u8], rules: &[RuleId]) {
        self.expect(what, frame, XdpAction::Drop, "rule_dropped", rules);
    }

    fn pass(&mut self, what: &str, frame: &[u8], rules: &[RuleId]) {
        self.expect(what, frame, XdpAction::Pass, "passed", rules);
    }

    fn passed_by_rule(&mut self, what: &str, frame: &[u8], rules: &[RuleId]) {
        self.expect(what, frame, XdpAction::Pass, "rule_passed", rules);
    }

    fn finish(self) {
        let report = self.table.into_report();
        assert!(
            report.is_ok() && self.rule_failures.is_empty(),
            "{report}\nrule counters:\n{}",
            self.rule_failures.join("\n")
        );
    }
}

/// Adds rules in order; returns their ids.
fn add(f: &Filter, rules: &[&str]) -> Vec<RuleId> {
    rules.iter().map(|r| f.rules().add(rule(r)).unwrap_or_else(|e| panic!("{r}: {e}"))).collect()
}

#[test]
fn the_issue_examples() {
    let f = load();
    let resolvers = f.sets().create("resolvers").unwrap();
    resolvers.extend([net("198.51.100.53/32"), net("2001:db8:53::/48")]).unwrap();
    let ids = add(
        &f,
        &[
            "drop udp sport 53 not from set resolvers",
            "drop udp dport 1900,11211",
            "pass tcp dport 22 from 198.51.100.0/24",
            "drop tcp dport 22",
            "drop tcp flags syn,fin",
        ],
    );
    let [amp, reflect, ssh_ok, ssh, synfin] = ids[..] else { unreachable!() };
    let mut t = Table::new(&f, "the issue's examples");
    t.drop("DNS answer from a random source", &udp("203.0.113.9", 53, 40000), &[amp]);
    t.drop("DNS answer from a random v6 source", &udp("2001:db8:99::9", 53, 40000), &[amp]);
    t.pass("DNS answer from a listed resolver", &udp("198.51.100.53", 53, 40000), &[]);
    t.pass("DNS answer from a listed v6 resolver prefix", &udp("2001:db8:53::1", 53, 40000), &[]);
    t.pass("a DNS query to us (dport 53, not sport)", &udp("203.0.113.9", 40000, 53), &[]);
    t.pass(
        "TCP from port 53 (the rule is UDP)",
        &Frame::builder().ip(ip("203.0.113.9"), dst_for(ip("203.0.113.9"))).tcp(53, 40000).syn().build(),
        &[],
    );
    t.drop("SSDP", &udp("203.0.113.9", 40000, 1900), &[reflect]);
    t.drop("memcached", &udp("2001:db8:99::9", 40000, 11211), &[reflect]);
    t.pass("port 1901", &udp("203.0.113.9", 40000, 1901), &[]);
    t.pass("port 11212", &udp("203.0.113.9", 40000, 11212), &[]);
    t.passed_by_rule("SSH from the office", &tcp("198.51.100.7", 22, SYN), &[ssh_ok]);
    t.drop("SSH from elsewhere", &tcp("203.0.113.7", 22, SYN), &[ssh]);
    t.drop("SSH from v6 (the office rule is v4)", &tcp("2001:db8:99::7", 22, SYN), &[ssh]);
    t.pass("HTTP SYN", &tcp("203.0.113.7", 80, SYN), &[]);
    t.drop("SYN+FIN", &tcp("203.0.113.7", 80, SYN | FIN), &[synfin]);
    t.drop("SYN+FIN+ACK", &tcp("2001:db8:99::7", 443, SYN | FIN | ACK), &[synfin]);
    t.pass("FIN+ACK", &tcp("203.0.113.7", 80, FIN | ACK), &[]);
    // The office's SSH+SYN+FIN: the pass rule comes first.
    t.passed_by_rule(
        "SYN+FIN to 22 from the office: first match passes",
        &tcp("198.51.100.7", 22, SYN | FIN),
        &[ssh_ok],
    );
    t.drop("SYN+FIN to 22 from elsewhere: the SSH drop is first", &tcp("203.0.113.7", 22, SYN | FIN), &[ssh]);
    t.finish();
}

#[test]
fn every_field() {
    let f = load();
    let ids = add(
        &f,
        &[
            "drop udp sport 1000-1010,2000 dport 9000",
            "drop tcp dport 8000-8010 flags syn/syn,ack",
            "drop tcp dport 8443 flags none/ack,rst",
            "drop icmp type 8",
            "drop icmpv6 type 128",
            "drop proto 47",
            "drop to 192.0.2.128/25",
            "drop udp dport 7000 not to 2001:db8::/64",
            "drop udp dport 7001 not from 203.0.113.0/24",
            "drop ipv6 udp dport 7002",
            "drop udp dport 7003 from 2001:db8:7::/48",
        ],
    );
    let [sport, flags, flags_clear, icmp, icmp6, gre, to, not_to, not_from, v6only, from6] = ids[..] else {
        unreachable!()
    };
    let mut t = Table::new(&f, "every field");
    t.drop("sport in range", &udp("203.0.113.1", 1005, 9000), &[sport]);
    t.drop("sport at the range's end", &udp("203.0.113.1", 1010, 9000), &[sport]);
    t.drop("sport the single port", &udp("203.0.113.1", 2000, 9000), &[sport]);
    t.pass("sport outside", &udp("203.0.113.1", 1011, 9000), &[]);
    t.pass("sport right, dport wrong", &udp("203.0.113.1", 1005, 9001), &[]);
    t.drop("SYN to 8005", &tcp("203.0.113.1", 8005, SYN), &[flags]);
    t.drop("SYN to 8010 (v6)", &tcp("2001:db8:9::1", 8010, SYN), &[flags]);
    t.pass("SYN-ACK to 8005 (ACK must be clear)", &tcp("203.0.113.1", 8005, SYN | ACK), &[]);
    t.pass("ACK to 8005", &tcp("203.0.113.1", 8005, ACK), &[]);
    t.pass("SYN to 8011", &tcp("203.0.113.1", 8011, SYN), &[]);
    t.drop("bare SYN to 8443 (ACK and RST clear)", &tcp("203.0.113.1", 8443, SYN), &[flags_clear]);
    t.pass("RST to 8443", &tcp("203.0.113.1", 8443, RST), &[]);
    t.drop("ICMP echo request", &echo("203.0.113.1"), &[icmp]);
    t.pass("ICMP echo reply", &echo_reply("203.0.113.1"), &[]);
    t.drop("ICMPv6 echo request", &echo("2001:db8:9::1"), &[icmp6]);
    t.pass("ICMPv6 echo reply", &echo_reply("2001:db8:9::1"), &[]);
    t.drop("GRE", &proto("203.0.113.1", 47), &[gre]);
    t.drop("GRE over v6", &proto("2001:db8:9::1", 47), &[gre]);
    t.pass("ESP", &proto("203.0.113.1", 50), &[]);
    t.drop("to 192.0.2.200", &tcp_to("203.0.113.1", "192.0.2.200", 80), &[to]);
    t.pass("to 192.0.2.100", &tcp_to("203.0.113.1", "192.0.2.100", 80), &[]);
    t.pass("to 2001:db8::200 (a v4 prefix)", &tcp_to("2001:db8:9::1", "2001:db8::200", 80), &[]);
    t.pass("UDP 7000 to 2001:db8::2 (inside)", &udp("2001:db8:9::1", 1, 7000), &[]);
    t.drop(
        "UDP 7000 to v6 outside",
        &Frame::builder().ip(ip("2001:db8:9::1"), ip("2001:db8:1::2")).udp(1, 7000).build(),
        &[not_to],
    );
    t.pass("UDP 7000 over v4 (a v6 prefix: the rule is v6 only)", &udp("203.0.113.1", 1, 7000), &[]);
    t.pass("UDP 7001 from inside", &udp("203.0.113.1", 1, 7001), &[]);
    t.drop("UDP 7001 from outside", &udp("198.51.100.1", 1, 7001), &[not_from]);
    t.pass("UDP 7001 over v6 (the prefix is v4)", &udp("2001:db8:9::1", 1, 7001), &[]);
    t.drop("UDP 7002 over v6", &udp("2001:db8:9::1", 1, 7002), &[v6only]);
    t.pass("UDP 7002 over v4", &udp("198.51.100.1", 1, 7002), &[]);
    t.drop("UDP 7003 from the /48", &udp("2001:db8:7:ffff::1", 1, 7003), &[from6]);
    t.pass("UDP 7003 from next to it", &udp("2001:db8:8::1", 1, 7003), &[]);
    t.finish();
}

#[test]
fn order_actions_and_monitor() {
    let f = load();
    f.allowlist().insert(net("192.0.2.77/32")).unwrap();
    f.blocklist().insert(net("198.51.100.66/32")).unwrap();
    let ids = add(
        &f,
        &[
            "count udp",
            "monitor drop udp dport 5000-5010",
            "pass udp dport 5005",
            "drop udp dport 5000-5009",
            "drop udp",
            "count tcp dport 80",
            "monitor pass tcp dport 80",
        ],
    );
    let [count_udp, mon_drop, pass5005, drop500x, drop_udp, count80, mon_pass80] = ids[..] else { unreachable!() };
    let mut t = Table::new(&f, "order, actions, monitor");
    t.passed_by_rule(
        "count, monitored drop, then pass",
        &udp("203.0.113.1", 1, 5005),
        &[count_udp, mon_drop, pass5005],
    );
    t.drop("count, monitored drop, then drop", &udp("203.0.113.1", 1, 5001), &[count_udp, mon_drop, drop500x]);
    t.drop("count, monitored drop, then the catch-all", &udp("203.0.113.1", 1, 5010), &[count_udp, mon_drop, drop_udp]);
    t.drop("count then the catch-all", &udp("203.0.113.1", 1, 53), &[count_udp, drop_udp]);
    t.pass("count rules and monitored rules decide nothing", &tcp("203.0.113.1", 80, SYN), &[count80, mon_pass80]);
    t.pass("no rule for TCP 81", &tcp("203.0.113.1", 81, SYN), &[]);
    t.expect("allowlisted: no rule sees it", &udp("192.0.2.77", 1, 5001), XdpAction::Pass, "allowlisted", &[]);
    t.expect("blocklisted: no rule sees it", &udp("198.51.100.66", 1, 5005), XdpAction::Drop, "blocked_v4", &[]);

    // The whole filter in monitor mode: drops become "would drop".
    f.set_monitor(true);
    assert!(f.monitor());
    t.expect(
        "monitor mode: a drop rule would drop",
        &udp("203.0.113.1", 1, 5001),
        XdpAction::Pass,
        "would_drop_rule",
        &[count_udp, mon_drop, drop500x],
    );
    t.passed_by_rule(
        "monitor mode: a pass rule passes",
        &udp("203.0.113.1", 1, 5005),
        &[count_udp, mon_drop, pass5005],
    );
    t.expect(
        "monitor mode: blocklisted would drop",
        &udp("198.51.100.66", 1, 5005),
        XdpAction::Pass,
        "would_drop_blocked",
        &[],
    );
    t.expect("monitor mode: allowlisted as always", &udp("192.0.2.77", 1, 5001), XdpAction::Pass, "allowlisted", &[]);
    f.set_monitor(false);
    t.drop("monitor mode off: dropped again", &udp("203.0.113.1", 1, 5001), &[count_udp, mon_drop, drop500x]);

    // One rule switched into monitor mode keeps its id, place and counter.
    let before = f.rules().list().unwrap();
    f.rules().set_monitor(drop500x, true).unwrap();
    let after = f.rules().list().unwrap();
    assert_eq!(
        before.iter().map(|e| (e.id, e.position)).collect::<Vec<_>>(),
        after.iter().map(|e| (e.id, e.position)).collect::<Vec<_>>()
    );
    assert_eq!(after[3].rule.to_string(), "monitor drop udp dport 5000-5009");
    assert_eq!(after[3].hits, before[3].hits, "the counter is kept");
    t.drop(
        "a monitored rule goes on to the next",
        &udp("203.0.113.1", 1, 5001),
        &[count_udp, mon_drop, drop500x, drop_udp],
    );
    t.finish();
}

#[test]
fn unreadable_transport_headers() {
    let f = load();
    let ids = add(
        &f,
        &[
            "drop udp dport 9999",
            "drop udp sport 1-65535",
            "drop tcp flags syn",
            "count udp from 203.0.113.0/24",
            "drop icmp type 0-255",
        ],
    );
    let [dport, sport, syn, count_udp, icmp] = ids[..] else { unreachable!() };
    let b = || Frame::builder().ip(ip("203.0.113.1"), IpAddr::V4(DST_V4));
    let later = b().udp(1, 9999).payload(PAYLOAD).frag(Frag::Later { offset: 10, more: false }).build();
    let first = b().udp(1, 9999).payload(PAYLOAD).frag(Frag::First).build();
    let tcp_later = b().tcp(1, 80).syn().payload(PAYLOAD).frag(Frag::Later { offset: 10, more: true }).build();
    let icmp_later = b()
        .icmp(Icmp::EchoRequest { id: 1, seq: 1 })
        .payload(PAYLOAD)
        .frag(Frag::Later { offset: 3, more: false })
        .build();
    let udp_cut = udp("203.0.113.1", 1, 9999);
    // The frame ends 4 bytes into the UDP header (the IP length says so too).
    let cut = udp_cut.cut_consistent(udp_cut.l3() + 20 + 4);
    let v6_frag = Frame::builder()
        .ip(ip("2001:db8:9::1"), IpAddr::V6(DST_V6))
        .ext(Ext::fragment(10, false))
        .udp(1, 9999)
        .payload(PAYLOAD)
        .build();
    let mut t = Table::new(&f, "unreadable transport headers");
    t.drop("first fragment: ports read", &first, &[dport]);
    t.pass("later fragment: only rules without ports, flags or types", &later, &[count_udp]);
    t.pass("later TCP fragment: no flags to match", &tcp_later, &[]);
    t.pass("later ICMP fragment: no type to match", &icmp_later, &[]);
    t.pass("UDP header cut short", &cut, &[count_udp]);
    t.pass("v6 later fragment", &v6_frag, &[]);
    t.drop("sport 1-65535 matches a whole header", &udp("198.51.100.1", 7, 1), &[sport]);
    t.drop("any SYN", &tcp("198.51.100.1", 1, SYN), &[syn]);
    t.drop("any ICMP type", &echo("198.51.100.1"), &[icmp]);
    // Behind more IPv6 extension headers than the parse walks (8), the
    // transport header is out of the rules' sight but not the stack's: no
    // rule can say it does not match, so it is dropped as malformed (it
    // passed every rule). Within the walk, the rules see it.
    let chain = |n: usize| {
        Frame::builder()
            .ip(ip("2001:db8:abcd::1"), IpAddr::V6(DST_V6))
            .exts(&vec![Ext::DestOpts; n])
            .udp(1, 9999)
            .payload(PAYLOAD)
            .build()
    };
    t.drop("v6 UDP behind 8 extension headers", &chain(8), &[dport]);
    t.expect("v6 UDP behind 9 extension headers", &chain(9), XdpAction::Drop, "malformed", &[]);
    t.expect("v6 UDP behind 16 extension headers", &chain(16), XdpAction::Drop, "malformed", &[]);
    f.set_monitor(true);
    t.expect("the same in monitor mode: counted, passed", &chain(9), XdpAction::Pass, "malformed", &[]);
    f.set_monitor(false);
    t.finish();
}

/// `fragment` matches IP fragments, first and later (IPv4 more-fragments
/// or offset; an IPv6 fragment header that is not atomic), `not fragment`
/// the rest; first fragments (under the port key) and later ones (the
/// protocol's no-key slot) both reach a `fragment` rule.
#[test]
fn fragment_rules() {
    let f = load();
    let ids = add(
        &f,
        &[
            "monitor drop udp fragment",
            "count udp not fragment",
            "drop udp fragment",
            "drop tcp fragment from 198.51.100.0/24",
        ],
    );
    let [mon, whole, frag, tcp_frag] = ids[..] else { unreachable!() };
    let v4 = |src: &str| Frame::builder().ip(ip(src), IpAddr::V4(DST_V4));
    let v6 = || Frame::builder().ip(ip("2001:db8:9::1"), IpAddr::V6(DST_V6));
    let udp4 = |fr: Frag| v4("203.0.113.1").udp(1, 9999).payload(PAYLOAD).frag(fr).build();
    let udp6 = |ext: Option<Ext>| {
        let b = v6();
        let b = match ext {
            Some(e) => b.ext(e),
            None => b,
        };
        b.udp(1, 9999).payload(PAYLOAD).build()
    };
    let tcp4 = |src: &str, fr: Frag| v4(src).tcp(40000, 80).syn().payload(PAYLOAD).frag(fr).build();
    let mut t = Table::new(&f, "fragment rules");
    t.pass("v4 whole UDP: not a fragment", &udp4(Frag::None), &[whole]);
    t.drop("v4 UDP first fragment", &udp4(Frag::First), &[mon, frag]);
    t.drop("v4 UDP later fragment, more to come", &udp4(Frag::Later { offset: 10, more: true }), &[mon, frag]);
    t.drop("v4 UDP last fragment", &udp4(Frag::Later { offset: 10, more: false }), &[mon, frag]);
    t.pass("v6 whole UDP", &udp6(None), &[whole]);
    t.drop("v6 UDP first fragment", &udp6(Some(Ext::fragment(0, true))), &[mon, frag]);
    t.drop("v6 UDP later fragment", &udp6(Some(Ext::fragment(10, true))), &[mon, frag]);
    t.drop("v6 UDP last fragment", &udp6(Some(Ext::fragment(10, false))), &[mon, frag]);
    t.pass("v6 atomic fragment: whole", &udp6(Some(Ext::fragment(0, false))), &[whole]);
    t.drop("v4 TCP first fragment from the prefix", &tcp4("198.51.100.1", Frag::First), &[tcp_frag]);
    t.drop(
        "v4 TCP later fragment from the prefix",
        &tcp4("198.51.100.1", Frag::Later { offset: 10, more: true }),
        &[tcp_frag],
    );
    t.pass("v4 whole TCP from the prefix", &tcp4("198.51.100.1", Frag::None), &[]);
    t.pass("v4 TCP fragment from elsewhere", &tcp4("203.0.113.1", Frag::Later { offset: 10, more: true }), &[]);
    f.set_monitor(true);
    t.expect(
        "monitor mode: a fragment would be dropped",
        &udp4(Frag::Later { offset: 10, more: true }),
        XdpAction::Pass,
        "would_drop_rule",
        &[mon, frag],
    );
    f.set_monitor(false);
    // Only the monitored rule left for UDP fragments: counted, passed.
    f.rules().remove(frag).unwrap();
    t.pass("a monitored fragment rule decides nothing", &udp6(Some(Ext::fragment(10, true))), &[mon]);
    t.pass("... nor for a first fragment", &udp4(Frag::First), &[mon]);
    // A later fragment whose fragment header names an extension header
    // (RFC 8200 allows it in every fragment): its payload is the middle of
    // a packet, not that header. Forged as an overlong one, it passed as
    // malformed; forged as one leading to TCP, it was taken for TCP.
    // Neither is UDP or TCP to the rules: the fragment's protocol is the
    // header it names, which only a rule without one reaches.
    let forged = |bytes: [u8; 2]| {
        let mut fr = udp6(Some(Ext::fragment(10, true))).to_vec();
        assert_eq!(fr[14 + 6], 44, "the fragment header follows the IPv6 header");
        fr[14 + 40] = 60;
        fr[14 + 48..14 + 50].copy_from_slice(&bytes);
        fr
    };
    t.pass("v6 later fragment naming destination options: not UDP", &forged([17, 0xff]), &[]);
    let any = add(&f, &["drop fragment"])[0];
    t.drop("... forged as an overlong header: a fragment all the same", &forged([17, 0xff]), &[any]);
    t.drop("... forged as a header leading to TCP", &forged([6, 0]), &[any]);
    t.finish();

    // A fragment rule naming ports, flags or types: refused, typed, and
    // the rule set kept.
    let before: Vec<_> = f.rules().list().unwrap().into_iter().map(|e| e.id).collect();
    for (text, word) in [
        ("drop udp fragment dport 53", "dport"),
        ("drop tcp fragment flags syn", "flags"),
        ("drop icmp fragment type 8", "type"),
    ] {
        match text.parse::<xdpguard::Rule>() {
            Err(RuleError::FragmentWithTransport { word: w, .. }) => assert_eq!(w, word, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    let built = xdpguard::Rule::new(xdpguard::RuleAction::Drop).udp().fragment().source_ports("53".parse().unwrap());
    assert!(matches!(f.rules().add(built), Err(RuleError::FragmentWithTransport { word: "sport", .. })));
    let after: Vec<_> = f.rules().list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(before, after, "a refused rule changes nothing");
}

#[test]
fn sets_and_atomic_replaces() {
    let f = load();
    let sets = f.sets();
    let trusted = sets.create("trusted").unwrap();
    trusted.insert(net("203.0.113.0/28")).unwrap();
    let ids = add(&f, &["pass udp from set trusted", "drop udp dport 4000"]);
    let mut t = Table::new(&f, "sets and replaces");
    t.passed_by_rule("in the set", &udp("203.0.113.5", 1, 4000), &[ids[0]]);
    t.drop("outside the set", &udp("203.0.113.17", 1, 4000), &[ids[1]]);
    // A whole-set replace switches the rule to the new set at once.
    trusted.replace([net("203.0.113.16/28"), net("2001:db8:5::/48")]).unwrap();
    assert_eq!(
        trusted.iter().unwrap().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["203.0.113.16/28", "2001:db8:5::/48"]
    );
    t.drop("left the set", &udp("203.0.113.5", 1, 4000), &[ids[1]]);
    t.passed_by_rule("joined the set", &udp("203.0.113.17", 1, 4000), &[ids[0]]);
    t.passed_by_rule("joined the set (v6)", &udp("2001:db8:5::9", 1, 4000), &[ids[0]]);
    trusted.remove(net("203.0.113.16/28")).unwrap();
    t.drop("removed in place", &udp("203.0.113.17", 1, 4000), &[ids[1]]);

    // A set that rules name cannot go; an unknown set cannot be named.
    assert!(matches!(sets.delete("trusted"), Err(RuleError::SetInUse { .. })));
    assert!(matches!(f.rules().add(rule("drop from set nope")), Err(RuleError::UnknownSet { .. })));

    // A rule-set replace: kept rules keep ids and counters, one switch.
    let hits_before = f.rules().list().unwrap()[1].hits;
    let change = f.rules().replace([rule("drop udp dport 4001"), rule("drop udp dport 4000")]).unwrap();
    assert_eq!((change.added, change.removed, change.kept), (1, 1, 1), "{change:?}");
    assert_eq!(change.ids[1], ids[1], "the kept rule keeps its id");
    let list = f.rules().list().unwrap();
    assert_eq!(list[1].hits, hits_before, "and its counter");
    assert_eq!(list[0].hits, Counter::default(), "a new rule starts at zero");
    t.drop("new rule", &udp("203.0.113.5", 1, 4001), &[change.ids[0]]);
    t.drop("kept rule", &udp("203.0.113.5", 1, 4000), &[ids[1]]);
    t.pass("the set's rule is gone", &udp("2001:db8:5::9", 1, 4002), &[]);
    assert_eq!(sets.delete("trusted").unwrap(), 1, "no rule names it now");

    // A rejected replace (one bad rule) changes nothing.
    let err = f.rules().replace([rule("drop udp dport 1"), rule("drop from set gone")]).unwrap_err();
    assert!(matches!(err, RuleError::UnknownSet { .. }), "{err}");
    assert_eq!(f.rules().list().unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), change.ids);
    t.pass("after a rejected replace, as before", &udp("203.0.113.5", 1, 1), &[]);
    t.drop("after a rejected replace, as before", &udp("203.0.113.5", 1, 4001), &[change.ids[0]]);

    // A bad rule file: every bad line by number, nothing parsed to apply.
    let err =
        xdpguard::parse_rules(b"drop udp dport 1\ndrop udpp\n# fine\ndrop tcp flags syn,fun\n", "r.rules").unwrap_err();
    let RuleError::BadLines { errors, .. } = &err else { panic!("{err}") };
    assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4], "{err}");

    // Cleared: the filter stops calling the guard; packets count as passed.
    assert_eq!(f.rules().clear().unwrap(), 2);
    t.expect("no rules: the filter's own path", &udp("203.0.113.5", 1, 4001), XdpAction::Pass, "passed", &[]);
    t.finish();
}

/// A freed rule id is not handed out again at once: a `rule del N` from a
/// listing taken before someone else's edit finds no rule, rather than
/// deleting the rule that got N since.
#[test]
fn a_freed_rule_id_is_not_reused_at_once() {
    let f = load();
    let ids = add(&f, &["drop udp dport 1", "drop udp dport 2", "drop udp dport 3"]);
    f.rules().remove(ids[1]).unwrap();
    let new = f.rules().add(rule("drop udp dport 4")).unwrap();
    assert!(!ids.contains(&new), "{new} is a fresh id, not one of {ids:?}");
    assert!(matches!(f.rules().remove(ids[1]), Err(RuleError::NotFound { .. })), "the stale id removes nothing");
    let mut t = Table::new(&f, "after a stale delete");
    t.drop("the new rule is there", &udp("203.0.113.5", 9, 4), &[new]);
    t.pass("the removed rule is gone", &udp("203.0.113.5", 9, 2), &[]);
    t.finish();
}

/// A set over half the prefix table (no room for a second copy) still
/// gains and loses prefixes: one, or many that fit, in place, all or
/// nothing; removing is never refused for room; a whole-set replace that
/// needs two copies says so and how to avoid it.
#[test]
fn a_set_over_half_the_table_is_edited_in_place() {
    let f = Filter::builder().max_rules(8).max_set_entries(8).load().expect("load");
    let s = f.sets().create("big").unwrap();
    s.extend((1..=5).map(|i| net(&format!("203.0.113.{i}/32")))).unwrap();
    let id = add(&f, &["drop udp from set big"])[0];
    let mut t = Table::new(&f, "a set over half the table");
    t.drop("in the set", &udp("203.0.113.5", 1, 9), &[id]);
    t.pass("not yet in the set", &udp("203.0.113.6", 1, 9), &[]);
    // 5 + 6 > 8: no room for a copy; in place, one prefix and then two.
    assert_eq!(s.extend([net("203.0.113.6/32")]).unwrap().changed, 1);
    t.drop("added in place", &udp("203.0.113.6", 1, 9), &[id]);
    assert_eq!(s.extend([net("203.0.113.7/32"), net("203.0.113.8/32")]).unwrap().changed, 2);
    t.drop("added in place (two)", &udp("203.0.113.8", 1, 9), &[id]);
    // Full: two more do not fit, and neither is added.
    let err = s.extend([net("203.0.113.9/32"), net("203.0.113.10/32")]).unwrap_err();
    assert!(matches!(err, RuleError::Full { setter: "max_set_entries", .. }), "{err}");
    assert_eq!(s.len().unwrap(), 8, "nothing applied");
    t.pass("refused: not added", &udp("203.0.113.9", 1, 9), &[]);
    // Removing from a full table: never refused for room.
    assert_eq!(s.remove_all([net("203.0.113.1/32"), net("203.0.113.2/32")]).unwrap().changed, 2);
    t.pass("removed in place", &udp("203.0.113.1", 1, 9), &[]);
    t.drop("the rest stays", &udp("203.0.113.3", 1, 9), &[id]);
    // A replace that adds and removes needs both copies: it says so.
    let err = s.replace(["198.51.100.0/24", "198.51.100.1/32", "203.0.113.3/32"].map(net)).unwrap_err().to_string();
    assert!(err.contains("needs room for both") && err.contains("set add") && err.contains("set del"), "{err}");
    assert_eq!(s.len().unwrap(), 6, "nothing applied");
    t.drop("after the refused replace", &udp("203.0.113.3", 1, 9), &[id]);
    t.finish();
}

/// ICMP types by name, numbered by the rule's protocol (echo-request is 8
/// in ICMP, 128 in ICMPv6); a type out of 0-255 is refused as such.
#[test]
fn icmp_types_by_name() {
    let f = load();
    let ids = add(&f, &["drop icmp type echo-request", "drop icmpv6 type echo-reply"]);
    assert_eq!(f.rules().get(ids[1]).unwrap().to_string(), "drop icmpv6 type 129");
    let mut t = Table::new(&f, "ICMP types by name");
    t.drop("ICMP echo request", &echo("203.0.113.5"), &[ids[0]]);
    t.pass("ICMP echo reply", &echo_reply("203.0.113.5"), &[]);
    t.pass("ICMPv6 echo request", &echo("2001:db8:9::5"), &[]);
    t.drop("ICMPv6 echo reply", &echo_reply("2001:db8:9::5"), &[ids[1]]);
    t.finish();
    let err = "drop icmp type echo".parse::<xdpguard::Rule>().unwrap_err().to_string();
    assert!(err.contains("not an ICMP type: give a number from 0 to 255 or a name (echo-reply"), "{err}");
}

#[test]
fn full_tables_refuse_and_keep_the_set() {
    let f = Filter::builder().max_rules(4).max_rule_records(6).load().expect("load");
    let ids = add(&f, &["drop udp dport 1", "drop udp dport 2", "drop udp dport 3"]);
    // Five records for one rule: more than are left.
    let err = f.rules().add(rule("drop udp sport 1,3,5,7,9")).unwrap_err();
    assert!(matches!(err, RuleError::Full { .. }), "{err}");
    f.rules().add(rule("drop udp dport 4")).unwrap();
    let err = f.rules().add(rule("drop udp dport 5")).unwrap_err();
    assert!(matches!(err, RuleError::Full { what: "the rule table", .. }), "{err}");
    assert_eq!(f.rules().len().unwrap(), 4);
    let mut t = Table::new(&f, "after refused edits");
    t.drop("port 1 still dropped", &udp("203.0.113.5", 9, 1), &[ids[0]]);
    t.pass("port 5 was never added", &udp("203.0.113.5", 9, 5), &[]);
    t.finish();

    // Group entries: a rule without a port joins every TCP group.
    let g = Filter::builder().max_rules(8).max_rule_refs(4).load().expect("load");
    let ids = add(&g, &["drop tcp dport 1", "drop tcp dport 2"]);
    let err = g.rules().add(rule("drop tcp flags syn,fin")).unwrap_err();
    assert!(matches!(err, RuleError::Full { setter: "max_rule_refs", .. }), "{err}");
    let mut t = Table::new(&g, "after a refused edit (group entries)");
    t.drop("port 2 still dropped", &tcp("203.0.113.5", 2, SYN), &[ids[1]]);
    t.pass("SYN+FIN was never added", &tcp("203.0.113.5", 3, SYN | FIN), &[]);
    t.finish();

    // The 65th set: the table of sets is full, said in words that parse.
    for i in 0..64 {
        g.sets().create(&format!("s{i}")).unwrap();
    }
    let err = g.sets().create("s64").unwrap_err();
    assert!(matches!(err, RuleError::Full { capacity: 64, .. }), "{err}");
    assert!(err.to_string().starts_with("the named-set table is full (64)"), "{err}");
    assert_eq!(g.sets().names().unwrap().len(), 64, "nothing applied");
}

#[test]
fn v4_and_v6_sources_match_only_their_family() {
    // A prefix of one family never matches the other, also for ::/0 and 0.0.0.0/0.
    let f = load();
    let ids = add(
        &f,
        &["drop udp dport 1 from 0.0.0.0/0", "drop udp dport 2 from ::/0", "drop udp dport 3 not from 0.0.0.0/0"],
    );
    let mut t = Table::new(&f, "families");
    t.drop("v4 from 0.0.0.0/0", &udp("203.0.113.5", 9, 1), &[ids[0]]);
    t.pass("v6, v4 prefix", &udp("2001:db8::5", 9, 1), &[]);
    t.drop("v6 from ::/0", &udp("2001:db8::5", 9, 2), &[ids[1]]);
    t.pass("v4, v6 prefix", &udp("203.0.113.5", 9, 2), &[]);
    // "not from 0.0.0.0/0" is a v4 rule: it matches no v4 source and no v6 packet.
    t.pass("v4 not from 0.0.0.0/0", &udp("203.0.113.5", 9, 3), &[]);
    t.pass("v6 and a v4-only rule", &udp("2001:db8::5", 9, 3), &[]);
    t.finish();
}

/// IPv4 source and destination prefixes of every edge length (/0, /1, /31,
/// /32, and one inside a byte), each matched by the address at its last
/// covered bit and missed by the one just past it: the guard takes an IPv4
/// prefix's mask from one shift without a branch (`in_prefix`).
#[test]
fn v4_prefix_lengths_at_their_edges() {
    let f = load();
    let ids = add(
        &f,
        &[
            "drop udp dport 10 from 0.0.0.0/0",
            "drop udp dport 11 from 128.0.0.0/1",
            "drop udp dport 12 from 203.0.113.6/31",
            "drop udp dport 13 from 203.0.113.7/32",
            "drop udp dport 14 from 203.0.113.64/27",
            "drop udp dport 15 not from 203.0.113.64/27",
            "drop tcp dport 16 to 192.0.2.128/25",
            "drop tcp dport 17 to 192.0.2.7/32",
        ],
    );
    let mut t = Table::new(&f, "v4 prefix lengths");
    t.drop("/0", &udp("203.0.113.5", 9, 10), &[ids[0]]);
    t.drop("/1, its last address", &udp("255.255.255.254", 9, 11), &[ids[1]]);
    t.pass("/1, the address before it", &udp("127.255.255.255", 9, 11), &[]);
    t.drop("/31, its first address", &udp("203.0.113.6", 9, 12), &[ids[2]]);
    t.drop("/31, its last address", &udp("203.0.113.7", 9, 12), &[ids[2]]);
    t.pass("/31, the address after it", &udp("203.0.113.8", 9, 12), &[]);
    t.pass("/31, the address before it", &udp("203.0.113.5", 9, 12), &[]);
    t.drop("/32, its address", &udp("203.0.113.7", 9, 13), &[ids[3]]);
    t.pass("/32, its neighbour", &udp("203.0.113.6", 9, 13), &[]);
    t.drop("/27, its last address", &udp("203.0.113.95", 9, 14), &[ids[4]]);
    t.pass("/27, the address after it", &udp("203.0.113.96", 9, 14), &[]);
    t.pass("not /27, inside", &udp("203.0.113.64", 9, 15), &[]);
    t.drop("not /27, the address before it", &udp("203.0.113.63", 9, 15), &[ids[5]]);
    t.drop("to /25, its last address", &tcp_to("203.0.113.5", "192.0.2.255", 16), &[ids[6]]);
    t.pass("to /25, the address before it", &tcp_to("203.0.113.5", "192.0.2.127", 16), &[]);
    t.drop("to /32, its address", &tcp_to("203.0.113.5", "192.0.2.7", 17), &[ids[7]]);
    t.pass("to /32, its neighbour", &tcp_to("203.0.113.5", "192.0.2.6", 17), &[]);
    t.finish();
}

/// The gate (the filter passes the packets the guard has nothing to do
/// with itself, without the tail call) follows every edit: open with the
/// bits of the live rule set, every port of a protocol-wide rule's protocol
/// out of it, the SYN guard's ports out of it, closed while a timed block
/// may exist; and a frame to a key it skipped meets the rule added for it.
#[test]
fn the_gate_follows_every_edit() {
    use std::time::Duration;
    use xdpguard::testing::gate::{is_open, skips};
    use xdpguard::SynPolicy;
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;
    let f = load();
    let action = |frame: Frame| f.test_run(&frame.to_vec()).expect("test run").action;
    let from = "198.51.100.7";
    assert!(!is_open(&f), "the guard has no work, no stage: closed");

    add(&f, &["drop udp dport 9 from 198.51.100.0/24"]);
    assert!(is_open(&f));
    assert!(!skips(&f, UDP, 9), "its rule's key goes to the guard");
    for (proto, port) in [(UDP, 10), (UDP, 65535), (TCP, 9), (ICMP, 8), (47, 0)] {
        assert!(skips(&f, proto, port), "{proto}/{port} has no rule");
    }
    assert_eq!(action(udp(from, 40000, 9)), XdpAction::Drop);
    assert_eq!(action(udp(from, 40000, 10)), XdpAction::Pass, "skipped: no rule");
    let port_rule = add(&f, &["drop udp dport 10 from 198.51.100.0/24"])[0];
    assert!(!skips(&f, UDP, 10));
    assert_eq!(action(udp(from, 40000, 10)), XdpAction::Drop, "the new rule, at once");
    f.rules().remove(port_rule).expect("remove");
    assert!(skips(&f, UDP, 10), "its key skipped again");
    // A refused edit changes nothing, the gate included.
    assert!(f.rules().remove(port_rule).is_err(), "removed already");
    assert!(is_open(&f) && skips(&f, UDP, 10), "open after a refused edit");

    // A protocol-wide rule puts all of its protocol's keys in the guard.
    let wide = add(&f, &["drop tcp flags syn,fin"])[0];
    assert!(!skips(&f, TCP, 1) && !skips(&f, TCP, 443) && !skips(&f, TCP, 65535));
    assert!(skips(&f, UDP, 10), "other protocols' keys stay skipped");
    assert_eq!(action(tcp(from, 4444, SYN | FIN)), XdpAction::Drop);
    f.rules().remove(wide).expect("remove");
    assert!(skips(&f, TCP, 443));

    // A SYN-guarded port is the guard's, with or without a rule.
    f.syn_guard().protect(443, SynPolicy::cookies()).expect("protect");
    assert!(is_open(&f) && !skips(&f, TCP, 443) && skips(&f, TCP, 444) && skips(&f, UDP, 443));
    assert_eq!(action(tcp(from, 443, SYN)), XdpAction::Tx, "answered with a cookie");
    f.syn_guard().unprotect(443).expect("unprotect");
    assert!(skips(&f, TCP, 443));

    // A timed block applies to every key: closed, and the blocked source's
    // frames to keys skipped before are dropped.
    f.timed_blocks().insert(net("203.0.113.9/32"), Duration::from_secs(60)).expect("timed block");
    assert!(!is_open(&f));
    assert_eq!(action(udp("203.0.113.9", 40000, 10)), XdpAction::Drop);
    assert_eq!(action(udp("203.0.113.10", 40000, 10)), XdpAction::Pass);
    // The last one gone, it opens again.
    assert!(f.timed_blocks().remove(net("203.0.113.9/32")).expect("remove"));
    assert!(is_open(&f) && skips(&f, UDP, 10));
    assert_eq!(action(udp("203.0.113.9", 40000, 10)), XdpAction::Pass);
}

/// A rule that blocks for a while (a rate limit's auto-block, added by the
/// data plane itself) keeps the gate closed while it is in the set.
#[test]
fn a_blocking_rate_limit_keeps_the_gate_closed() {
    use xdpguard::testing::gate::is_open;
    let f = load();
    let id = add(&f, &["rate-limit 1/s burst 1 block 1m udp dport 53"])[0];
    assert!(!is_open(&f), "an auto-block may come from any packet: every key goes to the guard");
    f.rules().remove(id).expect("remove");
    add(&f, &["rate-limit 1/s burst 1 udp dport 53"]);
    assert!(is_open(&f), "a limit that does not block leaves the other keys skipped");
}

/// A set entry that is a whole address family once normalised (here the
/// IPv4-mapped range, which is 0.0.0.0/0) is refused, as the blocklist
/// refuses it: a drop rule naming the set would drop every IPv4 frame, the
/// host's own SSH session included. Nothing of the edit is applied;
/// permitted, it is stored and the rule drops every IPv4 source.
#[test]
fn a_whole_family_set_entry_is_refused_without_force() {
    let f = load();
    let martians = f.sets().create("martians").unwrap();
    martians.insert(net("192.0.2.0/24")).unwrap();
    let before: Vec<_> = martians.iter().unwrap().collect();
    for err in [
        martians.extend([net("::ffff:0:0/96"), net("fc00::/7")]).unwrap_err(),
        martians.insert(net("::ffff:0:0/96")).unwrap_err(),
        martians.replace([net("::ffff:0:0/96")]).unwrap_err(),
    ] {
        let RuleError::SetWholeFamily { set, given, entry } = &err else { panic!("{err}") };
        assert_eq!((set.as_str(), *given, *entry), ("martians", net("::ffff:0:0/96"), net("0.0.0.0/0")));
        let text = err.to_string();
        assert!(
            text.contains("0.0.0.0/0") && text.contains("--force") && text.contains("nothing was applied"),
            "{text}"
        );
    }
    let err = martians.insert(net("::/0")).unwrap_err();
    assert!(matches!(err, RuleError::SetWholeFamily { entry, .. } if entry == net("::/0")), "{err}");
    assert_eq!(martians.iter().unwrap().collect::<Vec<_>>(), before, "the set is unchanged");
    // Removing one is never refused.
    assert_eq!(martians.remove_all([net("0.0.0.0/0")]).unwrap().changed, 0);

    let ids = add(&f, &["drop from set martians"]);
    let mut t = Table::new(&f, "a whole-family set entry");
    t.pass("the refused entry matches nothing", &tcp("198.51.100.7", 22, ACK), &[]);
    let change = martians.clone().permit_whole_family().extend([net("::ffff:0:0/96"), net("fc00::/7")]).unwrap();
    assert_eq!(change.changed, 2);
    assert_eq!(change.normalized, [(net("::ffff:0:0/96"), net("0.0.0.0/0"))]);
    assert!(martians.contains(net("0.0.0.0/0")).unwrap(), "permitted: stored");
    t.drop("permitted: every IPv4 source is in the set", &tcp("198.51.100.7", 22, ACK), &[ids[0]]);
    t.pass("IPv6 outside fc00::/7 is not", &tcp("2001:db8::7", 22, ACK), &[]);
    t.finish();
}
