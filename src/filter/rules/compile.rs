//! The rule compiler: a rule set, in priority order, becomes the index the
//! guard stage reads (`src/bpf/guard.bpf.c`).
//!
//! - Every packet has one *key*: its protocol's table base plus its
//!   destination port (TCP, UDP), its ICMP type (ICMP, ICMPv6) or its
//!   protocol number (the others); a packet whose transport header cannot
//!   be read (a later fragment, a header cut short) has its protocol's "no
//!   key" slot.
//! - Each rule *covers* the keys whose packets it can match: a `dport` set
//!   covers those ports of its protocol, a rule without one covers every
//!   port (and the no-key slot, when it has no port, flag or type
//!   condition), a rule without a protocol covers every key. A `fragment`
//!   rule has none of those conditions (syntax.rs refuses them), so it
//!   covers its protocol's every port, for first fragments, and its no-key
//!   slot, for later ones; its record checks the packet's fragment bit.
//! - Keys covered by the same rules share a *group*: a run of entries
//!   naming those rules' records, in priority order (each rule's records
//!   are stored once). A sweep over the key space finds the runs of
//!   keys with the same covering rules; equal rule lists share one group.
//! - The index maps each key to its group (16 bits, four keys a word). A
//!   packet costs one index read, one group read, and one entry and one
//!   record (a cache line) per rule of its group until one decides: the number of rules
//!   elsewhere does not matter. A rule without a destination port (or ICMP
//!   type, or protocol) is in every group it covers, so such rules are
//!   paid for by every packet of their protocol, and cost a 4-byte entry in
//!   each group: put source-only conditions in the lists or a set instead.
//!
//! Rejected: a second "wildcard" list walked beside the port's group, merged
//! by priority in the data plane (less memory, but two cursors and a merge
//! per record in BPF for every packet); a per-source-prefix index (the lists
//! and sets already are one); records copied into every group (no entry to
//! read, but 64 bytes per group entry: 1,000 port rules and 20 rules
//! without a port took 21,000 records, 2.7 MB for both halves, and a
//! rule set of the differential test overflowed the default capacity).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::core::layout::consts::*;
use crate::error::RuleError;
use crate::filter::guard::layout::{xdpg_rule_group, xdpg_rule_rec};
use crate::filter::rules::syntax::{IpFamily, Rule, RuleAction, RuleProtocol, Source};

/// A compiled rule set: what one half of the guard's tables holds.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// `XDPG_GK_WORDS` words of four 16-bit group numbers.
    pub words: Vec<u64>,
    /// Group 0 is the empty group; a group is a run of `refs`.
    pub groups: Vec<xdpg_rule_group>,
    /// Each group entry: an index into `records`.
    pub refs: Vec<u32>,
    /// Every rule's records, once, in priority order.
    pub records: Vec<xdpg_rule_rec>,
}

/// What compiling may run out of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub groups: usize,
    pub refs: usize,
    pub records: usize,
}

/// The key ranges (inclusive) a rule covers.
fn coverage(rule: &Rule) -> Vec<(u32, u32)> {
    let keyless = rule.source_ports.is_none()
        && rule.destination_ports.is_none()
        && rule.tcp_flags.is_none()
        && rule.icmp_types.is_none();
    let table = |base: u32, nokey: u32, set: Option<&crate::filter::rules::syntax::RangeSet>, size: u32| {
        let mut out: Vec<(u32, u32)> = match set {
            Some(s) => s.pairs().iter().map(|&(lo, hi)| (base + u32::from(lo), base + u32::from(hi))).collect(),
            None => vec![(base, base + size - 1)],
        };
        if keyless {
            out.push((nokey, nokey));
        }
        out
    };
    match rule.protocol {
        None => vec![(0, XDPG_GK_KEYS - 1)],
        Some(RuleProtocol::Tcp) => table(XDPG_GK_TCP, XDPG_GK_NOKEY_TCP, rule.destination_ports.as_ref(), 65536),
        Some(RuleProtocol::Udp) => table(XDPG_GK_UDP, XDPG_GK_NOKEY_UDP, rule.destination_ports.as_ref(), 65536),
        Some(RuleProtocol::Icmp) => table(XDPG_GK_ICMP, XDPG_GK_NOKEY_ICMP, rule.icmp_types.as_ref(), 256),
        Some(RuleProtocol::Icmpv6) => table(XDPG_GK_ICMP6, XDPG_GK_NOKEY_ICMP6, rule.icmp_types.as_ref(), 256),
        Some(RuleProtocol::Other(p)) => vec![(XDPG_GK_OTHER + u32::from(p), XDPG_GK_OTHER + u32::from(p))],
    }
}

