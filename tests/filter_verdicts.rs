//! The filter's verdict matrix, through BPF_PROG_TEST_RUN on the real
//! program with its live maps (`Filter::test_run`).
//!
//! Every case is a fixture (xdpguard::testing::fixture) in a table per
//! test: the XDP action, that the frame comes back unchanged (the filter
//! never rewrites), and the counter deltas: exactly one counter moves, by
//! one packet and the frame's length in bytes. A table reports every
//! failing row, with a field-by-field diff of the frames.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::*;
use xdpguard::{Counter, Filter, FilterStats, IpNetwork, MalformedPolicy, Verdict, XdpAction};

/// Which counter a packet must land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Passed,
    Allowlisted,
    BlockedV4,
    BlockedV6,
    Malformed,
    NonIp,
}

impl Reason {
    fn row(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::Allowlisted => "allowlisted",
            Reason::BlockedV4 => "blocked_v4",
            Reason::BlockedV6 => "blocked_v6",
            Reason::Malformed => "malformed",
            Reason::NonIp => "non_ip",
        }
    }

    /// The action that goes with a reason under a malformed policy.
    fn action(self, policy: MalformedPolicy) -> XdpAction {
        match self {
            Reason::BlockedV4 | Reason::BlockedV6 => XdpAction::Drop,
            Reason::Malformed if policy == MalformedPolicy::Drop => XdpAction::Drop,
            _ => XdpAction::Pass,
        }
    }

    fn blocked(addr: IpAddr) -> Reason {
        if addr.is_ipv4() {
            Reason::BlockedV4
        } else {
            Reason::BlockedV6
        }
    }
}

fn load() -> Filter {
    Filter::builder()
        .v4_capacity(4096)
        .v6_capacity(4096)
        .load()
        .unwrap_or_else(|e| panic!("loading the filter failed; these tests need root and a BPF-capable kernel: {e}"))
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn block(f: &Filter, s: &str) {
    assert!(f.blocklist().insert(net(s)).unwrap().changed, "block {s}");
}

fn allow(f: &Filter, s: &str) {
    assert!(f.allowlist().insert(net(s)).unwrap().changed, "allow {s}");
}

/// A test's table of fixtures: every row runs at once (list edits between
/// rows take effect for the next), and every failing row is reported when
/// the table drops at the end of the test (FixtureTable panics then).
struct Matrix<'f> {
    f: &'f Filter,
    table: FixtureTable<'f, Filter>,
}

impl<'f> Matrix<'f> {
    fn new(f: &'f Filter, name: &str) -> Self {
        Matrix { f, table: FixtureTable::new(f, name) }
    }

    /// `frame` gets the action of `reason` under the current malformed
    /// policy, comes back unchanged, and moves exactly the `reason` counter.
    fn expect(&mut self, frame: &[u8], reason: Reason, what: &str) {
        let action = reason.action(self.f.malformed_policy());
        self.table.run(
            Fixture::new(format!("{what} ({reason:?})"), frame).action(action).unchanged().counts(&[reason.row()]),
        );
    }

    /// A packet from a source in neither list passes; counted as passed.
    fn pass(&mut self, src: IpAddr, l4: L4, vlan: Vlan) {
        self.expect(&packet_from(src, l4, vlan), Reason::Passed, &format!("{src} {l4:?} {vlan:?}: pass"));
    }

    fn blocked(&mut self, src: IpAddr, l4: L4, vlan: Vlan) {
        self.expect(&packet_from(src, l4, vlan), Reason::blocked(src), &format!("{src} {l4:?} {vlan:?}: blocked"));
    }

    fn allowed(&mut self, src: IpAddr, l4: L4, vlan: Vlan) {
        self.expect(&packet_from(src, l4, vlan), Reason::Allowlisted, &format!("{src} {l4:?} {vlan:?}: allowlisted"));
    }

    /// The same verdict for all three transports.
    fn all_l4(&mut self, src: IpAddr, reason: Reason) {
        for l4 in ALL_L4 {
            self.expect(&packet_from(src, l4, Vlan::None), reason, &format!("{src} {l4:?}"));
        }
    }
}

/// An IPv4 UDP packet from `src` (to build on: `.l4(...)`, `.vlan(...)`,
/// `.options(...)`, `.frag(...)`).
fn v4b(src: &str) -> FrameBuilder {
    v4a(src.parse().unwrap())
}

/// An IPv6 UDP packet from `src` (to build on).
fn v6b(src: &str) -> FrameBuilder {
    v6a(src.parse().unwrap())
}

fn v4a(src: Ipv4Addr) -> FrameBuilder {
    Frame::builder().ipv4(src, DST_V4).udp(40000, 53).payload(PAYLOAD)
}

fn v6a(src: Ipv6Addr) -> FrameBuilder {
    Frame::builder().ipv6(src, DST_V6).udp(40000, 53).payload(PAYLOAD)
}

/// An ARP request, optionally VLAN-tagged.
fn arp(vlan: Vlan) -> Frame {
    Frame::builder().vlan(vlan).arp_request(Ipv4Addr::new(192, 0, 2, 1), DST_V4).build()
}

/// A frame of an arbitrary EtherType (or 802.3 length) with a payload.
fn ether_raw(ether_type: u16, payload_len: usize) -> Frame {
    Frame::builder().ether_type(ether_type).payload(&vec![0xAB; payload_len]).build()
}

fn blocked_or_pass(f: &Filter, src: IpAddr) -> Reason {
    match f.verdict(src).unwrap() {
        Verdict::Pass => Reason::Passed,
        Verdict::Allow(_) => Reason::Allowlisted,
        Verdict::Block(_) => Reason::blocked(src),
    }
}

#[test]
fn v4_blocked_host_and_its_neighbours() {
    let f = load();
    let mut m = Matrix::new(&f, "v4_blocked_host_and_its_neighbours");
    block(&f, "203.0.113.7/32");
    m.all_l4(v4("203.0.113.7"), Reason::BlockedV4);
    m.all_l4(v4("203.0.113.6"), Reason::Passed);
    m.all_l4(v4("203.0.113.8"), Reason::Passed);
    // Same host byte in the neighbouring /24s.
    m.all_l4(v4("203.0.112.7"), Reason::Passed);
    m.all_l4(v4("203.0.114.7"), Reason::Passed);
    assert_eq!(f.verdict(v4("203.0.113.7")).unwrap(), Verdict::Block(net("203.0.113.7/32")));
}

