//! What a rule is: [`Rule`] and its parts, their checks
//! ([`Rule::normalized`]) and their canonical text (`Display`, which
//! `FromStr` in `parse.rs` reads back to the same value).

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnetwork::IpNetwork;

use crate::error::RuleError;
use crate::filter::prefix::normalize;
use crate::filter::ratelimit::RateLimit;

/// What a rule does with the packets it matches.
///
/// A rate-limit rule carries its limit in [`Rule::limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleAction {
    /// Drop the packet (in monitor mode: count it as "would drop", pass it).
    Drop,
    /// Pass the packet: no later rule sees it.
    Pass,
    /// Count the packet in the rule's counter and go on to the next rule.
    Count,
    /// Check the packet against the rule's [`Rule::limit`]: within it, go
    /// on to the next rule (like `count`); over it, drop the packet (in
    /// monitor mode: count it as "would drop", pass it).
    RateLimit,
}

crate::core::names::named_values! { RuleAction, "rule action", {
    Drop => "drop",
    Pass => "pass",
    Count => "count",
    RateLimit => "rate-limit",
} }

/// An IP version, for rules that match one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

crate::core::names::named_values! { IpFamily, "IP version", {
    V4 => "ipv4" | "ip4",
    V6 => "ipv6" | "ip6",
} }

impl IpFamily {
    /// The family of an address or prefix.
    pub fn of(addr: IpAddr) -> IpFamily {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// The IP protocol a rule matches (after IPv6 extension headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleProtocol {
    /// TCP (6): ports and flags can be matched.
    Tcp,
    /// UDP (17): ports can be matched.
    Udp,
    /// ICMP (1): types can be matched.
    Icmp,
    /// ICMPv6 (58): types can be matched.
    Icmpv6,
    /// Any other protocol, by number (`proto 47`).
    Other(u8),
}

impl RuleProtocol {
    /// The protocol with this number (`Tcp` for 6, and so on).
    pub fn from_number(n: u8) -> RuleProtocol {
        match n {
            6 => RuleProtocol::Tcp,
            17 => RuleProtocol::Udp,
            1 => RuleProtocol::Icmp,
            58 => RuleProtocol::Icmpv6,
            other => RuleProtocol::Other(other),
        }
    }

    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            RuleProtocol::Tcp => 6,
            RuleProtocol::Udp => 17,
            RuleProtocol::Icmp => 1,
            RuleProtocol::Icmpv6 => 58,
            RuleProtocol::Other(n) => n,
        }
    }

    fn has_ports(self) -> bool {
        matches!(self, RuleProtocol::Tcp | RuleProtocol::Udp)
    }

    fn has_types(self) -> bool {
        matches!(self, RuleProtocol::Icmp | RuleProtocol::Icmpv6)
    }
}

impl fmt::Display for RuleProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match RuleProtocol::from_number(self.number()) {
            RuleProtocol::Tcp => f.write_str("tcp"),
            RuleProtocol::Udp => f.write_str("udp"),
            RuleProtocol::Icmp => f.write_str("icmp"),
            RuleProtocol::Icmpv6 => f.write_str("icmpv6"),
            RuleProtocol::Other(n) => write!(f, "proto {n}"),
        }
    }
}

/// Where a rule's source must (or, negated, must not) be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A CIDR prefix (`from 198.51.100.0/24`).
    Prefix(IpNetwork),
    /// A named set of prefixes, kept with the filter ([`Filter::sets`](crate::Filter::sets)):
    /// `from set resolvers`.
    Set(String),
}

/// A rule's source condition: in (or, `negated`, not in) a prefix or a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceMatch {
    /// `not from ...`: the rule matches sources outside it.
    pub negated: bool,
    /// The prefix or set.
    pub source: Source,
}

/// A rule's destination condition: in (or, `negated`, not in) a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestinationMatch {
    /// `not to ...`: the rule matches destinations outside it.
    pub negated: bool,
    /// The prefix.
    pub prefix: IpNetwork,
}

/// A set of numbers (ports, ICMP types) as sorted, disjoint, non-adjacent
/// inclusive ranges: `53`, `1000-2000`, `1900,11211`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<(u16, u16)>,
}

