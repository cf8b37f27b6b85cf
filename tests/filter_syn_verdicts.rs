//! The SYN guard (the last step of the filter's guard stage) through
//! BPF_PROG_TEST_RUN on the real programs with their live maps.
//!
//! Every case is a fixture row: the XDP action, the output frame (unchanged,
//! or the SYN-ACK checked field by field: MACs, IPs and ports swapped, SYN|ACK,
//! ack = seq + 1, MSS option, valid IP and TCP checksums), and exactly one
//! filter reason counter moved. Drop mode: the threshold with the guard's
//! clock stepped (Filter::advance_clock), known sources, monitor mode, a
//! port's policy changed in place (the rate kept or restarted).
//! Cookie mode, IPv4 and IPv6 (untagged and QinQ, the tags kept): the SYN-ACK, its cookie accepted on the
//! matching ACK, a wrong ACK not accepted, monitor mode, unanswerable SYNs.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

mod common {
    pub mod verdict;
}

use std::net::IpAddr;
use std::time::Duration;

use common::verdict::{dst_for, ip};
use xdpguard::testing::etherparse::{self, NetSlice, SlicedPacket, TransportSlice};
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::*;
use xdpguard::{Filter, RuleError, SynPolicy, XdpAction};

fn load() -> Filter {
    common::verdict::load(64)
}

/// MSS 1400, SACK permitted, timestamps, NOP, window scale 7: a Linux SYN's options.
const SYN_OPTIONS: [u8; 20] = [2, 4, 0x05, 0x78, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
const CLIENT_SEQ: u32 = 0x1234_5678;

fn syn(src: &str, sport: u16, dport: u16) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).tcp(sport, dport).syn().seq(CLIENT_SEQ).tcp_options(&SYN_OPTIONS).build()
}

fn bare_syn(src: &str, sport: u16, dport: u16) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).tcp(sport, dport).syn().seq(CLIENT_SEQ).build()
}

/// The client's ACK answering a SYN-ACK with sequence number `cookie`.
fn ack(src: &str, sport: u16, dport: u16, cookie: u32) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).tcp(sport, dport).ack(cookie.wrapping_add(1)).seq(CLIENT_SEQ + 1).build()
}

fn data(src: &str, sport: u16, dport: u16) -> Frame {
    let src = ip(src);
    Frame::builder().ip(src, dst_for(src)).tcp(sport, dport).ack(777).payload(PAYLOAD).build()
}

fn pass(what: &str, frame: &[u8], reason: &'static str) -> Fixture<'static> {
    Fixture::new(what, frame).action(XdpAction::Pass).unchanged().counts(&[reason])
}

fn drop(what: &str, frame: &[u8], reason: &'static str) -> Fixture<'static> {
    Fixture::new(what, frame).action(XdpAction::Drop).unchanged().counts(&[reason])
}

/// One's-complement sum of `bytes` (16-bit big-endian words).
fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// What a SYN-ACK's options must be, byte by byte: (mask, value).
type Want = Vec<(u8, u8)>;

/// The MSS option alone.
fn mss_only(mss: u16) -> Want {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1]].into_iter().map(|b| (0xFF, b)).collect()
}

/// Linux's SYN-ACK options, nf_synproxy's encoding: the MSS; SACK
/// permitted (or two NOPs); timestamps, whose value's low 6 bits carry the
/// client's window scale (15: none) and SACK permission (16), the rest
/// milliseconds (not checked), and whose echo is the client's value; NOP
/// and window scale `ours` (or four NOPs).
fn full_options(mss: u16, ours: u8, client_ws: Option<u8>, sack: bool, client_ts: u32) -> Want {
    let mut w = mss_only(mss);
    let exact = |w: &mut Want, bytes: &[u8]| w.extend(bytes.iter().map(|&b| (0xFF, b)));
    exact(&mut w, if sack { &[4, 2] } else { &[1, 1] });
    exact(&mut w, &[8, 10]);
    w.extend([(0, 0), (0, 0), (0, 0)]);
    w.push((0x3F, client_ws.unwrap_or(15) | if sack { 16 } else { 0 }));
    exact(&mut w, &client_ts.to_be_bytes());
    let window = if client_ws.is_some() { [1, 3, 3, ours] } else { [1, 1, 1, 1] };
    exact(&mut w, &window);
    w
}