/// A /18's level-1 line holds fifteen hosts inline; the rest of its listed
/// hosts are found in the host buckets (the line's overflow mark). Forty
/// hosts in one /24, an allowlisted host in a blocked /24 of the same /18,
/// then most hosts removed and some listed again, one edit at a time.
#[test]
fn v4_hosts_past_a_lines_inline_slots() {
    let f = load();
    let mut m = Matrix::new(&f, "v4_hosts_past_a_lines_inline_slots");
    let host = |i: u32| format!("203.0.113.{i}");
    for i in 1..=40 {
        block(&f, &format!("{}/32", host(i)));
    }
    block(&f, "203.0.112.0/24");
    allow(&f, "203.0.112.9/32");
    for i in 1..=40 {
        m.all_l4(v4(&host(i)), Reason::BlockedV4);
    }
    for s in ["203.0.113.0", "203.0.113.41", "203.0.113.255", "203.0.114.1"] {
        m.all_l4(v4(s), Reason::Passed);
    }
    m.all_l4(v4("203.0.112.9"), Reason::Allowlisted);
    m.all_l4(v4("203.0.112.10"), Reason::BlockedV4);
    for i in (1..=40).filter(|i| i % 4 != 0) {
        assert!(f.blocklist().remove(net(&format!("{}/32", host(i)))).unwrap().changed);
    }
    for i in [3, 5, 7] {
        block(&f, &format!("{}/32", host(i)));
    }
    for i in 1..=40 {
        let listed = i % 4 == 0 || [3, 5, 7].contains(&i);
        m.all_l4(v4(&host(i)), if listed { Reason::BlockedV4 } else { Reason::Passed });
    }
    m.all_l4(v4("203.0.112.9"), Reason::Allowlisted);
}

#[test]
fn v4_blocked_ranges_inside_and_both_boundaries() {
    let f = load();
    let mut m = Matrix::new(&f, "v4_blocked_ranges_inside_and_both_boundaries");
    // (prefix, inside addresses, addresses just outside on both sides)
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "198.51.100.0/24",
            &["198.51.100.0", "198.51.100.1", "198.51.100.128", "198.51.100.255"],
            &["198.51.99.255", "198.51.101.0"],
        ),
        ("192.0.2.32/27", &["192.0.2.32", "192.0.2.47", "192.0.2.63"], &["192.0.2.31", "192.0.2.64"]),
        ("172.16.0.0/12", &["172.16.0.0", "172.20.1.2", "172.31.255.255"], &["172.15.255.255", "172.32.0.0"]),
        ("100.64.8.0/22", &["100.64.8.0", "100.64.11.255"], &["100.64.7.255", "100.64.12.0"]),
        ("10.9.8.6/31", &["10.9.8.6", "10.9.8.7"], &["10.9.8.5", "10.9.8.8"]),
    ];
    for (prefix, inside, outside) in cases {
        block(&f, prefix);
        for a in *inside {
            m.all_l4(v4(a), Reason::BlockedV4);
            assert_eq!(f.verdict(v4(a)).unwrap(), Verdict::Block(net(prefix)));
        }
        for a in *outside {
            m.all_l4(v4(a), Reason::Passed);
        }
    }
}

#[test]
fn v4_whole_address_space_and_top_edge() {
    let f = load();
    let mut m = Matrix::new(&f, "v4_whole_address_space_and_top_edge");
    block(&f, "255.255.255.254/31");
    m.all_l4(v4("255.255.255.255"), Reason::BlockedV4);
    m.all_l4(v4("255.255.255.253"), Reason::Passed);
    block(&f, "0.0.0.0/32");
    m.all_l4(v4("0.0.0.0"), Reason::BlockedV4);
    m.all_l4(v4("0.0.0.1"), Reason::Passed);
    // /0 covers everything (asked for: the blocklist refuses it otherwise);
    // an allowlisted /32 still passes.
    assert!(f.blocklist().permit_whole_family().insert(net("0.0.0.0/0")).unwrap().changed);
    allow(&f, "192.0.2.1/32");
    m.all_l4(v4("8.8.8.8"), Reason::BlockedV4);
    m.all_l4(v4("192.0.2.1"), Reason::Allowlisted);
    m.all_l4(v4("192.0.2.2"), Reason::BlockedV4);
    // IPv6 is untouched by an IPv4 /0.
    m.all_l4(v6("2001:db8::1"), Reason::Passed);
}

/// An IPv4-mapped IPv6 entry names IPv4 sources: it is stored as the IPv4
/// entry and drops their IPv4 packets, whichever list API it came through.
#[test]
fn ipv4_mapped_entries_match_ipv4_packets() {
    let f = load();
    let mut m = Matrix::new(&f, "ipv4_mapped_entries_match_ipv4_packets");
    let change = f.blocklist().insert(net("::ffff:192.0.2.5")).unwrap();
    assert!(change.changed && change.entry.ipv4_mapped, "{change:?}");
    assert_eq!(change.entry.network, net("192.0.2.5/32"));
    m.all_l4(v4("192.0.2.5"), Reason::BlockedV4);
    m.all_l4(v4("192.0.2.4"), Reason::Passed);
    m.all_l4(v4("192.0.2.6"), Reason::Passed);
    assert_eq!(f.verdict(v4("192.0.2.5")).unwrap(), Verdict::Block(net("192.0.2.5/32")));
    // An IPv6 packet with the mapped source (not meant for the wire) is
    // judged by the IPv6 entries, of which there are none; a shorter IPv6
    // prefix around the mapped range (as the docs suggest) drops it.
    m.all_l4(v6("::ffff:192.0.2.5"), Reason::Passed);
    assert_eq!(f.verdict(v6("::ffff:192.0.2.5")).unwrap(), Verdict::Pass);
    let change = f.blocklist().insert(net("::fffe:0:0/95")).unwrap();
    assert!(change.changed && !change.entry.ipv4_mapped && change.entry.network.is_ipv6(), "{change:?}");
    m.all_l4(v6("::ffff:192.0.2.5"), Reason::BlockedV6);
    m.all_l4(v4("192.0.2.6"), Reason::Passed);
    assert!(f.blocklist().remove(net("::fffe:0:0/95")).unwrap().changed);
    assert_eq!(f.blocklist().iter().unwrap().collect::<Vec<_>>(), [net("192.0.2.5/32")]);
    assert!(f.blocklist().contains(net("::ffff:192.0.2.5/128")).unwrap());
    assert!(f.blocklist().contains(net("192.0.2.5/32")).unwrap());

    // Prefixes, in bulk: /120 is a /24, host bits cleared on the IPv4 side.
    let change = f.blocklist().extend([net("::ffff:198.51.100.77/120"), net("2001:db8::/32")]).unwrap();
    assert_eq!(change.changed, 2);
    assert_eq!(change.normalized, [(net("::ffff:198.51.100.77/120"), net("198.51.100.0/24"))]);
    for h in [0, 1, 77, 255] {
        m.expect(&udp_from(v4(&format!("198.51.100.{h}"))), Reason::BlockedV4, &format!("198.51.100.{h}"));
    }
    m.all_l4(v4("198.51.101.0"), Reason::Passed);
    // A hole through the allowlist, given mapped too.
    f.allowlist().insert(net("::ffff:198.51.100.77")).unwrap();
    m.all_l4(v4("198.51.100.77"), Reason::Allowlisted);
    m.all_l4(v4("198.51.100.78"), Reason::BlockedV4);
    assert_eq!(f.allowlist().iter().unwrap().collect::<Vec<_>>(), [net("198.51.100.77/32")]);

    // Removing by either form removes the IPv4 entry.
    assert!(f.blocklist().remove(net("192.0.2.5/32")).unwrap().changed);
    m.all_l4(v4("192.0.2.5"), Reason::Passed);
    f.blocklist().insert(net("::ffff:192.0.2.5")).unwrap();
    assert!(f.blocklist().remove(net("::ffff:192.0.2.5")).unwrap().changed);
    m.all_l4(v4("192.0.2.5"), Reason::Passed);
    // A replace stores the IPv4 form as well.
    f.blocklist().replace([net("::ffff:203.0.113.0/120")]).unwrap();
    assert_eq!(f.blocklist().iter().unwrap().collect::<Vec<_>>(), [net("203.0.113.0/24")]);
    m.all_l4(v4("203.0.113.9"), Reason::BlockedV4);
    m.all_l4(v4("198.51.100.1"), Reason::Passed);
    m.all_l4(v6("2001:db8::1"), Reason::Passed);
}