impl RangeSet {
    /// The set of these ranges (in any order, overlapping or not), merged.
    /// Empty ranges (`start > end`) are ignored.
    pub fn new(ranges: impl IntoIterator<Item = RangeInclusive<u16>>) -> RangeSet {
        let mut v: Vec<(u16, u16)> =
            ranges.into_iter().filter(|r| r.start() <= r.end()).map(|r| (*r.start(), *r.end())).collect();
        v.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        RangeSet { ranges: merged }
    }

    /// One number.
    pub fn single(n: u16) -> RangeSet {
        RangeSet { ranges: vec![(n, n)] }
    }

    /// Its ranges, sorted, disjoint.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<u16>> + '_ {
        self.ranges.iter().map(|&(lo, hi)| lo..=hi)
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= n && n <= hi)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The largest number in the set.
    pub fn max(&self) -> Option<u16> {
        self.ranges.last().map(|r| r.1)
    }

    pub(crate) fn pairs(&self) -> &[(u16, u16)] {
        &self.ranges
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// A TCP flags condition: the packet's flags byte, masked with `mask`, must
/// equal `value` (`flags syn,fin`: both set; `flags syn/syn,ack`: SYN set,
/// ACK clear; `flags none/syn,ack`: both clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    /// The flags that must be set (a subset of `mask`).
    pub value: u8,
    /// The flags that are looked at.
    pub mask: u8,
}

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;

    /// Every flag.
    pub const ALL: u8 = 0xFF;
    /// RFC 793's six flags (FIN to URG), without ECN's ECE and CWR: what
    /// `none` alone looks at. A NULL scan with an ECN bit set is still one
    /// (the stack answers it as it answers one without), and no TCP segment
    /// a connection sends has none of these six.
    pub const CLASSIC: u8 = 0x3F;

    /// The flag names, lowest bit first, as rule text writes them.
    pub(crate) const NAMES: [&'static str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

    /// These flags set (and no others looked at).
    pub fn set(flags: u8) -> TcpFlags {
        TcpFlags { value: flags, mask: flags }
    }

    /// Whether a flags byte matches.
    pub fn matches(self, flags: u8) -> bool {
        flags & self.mask == self.value
    }

    pub(crate) fn names(bits: u8) -> String {
        if bits == 0 {
            return "none".into();
        }
        let names: Vec<&str> = (0..8).filter(|i| bits & (1 << i) != 0).map(|i| Self::NAMES[i]).collect();
        names.join(",")
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value == self.mask {
            f.write_str(&TcpFlags::names(self.value))
        } else if self.value == 0 && self.mask == TcpFlags::CLASSIC {
            f.write_str("none")
        } else {
            write!(f, "{}/{}", TcpFlags::names(self.value), TcpFlags::names(self.mask))
        }
    }
}

/// One rule: an action and the conditions a packet must meet (all of
/// them; a condition left `None` matches anything).
///
/// Rule text (what `Display` writes and `FromStr` reads; see
/// [`Filter::rules`](crate::Filter::rules) for the whole syntax):
///
/// ```
/// use xdpguard::{Rule, RuleAction, RuleProtocol};
///
/// let rule: Rule = "drop udp sport 53 not from set resolvers".parse()?;
/// assert_eq!(rule.action, RuleAction::Drop);
/// assert_eq!(rule.protocol, Some(RuleProtocol::Udp));
/// assert_eq!(rule.to_string(), "drop udp not from set resolvers sport 53");
///
/// // The same rule, built.
/// let built = Rule::new(RuleAction::Drop).udp().source_ports("53".parse()?).not_from_set("resolvers");
/// assert_eq!(built, rule);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Rule {
    /// What it does.
    pub action: RuleAction,
    /// Monitor mode (`monitor drop ...`): the rule counts what it matches
    /// and decides nothing; the next rules see the packet as if it were not
    /// there.
    pub monitor: bool,
    /// Only this IP version (`ipv4`, `ipv6`); implied by a prefix.
    pub family: Option<IpFamily>,
    /// Only this protocol.
    pub protocol: Option<RuleProtocol>,
    /// `fragment` (`Some(true)`): only IP fragments, first or later (IPv4
    /// with more-fragments set or an offset; IPv6 with a fragment header
    /// that is not atomic). `not fragment` (`Some(false)`): only whole
    /// packets. A `fragment` rule cannot have ports, flags or types: later
    /// fragments carry none ([`RuleError::FragmentWithTransport`]).
    pub fragment: Option<bool>,
    /// `from` / `not from`.
    pub source: Option<SourceMatch>,
    /// `to` / `not to`.
    pub destination: Option<DestinationMatch>,
    /// `sport`: TCP or UDP source ports.
    pub source_ports: Option<RangeSet>,
    /// `dport`: TCP or UDP destination ports.
    pub destination_ports: Option<RangeSet>,
    /// `flags`: TCP flags.
    pub tcp_flags: Option<TcpFlags>,
    /// `type`: ICMP or ICMPv6 types.
    pub icmp_types: Option<RangeSet>,
    /// The limit of a [`RuleAction::RateLimit`] rule (and only of one).
    pub limit: Option<RateLimit>,
}