/// An address as the data plane holds it: network byte order, IPv4 in word 0.
pub(crate) fn addr_words(addr: IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => bytemuck::cast(a.octets()),
    }
}

pub(crate) fn action_code(action: RuleAction) -> u8 {
    (match action {
        RuleAction::Drop => XDPG_RULE_DROP,
        RuleAction::Pass => XDPG_RULE_PASS,
        RuleAction::Count => XDPG_RULE_COUNT,
        RuleAction::RateLimit => XDPG_RULE_RATE_LIMIT,
    }) as u8
}

/// A rule's records: one, or one per source-port range.
fn records_of(id: u32, rule: &Rule, set_phys: &dyn Fn(&str) -> Option<u32>) -> Result<Vec<xdpg_rule_rec>, RuleError> {
    let mut rec = xdpg_rule_rec {
        rule: id,
        family: match rule.effective_family() {
            None => 0,
            Some(IpFamily::V4) => 4,
            Some(IpFamily::V6) => 6,
        },
        action: action_code(rule.action),
        mode: if rule.monitor { XDPG_RULE_MONITOR as u8 } else { 0 },
        ..Default::default()
    };
    if let Some(flags) = rule.tcp_flags {
        rec.flags_mask = flags.mask;
        rec.flags_value = flags.value;
    }
    let mut m = 0u32;
    if let Some(src) = &rule.source {
        m |= XDPG_RM_SRC;
        if src.negated {
            m |= XDPG_RM_SRC_NOT;
        }
        match &src.source {
            Source::Prefix(p) => {
                rec.src = addr_words(p.network());
                rec.src_len = p.prefix();
            }
            Source::Set(name) => {
                m |= XDPG_RM_SRC_SET;
                rec.set = set_phys(name).ok_or_else(|| RuleError::UnknownSet { name: name.clone() })?;
            }
        }
    }
    if let Some(dst) = &rule.destination {
        m |= XDPG_RM_DST;
        if dst.negated {
            m |= XDPG_RM_DST_NOT;
        }
        rec.dst = addr_words(dst.prefix.network());
        rec.dst_len = dst.prefix.prefix();
    }
    match rule.fragment {
        Some(true) => m |= XDPG_RM_FRAG,
        Some(false) => m |= XDPG_RM_FRAG | XDPG_RM_FRAG_NOT,
        None => {}
    }
    rec.conds = m as u8;
    Ok(match &rule.source_ports {
        None => vec![rec],
        Some(ports) => ports
            .pairs()
            .iter()
            .map(|&(lo, hi)| xdpg_rule_rec { sport_lo: lo, sport_hi: hi, conds: (m | XDPG_RM_SPORT) as u8, ..rec })
            .collect(),
    })
}