/// Checks that `out` is the SYN-ACK answering `syn`, its options `want`;
/// returns its sequence number (the cookie).
fn check_synack(syn: &[u8], l2: usize, out: &[u8], want: &[(u8, u8)]) -> Result<u32, String> {
    let tcp_len = 20 + want.len() as u32;
    let inp = SlicedPacket::from_ethernet(syn).map_err(|e| format!("input: {e}"))?;
    let got = SlicedPacket::from_ethernet(out).map_err(|e| format!("output does not parse: {e}"))?;
    let (ie, oe) = match (&inp.link, &got.link) {
        (Some(etherparse::LinkSlice::Ethernet2(a)), Some(etherparse::LinkSlice::Ethernet2(b))) => (a, b),
        _ => return Err("no Ethernet header".into()),
    };
    let mut errs = Vec::new();
    if oe.source() != ie.destination() || oe.destination() != ie.source() {
        errs.push(format!("MACs not swapped: {:?} -> {:?}", oe.source(), oe.destination()));
    }
    let (src, dst, pseudo) = match got.net {
        Some(NetSlice::Ipv4(ref v4)) => {
            let h = v4.header();
            let Some(NetSlice::Ipv4(ref i4)) = inp.net else { return Err("family changed".into()) };
            if h.ihl() != 5
                || u32::from(h.total_len()) != 20 + tcp_len
                || h.ttl() != 64
                || h.protocol() != etherparse::IpNumber::TCP
            {
                errs.push(format!("IPv4 header: ihl {} total {} ttl {}", h.ihl(), h.total_len(), h.ttl()));
            }
            if h.to_header().calc_header_checksum() != h.header_checksum() {
                errs.push("bad IPv4 header checksum".into());
            }
            let (s, d) = (IpAddr::from(h.source_addr()), IpAddr::from(h.destination_addr()));
            let (is, id) = (IpAddr::from(i4.header().source_addr()), IpAddr::from(i4.header().destination_addr()));
            let mut p = sum16(&h.source(), 0);
            p = sum16(&h.destination(), p) + 6 + tcp_len;
            if s != id || d != is {
                errs.push(format!("IPs not swapped: {s} -> {d}"));
            }
            (s, d, p)
        }
        Some(NetSlice::Ipv6(ref v6)) => {
            let h = v6.header();
            let Some(NetSlice::Ipv6(ref i6)) = inp.net else { return Err("family changed".into()) };
            if u32::from(h.payload_length()) != tcp_len
                || h.hop_limit() != 64
                || h.next_header() != etherparse::IpNumber::TCP
            {
                errs.push(format!("IPv6 header: payload {} hop limit {}", h.payload_length(), h.hop_limit()));
            }
            let (s, d) = (IpAddr::from(h.source_addr()), IpAddr::from(h.destination_addr()));
            let (is, id) = (IpAddr::from(i6.header().source_addr()), IpAddr::from(i6.header().destination_addr()));
            if s != id || d != is {
                errs.push(format!("IPs not swapped: {s} -> {d}"));
            }
            let mut p = sum16(&h.source(), 0);
            p = sum16(&h.destination(), p) + 6 + tcp_len;
            (s, d, p)
        }
        _ => return Err("output is not IP".into()),
    };
    let (Some(TransportSlice::Tcp(it)), Some(TransportSlice::Tcp(ot))) = (&inp.transport, &got.transport) else {
        return Err("no TCP header".into());
    };
    if ot.source_port() != it.destination_port() || ot.destination_port() != it.source_port() {
        errs.push(format!("ports not swapped: {} -> {}", ot.source_port(), ot.destination_port()));
    }
    if !(ot.syn() && ot.ack()) || ot.fin() || ot.rst() || ot.psh() || ot.urg() {
        errs.push("flags are not exactly SYN|ACK".into());
    }
    if ot.acknowledgment_number() != it.sequence_number().wrapping_add(1) {
        errs.push(format!("ack {:#x}, expected seq + 1 = {:#x}", ot.acknowledgment_number(), it.sequence_number() + 1));
    }
    if ot.window_size() != 0 {
        errs.push(format!("window {}, expected 0", ot.window_size()));
    }
    let opts = ot.options();
    if opts.len() != want.len() || opts.iter().zip(want).any(|(&b, &(mask, v))| b & mask != v) {
        errs.push(format!(
            "options {opts:?}, expected {:?} (under masks {:?})",
            want.iter().map(|w| w.1).collect::<Vec<_>>(),
            want.iter().map(|w| w.0).collect::<Vec<_>>()
        ));
    }
    let tcp_bytes = ot.slice();
    if tcp_bytes.len() as u32 != tcp_len {
        errs.push(format!("TCP segment of {} bytes, expected {tcp_len}", tcp_bytes.len()));
    }
    if fold(sum16(tcp_bytes, pseudo)) != 0xFFFF {
        errs.push(format!("bad TCP checksum {:#06x} ({src} -> {dst})", ot.checksum()));
    }
    // The SYN's own L2 header (VLAN tags kept), then IP and TCP.
    if out.get(12..l2) != syn.get(12..l2) {
        errs.push("VLAN tags or EtherType changed".into());
    }
    if out.len() != l2 + if src.is_ipv4() { 20 } else { 40 } + tcp_len as usize {
        errs.push(format!("frame of {} bytes: trailing bytes left", out.len()));
    }
    if errs.is_empty() {
        Ok(ot.sequence_number())
    } else {
        Err(errs.join("; "))
    }
}

/// Runs `frame`, a SYN, as a row that must answer it with a SYN-ACK whose
/// options are `want`; returns its cookie (0 when the row failed: the
/// table reports it).
fn synack_row(t: &mut FixtureTable<'_, Filter>, what: &str, frame: &Frame, want: &[(u8, u8)]) -> u32 {
    let (input, l2, row_want) = (frame.to_vec(), frame.l3(), want.to_vec());
    let run = t.run(
        Fixture::new(what, frame.bytes())
            .action(XdpAction::Tx)
            .check(move |out| check_synack(&input, l2, out, &row_want).map(drop_value))
            .counts_packets(&["syn_cookies_sent"]),
    );
    let out = run.expect("the row ran").frame;
    check_synack(frame.bytes(), l2, &out, want).unwrap_or(0)
}

/// Moves the guard's clock to just after the start of a one-second rate
/// window: the steps that follow (a few ms) then fall in one window.
fn align(f: &Filter) {
    common::verdict::align(f, Duration::from_secs(1));
}

