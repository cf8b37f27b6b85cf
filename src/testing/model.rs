//! A reference model of the filter's whole verdict on a frame, for
//! differential tests: [`FilterModel`] (lists, timed blocks, named sets,
//! rules, monitor mode, malformed policy) and [`FilterModel::verdict`], which says what
//! the kernel program does with a frame, which reason counter counts it,
//! and which rules count it.
//!
//! It is written from the documented behaviour, not from the data plane's
//! structures: a linear scan of prefixes and rules, and a byte-by-byte
//! reading of the frame ([`parse`]) that follows the parser's documented
//! rules (`src/bpf/parsing.h`: Ethernet, at most two VLAN tags, IPv4 with
//! options and fragments, IPv6 with at most eight extension headers, the
//! IP packet ending where its length says). A frame cut short, a length
//! field that lies, a bit flipped anywhere: the model must say what the
//! kernel says. The order of evaluation is [`Filter::rules`]':
//!
//! 1. not IP: `non_ip`, passed; malformed: `malformed`, dropped under
//!    [`MalformedPolicy::Drop`] unless in monitor mode, else passed; more
//!    VLAN tags than walked: `malformed`, dropped unless in monitor mode;
//! 2. an allowlisted source: `allowlisted`, passed;
//! 3. a blocklisted source: `blocked_v4`/`blocked_v6`, dropped (monitor
//!    mode: `would_drop_blocked`, passed);
//! 3. a source in a timed block that has not expired on the guard clock
//!    ([`FilterModel::now`] before its expiry): `timed_blocked`, dropped
//!    (monitor mode: `would_drop_timed`, passed);
//!
//!    (neither the lists nor the timed blocks judge on-link neighbour
//!    discovery, ICMPv6 133-137 with hop limit 255: [`IpPacket::on_link_nd`];
//!    the rules do)
//! 4. an IPv6 packet whose extension-header chain is longer than the eight
//!    headers the parse walks, while the guard stage runs (any rule or
//!    timed block): `malformed`, dropped (monitor mode: passed);
//! 5. the rules in order: each that matches counts the packet; a count, a
//!    rate-limit or a monitored rule goes on; the first drop rule drops
//!    (`rule_dropped`; monitor mode: `would_drop_rule`, passed), the first
//!    pass rule passes (`rule_passed`);
//! 6. the rest: `passed`.
//!
//! A rate-limit rule is modelled as never over its limit: it counts the
//! packet and the walk goes on, like `count` (its `limited` counter never
//! moves). That is exact for limits no key reaches (a rate or a burst above
//! every packet the key ever sends), not for limits that are reached: the
//! verdict then depends on the packets' timing on the guard clock, the
//! per-CPU count-min sketch (collisions between keys), the LRU of exact
//! buckets and its promotion cap per 100 ms window, so a frame's verdict
//! is no function of the frame and the configuration alone. Limits that
//! are reached are checked by `tests/filter_limits_verdicts.rs`.
//!
//! Why a model in the test kit rather than an API of [`Filter`]: a method
//! that read the running filter's tables and judged a frame would share
//! the library's view of its own state, and a differential test would
//! compare the library with itself. Here the state is given explicitly
//! (the test builds it from the same inputs it gives the filter), so the
//! kernel is checked against an independent statement of the semantics.
//! [`FilterModel::from_filter`] is there for users who want to check
//! frames against a running filter's configuration in their own tests.
//!
//! Prefixes (lists, sets, timed blocks, rules) are taken as the filter
//! stores them ([`normalize`]): an IPv4-mapped one
//! (`::ffff:192.0.2.5`, /96 or longer) is the IPv4 prefix, which covers
//! IPv4 packets and no IPv6 packet (not one from `::ffff:192.0.2.5`).
//!
//! The SYN guard ([`FilterModel::syn_ports`]) takes the TCP packets no rule
//! decided, to its ports: its ports make the guard stage run (so step 4
//! applies with no rule or timed block). Like rate limits, it is modelled
//! where its verdict is a function of the frame: a port in drop mode
//! below its threshold passes every packet (`passed`; exact while fewer
//! SYNs than the threshold arrive a second), and a port in cookie mode in
//! monitor mode (its own or the filter's) counts a SYN (SYN set, ACK and
//! RST clear) as `would_drop_syn` and passes it, and passes the rest (an
//! ACK carrying a valid cookie aside, which random frames do not).
//!
//! Not modelled: rate limits that are reached (above), the SYN guard over
//! a drop-mode threshold or in cookie mode without monitor (SYN-ACKs sent,
//! conntrack's view of untracked ACKs), anything else a later guard stage
//! adds (a filter using them is outside this model), and `xdp_md` metadata
//! (the verdict does not depend on it).
//!
//! Timed blocks: the data plane deletes an expired entry its lookup finds
//! and looks once more (`timed_blocked()` in `src/bpf/guard_limit.h`), so a
//! source under two nested expired entries and a shorter live one is passed
//! by the first packet that finds them (later packets are blocked). The
//! model says blocked; configurations where expired entries nest are
//! outside it (library edits reclaim expired entries, so they arise only
//! between edits).
//!
//! ```
//! use xdpguard::testing::frame::Frame;
//! use xdpguard::testing::model::FilterModel;
//! use xdpguard::XdpAction;
//!
//! let mut m = FilterModel::default();
//! m.sets.insert("resolvers".into(), vec!["192.0.2.53/32".parse()?]);
//! m.rules.push("drop udp sport 53 not from set resolvers".parse()?);
//! let reply = |src: [u8; 4]| Frame::builder().ipv4(src.into(), [198, 51, 100, 1].into()).udp(53, 40000).build();
//! let v = m.verdict(reply([203, 0, 113, 9]).bytes());
//! assert_eq!((v.action, v.reason, v.rules.as_slice()), (XdpAction::Drop, "rule_dropped", &[0][..]));
//! assert_eq!(m.verdict(reply([192, 0, 2, 53]).bytes()).reason, "passed");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::{
    normalize, Error, Filter, IpFamily, MalformedPolicy, Rule, RuleAction, RuleError, Source, SourceMatch, SynMode,
    SynPolicy, XdpAction,
};