/// Compiles `rules` (priority order: (id, rule)). `set_phys` gives the live
/// physical set of a set name.
pub(crate) fn compile(
    rules: &[(u32, &Rule)],
    set_phys: &dyn Fn(&str) -> Option<u32>,
    limits: Limits,
) -> Result<Compiled, RuleError> {
    // Every rule's records, once, in priority order; groups name them.
    let mut records: Vec<xdpg_rule_rec> = Vec::new();
    let mut per_rule: Vec<std::ops::Range<u32>> = Vec::with_capacity(rules.len());
    for &(id, r) in rules {
        let start = records.len() as u32;
        records.extend(records_of(id, r, set_phys)?);
        per_rule.push(start..records.len() as u32);
    }
    if records.len() > limits.records {
        return Err(RuleError::Full {
            what: "the compiled rule records (one per rule, or per source-port range)",
            capacity: limits.records,
            setter: "max_rule_records",
        });
    }
    // Sweep: at each boundary rules start (+) or end (-) covering keys.
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (i, (_, rule)) in rules.iter().enumerate() {
        for (lo, hi) in coverage(rule) {
            events.push((lo, true, i));
            events.push((hi + 1, false, i));
        }
    }
    events.sort_unstable();
    let mut gids = vec![0u16; XDPG_GK_KEYS as usize];
    let mut groups = vec![xdpg_rule_group::default()];
    let mut refs: Vec<u32> = Vec::new();
    let mut by_rules: HashMap<Vec<usize>, u16> = HashMap::new();
    // A rule may cover overlapping ranges only through distinct tables, so
    // counts (not a set) keep the sweep exact.
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut count = vec![0u32; rules.len()];
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, r) = events[i];
            if start {
                count[r] += 1;
                active.insert(r);
            } else {
                count[r] -= 1;
                if count[r] == 0 {
                    active.remove(&r);
                }
            }
            i += 1;
        }
        let end = events.get(i).map_or(XDPG_GK_KEYS, |e| e.0).min(XDPG_GK_KEYS);
        if active.is_empty() || pos >= end {
            continue;
        }
        let list: Vec<usize> = active.iter().copied().collect();
        let gid = match by_rules.get(&list) {
            Some(&g) => g,
            None => {
                if groups.len() >= limits.groups {
                    return Err(RuleError::Full {
                        what: "the rule groups (distinct rule lists per port)",
                        capacity: limits.groups,
                        setter: "max_rule_refs",
                    });
                }
                let first = refs.len();
                for &r in &list {
                    refs.extend(per_rule[r].clone());
                }
                if refs.len() > limits.refs {
                    return Err(RuleError::Full {
                        what: "the rule groups' entries (a rule in every group it can match)",
                        capacity: limits.refs,
                        setter: "max_rule_refs",
                    });
                }
                let g = groups.len() as u16;
                groups.push(xdpg_rule_group { first: first as u32, count: (refs.len() - first) as u32 });
                by_rules.insert(list, g);
                g
            }
        };
        gids[pos as usize..end as usize].fill(gid);
    }
    let mut words = vec![0u64; XDPG_GK_WORDS as usize];
    for (k, &g) in gids.iter().enumerate() {
        words[k / XDPG_GK_PER_WORD as usize] |= u64::from(g) << (16 * (k % XDPG_GK_PER_WORD as usize));
    }
    Ok(Compiled { words, groups, refs, records })
}