#[test]
fn drop_mode_threshold_known_sources_and_monitor() {
    let f = load();
    f.syn_guard().protect(8080, SynPolicy::drop_above(3)).expect("protect 8080");
    align(&f);
    let mut t = FixtureTable::new(&f, "SYN guard, drop mode (threshold 3/s)");
    for i in 0..3u16 {
        t.run(pass(&format!("SYN {i} under the threshold"), &syn("198.51.100.1", 1000 + i, 8080), "passed"));
    }
    t.run(drop("4th SYN this second, unknown source", &syn("198.51.100.2", 2000, 8080), "syn_dropped"));
    t.run(drop("IPv6, unknown source", &syn("2001:db8::7", 2001, 8080), "syn_dropped"));
    t.run(pass("an unprotected port", &syn("198.51.100.2", 2002, 8081), "passed"));
    t.run(pass("an ACK over the threshold: no one becomes known", &ack("198.51.100.2", 2000, 8080, 5), "passed"));
    t.run(drop("so its next SYN is dropped", &syn("198.51.100.2", 2003, 8080), "syn_dropped"));
    let syns = f.syn_guard().status().unwrap()[0].stats.syns;
    let synack = Frame::builder()
        .ip(ip("198.51.100.2"), dst_for(ip("198.51.100.2")))
        .tcp(2003, 8080)
        .tcp_flags(0x12)
        .ack_number(777)
        .build();
    t.run(pass("a SYN with ACK set is not a new connection", &synack, "passed"));
    assert_eq!(f.syn_guard().status().unwrap()[0].stats.syns, syns, "a SYN|ACK is not counted as a SYN");

    // Two seconds later the rate is 0 again: a handshake's ACK makes the source known.
    f.advance_clock(Duration::from_secs(2)).unwrap();
    t.run(pass("an ACK under the threshold", &ack("198.51.100.9", 3000, 8080, 5), "passed"));
    for i in 0..3u16 {
        t.run(pass(&format!("SYN {i} from a random source"), &syn("203.0.113.50", 4000 + i, 8080), "passed"));
    }
    t.run(drop("over the threshold again: unknown dropped", &syn("203.0.113.51", 4100, 8080), "syn_dropped"));
    t.run(pass("the known source still connects", &syn("198.51.100.9", 3001, 8080), "passed"));

    f.set_monitor(true);
    t.run(pass("filter monitor mode: would drop", &syn("203.0.113.52", 4101, 8080), "would_drop_syn"));
    f.set_monitor(false);
    f.syn_guard().protect(8080, SynPolicy::drop_above(3).with_monitor(true)).unwrap();
    t.run(pass("port monitor mode: would drop", &syn("203.0.113.53", 4102, 8080), "would_drop_syn"));
    f.syn_guard().protect(8080, SynPolicy::drop_above(3)).unwrap();
    t.run(drop("monitor off again", &syn("203.0.113.54", 4103, 8080), "syn_dropped"));
    f.blocklist().insert("203.0.113.60/32".parse().unwrap()).unwrap();
    f.allowlist().insert("203.0.113.61/32".parse().unwrap()).unwrap();
    t.run(pass("the allowlist comes first", &syn("203.0.113.61", 4104, 8080), "allowlisted"));
    t.run(drop("the blocklist comes first", &syn("203.0.113.60", 4105, 8080), "blocked_v4"));
    t.finish();

    let st = f.syn_guard().status().unwrap();
    assert_eq!(st.len(), 1);
    let s = st[0].stats;
    assert_eq!((st[0].port, s.syns, s.dropped, s.known_passed, s.would_drop), (8080, 14, 5, 1, 2), "{s:?}");
    assert!(st[0].rate >= 4, "the rate estimate counts this second's SYNs: {}", st[0].rate);
    assert_eq!(f.syn_guard().known_sources().unwrap(), 1);

    // Unprotected: nothing is dropped, and with no rules the guard is not called.
    assert!(f.syn_guard().unprotect(8080).unwrap());
    assert!(!f.syn_guard().unprotect(8080).unwrap());
    let mut t = FixtureTable::new(&f, "unprotected");
    t.run(pass("SYN after unprotect", &syn("203.0.113.55", 4106, 8080), "passed"));
    t.finish();
    assert!(f.syn_guard().status().unwrap().is_empty());
}