/// What the filter is configured with, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterModel {
    /// The allowlist's prefixes.
    pub allowlist: Vec<IpNetwork>,
    /// The blocklist's prefixes.
    pub blocklist: Vec<IpNetwork>,
    /// The timed blocks: each prefix and when it expires, on the guard
    /// clock ([`Filter::guard_clock`] with the feature `testing`).
    pub timed_blocks: Vec<(IpNetwork, Duration)>,
    /// The guard clock the frames are judged at: a timed block matches
    /// while this is before its expiry.
    pub now: Duration,
    /// The named sets, by name.
    pub sets: BTreeMap<String, Vec<IpNetwork>>,
    /// The rules, in priority order.
    pub rules: Vec<Rule>,
    /// Whole-filter monitor (dry-run) mode.
    pub monitor: bool,
    /// The malformed-packet policy.
    pub malformed: MalformedPolicy,
    /// The SYN guard's protected ports and their policies: modelled in
    /// drop mode below the threshold (it passes everything) and in cookie
    /// mode under monitor (a SYN is `would_drop_syn`); see the module docs.
    pub syn_ports: BTreeMap<u16, SynPolicy>,
}

/// What the filter does with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVerdict {
    /// The program's action (a pass goes on to the next program, if set).
    pub action: XdpAction,
    /// The reason counter that counts it: a row name of
    /// [`FilterStats::rows`](crate::FilterStats::rows).
    pub reason: &'static str,
    /// The indexes (in [`FilterModel::rules`]) of the rules that count it.
    pub rules: Vec<usize>,
}