/// The index key of a packet of IP protocol `proto`, as the data plane
/// computes it (`src/bpf/guard_key.h`): `field` is its destination port
/// (TCP, UDP) or ICMP type (ICMP, ICMPv6; its low byte), `None` when its
/// transport header cannot be read (the protocol's "no key" slot); other
/// protocols' keys are their protocol number.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn packet_key(proto: u8, field: Option<u16>) -> u32 {
    let (base, nokey, mask) = match proto {
        6 => (XDPG_GK_TCP, XDPG_GK_NOKEY_TCP, 0xFFFF),
        17 => (XDPG_GK_UDP, XDPG_GK_NOKEY_UDP, 0xFFFF),
        1 => (XDPG_GK_ICMP, XDPG_GK_NOKEY_ICMP, 0xFF),
        58 => (XDPG_GK_ICMP6, XDPG_GK_NOKEY_ICMP6, 0xFF),
        other => return XDPG_GK_OTHER + u32::from(other),
    };
    field.map_or(nokey, |f| base + u32::from(f & mask))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The compiled index walked as the data plane walks it, against a
    //! linear first-match over the rules, on random rule sets and packets.

    use super::*;
    use crate::filter::rules::syntax::{RangeSet, TcpFlags};
    use crate::IpNetwork;

    /// A packet as the guard sees it.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Pkt {
        pub src: IpAddr,
        pub dst: IpAddr,
        pub proto: u8,
        /// None: the transport header cannot be read.
        pub ports: Option<(u16, u16)>,
        pub flags: u8,
        pub icmp_type: Option<u8>,
        /// An IP fragment, first or later.
        pub fragment: bool,
    }

    fn in_net(net: IpNetwork, a: IpAddr) -> bool {
        net.contains(a) && net.is_ipv4() == a.is_ipv4()
    }

    /// The rule semantics, written plainly.
    fn matches(rule: &Rule, p: &Pkt, in_set: &dyn Fn(&str, IpAddr) -> bool) -> bool {
        if let Some(f) = rule.effective_family() {
            if f != IpFamily::of(p.src) {
                return false;
            }
        }
        if let Some(proto) = rule.protocol {
            if proto.number() != p.proto {
                return false;
            }
        }
        if rule.fragment.is_some_and(|f| f != p.fragment) {
            return false;
        }
        if let Some(s) = &rule.source {
            let hit = match &s.source {
                Source::Prefix(n) => in_net(*n, p.src),
                Source::Set(name) => in_set(name, p.src),
            };
            if hit == s.negated {
                return false;
            }
        }
        if let Some(d) = rule.destination {
            if in_net(d.prefix, p.dst) == d.negated {
                return false;
            }
        }
        let l4 = matches!(p.proto, 6 | 17) && p.ports.is_some();
        if let Some(sp) = &rule.source_ports {
            if !l4 || !sp.contains(p.ports.unwrap().0) {
                return false;
            }
        }
        if let Some(dp) = &rule.destination_ports {
            if !l4 || !dp.contains(p.ports.unwrap().1) {
                return false;
            }
        }
        if let Some(f) = rule.tcp_flags {
            if p.proto != 6 || p.ports.is_none() || !f.matches(p.flags) {
                return false;
            }
        }
        if let Some(t) = &rule.icmp_types {
            match p.icmp_type {
                Some(ty) if t.contains(u16::from(ty)) => {}
                _ => return false,
            }
        }
        true
    }

    /// First terminal match (id), and every rule that counted.
    fn linear(rules: &[(u32, &Rule)], p: &Pkt, in_set: &dyn Fn(&str, IpAddr) -> bool) -> (Option<u32>, Vec<u32>) {
        let mut hits = Vec::new();
        for &(id, r) in rules {
            if matches(r, p, in_set) {
                hits.push(id);
                if r.action != RuleAction::Count && !r.monitor {
                    return (Some(id), hits);
                }
            }
        }
        (None, hits)
    }

    fn key(p: &Pkt) -> u32 {
        let field = match p.proto {
            6 | 17 => p.ports.map(|(_, d)| d),
            _ => p.icmp_type.map(u16::from),
        };
        packet_key(p.proto, field)
    }

    fn mask_eq(net: [u32; 4], len: u8, addr: [u32; 4]) -> bool {
        (0..4).all(|i| {
            let bits = i32::from(len) - 32 * i as i32;
            let m = if bits >= 32 {
                u32::MAX
            } else if bits <= 0 {
                0
            } else {
                (u32::MAX << (32 - bits)).to_be()
            };
            addr[i] & m == net[i]
        })
    }

    /// What guard.bpf.c does with the compiled tables.
    fn walk(c: &Compiled, p: &Pkt, set_has: &dyn Fn(u32, IpAddr) -> bool) -> (Option<u32>, Vec<u32>) {
        let k = key(p) as usize;
        let g = (c.words[k / 4] >> (16 * (k % 4))) as u16;
        let mut hits = Vec::new();
        if g == 0 {
            return (None, hits);
        }
        let grp = c.groups[g as usize];
        let fam = if p.src.is_ipv4() { 4 } else { 6 };
        // The data plane reads ports and flags only from a readable TCP/UDP header.
        let readable = matches!(p.proto, 6 | 17) && p.ports.is_some();
        let sport = if readable { p.ports.map_or(0, |x| x.0) } else { 0 };
        let flags = if readable && p.proto == 6 { p.flags } else { 0 };
        for &ri in &c.refs[grp.first as usize..(grp.first + grp.count) as usize] {
            let r = &c.records[ri as usize];
            let m = u32::from(r.conds);
            if r.family != 0 && r.family != fam {
                continue;
            }
            if m & XDPG_RM_SPORT != 0 && (sport < r.sport_lo || sport > r.sport_hi) {
                continue;
            }
            if flags & r.flags_mask != r.flags_value {
                continue;
            }
            if m & XDPG_RM_FRAG != 0 && p.fragment == (m & XDPG_RM_FRAG_NOT != 0) {
                continue;
            }
            if m & XDPG_RM_DST != 0 && mask_eq(r.dst, r.dst_len, addr_words(p.dst)) == (m & XDPG_RM_DST_NOT != 0) {
                continue;
            }
            if m & XDPG_RM_SRC != 0 {
                let hit = if m & XDPG_RM_SRC_SET != 0 {
                    set_has(r.set, p.src)
                } else {
                    mask_eq(r.src, r.src_len, addr_words(p.src))
                };
                if hit == (m & XDPG_RM_SRC_NOT != 0) {
                    continue;
                }
            }
            hits.push(r.rule);
            if u32::from(r.action) == XDPG_RULE_COUNT || r.mode != 0 {
                continue;
            }
            return (Some(r.rule), hits);
        }
        (None, hits)
    }

    /// A small deterministic generator (no dependency for a unit test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn below(&mut self, n: u32) -> u32 {
            self.next() % n
        }
    }

    fn ports(g: &mut Lcg) -> RangeSet {
        let pool = [53u16, 80, 123, 443, 1900, 11211, 0, 65535];
        let n = 1 + g.below(3);
        RangeSet::new((0..n).map(|_| {
            let a = pool[g.below(pool.len() as u32) as usize];
            if g.below(3) == 0 {
                a..=a.saturating_add(g.below(200) as u16)
            } else {
                a..=a
            }
        }))
    }

    fn random_rule(g: &mut Lcg) -> Rule {
        let action = [RuleAction::Drop, RuleAction::Pass, RuleAction::Count][g.below(3) as usize];
        let mut r = Rule::new(action).monitored(g.below(8) == 0);
        let protocol = g.below(7);
        let v6 = g.below(3) == 0;
        r.protocol = match protocol {
            0 => None,
            1 | 2 => Some(RuleProtocol::Udp),
            3 | 4 => Some(RuleProtocol::Tcp),
            5 if v6 => Some(RuleProtocol::Icmpv6),
            5 => Some(RuleProtocol::Icmp),
            _ => Some(RuleProtocol::Other(47)),
        };
        let prefix = |g: &mut Lcg| -> IpNetwork {
            if v6 {
                format!("2001:db8:{:x}::/{}", g.below(2), 32 + g.below(3) * 16).parse().unwrap()
            } else {
                format!("192.0.{}.0/{}", g.below(4), 22 + g.below(4)).parse().unwrap()
            }
        };
        match g.below(5) {
            0 => r = r.from(prefix(g)),
            1 => r = r.not_from(prefix(g)),
            2 => r = if g.below(2) == 0 { r.from_set("s") } else { r.not_from_set("s") },
            _ => {}
        }
        if g.below(4) == 0 {
            r = if g.below(2) == 0 { r.to(prefix(g)) } else { r.not_to(prefix(g)) };
        }
        // A third of the rules ask about fragments; `fragment` ones name no
        // port, flag or type (refused: see `Rule::normalized`).
        r.fragment = [None, None, None, None, Some(true), Some(false)][g.below(6) as usize];
        let transport_ok = r.fragment != Some(true);
        if transport_ok && matches!(r.protocol, Some(RuleProtocol::Tcp | RuleProtocol::Udp)) {
            if g.below(2) == 0 {
                r.destination_ports = Some(ports(g));
            }
            if g.below(3) == 0 {
                r.source_ports = Some(ports(g));
            }
        }
        if transport_ok && r.protocol == Some(RuleProtocol::Tcp) && g.below(3) == 0 {
            r.tcp_flags = Some(TcpFlags { value: TcpFlags::SYN, mask: TcpFlags::SYN | (g.below(2) as u8) << 4 });
        }
        if transport_ok && matches!(r.protocol, Some(RuleProtocol::Icmp | RuleProtocol::Icmpv6)) && g.below(2) == 0 {
            r.icmp_types = Some(RangeSet::new([0..=0, 8..=8]));
        }
        r.normalized().unwrap()
    }

    fn random_packet(g: &mut Lcg) -> Pkt {
        let v6 = g.below(3) == 0;
        let addr = |g: &mut Lcg| -> IpAddr {
            if v6 {
                format!("2001:db8:{:x}::{:x}", g.below(3), g.below(4)).parse().unwrap()
            } else {
                format!("192.0.{}.{}", g.below(5), g.below(4) * 64).parse().unwrap()
            }
        };
        let proto = [6u8, 17, 1, 47, 58][g.below(5) as usize];
        let pool = [53u16, 80, 123, 443, 1900, 11211, 0, 65535, 150, 250];
        let pick = |g: &mut Lcg| pool[g.below(pool.len() as u32) as usize];
        // A later fragment has no transport header; a first fragment has
        // one, as a whole packet does (or one cut short).
        let (fragment, later) = [(false, false), (false, false), (true, false), (true, true)][g.below(4) as usize];
        let readable = !later && g.below(6) != 0;
        Pkt {
            src: addr(g),
            dst: addr(g),
            proto,
            ports: readable.then(|| (pick(g), pick(g))),
            flags: g.below(256) as u8,
            icmp_type: readable.then(|| [0u8, 8, 3][g.below(3) as usize]),
            fragment,
        }
    }

    #[test]
    fn compiled_index_agrees_with_first_match() {
        let mut g = Lcg(7);
        let set: Vec<IpNetwork> = vec!["192.0.1.0/24".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()];
        let in_set = |_: &str, a: IpAddr| set.iter().any(|n| in_net(*n, a));
        for round in 0..200 {
            let n = 1 + g.below(if round % 10 == 0 { 60 } else { 12 });
            let rules: Vec<Rule> = (0..n).map(|_| random_rule(&mut g)).collect();
            let listed: Vec<(u32, &Rule)> = rules.iter().enumerate().map(|(i, r)| (i as u32 * 3 + 1, r)).collect();
            let c = compile(&listed, &|_| Some(9), Limits { groups: 65536, refs: 1 << 20, records: 1 << 20 }).unwrap();
            for _ in 0..400 {
                let p = random_packet(&mut g);
                let want = linear(&listed, &p, &in_set);
                let got = walk(&c, &p, &|phys, a| phys == 9 && in_set("s", a));
                assert_eq!(
                    got,
                    want,
                    "round {round}: {p:?}\nrules: {:#?}",
                    rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn groups_are_shared_and_limits_hold() {
        let rules: Vec<Rule> = (0..100u16)
            .map(|i| format!("drop udp dport {} from 192.0.2.{}", 1000 + i, i).parse().unwrap())
            .chain(["drop udp sport 53".parse().unwrap()])
            .collect();
        let listed: Vec<(u32, &Rule)> = rules.iter().enumerate().map(|(i, r)| (i as u32, r)).collect();
        let c = compile(&listed, &|_| None, Limits { groups: 65536, refs: 1 << 20, records: 1 << 20 }).unwrap();
        // One group per port rule (its rule + the sport rule), one for the
        // rest of UDP; the no-key slot has none (sport needs a port).
        assert_eq!(c.groups.len(), 1 + 100 + 1);
        assert_eq!(c.refs.len(), 100 * 2 + 1);
        assert_eq!(c.records.len(), 101, "each rule's record once");
        let too_few = compile(&listed, &|_| None, Limits { groups: 65536, refs: 150, records: 1000 });
        assert!(matches!(too_few, Err(RuleError::Full { .. })));
        let too_few = compile(&listed, &|_| None, Limits { groups: 65536, refs: 1000, records: 100 });
        assert!(matches!(too_few, Err(RuleError::Full { .. })));
        let unknown: Rule = "drop from set nope".parse().unwrap();
        assert!(matches!(
            compile(&[(0, &unknown)], &|_| None, Limits { groups: 10, refs: 10, records: 10 }),
            Err(RuleError::UnknownSet { .. })
        ));
    }
}