impl Rule {
    /// A rule with this action and no conditions (it matches every packet
    /// that reaches it; add conditions with the methods below).
    pub fn new(action: RuleAction) -> Rule {
        Rule {
            action,
            monitor: false,
            family: None,
            protocol: None,
            fragment: None,
            source: None,
            destination: None,
            source_ports: None,
            destination_ports: None,
            tcp_flags: None,
            icmp_types: None,
            limit: None,
        }
    }

    /// A rate-limit rule with this limit (add conditions to scope it).
    pub fn rate_limit(limit: RateLimit) -> Rule {
        Rule { limit: Some(limit), ..Rule::new(RuleAction::RateLimit) }
    }

    /// In monitor mode (or not).
    pub fn monitored(mut self, on: bool) -> Rule {
        self.monitor = on;
        self
    }

    /// Only IPv4 or only IPv6.
    pub fn family(mut self, family: IpFamily) -> Rule {
        self.family = Some(family);
        self
    }

    /// Only this protocol.
    pub fn protocol(mut self, protocol: RuleProtocol) -> Rule {
        self.protocol = Some(protocol);
        self
    }

    /// Only TCP.
    pub fn tcp(self) -> Rule {
        self.protocol(RuleProtocol::Tcp)
    }

    /// Only UDP.
    pub fn udp(self) -> Rule {
        self.protocol(RuleProtocol::Udp)
    }

    /// Only IP fragments, first or later (`fragment`).
    pub fn fragment(mut self) -> Rule {
        self.fragment = Some(true);
        self
    }

    /// Only whole packets, no fragment (`not fragment`).
    pub fn not_fragment(mut self) -> Rule {
        self.fragment = Some(false);
        self
    }

    /// Sources in `prefix`.
    pub fn from(mut self, prefix: IpNetwork) -> Rule {
        self.source = Some(SourceMatch { negated: false, source: Source::Prefix(prefix) });
        self
    }

    /// Sources outside `prefix`.
    pub fn not_from(mut self, prefix: IpNetwork) -> Rule {
        self.source = Some(SourceMatch { negated: true, source: Source::Prefix(prefix) });
        self
    }

    /// Sources in the named set.
    pub fn from_set(mut self, set: impl Into<String>) -> Rule {
        self.source = Some(SourceMatch { negated: false, source: Source::Set(set.into()) });
        self
    }

    /// Sources outside the named set.
    pub fn not_from_set(mut self, set: impl Into<String>) -> Rule {
        self.source = Some(SourceMatch { negated: true, source: Source::Set(set.into()) });
        self
    }

    /// Destinations in `prefix`.
    pub fn to(mut self, prefix: IpNetwork) -> Rule {
        self.destination = Some(DestinationMatch { negated: false, prefix });
        self
    }

    /// Destinations outside `prefix`.
    pub fn not_to(mut self, prefix: IpNetwork) -> Rule {
        self.destination = Some(DestinationMatch { negated: true, prefix });
        self
    }

    /// These TCP or UDP source ports.
    pub fn source_ports(mut self, ports: RangeSet) -> Rule {
        self.source_ports = Some(ports);
        self
    }

    /// These TCP or UDP destination ports.
    pub fn destination_ports(mut self, ports: RangeSet) -> Rule {
        self.destination_ports = Some(ports);
        self
    }

    /// These TCP flags.
    pub fn tcp_flags(mut self, flags: TcpFlags) -> Rule {
        self.tcp_flags = Some(flags);
        self
    }

    /// These ICMP or ICMPv6 types.
    pub fn icmp_types(mut self, types: RangeSet) -> Rule {
        self.icmp_types = Some(types);
        self
    }