#[test]
fn v6_blocked_host_and_its_neighbours() {
    let f = load();
    let mut m = Matrix::new(&f, "v6_blocked_host_and_its_neighbours");
    block(&f, "2001:db8::7/128");
    m.all_l4(v6("2001:db8::7"), Reason::BlockedV6);
    m.all_l4(v6("2001:db8::6"), Reason::Passed);
    m.all_l4(v6("2001:db8::8"), Reason::Passed);
    m.all_l4(v6("2001:db8:0:1::7"), Reason::Passed);
    assert_eq!(f.verdict(v6("2001:db8::7")).unwrap(), Verdict::Block(net("2001:db8::7/128")));
}

/// Entries of /48 and longer sit in their /48's chain until it holds more
/// than nine; then it is marked dense and they move to their own chains
/// (src/filter/v6_tables.rs). Hosts of one /48 added one by one past that
/// point and removed again, beside an allowlisted host in a blocked /64, a
/// /40 behind them all (shorter than the anchor, probed on its own), and a
/// sparse /48 next door: after every edit every probe reads its verdict.
#[test]
fn v6_a_slash48_turning_dense_and_back() {
    let f = load();
    let mut m = Matrix::new(&f, "v6_a_slash48_turning_dense_and_back");
    let (b, a, p) = (Reason::BlockedV6, Reason::Allowlisted, Reason::Passed);
    block(&f, "2001:db8:5:9::/64");
    allow(&f, "2001:db8:5:9::a/128");
    block(&f, "2001:db8:6::1/128");
    let host = |i: usize| format!("2001:db8:5::{:x}", 0x100 + i);
    let check = |m: &mut Matrix<'_>, listed: usize, behind: Reason| {
        for i in 0..10 {
            m.all_l4(v6(&host(i)), if i < listed { b } else { behind });
        }
        m.all_l4(v6("2001:db8:5:9::a"), a);
        m.all_l4(v6("2001:db8:5:9::b"), b);
        m.all_l4(v6("2001:db8:5:a::1"), behind);
        m.all_l4(v6("2001:db8:6::1"), b);
        m.all_l4(v6("2001:db8:6::2"), behind);
    };
    for behind in [p, b] {
        for i in 0..10 {
            check(&mut m, i, behind);
            block(&f, &format!("{}/128", host(i)));
        }
        check(&mut m, 10, behind);
        for i in (0..10).rev() {
            f.blocklist().remove(net(&format!("{}/128", host(i)))).unwrap();
            check(&mut m, i, behind);
        }
        if behind == p {
            // The second round with a /40 behind every /48 of the test.
            block(&f, "2001:db8::/40");
        }
    }
    assert_eq!(f.verdict(v6("2001:db8:5:a::1")).unwrap(), Verdict::Block(net("2001:db8::/40")));
}