/// The transport fields the rules read, when the transport header can be
/// read (the first fragment or an unfragmented packet, its header whole
/// within the IP packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// TCP or UDP source port (0 for ICMP).
    pub sport: u16,
    /// TCP or UDP destination port (0 for ICMP).
    pub dport: u16,
    /// TCP flags (0 for others).
    pub tcp_flags: u8,
    /// ICMP or ICMPv6 type (0 for others).
    pub icmp_type: u8,
}

/// An IP packet as the filter reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The protocol after IPv6 extension headers (the next header where a
    /// chain longer than the walk stops).
    pub protocol: u8,
    /// The transport fields, when readable (TCP, UDP, ICMP, ICMPv6 only).
    pub transport: Option<Transport>,
    /// An IP fragment, first or later: IPv4 with more-fragments set or an
    /// offset, IPv6 with a fragment header that is not atomic (offset 0
    /// and no more: whole, RFC 6946). What `fragment` rules match.
    pub fragment: bool,
    /// A transport header the stack reaches and the filter cannot read
    /// (the guard stage drops it as malformed): IPv6 still inside the
    /// extension-header chain after the eight headers the walk takes, or a
    /// TCP first fragment whose header the IP packet cuts short (RFC 1858's
    /// tiny fragment).
    pub l4_hidden: bool,
    /// Neighbour discovery on this link (ICMPv6 133-137, hop limit 255):
    /// not judged by the lists nor by timed blocks.
    pub on_link_nd: bool,
}

/// How the filter reads a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 (after up to two VLAN tags).
    NonIp,
    /// Cut short, inconsistent lengths, a bad version.
    Malformed,
    /// More VLAN tags than the filter walks: not judged, and dropped
    /// whatever the malformed policy (unless in monitor mode), as the stack
    /// strips priority tags at any depth and may deliver it.
    Hidden,
    /// An IP packet.
    Ip(IpPacket),
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const MAX_VLAN_TAGS: usize = 2;
const MAX_EXT_HEADERS: usize = 8;
const MAX_L3_OFFSET: usize = 4096;
const MAX_L4_OFFSET: usize = 8192;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a frame as the filter does.
pub fn parse(frame: &[u8]) -> Parsed {
    if frame.len() < 14 {
        return Parsed::Malformed;
    }
    let mut proto = be16(frame, 12);
    let mut off = 14;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        if off + 4 > frame.len() {
            return Parsed::Malformed;
        }
        proto = be16(frame, off + 2);
        off += 4;
    }
    match proto {
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Hidden,
        ETH_P_IP => ipv4(frame, off),
        ETH_P_IPV6 => ipv6(frame, off),
        _ => Parsed::NonIp,
    }
}

fn ipv4(frame: &[u8], l3: usize) -> Parsed {
    if l3 > MAX_L3_OFFSET || l3 + 20 > frame.len() {
        return Parsed::Malformed;
    }
    let h = &frame[l3..];
    let (version, ihl) = (h[0] >> 4, usize::from(h[0] & 0xF));
    if version != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let hdr_len = ihl * 4;
    let total = usize::from(be16(h, 2));
    if l3 + hdr_len > frame.len() || total < hdr_len || l3 + total > frame.len() {
        return Parsed::Malformed;
    }
    let later_fragment = be16(h, 6) & 0x1FFF != 0;
    let first_fragment = !later_fragment && be16(h, 6) & 0x2000 != 0;
    let fragment = later_fragment || first_fragment;
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let protocol = h[9];
    let l4 = (!later_fragment).then_some(l3 + hdr_len);
    let transport = transport(frame, protocol, l4, l3 + total);
    let l4_hidden = tiny_fragment(first_fragment, protocol, l3 + hdr_len, l3 + total);
    Parsed::Ip(IpPacket { src, dst, protocol, transport, fragment, l4_hidden, on_link_nd: false })
}

/// RFC 1858's tiny fragment: a first fragment whose TCP header (20 bytes)
/// the IP packet, ending at `end`, cuts short.
fn tiny_fragment(first_fragment: bool, protocol: u8, l4: usize, end: usize) -> bool {
    first_fragment && protocol == 6 && l4 + 20 > end
}