    /// The IP version the rule is limited to, given or implied by a prefix.
    pub fn effective_family(&self) -> Option<IpFamily> {
        self.family
            .or_else(|| match &self.source {
                Some(SourceMatch { source: Source::Prefix(p), .. }) => Some(IpFamily::of(p.ip())),
                _ => None,
            })
            .or_else(|| self.destination.map(|d| IpFamily::of(d.prefix.ip())))
    }

    /// Whether the rule's only conditions are on the source: its prefix or
    /// named set (with `not`) and IP version. Such a rule matches every
    /// packet of a source it admits; one with a protocol, ports, flags,
    /// types, a fragment condition or a destination only some.
    pub fn only_on_source(&self) -> bool {
        self.protocol.is_none()
            && self.fragment.is_none()
            && self.destination.is_none()
            && self.source_ports.is_none()
            && self.destination_ports.is_none()
            && self.tcp_flags.is_none()
            && self.icmp_types.is_none()
    }

    /// Whether the rule's `block` (a rate limit's auto-block) can be set
    /// off by packets that need no handshake: UDP, ICMP, ICMPv6, another
    /// protocol or any protocol, or TCP without a `flags` condition that
    /// requires ACK (a SYN, a RST, a FIN). False for a rule without
    /// `block`.
    ///
    /// The filter keeps no connection state, so the source it blocks is
    /// whatever the packets over the limit claim, and the block drops that
    /// source's every packet (all protocols and ports, not only the
    /// rule's) until it expires: an off-path attacker who forges a burst
    /// of SYNs or UDP datagrams from this host's DNS resolver or gateway
    /// cuts the host off from it. A rule requiring ACK narrows this only
    /// to traffic a connection carries; a forged ACK is no harder to send,
    /// which is why allowlisting what must stay reachable matters with any
    /// `block`. The CLI warns when this is true; SYN floods are the SYN
    /// guard's to handle (a cookie proves the source, a block cannot).
    pub fn block_is_spoofable(&self) -> bool {
        if self.limit.as_ref().is_none_or(|l| l.block.is_none()) {
            return false;
        }
        let needs_ack = |f: &TcpFlags| f.mask & f.value & TcpFlags::ACK != 0;
        !(self.protocol == Some(RuleProtocol::Tcp) && self.tcp_flags.as_ref().is_some_and(needs_ack))
    }

    /// The named set the rule refers to, if any.
    pub fn set_name(&self) -> Option<&str> {
        match &self.source {
            Some(SourceMatch { source: Source::Set(name), .. }) => Some(name),
            _ => None,
        }
    }

    /// The rule checked and in its one canonical form: prefixes with host
    /// bits cleared (IPv4-mapped IPv6 ones as IPv4), `proto 6` as `tcp`
    /// (and so on), an IP version that a prefix implies left implicit.
    /// Two rules that match the same packets the same way in the same
    /// words are equal once normalized; `Display` writes this form.
    ///
    /// # Errors
    ///
    /// [`RuleError::FragmentWithTransport`] for `fragment` with ports,
    /// flags or types.
    /// [`RuleError::Invalid`] for a condition the rule cannot have:
    /// ports without TCP or UDP, flags without TCP, types without ICMP or
    /// ICMPv6 (or above 255), an empty port or type set, flags set in
    /// `value` but not in `mask`, prefixes of two IP versions (or not of
    /// the version given), ICMP of the other IP version (`ipv6 icmp`), an
    /// invalid set name, `block` keyed by a /0 (`per src/0`) for an IP
    /// version the rule matches (it would block that whole family).
    pub fn normalized(self) -> Result<Rule, RuleError> {
        self.normalize(true)
    }

    /// Refuses `block` keyed by a /0 for an IP version the rule matches:
    /// the first source over the limit would block that whole address
    /// family, which the lists and [`TimedBlocks`](crate::TimedBlocks)
    /// refuse without `--force` (`permit_whole_family`). Only new rules
    /// (`strict`): a stored one is read back, and the data plane's
    /// auto-block (`src/bpf/guard_limit.h`) refuses a /0 itself.
    fn check_block_key(&self, l: &RateLimit, implied: Option<IpFamily>) -> Result<(), String> {
        let family = self.family.or(implied);
        for (f, len, name) in [(IpFamily::V4, l.per.v4_len, "IPv4"), (IpFamily::V6, l.per.v6_len, "IPv6")] {
            if len == 0 && family.is_none_or(|given| given == f) {
                return Err(format!(
                    "`block` with an {name} source prefix length of 0 (`per src/0`) would block every {name} \
                     address once one source is over the limit (a whole address family, which `block` and \
                     the lists refuse without --force): key by a longer prefix (`per src/24/64`, or at least \
                     `per src/1`), or leave out `block`"
                ));
            }
        }
        Ok(())
    }