#[test]
fn v6_blocked_ranges_inside_and_both_boundaries() {
    let f = load();
    let mut m = Matrix::new(&f, "v6_blocked_ranges_inside_and_both_boundaries");
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "2001:db8:1::/48",
            &["2001:db8:1::", "2001:db8:1::1", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"],
            &["2001:db8:0:ffff:ffff:ffff:ffff:ffff", "2001:db8:2::"],
        ),
        (
            "2001:db8:aa:8::/61",
            &["2001:db8:aa:8::", "2001:db8:aa:f:ffff:ffff:ffff:ffff"],
            &["2001:db8:aa:7:ffff:ffff:ffff:ffff", "2001:db8:aa:10::"],
        ),
        (
            "2001:db8:bb:1::/64",
            &["2001:db8:bb:1::", "2001:db8:bb:1:8000::1"],
            &["2001:db8:bb:0:ffff:ffff:ffff:ffff", "2001:db8:bb:2::"],
        ),
        ("2001:db8:cc::4/127", &["2001:db8:cc::4", "2001:db8:cc::5"], &["2001:db8:cc::3", "2001:db8:cc::6"]),
        // Boundaries in every 32-bit word of the address.
        (
            "2001:db8:dd00::/40",
            &["2001:db8:dd00::", "2001:db8:ddff:ffff::1"],
            &["2001:db8:dcff:ffff:ffff:ffff:ffff:ffff", "2001:db8:de00::"],
        ),
        (
            "2001:db8:ee::1:0:0/96",
            &["2001:db8:ee::1:0:0", "2001:db8:ee::1:ffff:ffff"],
            &["2001:db8:ee::ffff:ffff", "2001:db8:ee::2:0:0"],
        ),
        (
            "3000::/4",
            &["3000::", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["2fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "4000::"],
        ),
    ];
    for (prefix, inside, outside) in cases {
        block(&f, prefix);
        for a in *inside {
            m.all_l4(v6(a), Reason::BlockedV6);
            assert_eq!(f.verdict(v6(a)).unwrap(), Verdict::Block(net(prefix)));
        }
        for a in *outside {
            m.all_l4(v6(a), Reason::Passed);
        }
    }
    // IPv4 is untouched by IPv6 entries.
    m.all_l4(v4("192.0.2.1"), Reason::Passed);
}

#[test]
fn overlapping_prefixes_and_removal_that_keeps_coverage() {
    let f = load();
    let mut m = Matrix::new(&f, "overlapping_prefixes_and_removal_that_keeps_coverage");
    for p in ["198.18.0.0/15", "198.18.5.0/24", "198.18.5.77/32", "198.18.5.64/26"] {
        block(&f, p);
    }
    let probes = ["198.18.5.77", "198.18.5.78", "198.18.5.1", "198.19.200.1", "198.17.255.255", "198.20.0.0"];
    let mut check = |want: &[Reason]| {
        for (a, &r) in probes.iter().zip(want) {
            m.all_l4(v4(a), r);
        }
    };
    let (b, p) = (Reason::BlockedV4, Reason::Passed);
    check(&[b, b, b, b, p, p]);
    assert_eq!(f.verdict(v4("198.18.5.77")).unwrap(), Verdict::Block(net("198.18.5.77/32")));
    // Removing the /24 and the /32 leaves everything covered by the /15 and /26.
    f.blocklist().remove(net("198.18.5.0/24")).unwrap();
    f.blocklist().remove(net("198.18.5.77/32")).unwrap();
    check(&[b, b, b, b, p, p]);
    assert_eq!(f.verdict(v4("198.18.5.77")).unwrap(), Verdict::Block(net("198.18.5.64/26")));
    // Removing the /15 leaves the /26 only.
    f.blocklist().remove(net("198.18.0.0/15")).unwrap();
    check(&[b, b, p, p, p, p]);
    // Removing something never listed changes nothing.
    assert!(!f.blocklist().remove(net("198.18.5.0/24")).unwrap().changed);
    check(&[b, b, p, p, p, p]);
    f.blocklist().remove(net("198.18.5.64/26")).unwrap();
    check(&[p, p, p, p, p, p]);

    // IPv6: /32 ⊃ /48 ⊃ /64 ⊃ /128.
    for p in ["2001:db8::/32", "2001:db8:5::/48", "2001:db8:5:6::/64", "2001:db8:5:6::9/128"] {
        block(&f, p);
    }
    let b6 = Reason::BlockedV6;
    let probes6 = ["2001:db8:5:6::9", "2001:db8:5:6::a", "2001:db8:5:7::1", "2001:db8:9::1", "2001:db9::1"];
    let mut check6 = |want: &[Reason]| {
        for (a, &r) in probes6.iter().zip(want) {
            m.all_l4(v6(a), r);
        }
    };
    check6(&[b6, b6, b6, b6, p]);
    f.blocklist().remove(net("2001:db8:5:6::/64")).unwrap();
    f.blocklist().remove(net("2001:db8:5:6::9/128")).unwrap();
    check6(&[b6, b6, b6, b6, p]);
    f.blocklist().remove(net("2001:db8::/32")).unwrap();
    check6(&[b6, b6, b6, p, p]);
    f.blocklist().remove(net("2001:db8:5::/48")).unwrap();
    check6(&[p, p, p, p, p]);
}

#[test]
fn allowlist_holes_inside_blocked_ranges() {
    let f = load();
    let mut m = Matrix::new(&f, "allowlist_holes_inside_blocked_ranges");
    let (b, a, p) = (Reason::BlockedV4, Reason::Allowlisted, Reason::Passed);
    block(&f, "198.51.100.0/24");
    allow(&f, "198.51.100.128/25");
    allow(&f, "198.51.100.5/32");
    for (addr, r) in [
        ("198.51.100.4", b),
        ("198.51.100.5", a),
        ("198.51.100.6", b),
        ("198.51.100.127", b),
        ("198.51.100.128", a),
        ("198.51.100.255", a),
        ("198.51.101.0", p),
    ] {
        m.all_l4(v4(addr), r);
    }
    assert_eq!(f.verdict(v4("198.51.100.200")).unwrap(), Verdict::Allow(net("198.51.100.128/25")));
    // An allowlisted source outside every blocked range is counted as allowlisted.
    allow(&f, "192.0.2.0/24");
    m.all_l4(v4("192.0.2.9"), a);

    // An allow entry SHORTER than a block entry inside it still wins.
    allow(&f, "10.0.0.0/8");
    block(&f, "10.1.2.0/24");
    block(&f, "10.1.3.4/32");
    m.all_l4(v4("10.1.2.3"), a);
    m.all_l4(v4("10.1.3.4"), a);
    assert_eq!(f.verdict(v4("10.1.2.3")).unwrap(), Verdict::Allow(net("10.0.0.0/8")));
    // Removing the allow entry re-exposes the blocks, and only them.
    f.allowlist().remove(net("10.0.0.0/8")).unwrap();
    m.all_l4(v4("10.1.2.3"), b);
    m.all_l4(v4("10.1.3.4"), b);
    m.all_l4(v4("10.1.3.5"), p);
    // Removing the /25 hole: its hosts are blocked again, except the /32 hole.
    f.allowlist().remove(net("198.51.100.128/25")).unwrap();
    m.all_l4(v4("198.51.100.128"), b);
    m.all_l4(v4("198.51.100.5"), a);
    // The same prefix in both lists: allow wins.
    block(&f, "203.0.113.0/24");
    allow(&f, "203.0.113.0/24");
    m.all_l4(v4("203.0.113.1"), a);

    // IPv6 equivalents.
    let (b6, p6) = (Reason::BlockedV6, Reason::Passed);
    block(&f, "2001:db8:1::/48");
    allow(&f, "2001:db8:1:2::/64");
    allow(&f, "2001:db8:1:3::3/128");
    for (addr, r) in [
        ("2001:db8:1:1::1", b6),
        ("2001:db8:1:2::1", a),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", a),
        ("2001:db8:1:3::2", b6),
        ("2001:db8:1:3::3", a),
        ("2001:db8:2::1", p6),
    ] {
        m.all_l4(v6(addr), r);
    }
    allow(&f, "2001:db8:f000::/36");
    block(&f, "2001:db8:f001::/48");
    block(&f, "2001:db8:f001::1/128");
    m.all_l4(v6("2001:db8:f001::1"), a);
    m.all_l4(v6("2001:db8:f001::2"), a);
    f.allowlist().remove(net("2001:db8:f000::/36")).unwrap();
    m.all_l4(v6("2001:db8:f001::1"), b6);
    m.all_l4(v6("2001:db8:f001::2"), b6);
    m.all_l4(v6("2001:db8:f002::1"), p6);
}

#[test]
fn vlan_tags_one_and_two() {
    let f = load();
    let mut m = Matrix::new(&f, "vlan_tags_one_and_two");
    block(&f, "198.51.100.0/24");
    block(&f, "2001:db8:bad::/48");
    let tags = [Vlan::None, Vlan::Dot1Q(100), Vlan::Dot1AdDot1Q(200, 300), Vlan::Dot1QDot1Q(10, 20)];
    for vlan in tags {
        for l4 in ALL_L4 {
            m.blocked(v4("198.51.100.9"), l4, vlan);
            m.pass(v4("198.51.101.9"), l4, vlan);
            m.blocked(v6("2001:db8:bad::9"), l4, vlan);
            m.pass(v6("2001:db8:bad1::9"), l4, vlan);
        }
    }
    allow(&f, "198.51.100.9/32");
    m.allowed(v4("198.51.100.9"), L4::Tcp, Vlan::Dot1AdDot1Q(1, 2));
}

/// A third tag is more than the filter walks: the frame cannot be judged,
/// and the stack strips priority tags (VLAN id 0) at any depth and
/// delivers what is behind them, so three of them carried a blocklisted
/// source past the filter under the default malformed policy (pass).
/// Counted as malformed and dropped whatever the policy; monitor mode
/// passes it.
#[test]
fn vlan_three_tags_are_dropped_whatever_the_policy() {
    let f = load();
    let mut t = FixtureTable::new(&f, "vlan_three_tags_are_dropped_whatever_the_policy");
    block(&f, "198.51.100.0/24");
    let row =
        |what: &str, frame: &[u8], action| Fixture::new(what, frame).action(action).unchanged().counts(&["malformed"]);
    for (what, tags) in [("three VLAN tags", Vlan::Triple(1, 2, 3)), ("three priority tags", Vlan::Triple(0, 0, 0))] {
        for src in ["198.51.100.9", "203.0.113.9"] {
            let frame = v4b(src).vlan(tags).build();
            t.run(row(&format!("{what}, {src}, policy pass"), &frame, XdpAction::Drop));
            f.set_malformed_policy(MalformedPolicy::Drop);
            t.run(row(&format!("{what}, {src}, policy drop"), &frame, XdpAction::Drop));
            f.set_malformed_policy(MalformedPolicy::Pass);
            f.set_monitor(true);
            t.run(row(&format!("{what}, {src}, monitor mode"), &frame, XdpAction::Pass));
            f.set_monitor(false);
        }
    }
    t.finish();
}

#[test]
fn ipv4_options() {
    let f = load();
    let mut m = Matrix::new(&f, "ipv4_options");
    block(&f, "203.0.113.0/24");
    // Router alert (4 bytes); timestamp-ish padding of NOPs to 8; the 40-byte maximum (IHL 15).
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let nops8 = [0x01; 8];
    let mut max = vec![0x01; 39];
    max.push(0x00); // end of options list
    for opts in [&router_alert[..], &nops8[..], &max[..]] {
        for l4 in ALL_L4 {
            for vlan in [Vlan::None, Vlan::Dot1AdDot1Q(5, 6)] {
                let blocked = v4b("203.0.113.50").l4(l4).vlan(vlan).options(opts).build();
                m.expect(&blocked, Reason::BlockedV4, &format!("{} option bytes, blocked", opts.len()));
                let clean = v4b("203.0.114.50").l4(l4).vlan(vlan).options(opts).build();
                m.expect(&clean, Reason::Passed, &format!("{} option bytes, clean", opts.len()));
            }
        }
    }
}

#[test]
fn ipv4_ihl_below_five_is_malformed_and_policy_decides() {
    let f = load();
    let mut m = Matrix::new(&f, "ipv4_ihl_below_five_is_malformed_and_policy_decides");
    block(&f, "203.0.113.0/24");
    assert_eq!(f.malformed_policy(), MalformedPolicy::Pass, "the default policy");
    let frame = v4b("203.0.113.1").build();
    for ihl in 0..5 {
        m.expect(&frame.with_ipv4_ihl(ihl), Reason::Malformed, &format!("IHL {ihl}, policy pass"));
    }
    f.set_malformed_policy(MalformedPolicy::Drop);
    assert_eq!(f.malformed_policy(), MalformedPolicy::Drop);
    for ihl in 0..5 {
        m.expect(&frame.with_ipv4_ihl(ihl), Reason::Malformed, &format!("IHL {ihl}, policy drop"));
    }
    // The policy touches nothing but malformed packets.
    m.expect(&frame, Reason::BlockedV4, "well-formed, blocked, policy drop");
    m.expect(&udp_from(v4("192.0.2.1")), Reason::Passed, "well-formed, clean, policy drop");
    m.expect(&arp(Vlan::None), Reason::NonIp, "ARP, policy drop");
    f.set_malformed_policy(MalformedPolicy::Pass);
    m.expect(&frame.with_ipv4_ihl(4), Reason::Malformed, "IHL 4, back to policy pass");
    // An IHL longer than the frame is malformed too.
    let short = v4b("192.0.2.1").build();
    m.expect(&short.with_ipv4_ihl(15), Reason::Malformed, "IHL 15 beyond the frame");
}

#[test]
fn ip_version_mismatch_is_malformed() {
    let f = load();
    let mut m = Matrix::new(&f, "ip_version_mismatch_is_malformed");
    let four = udp_from(v4("192.0.2.1"));
    let six = udp_from(v6("2001:db8::1"));
    for v in [0, 5, 6, 15] {
        m.expect(&four.with_ip_version(v), Reason::Malformed, &format!("EtherType IPv4, version {v}"));
    }
    for v in [0, 4, 7, 15] {
        m.expect(&six.with_ip_version(v), Reason::Malformed, &format!("EtherType IPv6, version {v}"));
    }
}

#[test]
fn ipv4_fragments_first_and_later() {
    let f = load();
    let mut m = Matrix::new(&f, "ipv4_fragments_first_and_later");
    block(&f, "198.51.100.0/24");
    for l4 in ALL_L4 {
        for (frag, what) in [
            (Frag::First, "first fragment"),
            (Frag::Later { offset: 185, more: true }, "middle fragment"),
            (Frag::Later { offset: 370, more: false }, "last fragment"),
            (Frag::Later { offset: 0x1FFF, more: false }, "largest offset"),
        ] {
            for vlan in [Vlan::None, Vlan::Dot1Q(7)] {
                let blocked = v4b("198.51.100.3").l4(l4).frag(frag).vlan(vlan).build();
                m.expect(&blocked, Reason::BlockedV4, &format!("{what}, blocked, {l4:?}"));
                let clean = v4b("198.51.101.3").l4(l4).frag(frag).vlan(vlan).build();
                m.expect(&clean, Reason::Passed, &format!("{what}, clean, {l4:?}"));
            }
        }
    }
    // A later fragment with options.
    let later = v4b("198.51.100.3").options(&[0x01; 4]).frag(Frag::Later { offset: 1, more: true }).build();
    m.expect(&later, Reason::BlockedV4, "later fragment with options");
}

#[test]
fn ipv6_behind_each_extension_header_and_chains() {
    let f = load();
    let mut m = Matrix::new(&f, "ipv6_behind_each_extension_header_and_chains");
    block(&f, "2001:db8:bad::/48");
    let first = Ext::fragment(0, true);
    let later = Ext::fragment(100, true);
    let last = Ext::fragment(200, false);
    let chains: Vec<(&str, Vec<Ext>)> = vec![
        ("hop-by-hop", vec![Ext::HopByHop]),
        ("routing", vec![Ext::Routing]),
        ("destination options", vec![Ext::DestOpts]),
        ("first fragment", vec![first.clone()]),
        ("later fragment", vec![later.clone()]),
        ("last fragment", vec![last]),
        ("hbh, dst, routing, fragment, dst", vec![Ext::HopByHop, Ext::DestOpts, Ext::Routing, first, Ext::DestOpts]),
        ("hbh, routing, later fragment", vec![Ext::HopByHop, Ext::Routing, later]),
        ("hbh, dst, routing, dst", vec![Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts]),
    ];
    for (what, exts) in &chains {
        for l4 in ALL_L4 {
            for vlan in [Vlan::None, Vlan::Dot1AdDot1Q(3, 4)] {
                let blocked = v6b("2001:db8:bad::1").l4(l4).vlan(vlan).exts(exts).build();
                m.expect(&blocked, Reason::BlockedV6, &format!("{what}, blocked, {l4:?}"));
                let clean = v6b("2001:db8:900d::1").l4(l4).vlan(vlan).exts(exts).build();
                m.expect(&clean, Reason::Passed, &format!("{what}, clean, {l4:?}"));
            }
        }
    }
    allow(&f, "2001:db8:bad::1/128");
    let chain = v6b("2001:db8:bad::1").exts(&chains[6].1).build();
    m.expect(&chain, Reason::Allowlisted, "allowlisted behind a chain");
}

/// The walk covers XDPG_MAX_IPV6_EXT_HDRS (8) extension headers. Behind
/// more than that the source address (in the fixed header, already
/// bounds-checked) still decides, and the packet is not counted as
/// malformed: a longer chain cannot hide a blocked source. Headers past the
/// eighth are not inspected, so one cut short there is not noticed either.
#[test]
fn more_extension_headers_than_the_walk_bound() {
    let f = load();
    let mut m = Matrix::new(&f, "more_extension_headers_than_the_walk_bound");
    block(&f, "2001:db8:bad::/48");
    let cycle = [Ext::DestOpts, Ext::Routing, Ext::DestOpts, Ext::HopByHop];
    for n in 1..=16usize {
        let exts: Vec<Ext> = (0..n).map(|i| cycle[i % cycle.len()].clone()).collect();
        for l4 in ALL_L4 {
            let blocked = v6b("2001:db8:bad::2").l4(l4).exts(&exts).build();
            m.expect(&blocked, Reason::BlockedV6, &format!("{n} extension headers, blocked"));
            let clean = v6b("2001:db8:900d::2").l4(l4).exts(&exts).build();
            m.expect(&clean, Reason::Passed, &format!("{n} extension headers, clean"));
        }
    }
    // Cut short inside header 8 (index 7, the last one walked): malformed.
    // Cut short inside header 9 (index 8, not walked): judged by source.
    let exts: Vec<Ext> = vec![Ext::DestOpts; 10];
    let frame = v6b("2001:db8:bad::2").exts(&exts).build();
    let in8 = frame.span("ext7:destination-options").start + 4;
    m.expect(&frame.cut_consistent(in8), Reason::Malformed, "cut inside the 8th extension header");
    let in9 = frame.span("ext8:destination-options").start + 4;
    m.expect(&frame.cut_consistent(in9), Reason::BlockedV6, "cut inside the 9th extension header");
}

/// Cuts every L2/L3 header short, at its start, one byte in and in its
/// middle, in two ways:
/// - raw: the IP length fields still claim the whole packet. Every cut,
///   even one in the L4 header or payload, is malformed, because the IP
///   packet is longer than the frame.
/// - consistent: the IPv4 total length / IPv6 payload length rewritten to
///   the cut. Cuts inside Ethernet, VLAN, IPv4 (+ options), IPv6 and its
///   extension headers are malformed; cuts in the L4 header or after are
///   NOT (only L2/L3 are checked) and the source decides.
///
/// Frames shorter than an Ethernet header are refused by the kernel's
/// BPF_PROG_TEST_RUN itself (EINVAL), so no counter moves.
#[test]
fn truncation_at_every_header_boundary() {
    let f = load();
    let mut m = Matrix::new(&f, "truncation_at_every_header_boundary");
    block(&f, "203.0.113.0/24");
    block(&f, "2001:db8:bad::/48");
    let src4: Ipv4Addr = "203.0.113.9".parse().unwrap();
    let src6: Ipv6Addr = "2001:db8:bad::9".parse().unwrap();
    let templates = vec![
        ("v4 QinQ + options + UDP", v4a(src4).vlan(Vlan::Dot1AdDot1Q(1, 2)).options(&[0x01; 8]).build()),
        ("v4 802.1Q + TCP", v4a(src4).l4(L4::Tcp).vlan(Vlan::Dot1Q(9)).build()),
        ("v4 ICMP", v4a(src4).l4(L4::Icmp).build()),
        ("v4 later fragment", v4a(src4).frag(Frag::Later { offset: 8, more: true }).build()),
        (
            "v6 802.1Q + hbh,dst,routing,frag,dst + TCP",
            v6a(src6)
                .l4(L4::Tcp)
                .vlan(Vlan::Dot1Q(9))
                .exts(&[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::fragment(0, true), Ext::DestOpts])
                .build(),
        ),
        ("v6 QinQ + UDP", v6a(src6).vlan(Vlan::Dot1AdDot1Q(1, 2)).build()),
        ("v6 ICMPv6", v6a(src6).l4(L4::Icmp).build()),
    ];
    let mut checked = 0;
    for policy in [MalformedPolicy::Pass, MalformedPolicy::Drop] {
        f.set_malformed_policy(policy);
        for (name, frame) in &templates {
            let blocked = if frame.family() == Some(Family::V4) { Reason::BlockedV4 } else { Reason::BlockedV6 };
            let l3_end = frame.l3_end();
            // Every header's cut points, plus every single length in L2/L3.
            let mut cuts: Vec<(usize, String)> = frame.cut_points();
            for len in 0..=l3_end + 2 {
                if !cuts.iter().any(|&(p, _)| p == len) {
                    cuts.push((len, format!("length {len}")));
                }
            }
            cuts.retain(|&(p, _)| p < frame.len());
            for (len, what) in &cuts {
                let what = format!("{name}: cut at {len} ({what}), {policy:?}");
                if *len < 14 {
                    let before = f.stats().unwrap();
                    let err = f.test_run(&frame.cut(*len)).expect_err("the kernel refuses frames under 14 bytes");
                    assert!(err.to_string().contains("Invalid argument"), "{what}: {err}");
                    assert_eq!(f.stats().unwrap().since(&before).total(), Counter::default(), "{what}");
                    continue;
                }
                m.expect(&frame.cut(*len), Reason::Malformed, &format!("{what}, raw"));
                let consistent = if *len < l3_end { Reason::Malformed } else { blocked };
                m.expect(&frame.cut_consistent(*len), consistent, &format!("{what}, consistent lengths"));
                checked += 1;
            }
            // The whole frame, for contrast.
            m.expect(frame, blocked, &format!("{name}: whole frame"));
        }
    }
    assert!(checked > 300, "only {checked} cuts checked");
}

/// Only L2 and L3 are checked: an IP packet whose own length fields are
/// consistent but whose transport header is cut short (or missing) is not
/// malformed; its source decides, for every transport and both families.
#[test]
fn l4_truncation_is_not_malformed() {
    let f = load();
    let mut m = Matrix::new(&f, "l4_truncation_is_not_malformed");
    block(&f, "203.0.113.0/24");
    block(&f, "2001:db8:bad::/48");
    for l4 in ALL_L4 {
        let frames = [
            (v4b("203.0.113.5").l4(l4).build(), Reason::BlockedV4),
            (v4b("192.0.2.5").l4(l4).build(), Reason::Passed),
            (v6b("2001:db8:bad::5").l4(l4).exts(&[Ext::DestOpts]).build(), Reason::BlockedV6),
            (v6b("2001:db8:900d::5").l4(l4).build(), Reason::Passed),
        ];
        for (frame, reason) in &frames {
            let l4_span = frame.spans().iter().find(|s| !s.is_l2_or_l3()).expect("an L4 header").clone();
            assert_ne!(l4_span.name, "payload");
            for len in l4_span.start..l4_span.end() {
                let what = format!("{l4:?} cut {} bytes into {}", len - l4_span.start, l4_span.name);
                m.expect(&frame.cut_consistent(len), *reason, &what);
            }
        }
    }
}

#[test]
fn ip_length_fields_against_the_frame() {
    let f = load();
    let mut m = Matrix::new(&f, "ip_length_fields_against_the_frame");
    block(&f, "203.0.113.0/24");
    block(&f, "2001:db8:bad::/48");
    let frame4 = v4b("203.0.113.1").options(&[0x01; 4]).build();
    let ip_len = (frame4.len() - frame4.l3()) as u16;
    m.expect(&frame4.with_ipv4_total_len(ip_len + 1), Reason::Malformed, "IPv4 total length one beyond the frame");
    m.expect(&frame4.with_ipv4_total_len(u16::MAX), Reason::Malformed, "IPv4 total length 65535");
    m.expect(&frame4.with_ipv4_total_len(23), Reason::Malformed, "IPv4 total length below IHL*4 (24)");
    m.expect(&frame4.with_ipv4_total_len(0), Reason::Malformed, "IPv4 total length 0");
    // Shorter than the frame is Ethernet padding: fine.
    m.expect(&frame4.with_ipv4_total_len(24), Reason::BlockedV4, "IPv4 total length = header only");
    m.expect(&frame4.padded(30), Reason::BlockedV4, "IPv4 with Ethernet padding");
    let clean4 = v4b("192.0.2.1").build();
    m.expect(&clean4.padded(30), Reason::Passed, "clean IPv4 with Ethernet padding");

    let frame6 = v6b("2001:db8:bad::1").exts(&[Ext::HopByHop]).build();
    let payload = (frame6.len() - frame6.l3() - 40) as u16;
    m.expect(&frame6.with_ipv6_payload_len(payload + 1), Reason::Malformed, "IPv6 payload length one beyond the frame");
    m.expect(&frame6.with_ipv6_payload_len(u16::MAX), Reason::Malformed, "IPv6 payload length 65535");
    m.expect(&frame6.padded(30), Reason::BlockedV6, "IPv6 with Ethernet padding");
    // Payload length 0 with a hop-by-hop header is how jumbograms are marked
    // (their length lives in a hop-by-hop option); Linux delivers one with
    // the frame's length even without the option, so it is not malformed
    // and the source decides.
    m.expect(&frame6.with_ipv6_payload_len(0), Reason::BlockedV6, "IPv6 payload length 0 (jumbogram marker)");
    // A payload length that ends inside the extension chain, with the
    // headers still in the frame: the chain is cut short by the packet's
    // own length (the stack trims the packet to it and drops it), and the
    // bytes after it are not part of the packet.
    for len in [4u16, 7] {
        let what = format!("IPv6 payload length {len}, shorter than its hop-by-hop header");
        m.expect(&frame6.with_ipv6_payload_len(len), Reason::Malformed, &what);
    }
    // Payload length 0 without a hop-by-hop header: a 40-byte packet, its
    // transport header missing (not checked); the source decides.
    let udp6 = v6b("2001:db8:bad::1").build();
    m.expect(&udp6.with_ipv6_payload_len(0), Reason::BlockedV6, "IPv6 payload length 0, UDP");
    // A destination-options header past the payload length, the frame
    // holding it as trailing bytes.
    let dst6 = v6b("2001:db8:900d::1").exts(&[Ext::HopByHop, Ext::DestOpts]).build();
    let hbh_end = dst6.span("ext0:hop-by-hop").end() - dst6.l3() - 40;
    let what = "IPv6 payload length ending inside the second extension header";
    m.expect(&dst6.with_ipv6_payload_len(hbh_end as u16 + 4), Reason::Malformed, what);
}

#[test]
fn arp_lldp_and_other_non_ip_pass() {
    let f = load();
    let mut m = Matrix::new(&f, "arp_lldp_and_other_non_ip_pass");
    f.blocklist().permit_whole_family().extend([net("0.0.0.0/0"), net("::/0")]).unwrap();
    for policy in [MalformedPolicy::Pass, MalformedPolicy::Drop] {
        f.set_malformed_policy(policy);
        m.expect(&arp(Vlan::None), Reason::NonIp, "ARP");
        m.expect(&arp(Vlan::Dot1Q(5)), Reason::NonIp, "ARP, 802.1Q");
        m.expect(&arp(Vlan::Dot1AdDot1Q(5, 6)), Reason::NonIp, "ARP, QinQ");
        m.expect(&Frame::builder().lldp().build(), Reason::NonIp, "LLDP");
        m.expect(&ether_raw(0x88B5, 50), Reason::NonIp, "local experimental EtherType");
        m.expect(&ether_raw(0x0040, 64), Reason::NonIp, "802.3 length field");
        // Only an Ethernet header: nothing more to parse for non-IP.
        m.expect(&ether_raw(0x0806, 0), Reason::NonIp, "bare Ethernet header, ARP type");
        // With the /0s, every IP source is blocked.
        m.expect(&udp_from(v4("192.0.2.1")), Reason::BlockedV4, "IPv4 under 0.0.0.0/0");
        m.expect(&udp_from(v6("2001:db8::1")), Reason::BlockedV6, "IPv6 under ::/0");
    }
}

/// Random and mangled frames never make the program abort: every one gets
/// PASS or DROP, exactly one counter moves, and the frame comes back as it
/// went in. The verdict must match what the parser rules predict for the
/// well-formed ones.
#[test]
fn random_frames_never_abort() {
    let f = load();
    block(&f, "198.51.100.0/24");
    block(&f, "2001:db8:bad::/48");
    let mut rng = StdRng::seed_from_u64(0x7e57);
    let reasons =
        [Reason::Passed, Reason::Allowlisted, Reason::BlockedV4, Reason::BlockedV6, Reason::Malformed, Reason::NonIp];
    let mut seen = [0usize; 6];
    for i in 0..3000 {
        let vlan = [Vlan::None, Vlan::Dot1Q(1), Vlan::Dot1AdDot1Q(1, 2)][rng.random_range(0..3)];
        let l4 = ALL_L4[rng.random_range(0..3)];
        let base = if rng.random_bool(0.5) {
            let src = Ipv4Addr::new(198, 51, 100 + rng.random_range(0..2u8), rng.random());
            let opts = vec![0x01; 4 * rng.random_range(0..11usize)];
            v4a(src).l4(l4).vlan(vlan).options(&opts).build()
        } else {
            let src = Ipv6Addr::new(0x2001, 0xdb8, [0xbad, 0xbad1][rng.random_range(0..2)], 0, 0, 0, 0, rng.random());
            let pool = [Ext::HopByHop, Ext::Routing, Ext::DestOpts, Ext::fragment(0, true)];
            let exts: Vec<Ext> = (0..rng.random_range(0..10)).map(|_| pool[rng.random_range(0..4)].clone()).collect();
            v6a(src).l4(l4).vlan(vlan).exts(&exts).build()
        };
        let mut bytes = base.to_vec();
        // Mangle: flip bytes in the L2/L3 headers, then maybe truncate.
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(12..base.l3_end().max(13));
            bytes[at] = rng.random();
        }
        if rng.random_bool(0.3) {
            let len = rng.random_range(14..=bytes.len());
            bytes.truncate(len);
        }
        let before = f.stats().unwrap();
        let run = f.test_run(&bytes).unwrap();
        let delta = f.stats().unwrap().since(&before);
        assert!(matches!(run.action, XdpAction::Pass | XdpAction::Drop), "frame {i}: {:?}\n{bytes:02x?}", run.action);
        assert_eq!(run.frame, bytes, "frame {i} rewritten");
        assert_eq!(delta.total(), Counter { packets: 1, bytes: bytes.len() as u64 }, "frame {i}: one count");
        let moved: Vec<Reason> = reasons
            .iter()
            .copied()
            .filter(|r| delta.rows().iter().any(|&(row, c)| row == r.row() && c.packets == 1))
            .collect();
        assert_eq!(moved.len(), 1, "frame {i}: {delta:?}");
        seen[reasons.iter().position(|&r| r == moved[0]).unwrap()] += 1;
        let dropped = run.action == XdpAction::Drop;
        assert_eq!(dropped, matches!(moved[0], Reason::BlockedV4 | Reason::BlockedV6), "frame {i}: {moved:?}");
        if bytes == base.to_vec() {
            let src = match base.family() {
                Some(Family::V4) => {
                    IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[base.l3() + 12..base.l3() + 16]).unwrap()))
                }
                _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[base.l3() + 8..base.l3() + 24]).unwrap())),
            };
            assert_eq!(moved[0], blocked_or_pass(&f, src), "frame {i}: untouched frame from {src}");
        }
    }
    // The mix must reach every verdict path (allowlist aside: nothing is allowlisted).
    let [passed, _, blocked_v4, blocked_v6, malformed, _] = seen;
    assert!(passed > 300 && blocked_v4 > 300 && blocked_v6 > 300 && malformed > 300, "verdict mix {seen:?}");
}