fn ipv6(frame: &[u8], l3: usize) -> Parsed {
    if l3 > MAX_L3_OFFSET || l3 + 40 > frame.len() {
        return Parsed::Malformed;
    }
    let h = &frame[l3..];
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload = usize::from(be16(h, 4));
    let mut next = h[6];
    // A zero payload length with a hop-by-hop header claims a jumbogram:
    // the packet is read to the frame's end.
    let end = if payload == 0 && next == 0 { frame.len() } else { l3 + 40 + payload };
    if end > frame.len() {
        return Parsed::Malformed;
    }
    let octets = |at: usize| -> [u8; 16] { h[at..at + 16].try_into().expect("16 bytes") };
    let src = IpAddr::V6(Ipv6Addr::from(octets(8)));
    let dst = IpAddr::V6(Ipv6Addr::from(octets(24)));
    let hop_limit = h[7];
    let mut off = l3 + 40;
    let mut fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        // A chain past the offsets the parse reads: hidden, as below.
        if off > MAX_L3_OFFSET {
            break;
        }
        match next {
            0 | 43 | 60 => {
                if off + 2 > end {
                    return Parsed::Malformed;
                }
                let len = (usize::from(frame[off + 1]) + 1) * 8;
                if off + len > end {
                    return Parsed::Malformed;
                }
                next = frame[off];
                off += len;
            }
            44 => {
                if off + 8 > end {
                    return Parsed::Malformed;
                }
                // Offset 0 without more fragments: an atomic fragment, whole.
                fragment |= be16(frame, off + 2) & 0xFFF9 != 0;
                // A later fragment's payload holds no header: the walk
                // stops, its next header the protocol.
                if be16(frame, off + 2) & 0xFFF8 != 0 {
                    let protocol = frame[off];
                    let (transport, l4_hidden, on_link_nd) = (None, false, false);
                    return Parsed::Ip(IpPacket { src, dst, protocol, transport, fragment, l4_hidden, on_link_nd });
                }
                next = frame[off];
                off += 8;
            }
            protocol => {
                let transport = transport(frame, protocol, Some(off), end);
                let l4_hidden = tiny_fragment(fragment, protocol, off, end);
                let on_link_nd = on_link_nd(protocol, transport, hop_limit);
                return Parsed::Ip(IpPacket { src, dst, protocol, transport, fragment, l4_hidden, on_link_nd });
            }
        }
    }
    // The walk's last header may lead to the transport header; still in
    // the chain, there is none the filter reads.
    if !matches!(next, 0 | 43 | 60 | 44) && off <= MAX_L3_OFFSET {
        let transport = transport(frame, next, Some(off), end);
        let l4_hidden = tiny_fragment(fragment, next, off, end);
        let on_link_nd = on_link_nd(next, transport, hop_limit);
        return Parsed::Ip(IpPacket { src, dst, protocol: next, transport, fragment, l4_hidden, on_link_nd });
    }
    Parsed::Ip(IpPacket { src, dst, protocol: next, transport: None, fragment, l4_hidden: true, on_link_nd: false })
}

/// Neighbour discovery on this link: ICMPv6 133-137 with hop limit 255.
fn on_link_nd(protocol: u8, transport: Option<Transport>, hop_limit: u8) -> bool {
    protocol == 58 && hop_limit == 255 && transport.is_some_and(|t| (133..=137).contains(&t.icmp_type))
}

/// The transport fields of a header at `l4` in an IP packet ending at `end`.
fn transport(frame: &[u8], protocol: u8, l4: Option<usize>, end: usize) -> Option<Transport> {
    let need = match protocol {
        6 => 20,
        17 | 1 => 8,
        58 => 4,
        _ => return None,
    };
    let off = l4?;
    if off == 0 || off > MAX_L4_OFFSET || off + need > end || off + need > frame.len() {
        return None;
    }
    let t = &frame[off..];
    Some(match protocol {
        6 => Transport { sport: be16(t, 0), dport: be16(t, 2), tcp_flags: t[13], icmp_type: 0 },
        17 => Transport { sport: be16(t, 0), dport: be16(t, 2), tcp_flags: 0, icmp_type: 0 },
        _ => Transport { sport: 0, dport: 0, tcp_flags: 0, icmp_type: t[0] },
    })
}