    /// [`normalized`](Self::normalized); `strict` false: a rule stored by a
    /// build that took what this one refuses of new rules (a byte burst
    /// under one frame), read back as it was rather than lost.
    pub(crate) fn normalize(mut self, strict: bool) -> Result<Rule, RuleError> {
        let invalid = |rule: &Rule, reason: String| RuleError::Invalid { rule: rule.to_string(), reason };
        if let Some(p) = self.protocol {
            self.protocol = Some(RuleProtocol::from_number(p.number()));
        }
        if let Some(SourceMatch { source: Source::Prefix(p), .. }) = &mut self.source {
            *p = normalize(*p).network;
        }
        if let Some(d) = &mut self.destination {
            d.prefix = normalize(d.prefix).network;
        }
        if let Some(SourceMatch { source: Source::Set(name), .. }) = &self.source {
            check_set_name(name)?;
        }
        match (self.action, &self.limit) {
            (RuleAction::RateLimit, Some(l)) => {
                l.check().map_err(|reason| invalid(&self, reason))?;
                if strict {
                    l.check_byte_burst().map_err(|reason| invalid(&self, reason))?;
                }
            }
            (RuleAction::RateLimit, None) => {
                return Err(invalid(&self, "`rate-limit` needs a rate after it (`rate-limit 100/s ...`)".into()))
            }
            (_, Some(_)) => return Err(invalid(&self, "only a `rate-limit` rule has a limit".into())),
            _ => {}
        }
        if self.fragment == Some(true) {
            let named = [
                (self.source_ports.is_some(), "ports", "sport"),
                (self.destination_ports.is_some(), "ports", "dport"),
                (self.tcp_flags.is_some(), "TCP flags", "flags"),
                (self.icmp_types.is_some(), "ICMP types", "type"),
            ];
            if let Some(&(_, what, word)) = named.iter().find(|(given, ..)| *given) {
                return Err(RuleError::FragmentWithTransport { rule: self.to_string(), what, word });
            }
        }
        let proto = self.protocol;
        for (what, set) in [("sport", &self.source_ports), ("dport", &self.destination_ports)] {
            if let Some(set) = set {
                if !proto.is_some_and(RuleProtocol::has_ports) {
                    return Err(invalid(&self, format!("`{what}` needs `tcp` or `udp` before it")));
                }
                if set.is_empty() {
                    return Err(invalid(&self, format!("`{what}` has no ports")));
                }
            }
        }
        if let Some(flags) = self.tcp_flags {
            if proto != Some(RuleProtocol::Tcp) {
                return Err(invalid(&self, "`flags` needs `tcp` before it".into()));
            }
            if flags.mask == 0 {
                return Err(invalid(
                    &self,
                    "`flags` that look at no flag (`/none`) match every TCP packet: leave `flags` out, or name \
                     the flags to look at after `/` (`none` alone: no flag set)"
                        .into(),
                ));
            }
            if flags.value & !flags.mask != 0 {
                return Err(invalid(
                    &self,
                    format!(
                        "flags {} are required set but not looked at (the part after `/` must include them)",
                        TcpFlags::names(flags.value & !flags.mask)
                    ),
                ));
            }
        }
        if let Some(types) = &self.icmp_types {
            if !proto.is_some_and(RuleProtocol::has_types) {
                return Err(invalid(&self, "`type` needs `icmp` or `icmpv6` before it".into()));
            }
            if types.is_empty() {
                return Err(invalid(&self, "`type` has no types".into()));
            }
            if types.max().unwrap_or(0) > 255 {
                return Err(invalid(&self, "ICMP types are 0 to 255".into()));
            }
        }
        let src_family = match &self.source {
            Some(SourceMatch { source: Source::Prefix(p), .. }) => Some(IpFamily::of(p.ip())),
            _ => None,
        };
        let dst_family = self.destination.map(|d| IpFamily::of(d.prefix.ip()));
        if let (Some(s), Some(d)) = (src_family, dst_family) {
            if s != d {
                return Err(invalid(&self, "the source and destination prefixes are of two IP versions".into()));
            }
        }
        match (self.protocol, self.family.or(src_family).or(dst_family)) {
            (Some(RuleProtocol::Icmp), Some(IpFamily::V6)) => {
                return Err(invalid(
                    &self,
                    "`icmp` is IPv4's ICMP (protocol 1), which IPv6 packets do not carry: write `icmpv6` for IPv6"
                        .into(),
                ))
            }
            (Some(RuleProtocol::Icmpv6), Some(IpFamily::V4)) => {
                return Err(invalid(
                    &self,
                    "`icmpv6` is IPv6's ICMP (58), which IPv4 packets do not carry: write `icmp` for IPv4".into(),
                ))
            }
            _ => {}
        }
        if let (Some(given), Some(implied)) = (self.family, src_family.or(dst_family)) {
            if given != implied {
                let name = |f: IpFamily| if f == IpFamily::V4 { "IPv4" } else { "IPv6" };
                return Err(invalid(
                    &self,
                    format!(
                        "an {} prefix in a rule for {} only (leave out `{given}`: the prefix implies its version)",
                        name(implied),
                        name(given)
                    ),
                ));
            }
            // Implied by the prefix: left implicit, so the text has one form.
            self.family = None;
        }
        if strict {
            if let Some(l) = self.limit.filter(|l| l.block.is_some()) {
                self.check_block_key(&l, src_family.or(dst_family)).map_err(|reason| invalid(&self, reason))?;
            }
        }
        Ok(self)
    }
}