/// A protected port's policy changed in place, within a mode and between
/// modes (the slot is rewritten field by field, in an order that keeps
/// each mode's fields whole for a packet reading them meanwhile): the rate
/// is kept within drop mode, starts afresh on entering it, is not shown in
/// cookie mode, and the port reads back each new policy.
#[test]
fn policy_changes_keep_the_rate_within_drop_mode_and_restart_it_on_entering() {
    let f = load();
    let g = f.syn_guard();
    g.protect(8080, SynPolicy::drop_above(3)).unwrap();
    align(&f);
    let mut t = FixtureTable::new(&f, "SYN guard, policy changes");
    for i in 0..3u16 {
        t.run(pass(&format!("SYN {i} under the threshold"), &syn("198.51.100.1", 1000 + i, 8080), "passed"));
    }
    t.run(drop("the 4th, unknown source", &syn("198.51.100.2", 2000, 8080), "syn_dropped"));
    g.protect(8080, SynPolicy::drop_above(5)).unwrap();
    t.run(pass("the 5th: under the raised threshold", &syn("198.51.100.3", 2001, 8080), "passed"));
    t.run(drop("the 6th: over it, the rate was kept", &syn("198.51.100.4", 2002, 8080), "syn_dropped"));

    let cookies = SynPolicy::cookies().with_mss(1400);
    g.protect(8080, cookies).unwrap();
    let st = g.status().unwrap();
    assert_eq!((st[0].policy, st[0].rate), (cookies, 0), "cookie mode reads back, with no rate of drop mode's");
    synack_row(&mut t, "cookie mode answers with its MSS", &bare_syn("198.51.100.5", 2003, 8080), &mss_only(1400));

    g.protect(8080, SynPolicy::drop_above(3)).unwrap();
    for i in 0..3u16 {
        t.run(pass(
            &format!("SYN {i} in drop mode again: a fresh rate"),
            &syn("198.51.100.6", 3000 + i, 8080),
            "passed",
        ));
    }
    t.run(drop("the 4th since", &syn("198.51.100.7", 3100, 8080), "syn_dropped"));
    t.finish();
    assert_eq!(g.policy(8080).unwrap(), Some(SynPolicy::drop_above(3)));
}

/// Drop mode, a long flood: a known source that keeps sending ACKs while
/// the port is over its threshold stays known past the known-source TTL
/// (its time refreshed in place), while ACKs from a source never known
/// (forgeable) never make it known.
#[test]
fn drop_mode_active_clients_outlive_the_ttl_during_a_flood() {
    let f = load();
    f.syn_guard().protect(8080, SynPolicy::drop_above(3)).expect("protect 8080");
    f.syn_guard().set_known_ttl(Duration::from_secs(5)).unwrap();
    align(&f);
    let mut t = FixtureTable::new(&f, "SYN guard, drop mode, known clients through a flood (TTL 5 s)");
    t.run(pass("a handshake's ACK under the threshold", &ack("198.51.100.70", 5000, 8080, 5), "passed"));
    let flood = |t: &mut FixtureTable<'_, Filter>, step: u16| {
        for i in 0..3u16 {
            t.run(pass(&format!("step {step}: flood SYN {i}"), &syn("203.0.113.80", 6000 + i, 8080), "passed"));
        }
        t.run(drop(&format!("step {step}: over the threshold"), &syn("203.0.113.81", 6100, 8080), "syn_dropped"));
    };
    // 4 steps of about 3 s (2 s, then to the next rate window): the client
    // is known from its one handshake 15 s before its last SYN, three
    // times the TTL, its time refreshed by its ACKs every 3 s.
    for step in 0..4u16 {
        f.advance_clock(Duration::from_secs(2)).unwrap();
        align(&f);
        flood(&mut t, step);
        t.run(pass(&format!("step {step}: the client's ACK"), &data("198.51.100.70", 5001, 8080), "passed"));
        t.run(pass(&format!("step {step}: a never-known source's ACK"), &data("198.51.100.71", 5002, 8080), "passed"));
    }
    f.advance_clock(Duration::from_secs(2)).unwrap();
    align(&f);
    flood(&mut t, 4);
    t.run(pass("the active client still connects", &syn("198.51.100.70", 5003, 8080), "passed"));
    t.run(drop("the never-known source does not", &syn("198.51.100.71", 5004, 8080), "syn_dropped"));
    // Idle past the TTL, the client expires: a refresh does not revive it.
    f.advance_clock(Duration::from_secs(6)).unwrap();
    align(&f);
    flood(&mut t, 5);
    t.run(pass("an expired client's ACK over the threshold", &data("198.51.100.70", 5005, 8080), "passed"));
    t.run(drop("does not make it known again", &syn("198.51.100.70", 5006, 8080), "syn_dropped"));
    t.finish();
    let s = f.syn_guard().status().unwrap()[0].stats;
    assert_eq!(s.known_passed, 1, "{s:?}");
    assert_eq!(f.syn_guard().known_sources().unwrap(), 1, "only the client that completed a handshake");
}

/// A TCP SYN header (20 bytes, no options) from `sport` to `dport`.
fn syn_header(sport: u16, dport: u16) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&CLIENT_SEQ.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h
}

/// RFC 1858's tiny fragment (hping3 -f): a SYN whose TCP header is split
/// over fragments reaches the stack whole once reassembled, past the SYN
/// guard and every flags rule, which read the first fragment. While the
/// guard runs, a TCP first fragment cutting its header short is dropped
/// as malformed (monitor mode: counted and passed); a later fragment, and
/// a first fragment holding the whole header, are not.
#[test]
fn tiny_tcp_first_fragments_are_dropped() {
    let f = load();
    f.syn_guard().protect(8080, SynPolicy::drop_above(1)).expect("protect 8080");
    align(&f);
    let v4 = |offset: u16, more: bool, body: &[u8]| {
        Frame::builder()
            .ipv4("198.51.100.3".parse().unwrap(), DST_V4)
            .fragment(offset, more)
            .protocol(6)
            .payload(body)
            .build()
    };
    let v6 = |offset: u16, more: bool, body: &[u8]| {
        Frame::builder()
            .ipv6("2001:db8::3".parse().unwrap(), DST_V6)
            .ext(Ext::Fragment { offset, more, id: 7 })
            .protocol(6)
            .payload(body)
            .build()
    };
    let h = syn_header(40000, 8080);
    let mut t = FixtureTable::new(&f, "tiny TCP first fragments");
    t.run(drop("IPv4, 16 bytes of the SYN's header", &v4(0, true, &h[..16]), "malformed"));
    t.run(drop("IPv4, 8 bytes", &v4(0, true, &h[..8]), "malformed"));
    t.run(pass("IPv4, the later fragment", &v4(2, false, &h[16..]), "passed"));
    t.run(drop("IPv6, 16 bytes", &v6(0, true, &h[..16]), "malformed"));
    t.run(pass("IPv6, the later fragment", &v6(2, false, &h[16..]), "passed"));
    let mut whole = h.to_vec();
    whole.extend_from_slice(&[0; 8]);
    t.run(pass("a SYN, the threshold's one a second", &syn("198.51.100.4", 1000, 8080), "passed"));
    t.run(drop("IPv4, a first fragment with the whole header: judged", &v4(0, true, &whole), "syn_dropped"));
    f.set_monitor(true);
    t.run(pass("filter monitor mode: counted, passed", &v4(0, true, &h[..16]), "malformed"));
    f.set_monitor(false);
    assert!(f.syn_guard().unprotect(8080).unwrap());
    t.run(pass("no guard stage running: passed", &v4(0, true, &h[..16]), "passed"));
    t.finish();
}