/// Whether `net` covers `addr` (an address of the other family: never).
/// `net` is taken as the filter stores it ([`normalize`]): an IPv4-mapped
/// prefix (`::ffff:192.0.2.5`, /96 or longer) is the IPv4 one, which
/// covers IPv4 packets' sources and no IPv6 packet's.
fn covers(net: &IpNetwork, addr: IpAddr) -> bool {
    let net = normalize(*net).network;
    net.is_ipv4() == addr.is_ipv4() && net.contains(addr)
}

/// [`Rule::effective_family`] of the rule as the filter takes it
/// ([`Rule::normalized`]: an IPv4-mapped prefix implies IPv4).
fn rule_family(rule: &Rule) -> Option<IpFamily> {
    let of = |n: &IpNetwork| IpFamily::of(normalize(*n).network.ip());
    rule.family
        .or_else(|| match &rule.source {
            Some(SourceMatch { source: Source::Prefix(p), .. }) => Some(of(p)),
            _ => None,
        })
        .or_else(|| rule.destination.map(|d| of(&d.prefix)))
}

impl FilterModel {
    /// Whether `rule` matches the packet (whatever its action).
    pub fn matches(&self, rule: &Rule, p: &IpPacket) -> bool {
        if let Some(f) = rule_family(rule) {
            if (f == IpFamily::V4) != p.src.is_ipv4() {
                return false;
            }
        }
        if rule.protocol.is_some_and(|proto| proto.number() != p.protocol) {
            return false;
        }
        if rule.fragment.is_some_and(|f| f != p.fragment) {
            return false;
        }
        if let Some(s) = &rule.source {
            let hit = match &s.source {
                Source::Prefix(n) => covers(n, p.src),
                Source::Set(name) => self.sets.get(name).is_some_and(|set| set.iter().any(|n| covers(n, p.src))),
            };
            if hit == s.negated {
                return false;
            }
        }
        if let Some(d) = rule.destination {
            if covers(&d.prefix, p.dst) == d.negated {
                return false;
            }
        }
        let needs_transport = rule.source_ports.is_some()
            || rule.destination_ports.is_some()
            || rule.tcp_flags.is_some()
            || rule.icmp_types.is_some();
        if !needs_transport {
            return true;
        }
        let Some(t) = p.transport else { return false };
        rule.source_ports.as_ref().is_none_or(|s| s.contains(t.sport))
            && rule.destination_ports.as_ref().is_none_or(|s| s.contains(t.dport))
            && rule.tcp_flags.is_none_or(|f| f.matches(t.tcp_flags))
            && rule.icmp_types.as_ref().is_none_or(|s| s.contains(u16::from(t.icmp_type)))
    }

    /// The key of the bucket a rate-limit rule meters a source's packets
    /// in: the source's prefix of the rule's length for its IP version
    /// ([`LimitKey`](crate::LimitKey): by default each IPv4 address and each
    /// IPv6 /64). Two sources share a bucket (and its limit) exactly when
    /// their keys are equal. `None` for a rule without a limit.
    pub fn limit_key(rule: &Rule, src: IpAddr) -> Option<IpNetwork> {
        let per = rule.limit?.per;
        let len = if src.is_ipv4() { per.v4_len } else { per.v6_len };
        let net = IpNetwork::new(src, len).ok()?;
        IpNetwork::new(net.network(), len).ok()
    }