/// Every counter the matrix relies on is read from the same per-CPU map
/// that reset_stats clears.
#[test]
fn counters_reset() {
    let f = load();
    let mut m = Matrix::new(&f, "counters_reset");
    block(&f, "198.51.100.0/24");
    m.expect(&udp_from(v4("198.51.100.1")), Reason::BlockedV4, "blocked");
    m.expect(&arp(Vlan::None), Reason::NonIp, "ARP");
    assert!(f.stats().unwrap().total().packets >= 2);
    f.reset_stats().unwrap();
    assert_eq!(f.stats().unwrap(), FilterStats::default());
    m.expect(&udp_from(v4("198.51.100.1")), Reason::BlockedV4, "blocked after reset");
}

/// Neighbour and router discovery's ICMPv6 types, named.
const ND_TYPES: [(&str, u8); 5] = [
    ("router solicitation", 133),
    ("router advertisement", 134),
    ("neighbour solicitation", 135),
    ("neighbour advertisement", 136),
    ("redirect", 137),
];

/// An ICMPv6 message of type `kind` from `src` to `dst`, with `hop_limit`.
fn icmp6_frame(src: &str, dst: &str, kind: u8, hop_limit: u8) -> Frame {
    use xdpguard::testing::etherparse::Icmpv6Type;
    Frame::builder()
        .ipv6(src.parse().unwrap(), dst.parse().unwrap())
        .hop_limit(hop_limit)
        .icmpv6(Icmpv6Type::Unknown { type_u8: kind, code_u8: 0, bytes5to8: [0; 4] })
        .payload(&[0; 20])
        .build()
}