#[test]
fn bad_policies_are_refused() {
    let f = load();
    let g = f.syn_guard();
    assert!(matches!(g.protect(0, SynPolicy::cookies()), Err(RuleError::InvalidSynPolicy { port: 0, .. })));
    assert!(matches!(g.protect(80, SynPolicy::drop_above(0)), Err(RuleError::InvalidSynPolicy { port: 80, .. })));
    assert!(matches!(g.protect(80, SynPolicy::cookies().with_mss(100)), Err(RuleError::InvalidSynPolicy { .. })));
    let wide = g.protect(80, SynPolicy::cookies().with_wscale(Some(15))).unwrap_err();
    assert!(wide.to_string().contains("0 to 14"), "{wide}");
    let drop_ws = g.protect(80, SynPolicy::drop_above(10).with_wscale(Some(7))).unwrap_err();
    assert!(drop_ws.to_string().contains("drop mode sends no SYN-ACK"), "{drop_ws}");
    assert!(g.status().unwrap().is_empty(), "nothing applied");
    for port in 1..=xdpguard::MAX_SYN_PORTS as u16 {
        g.protect(port, SynPolicy::cookies()).unwrap();
    }
    let full = g.protect(9999, SynPolicy::cookies()).unwrap_err();
    assert!(matches!(full, RuleError::Full { .. }), "{full}");
    assert_eq!(g.status().unwrap().len(), xdpguard::MAX_SYN_PORTS);
    assert_eq!(g.policy(9999).unwrap(), None);
    // A changed policy keeps the slot.
    g.protect(5, SynPolicy::drop_above(10)).unwrap();
    assert_eq!(g.policy(5).unwrap(), Some(SynPolicy::drop_above(10)));
}