    /// What the filter does with `frame`.
    pub fn verdict(&self, frame: &[u8]) -> ModelVerdict {
        let done = |action, reason| ModelVerdict { action, reason, rules: Vec::new() };
        let p = match parse(frame) {
            Parsed::NonIp => return done(XdpAction::Pass, "non_ip"),
            Parsed::Malformed if self.malformed == MalformedPolicy::Drop && !self.monitor => {
                return done(XdpAction::Drop, "malformed")
            }
            Parsed::Malformed => return done(XdpAction::Pass, "malformed"),
            Parsed::Hidden if !self.monitor => return done(XdpAction::Drop, "malformed"),
            Parsed::Hidden => return done(XdpAction::Pass, "malformed"),
            Parsed::Ip(p) => p,
        };
        if !p.on_link_nd && self.allowlist.iter().any(|n| covers(n, p.src)) {
            return done(XdpAction::Pass, "allowlisted");
        }
        if !p.on_link_nd && self.blocklist.iter().any(|n| covers(n, p.src)) {
            return match (self.monitor, p.src.is_ipv4()) {
                (true, _) => done(XdpAction::Pass, "would_drop_blocked"),
                (false, true) => done(XdpAction::Drop, "blocked_v4"),
                (false, false) => done(XdpAction::Drop, "blocked_v6"),
            };
        }
        // On-link neighbour discovery is exempt from timed blocks too.
        if !p.on_link_nd && self.timed_blocks.iter().any(|(n, expires)| covers(n, p.src) && self.now < *expires) {
            return if self.monitor {
                done(XdpAction::Pass, "would_drop_timed")
            } else {
                done(XdpAction::Drop, "timed_blocked")
            };
        }
        // No rule can read the transport header behind the chain or the
        // tiny fragment: while the guard stage runs (rules, timed blocks or
        // SYN ports), malformed.
        if p.l4_hidden && (!self.rules.is_empty() || !self.timed_blocks.is_empty() || !self.syn_ports.is_empty()) {
            return done(if self.monitor { XdpAction::Pass } else { XdpAction::Drop }, "malformed");
        }
        let mut rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !self.matches(rule, &p) {
                continue;
            }
            rules.push(i);
            // A rate-limit rule within its limit goes on like a count.
            if rule.monitor || matches!(rule.action, RuleAction::Count | RuleAction::RateLimit) {
                continue;
            }
            let (action, reason) = match (rule.action, self.monitor) {
                (RuleAction::Pass, _) => (XdpAction::Pass, "rule_passed"),
                (_, true) => (XdpAction::Pass, "would_drop_rule"),
                _ => (XdpAction::Drop, "rule_dropped"),
            };
            return ModelVerdict { action, reason, rules };
        }
        ModelVerdict { action: XdpAction::Pass, reason: self.syn_verdict(&p), rules }
    }

    /// The SYN guard's reason for a packet no rule decided (it passes
    /// either way, where modelled): `would_drop_syn` for a SYN to a port
    /// in cookie mode under monitor, else `passed`.
    fn syn_verdict(&self, p: &IpPacket) -> &'static str {
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        let Some(t) = p.transport.filter(|_| p.protocol == 6) else { return "passed" };
        match self.syn_ports.get(&t.dport) {
            Some(policy)
                if policy.mode == SynMode::Cookie
                    && (policy.monitor || self.monitor)
                    && t.tcp_flags & (SYN | ACK | RST) == SYN =>
            {
                "would_drop_syn"
            }
            _ => "passed",
        }
    }

    /// The configuration of a running filter: its lists, live timed blocks
    /// (with [`FilterModel::now`] the guard clock as they were read), sets,
    /// rules, SYN-guarded ports, monitor mode and malformed policy (a filter without the guard
    /// stage has no timed blocks, sets and rules). Reading the timed blocks
    /// reclaims the expired ones ([`TimedBlocks::list`](crate::TimedBlocks::list)).
    ///
    /// # Errors
    ///
    /// The errors of reading the lists ([`PrefixList::iter`](crate::PrefixList::iter)),
    /// the timed blocks ([`TimedBlocks::list`](crate::TimedBlocks::list)),
    /// the sets and the rules ([`Rules::list`](crate::Rules::list)), and
    /// the SYN guard's ([`SynGuard::status`](crate::SynGuard::status)).
    pub fn from_filter(filter: &Filter) -> Result<FilterModel, Error> {
        let mut m = FilterModel {
            allowlist: filter.allowlist().iter()?.collect(),
            blocklist: filter.blocklist().iter()?.collect(),
            monitor: filter.monitor(),
            malformed: filter.malformed_policy(),
            ..FilterModel::default()
        };
        match filter.sets().names() {
            Ok(names) => {
                for name in names {
                    m.sets.insert(name.clone(), filter.sets().get(&name).iter()?.collect());
                }
                m.rules = filter.rules().list()?.into_iter().map(|e| e.rule).collect();
                m.now = filter.guard_clock()?;
                m.timed_blocks =
                    filter.timed_blocks().list()?.into_iter().map(|b| (b.prefix, m.now + b.remaining)).collect();
                m.syn_ports = filter.syn_guard().status()?.into_iter().map(|s| (s.port, s.policy)).collect();
            }
            Err(RuleError::NoGuard { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame::{Ext, Frag, Frame};

    #[test]
    fn frames_read_as_documented() {
        let src: IpAddr = "2001:db8::1".parse().unwrap();
        let dst: IpAddr = "2001:db8::2".parse().unwrap();
        let f = Frame::builder().ip(src, dst).exts(&[Ext::HopByHop, Ext::DestOpts]).tcp(1, 2).tcp_flags(0x12).build();
        let Parsed::Ip(p) = parse(f.bytes()) else { panic!() };
        assert_eq!((p.protocol, p.transport.map(|t| (t.sport, t.dport, t.tcp_flags))), (6, Some((1, 2, 0x12))));
        let later = Frame::builder().ip(src, dst).ext(Ext::fragment(8, false)).udp(1, 2).build();
        let Parsed::Ip(p) = parse(later.bytes()) else { panic!() };
        assert_eq!((p.protocol, p.transport, p.fragment), (17, None, true));
        let first = Frame::builder().ip(src, dst).ext(Ext::fragment(0, true)).udp(1, 2).build();
        let Parsed::Ip(p) = parse(first.bytes()) else { panic!() };
        assert_eq!((p.transport.map(|t| t.dport), p.fragment), (Some(2), true));
        let atomic = Frame::builder().ip(src, dst).ext(Ext::fragment(0, false)).udp(1, 2).build();
        let Parsed::Ip(p) = parse(atomic.bytes()) else { panic!() };
        assert_eq!((p.transport.map(|t| t.dport), p.fragment), (Some(2), false), "an atomic fragment is whole");
        let (s4, d4) = ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        for (frag, want) in [(Frag::None, false), (Frag::First, true), (Frag::Later { offset: 3, more: false }, true)] {
            let f = Frame::builder().ipv4(s4, d4).udp(1, 2).frag(frag).build();
            let Parsed::Ip(p) = parse(f.bytes()) else { panic!() };
            assert_eq!(p.fragment, want, "{frag:?}");
        }
        let nine: Vec<Ext> = (0..9).map(|_| Ext::DestOpts).collect();
        let long = Frame::builder().ip(src, dst).exts(&nine).udp(1, 2).build();
        let Parsed::Ip(p) = parse(long.bytes()) else { panic!() };
        assert_eq!((p.protocol, p.transport), (60, None), "the walk stops after eight headers");
        assert_eq!(parse(&f.bytes()[..f.len() - 1]), Parsed::Malformed, "the payload length says more");
        assert_eq!(parse(&f.with_ip_version(4)), Parsed::Malformed);
        let v4 = Frame::builder().ipv4([192, 0, 2, 1].into(), [192, 0, 2, 2].into()).udp(53, 9).build();
        assert!(matches!(parse(v4.bytes()), Parsed::Ip(IpPacket { transport: Some(_), .. })));
        assert_eq!(parse(&v4.with_ipv4_ihl(4)), Parsed::Malformed);
        let mut arp = v4.to_vec();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), Parsed::NonIp);
    }
}