/// Neighbour discovery on this link (ICMPv6 133-137, hop limit 255) is not
/// judged by the lists: a default-deny IPv6 filter (`::/0` blocked, a hole
/// allowlisted) keeps resolving its router and neighbours. Other ICMPv6,
/// and ND that came through a router (hop limit below 255), is judged.
#[test]
fn neighbour_discovery_passes_a_blocked_whole_family() {
    let f = load();
    f.blocklist().permit_whole_family().insert(net("::/0")).unwrap();
    allow(&f, "2001:db8:1::/64");
    let icmp6 = |src: &str, kind: u8, hop_limit: u8| icmp6_frame(src, "ff02::1:ff00:2", kind, hop_limit);
    let mut t = FixtureTable::new(&f, "neighbour discovery under a blocked ::/0");
    for (what, kind) in ND_TYPES {
        t.run(Fixture::new(what, icmp6("fe80::1", kind, 255)).action(XdpAction::Pass).unchanged().counts(&["passed"]));
    }
    t.run(Fixture::new("DAD from ::", icmp6("::", 135, 255)).action(XdpAction::Pass).unchanged().counts(&["passed"]));
    t.run(
        Fixture::new("ND through a router: hop limit 254", icmp6("fe80::1", 135, 254))
            .action(XdpAction::Drop)
            .unchanged()
            .counts(&["blocked_v6"]),
    );
    t.run(
        Fixture::new("echo request, hop limit 255", icmp6("fe80::1", 128, 255))
            .action(XdpAction::Drop)
            .unchanged()
            .counts(&["blocked_v6"]),
    );
    t.run(
        Fixture::new("type 138, hop limit 255", icmp6("fe80::1", 138, 255))
            .action(XdpAction::Drop)
            .unchanged()
            .counts(&["blocked_v6"]),
    );
    t.run(
        Fixture::new("UDP from the hole", v6b("2001:db8:1::5").build())
            .action(XdpAction::Pass)
            .unchanged()
            .counts(&["allowlisted"]),
    );
    t.run(
        Fixture::new("UDP from elsewhere", v6b("2001:db8:2::5").build())
            .action(XdpAction::Drop)
            .unchanged()
            .counts(&["blocked_v6"]),
    );
    t.finish();
}