/// Cookie mode, one family: SYN-ACK, cookie accepted, wrong ACK, monitor.
fn cookie_mode(client: &str, other: &str, mss: u16, default_mss: u16) {
    let f = load();
    let policy = SynPolicy::cookies().with_wscale(Some(xdpguard::host_wscale()));
    let policy = if mss == 0 { policy } else { policy.with_mss(mss) };
    f.syn_guard().protect(443, policy).unwrap();
    // The default policy: the MSS alone, whatever the SYN offers (window
    // scaling and timestamps cost a server that speaks first a second
    // through synproxy: SynPolicy::wscale).
    f.syn_guard().protect(445, SynPolicy::cookies().with_mss(mss)).unwrap();
    let want_mss = if mss == 0 { default_mss } else { mss };
    let mut t = FixtureTable::new(&f, format!("SYN guard, cookie mode, {client}"));
    let mut cookies = Vec::new();
    let src = ip(client);
    let tagged = Frame::builder()
        .vlan(Vlan::Dot1AdDot1Q(100, 7))
        .ip(src, dst_for(src))
        .tcp(40009, 443)
        .syn()
        .seq(CLIENT_SEQ)
        .build();
    for (what, frame, want) in [
        (
            "a SYN with Linux's options",
            syn(client, 40000, 443),
            full_options(want_mss, xdpguard::host_wscale(), Some(7), true, 1),
        ),
        ("a bare SYN", bare_syn(other, 40001, 443), mss_only(want_mss)),
        ("a SYN with Linux's options, the default policy", syn(client, 40005, 445), mss_only(want_mss)),
        ("a SYN under two VLAN tags (QinQ)", tagged, mss_only(want_mss)),
    ] {
        cookies.push(synack_row(&mut t, what, &frame, &want));
    }
    t.run(pass("the ACK answering the cookie", &ack(client, 40000, 443, cookies[0]), "syn_cookies_passed"));
    t.run(pass("the bare SYN's ACK too", &ack(other, 40001, 443, cookies[1]), "syn_cookies_passed"));
    t.run(pass("an ACK with a wrong cookie goes to conntrack", &ack(client, 40000, 443, cookies[0] ^ 0x100), "passed"));
    t.run(pass("an ACK from another port: not its cookie", &ack(client, 40002, 443, cookies[0]), "passed"));
    t.run(pass("data of an established connection", &data(client, 40003, 443), "passed"));
    t.run(pass("an unprotected port", &syn(client, 40004, 444), "passed"));
    t.run(drop(
        "a SYN with an IP option or extension header is not answered",
        &if client.contains(':') {
            Frame::builder()
                .ip(ip(client), dst_for(ip(client)))
                .ext(Ext::HopByHop)
                .tcp(40005, 443)
                .syn()
                .build()
                .to_vec()
        } else {
            Frame::builder()
                .ip(ip(client), dst_for(ip(client)))
                .options(&[1, 1, 1, 0])
                .tcp(40005, 443)
                .syn()
                .build()
                .to_vec()
        },
        "syn_dropped",
    ));
    // SYNs the stack would discard are not answered (the SYN-ACK would go
    // to or come from a group, or a martian address): dropped, counted as
    // unanswerable.
    let from_to = |src: &str, dst: &str| {
        Frame::builder().ip(ip(src), ip(dst)).tcp(40007, 443).syn().seq(CLIENT_SEQ).build().to_vec()
    };
    let dst = dst_for(src).to_string();
    let dst = dst.as_str();
    let mut martians = vec![
        ("to the broadcast MAC", syn(client, 40007, 443).with_macs(SRC_MAC, BROADCAST_MAC)),
        ("to a multicast MAC", syn(client, 40007, 443).with_macs(SRC_MAC, [0x01, 0x00, 0x5E, 0, 0, 1])),
    ];
    let addrs: &[(&str, &str, &str)] = if client.contains(':') {
        &[
            ("from a multicast address", "ff02::1", dst),
            ("to a multicast address", client, "ff02::1"),
            ("from ::", "::", dst),
            ("from ::1", "::1", dst),
            ("to ::", client, "::"),
            ("to ::1", client, "::1"),
        ]
    } else {
        &[
            ("from a multicast address", "224.0.0.1", dst),
            ("to a multicast address", client, "239.1.2.3"),
            ("to 255.255.255.255", client, "255.255.255.255"),
            ("from 255.255.255.255", "255.255.255.255", dst),
            ("from 0.0.0.0/8", "0.1.2.3", dst),
            ("to 0.0.0.0", client, "0.0.0.0"),
            ("from 127.0.0.0/8", "127.0.0.1", dst),
            ("to 127.0.0.0/8", client, "127.1.2.3"),
        ]
    };
    martians.extend(addrs.iter().map(|&(what, s, d)| (what, from_to(s, d))));
    let n_martians = martians.len() as u64;
    for (what, frame) in martians {
        t.run(drop(&format!("a SYN {what} is not answered"), &frame, "syn_dropped"));
    }
    f.set_monitor(true);
    t.run(pass("monitor mode: would answer, passes", &syn(client, 40006, 443), "would_drop_syn"));
    f.set_monitor(false);
    t.finish();

    let s = f.syn_guard().status().unwrap()[0].stats;
    assert_eq!(
        (s.syns, s.cookies_sent, s.cookies_ok, s.acks_other, s.unanswerable, s.would_drop),
        (5 + n_martians, 3, 2, 3, 1 + n_martians, 1),
        "{s:?}"
    );
    assert_eq!(f.syn_guard().known_sources().unwrap(), 2, "valid cookies make their sources known");
}

fn drop_value(_: u32) {}

#[test]
fn cookie_mode_v4() {
    cookie_mode("198.51.100.20", "198.51.100.21", 0, 1460);
}

#[test]
fn cookie_mode_v6() {
    cookie_mode("2001:db8::20", "2001:db8::21", 1400, 1440);
}