/// Checks a set name: 1 to 31 letters, digits, `-`, `_` or `.`, starting
/// with a letter.
pub(crate) fn check_set_name(name: &str) -> Result<(), RuleError> {
    let max = crate::core::layout::consts::XDPG_SET_NAME_LEN as usize - 1;
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::InvalidSetName { name: name.to_owned() })
    }
}

impl fmt::Display for Rule {
    /// The rule's text: `[monitor] ACTION [LIMIT] [ipv4|ipv6] [PROTO] [[not]
    /// fragment] [[not] from SRC] [[not] to DST] [sport PORTS] [dport PORTS] [flags FLAGS] [type
    /// TYPES]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.monitor {
            f.write_str("monitor ")?;
        }
        write!(f, "{}", self.action)?;
        if let Some(limit) = &self.limit {
            write!(f, " {}", limit.for_family(self.effective_family()))?;
        }
        if let Some(family) = self.family {
            write!(f, " {family}")?;
        }
        if let Some(p) = self.protocol {
            write!(f, " {p}")?;
        }
        match self.fragment {
            Some(true) => f.write_str(" fragment")?,
            Some(false) => f.write_str(" not fragment")?,
            None => {}
        }
        if let Some(s) = &self.source {
            f.write_str(if s.negated { " not from " } else { " from " })?;
            match &s.source {
                Source::Prefix(p) => write!(f, "{p}")?,
                Source::Set(name) => write!(f, "set {name}")?,
            }
        }
        if let Some(d) = self.destination {
            write!(f, "{}{}", if d.negated { " not to " } else { " to " }, d.prefix)?;
        }
        if let Some(p) = &self.source_ports {
            write!(f, " sport {p}")?;
        }
        if let Some(p) = &self.destination_ports {
            write!(f, " dport {p}")?;
        }
        if let Some(flags) = self.tcp_flags {
            write!(f, " flags {flags}")?;
        }
        if let Some(t) = &self.icmp_types {
            write!(f, " type {t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // an empty range is ignored: that is what is tested
    fn range_sets_merge() {
        let s = RangeSet::new([11211..=11211, 1900..=1900, 1000..=2000, 2001..=2005, 5..=3]);
        assert_eq!(s.to_string(), "1000-2005,11211");
        assert!(s.contains(1900) && s.contains(11211) && !s.contains(2006));
        assert_eq!(RangeSet::new([0..=65535, 80..=80]).to_string(), "0-65535");
        assert!(RangeSet::new([]).is_empty());
    }

    #[test]
    fn a_block_on_handshake_less_traffic_is_spoofable() {
        let spoofable = |text: &str| text.parse::<Rule>().unwrap().block_is_spoofable();
        for text in [
            "rate-limit 20/s burst 40 block 10m tcp flags syn/syn,ack dport 22",
            "rate-limit 20/s block 10m tcp dport 22",
            "rate-limit 20/s block 10m tcp flags rst",
            "rate-limit 20/s block 10m tcp flags none/ack dport 22",
            "rate-limit 100/s block 1m udp dport 53",
            "rate-limit 10/s block 1m icmp",
            "rate-limit 10/s block 1m icmpv6",
            "rate-limit 10/s block 1m proto 47",
            "rate-limit 10/s block 1m from 198.51.100.0/24",
        ] {
            assert!(spoofable(text), "{text}");
        }
        for text in [
            "rate-limit 20/s block 10m tcp flags ack dport 22",
            "rate-limit 20/s block 10m tcp flags ack/syn,ack dport 443",
            "rate-limit 20/s burst 40 tcp flags syn/syn,ack dport 22",
            "rate-limit 100/s udp dport 53",
            "drop udp dport 1900",
        ] {
            assert!(!spoofable(text), "{text}");
        }
    }

    #[test]
    fn flags_display() {
        assert_eq!(TcpFlags::set(TcpFlags::SYN | TcpFlags::FIN).to_string(), "fin,syn");
        assert_eq!(TcpFlags { value: TcpFlags::SYN, mask: TcpFlags::SYN | TcpFlags::ACK }.to_string(), "syn/syn,ack");
        assert_eq!(TcpFlags { value: 0, mask: TcpFlags::ACK }.to_string(), "none/ack");
        // `none` alone: none of FIN..URG set, ECN's bits not looked at (a
        // NULL scan, with or without them).
        let null: TcpFlags = "none".parse().unwrap();
        assert_eq!(null, TcpFlags { value: 0, mask: TcpFlags::CLASSIC });
        assert_eq!(null.to_string(), "none");
        assert!(null.matches(0) && null.matches(TcpFlags::ECE) && null.matches(TcpFlags::CWR));
        assert!(!null.matches(TcpFlags::SYN) && !null.matches(TcpFlags::ACK | TcpFlags::ECE));
        let all = TcpFlags { value: 0, mask: TcpFlags::ALL };
        assert_eq!(all.to_string().parse::<TcpFlags>().unwrap(), all, "every flag clear, ECN's too: written out");
        let rule: Rule = "drop tcp flags none".parse().unwrap();
        assert_eq!(rule.normalized().unwrap().to_string(), "drop tcp flags none");
        // Looking at no flag would match every TCP packet: refused.
        let err = "drop tcp flags none/none".parse::<Rule>().unwrap_err();
        assert!(err.to_string().contains("match every TCP packet"), "{err}");
    }

    #[test]
    fn normalizing_checks_conditions() {
        let ports = RangeSet::single(53);
        assert!(Rule::new(RuleAction::Drop).source_ports(ports.clone()).normalized().is_err());
        assert!(Rule::new(RuleAction::Drop).udp().source_ports(ports).normalized().is_ok());
        assert!(Rule::new(RuleAction::Drop).udp().tcp_flags(TcpFlags::set(TcpFlags::SYN)).normalized().is_err());
        let bad_flags = TcpFlags { value: TcpFlags::SYN, mask: TcpFlags::ACK };
        assert!(Rule::new(RuleAction::Drop).tcp().tcp_flags(bad_flags).normalized().is_err());
        let mixed = Rule::new(RuleAction::Drop)
            .from("192.0.2.0/24".parse().unwrap())
            .to("2001:db8::/32".parse().unwrap())
            .normalized();
        assert!(mixed.is_err());
        let r = Rule::new(RuleAction::Drop)
            .family(IpFamily::V4)
            .from("192.0.2.77/24".parse().unwrap())
            .protocol(RuleProtocol::Other(17))
            .normalized()
            .unwrap();
        assert_eq!(r.to_string(), "drop udp from 192.0.2.0/24");
        assert_eq!(r.effective_family(), Some(IpFamily::V4));
        let wrong = Rule::new(RuleAction::Drop).family(IpFamily::V6).from("192.0.2.0/24".parse().unwrap());
        assert!(wrong.normalized().is_err());
        assert!(Rule::new(RuleAction::Drop).from_set("9lives").normalized().is_err());
        assert!(Rule::new(RuleAction::Drop).from_set("resolvers-v2.int").normalized().is_ok());
    }
}