/// Timed blocks exempt on-link neighbour discovery as the lists do: under
/// a timed `::/0` (with an allowlisted hole, the default-deny the refusal
/// of `::/0` advises), the router's advertisements from its link-local
/// address still pass, so allowlisted sources beyond it stay reachable;
/// other ICMPv6 from it, and ND that came through a router (hop limit
/// below 255), are timed-blocked. (A `per src/64 block` rule auto-blocking
/// fe80::/64 is the same lookup.)
#[test]
fn neighbour_discovery_passes_a_timed_whole_family() {
    use std::time::Duration;
    let f = Filter::builder()
        .v4_capacity(1024)
        .v6_capacity(1024)
        .guard(true)
        .load()
        .unwrap_or_else(|e| panic!("loading the filter failed; these tests need root and Linux 6.0+: {e}"));
    allow(&f, "2001:db8:99::/64");
    f.timed_blocks().permit_whole_family().insert(net("::/0"), Duration::from_secs(600)).unwrap();
    let icmp6 = |src: &str, kind: u8, hop_limit: u8| icmp6_frame(src, "ff02::1", kind, hop_limit);
    let mut t = FixtureTable::new(&f, "neighbour discovery under a timed ::/0");
    for (what, kind) in ND_TYPES {
        t.run(Fixture::new(what, icmp6("fe80::1", kind, 255)).action(XdpAction::Pass).unchanged().counts(&["passed"]));
    }
    for (what, kind, hop_limit) in [
        ("echo request, hop limit 255", 128, 255),
        ("neighbour advertisement, hop limit 64", 136, 64),
        ("neighbour solicitation through a router: hop limit 254", 135, 254),
        ("type 138, hop limit 255", 138, 255),
    ] {
        t.run(
            Fixture::new(what, icmp6("fe80::1", kind, hop_limit))
                .action(XdpAction::Drop)
                .unchanged()
                .counts(&["timed_blocked"]),
        );
    }
    t.run(
        Fixture::new("UDP from the hole", v6b("2001:db8:99::5").build())
            .action(XdpAction::Pass)
            .unchanged()
            .counts(&["allowlisted"]),
    );
    t.run(
        Fixture::new("UDP from elsewhere", v6b("2001:db8:2::5").build())
            .action(XdpAction::Drop)
            .unchanged()
            .counts(&["timed_blocked"]),
    );
    // IPv4 is not covered by ::/0 and not touched by the exemption.
    t.run(Fixture::new("IPv4 UDP", v4b("192.0.2.9").build()).action(XdpAction::Pass).unchanged().counts(&["passed"]));
    t.finish();
}