/// The cookie SYN-ACK's options against the SYN's: which it offers, the
/// client's window scale and SACK permission kept in its timestamp value,
/// the client's timestamp echoed; a SYN without timestamps, malformed
/// options or a port without TCP options get the MSS alone; each answer's
/// cookie accepted on its ACK. One family is enough: the options are built
/// by code both share (IPv6 runs the Linux set in cookie_mode_v6).
#[test]
fn cookie_synack_options_follow_the_syn() {
    let f = load();
    f.syn_guard().protect(443, SynPolicy::cookies().with_wscale(Some(9))).unwrap();
    f.syn_guard().protect(8443, SynPolicy::cookies().with_mss(1400).with_wscale(None)).unwrap();
    assert_eq!(f.syn_guard().policy(443).unwrap().unwrap().to_string(), "cookie wscale 9");
    assert_eq!(f.syn_guard().policy(8443).unwrap().unwrap().to_string(), "cookie mss 1400 mss-only");
    let ts = [0xA1, 0xB2, 0xC3, 0xD4];
    let cat = |parts: &[&[u8]]| parts.concat();
    let rows: Vec<(&str, u16, Vec<u8>, Want)> = vec![
        (
            "timestamps alone (NOP NOP TS)",
            443,
            cat(&[&[1, 1, 8, 10], &ts, &[0, 0, 0, 0]]),
            full_options(1460, 9, None, false, 0xA1B2_C3D4),
        ),
        (
            "macOS's order: MSS, NOP, WS 6, NOP NOP TS, SACK, EOL",
            443,
            cat(&[&[2, 4, 0x05, 0xB4, 1, 3, 3, 6, 1, 1, 8, 10], &ts, &[0, 0, 0, 0, 4, 2, 0, 0]]),
            full_options(1460, 9, Some(6), true, 0xA1B2_C3D4),
        ),
        (
            "a window scale above 14 is taken as 14 (RFC 7323)",
            443,
            cat(&[&[1, 3, 3, 15, 1, 1, 8, 10], &ts, &[0, 0, 0, 0]]),
            full_options(1460, 9, Some(14), false, 0xA1B2_C3D4),
        ),
        (
            "Linux's order (read in place, not walked), window scale 15: 14",
            443,
            cat(&[&[2, 4, 0x05, 0xB4, 4, 2, 8, 10], &ts, &[0, 0, 0, 0, 1, 3, 3, 15]]),
            full_options(1460, 9, Some(14), true, 0xA1B2_C3D4),
        ),
        (
            "Linux's order but for one byte (walked): the same answer",
            443,
            cat(&[&[2, 4, 0x05, 0xB4, 4, 2, 8, 10], &ts, &[0, 0, 0, 0, 3, 3, 2, 1]]),
            full_options(1460, 9, Some(2), true, 0xA1B2_C3D4),
        ),
        (
            "SACK and window scale without timestamps: the MSS alone",
            443,
            vec![2, 4, 5, 0xB4, 1, 3, 3, 7, 4, 2, 0, 0],
            mss_only(1460),
        ),
        (
            "a zero-length option ends the walk before the timestamps",
            443,
            cat(&[&[1, 1, 4, 0, 8, 10], &ts, &[0, 0, 0, 0, 0, 0]]),
            mss_only(1460),
        ),
        ("timestamps running past the header", 443, cat(&[&[1, 1, 1, 1, 8, 10], &ts[..2]]), mss_only(1460)),
        ("a port with TCP options off: the MSS alone", 8443, SYN_OPTIONS.to_vec(), mss_only(1400)),
    ];
    let mut t = FixtureTable::new(&f, "SYN guard, cookie mode, the SYN-ACK's options");
    let mut answered = Vec::new();
    for (i, (what, port, opts, want)) in rows.into_iter().enumerate() {
        let src = ip("198.51.100.30");
        let sport = 41000 + i as u16;
        let frame =
            Frame::builder().ip(src, dst_for(src)).tcp(sport, port).syn().seq(CLIENT_SEQ).tcp_options(&opts).build();
        answered.push((sport, port, synack_row(&mut t, what, &frame, &want)));
    }
    // A changed window scale reaches the port's live slot.
    f.syn_guard().protect(443, SynPolicy::cookies().with_wscale(Some(5))).unwrap();
    let changed = full_options(1460, 5, Some(7), true, 1);
    synack_row(&mut t, "the window scale changed to 5", &syn("198.51.100.30", 41999, 443), &changed);
    for (sport, port, cookie) in answered {
        t.run(pass(
            &format!("the ACK of {sport} -> {port}'s cookie"),
            &ack("198.51.100.30", sport, port, cookie),
            "syn_cookies_passed",
        ));
    }
    t.finish();
}

/// Cookie mode dropping untracked ACKs: an ACK that is neither a valid
/// cookie nor of a connection conntrack tracks (none is tracked in the
/// test's namespace) is dropped in XDP, counted in the port's `dropped`
/// and the filter's `syn_dropped`; a valid cookie still passes; a port
/// without the option passes the same ACK to the stack; monitor mode counts
/// it and passes it. (The tracked connection's side: filter_syn_e2e.rs.)
fn untracked_acks(client: &str) {
    let f = load();
    let g = f.syn_guard();
    let options = SynPolicy::cookies().with_wscale(Some(xdpguard::host_wscale()));
    g.protect(443, options.with_drop_untracked_acks(true)).unwrap();
    g.protect(444, SynPolicy::cookies()).unwrap();
    let policy = g.policy(443).unwrap().unwrap();
    assert!(policy.drop_untracked_acks && policy.to_string().ends_with(" drop-untracked-acks"), "{policy}");
    let mut t = FixtureTable::new(&f, format!("SYN guard, cookie mode, untracked ACKs dropped, {client}"));
    let mss = if client.contains(':') { 1440 } else { 1460 };
    let want = full_options(mss, xdpguard::host_wscale(), Some(7), true, 1);
    let cookie = synack_row(&mut t, "a SYN", &syn(client, 42000, 443), &want);
    t.run(pass("its ACK: a valid cookie", &ack(client, 42000, 443, cookie), "syn_cookies_passed"));
    t.run(drop("a forged ACK (wrong cookie, untracked)", &ack(client, 42000, 443, cookie ^ 0x100), "syn_dropped"));
    t.run(drop("data of a connection conntrack does not track", &data(client, 42001, 443), "syn_dropped"));
    t.run(pass("the same ACK to a port without the option", &ack(client, 42000, 444, cookie ^ 0x100), "passed"));
    f.set_monitor(true);
    t.run(pass("monitor mode: would drop, passes", &ack(client, 42002, 443, 7), "would_drop_syn"));
    f.set_monitor(false);
    t.finish();
    let s = g.status().unwrap().into_iter().find(|p| p.port == 443).unwrap().stats;
    assert_eq!((s.cookies_ok, s.dropped, s.would_drop, s.acks_other), (1, 2, 1, 0), "{s:?}");
    let bad = g.protect(80, SynPolicy::drop_above(10).with_drop_untracked_acks(true)).unwrap_err();
    assert!(bad.to_string().contains("for cookie mode"), "{bad}");
}

#[test]
fn untracked_acks_v4() {
    untracked_acks("198.51.100.40");
}

#[test]
fn untracked_acks_v6() {
    untracked_acks("2001:db8::40");
}

#[test]
fn nft_rules_name_the_ports() {
    let text = xdpguard::nft_rules(&[443, 8443], 1400);
    assert!(text.contains("tcp dport { 443, 8443 } tcp flags syn notrack"), "{text}");
    // The default policy's options: the MSS alone.
    assert!(text.contains("tcp dport { 443, 8443 } ct state invalid,untracked synproxy mss 1400\n"), "{text}");
    assert!(text.contains("nf_conntrack_tcp_loose=0"), "{text}");
    let text = xdpguard::nft_rules_with_wscale(&[443, 8443], 1400, 9);
    assert!(text.contains("synproxy mss 1400 wscale 9 timestamp sack-perm\n"), "{text}");
}

/// One drop event a packet, the verdict's: a SYN a monitored rule would
/// drop and the SYN guard then drops (or, in monitor mode, would drop)
/// sends the SYN guard's event alone (it sent the rule's would-drop event
/// too), and one the SYN guard passes sends the rule's. Every event the
/// ring holds after each packet is counted.
#[test]
fn a_monitored_rules_would_drop_and_the_syn_guards_drop_send_one_event() {
    use xdpguard::{DropReason, EventOptions, EventRate, RuleId};
    let f = load();
    f.syn_guard().protect(8080, SynPolicy::drop_above(3)).expect("protect 8080");
    let dry = f.rules().add("monitor drop tcp dport 8080".parse().unwrap()).unwrap();
    align(&f);
    let mut reader = f.events(EventOptions::default().rate(EventRate::per_second(1000))).expect("start reading");
    let mut failures = Vec::new();
    let mut row = |what: &str, frame: &Frame, action: XdpAction, want: (DropReason, Option<RuleId>)| {
        let got = f.test_run(frame).unwrap_or_else(|e| panic!("{what}: {e}")).action;
        if got != action {
            failures.push(format!("{what}: action {got:?}, expected {action:?}"));
        }
        let mut events = reader.poll(Duration::from_secs(2)).expect("poll");
        events.extend(reader.poll(Duration::from_millis(50)).expect("poll"));
        let seen: Vec<_> = events.iter().map(|e| (e.reason, e.rule)).collect();
        if seen != [want] {
            failures.push(format!("{what}: events {seen:?}, expected exactly [{want:?}]"));
        }
    };
    for i in 0..3u16 {
        let what = format!("SYN {i} under the threshold: passed, the rule's would-drop");
        row(&what, &syn("198.51.100.1", 1000 + i, 8080), XdpAction::Pass, (DropReason::WouldDropRule, Some(dry)));
    }
    row(
        "over the threshold: the SYN guard's drop alone",
        &syn("198.51.100.2", 2000, 8080),
        XdpAction::Drop,
        (DropReason::SynDropped, None),
    );
    row(
        "IPv6, over the threshold: the SYN guard's drop alone",
        &syn("2001:db8::7", 2001, 8080),
        XdpAction::Drop,
        (DropReason::SynDropped, None),
    );
    f.set_monitor(true);
    row(
        "filter monitor mode: the SYN guard's would-drop alone",
        &syn("203.0.113.52", 4101, 8080),
        XdpAction::Pass,
        (DropReason::WouldDropSyn, None),
    );
    f.set_monitor(false);
    row(
        "not a SYN: the SYN guard passes it, the rule's would-drop",
        &data("198.51.100.2", 2000, 8080),
        XdpAction::Pass,
        (DropReason::WouldDropRule, Some(dry)),
    );
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    let s = f.event_stats().unwrap();
    assert_eq!((s.sent, s.limited, s.lost), (7, 0, 0), "{s:?}");

    // Cookie mode: a SYN the guard answers sends the rule's would-drop
    // alone, and it carries the SYN the rule judged, not the SYN|ACK the
    // frame became (sent after the answer, its source was the server).
    f.syn_guard().protect(8443, SynPolicy::cookies()).expect("protect 8443");
    let dry = f.rules().add("monitor drop tcp dport 8443".parse().unwrap()).unwrap();
    align(&f);
    for src in ["198.51.100.9", "2001:db8::9"] {
        let frame = syn(src, 3000, 8443);
        let out = f.test_run(&frame).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(out.action, XdpAction::Tx, "{src}: the SYN guard answers");
        let mut events = reader.poll(Duration::from_secs(2)).expect("poll");
        events.extend(reader.poll(Duration::from_millis(50)).expect("poll"));
        let seen: Vec<_> = events.iter().map(|e| (e.reason, e.rule)).collect();
        assert_eq!(seen, [(DropReason::WouldDropRule, Some(dry))], "{src}: one event, the rule's");
        let got = SlicedPacket::from_ethernet(&events[0].bytes).expect("the event's frame parses");
        let source = match got.net {
            Some(NetSlice::Ipv4(ref h)) => IpAddr::from(h.header().source_addr()),
            Some(NetSlice::Ipv6(ref h)) => IpAddr::from(h.header().source_addr()),
            _ => panic!("{src}: the event's frame has no IP header"),
        };
        assert_eq!(source, ip(src), "{src}: the event carries the client's SYN");
        let Some(TransportSlice::Tcp(tcp)) = got.transport else { panic!("{src}: no TCP header") };
        assert!(tcp.syn() && !tcp.ack(), "{src}: the event carries the SYN, not the SYN|ACK");
    }
}
