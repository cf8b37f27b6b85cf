//! Rule text: `FromStr` for [`Rule`] and its parts, and [`parse_rules`]
//! for rule files (every bad line reported by number, nothing taken from a
//! file with one).

use std::str::FromStr;

use crate::error::{LineError, RuleError};
use crate::filter::prefix::parse_prefix;
use crate::filter::ratelimit::{LimitKey, RateLimit};
use crate::filter::rules::syntax::{
    DestinationMatch, IpFamily, RangeSet, Rule, RuleAction, RuleProtocol, Source, SourceMatch, TcpFlags,
};

/// One rule of a rule file, and its line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLine {
    /// The line it was on.
    pub line: usize,
    /// The rule, normalized ([`Rule::normalized`]).
    pub rule: Rule,
}

/// Parses a rule file: one rule per line, in priority order; blank lines
/// and `#` comments (whole lines or line ends) are skipped. Read as bytes:
/// a line that is not UTF-8 is reported by number with the other bad lines.
///
/// ```
/// let text = b"# amplification\ndrop udp sport 53 not from set resolvers\n\ndrop udp dport 1900,11211\n";
/// let rules = xdpguard::parse_rules(text, "rules.txt")?;
/// assert_eq!(rules.len(), 2);
/// assert_eq!(rules[1].line, 4);
/// assert!(xdpguard::parse_rules(b"drop udp\ndrop tcp dport 99999\n", "x").is_err());
/// # Ok::<(), xdpguard::RuleError>(())
/// ```
///
/// # Errors
///
/// [`RuleError::BadLines`] listing every line that is not a valid rule.
pub fn parse_rules(text: &[u8], source_name: &str) -> Result<Vec<RuleLine>, RuleError> {
    let (rules, errors) = parse_rule_lines(text);
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(RuleError::BadLines { source_name: source_name.to_owned(), errors })
    }
}

/// Parses a rule file as [`parse_rules`] does, keeping both halves: the
/// rules of the lines that parse, and every line that does not. For a
/// check that reports more than syntax in one pass (rules naming sets that
/// do not exist, say, found among the lines that parsed).
///
/// ```
/// let (rules, bad) = xdpguard::parse_rule_lines(b"drop udp from set nosuch\ndrop tcp flags fni\n");
/// assert_eq!((rules.len(), rules[0].line), (1, 1));
/// assert_eq!((bad.len(), bad[0].line), (1, 2));
/// ```
pub fn parse_rule_lines(text: &[u8]) -> (Vec<RuleLine>, Vec<LineError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let Ok(s) = std::str::from_utf8(raw) else {
            errors.push(LineError { line, message: "not UTF-8 text".into() });
            continue;
        };
        let s = strip_comment(s);
        if s.is_empty() {
            continue;
        }
        match s.parse::<Rule>() {
            Ok(rule) => rules.push(RuleLine { line, rule }),
            Err(e) => errors.push(LineError { line, message: line_message(&e) }),
        }
    }
    (rules, errors)
}

fn strip_comment(s: &str) -> &str {
    s.split('#').next().unwrap_or("").trim()
}

/// A rule error as one line of a file's report (without the rule, which
/// the line number names).
fn line_message(e: &RuleError) -> String {
    match e {
        RuleError::Invalid { reason, .. } => reason.clone(),
        RuleError::FragmentWithTransport { what, word, .. } => crate::error::fragment_with_transport(what, word),
        other => other.to_string(),
    }
}

impl FromStr for RangeSet {
    type Err = RuleError;

    /// `53`, `1000-2000`, `1900,11211`, `53,1000-2000` (numbers 0 to 65535).
    fn from_str(s: &str) -> Result<RangeSet, RuleError> {
        let bad = |reason: String| RuleError::Invalid { rule: s.to_owned(), reason };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let num =
                |t: &str| t.trim().parse::<u16>().map_err(|_| bad(format!("`{t}` is not a number from 0 to 65535")));
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad(format!("range {lo}-{hi} is backwards (write {hi}-{lo})")));
            }
            ranges.push(lo..=hi);
        }
        Ok(RangeSet::new(ranges))
    }
}

/// ICMP types by name: (name, ICMP's type, ICMPv6's type).
const ICMP_TYPE_NAMES: [(&str, Option<u8>, Option<u8>); 6] = [
    ("echo-reply", Some(0), Some(129)),
    ("destination-unreachable", Some(3), Some(1)),
    ("packet-too-big", None, Some(2)),
    ("echo-request", Some(8), Some(128)),
    ("time-exceeded", Some(11), Some(3)),
    ("parameter-problem", Some(12), Some(4)),
];

/// `type` TYPES: numbers 0 to 255 and ranges as [`RangeSet`] reads them,
/// or names of the protocol given before (`echo-request`).
fn icmp_types(s: &str, protocol: Option<RuleProtocol>) -> Result<RangeSet, String> {
    let names = || ICMP_TYPE_NAMES.iter().map(|(n, ..)| *n).collect::<Vec<_>>().join(", ");
    let one = |t: &str| -> Result<u16, String> {
        let t = t.trim();
        if let Ok(n) = t.parse::<u8>() {
            return Ok(u16::from(n));
        }
        let Some((_, v4, v6)) = ICMP_TYPE_NAMES.iter().find(|(n, ..)| n.eq_ignore_ascii_case(t)) else {
            return Err(format!("`{t}` is not an ICMP type: give a number from 0 to 255 or a name ({})", names()));
        };
        let n = match protocol {
            Some(RuleProtocol::Icmp) => v4.ok_or_else(|| format!("`{t}` is an ICMPv6 type only (`icmpv6`)"))?,
            Some(RuleProtocol::Icmpv6) => *v6.as_ref().expect("every name is ICMPv6's"),
            _ => return Err(format!("a type name (`{t}`) goes after `icmp` or `icmpv6`, which number it")),
        };
        Ok(u16::from(n))
    };
    let mut ranges = Vec::new();
    for part in s.split(',') {
        // Names have dashes: a range is the first split whose two sides
        // are types (`3-time-exceeded`).
        let (lo, hi) = match one(part) {
            Ok(n) => (n, n),
            Err(e) => part
                .match_indices('-')
                .find_map(|(i, _)| Some((one(&part[..i]).ok()?, one(&part[i + 1..]).ok()?)))
                .ok_or(e)?,
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is backwards (write {hi}-{lo})"));
        }
        ranges.push(lo..=hi);
    }
    Ok(RangeSet::new(ranges))
}

fn flag_bits(s: &str) -> Result<u8, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    let mut bits = 0u8;
    for name in s.split(',') {
        let name = name.trim();
        let i = TcpFlags::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown TCP flag `{name}` (expected {} or none)", TcpFlags::NAMES.join(", ")))?;
        bits |= 1 << i;
    }
    Ok(bits)
}

impl FromStr for TcpFlags {
    type Err = RuleError;

    /// `syn,fin` (both set), `syn/syn,ack` (SYN set, ACK clear),
    /// `none/syn,ack` (both clear), `none` (none of FIN, SYN, RST, PSH,
    /// ACK, URG set: a NULL scan's packets, ECN bits or not). Flags: fin,
    /// syn, rst, psh, ack, urg, ece, cwr.
    fn from_str(s: &str) -> Result<TcpFlags, RuleError> {
        let bad = |reason| RuleError::Invalid { rule: s.to_owned(), reason };
        let (value, mask) = match s.split_once('/') {
            Some((v, m)) => (flag_bits(v).map_err(bad)?, flag_bits(m).map_err(bad)?),
            // Every flag looked at: read as "these set", `none` with no mask
            // would look at nothing and match every packet.
            None if s.trim().eq_ignore_ascii_case("none") => (0, TcpFlags::CLASSIC),
            None => {
                let v = flag_bits(s).map_err(bad)?;
                (v, v)
            }
        };
        Ok(TcpFlags { value, mask })
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// Parses and normalizes one rule (see [`Filter::rules`](crate::Filter::rules)
    /// for the syntax). A `#` starts a comment.
    fn from_str(text: &str) -> Result<Rule, RuleError> {
        parse_rule(text, true)
    }
}

/// A rule as the guard stored it (its text store): parsed as `FromStr`
/// does, but without the checks only new rules get
/// ([`Rule::normalize`]), so a rule an older build took is read back, not
/// lost.
pub(crate) fn parse_stored(text: &str) -> Result<Rule, RuleError> {
    parse_rule(text, false)
}

fn parse_rule(text: &str, strict: bool) -> Result<Rule, RuleError> {
    let text = strip_comment(text);
    let bad = |reason: String| RuleError::Invalid { rule: text.to_owned(), reason };
    let mut words = text.split_whitespace().peekable();
    let mut monitor = false;
    if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("monitor")) {
        monitor = true;
        words.next();
    }
    let action = match words.next() {
        None => return Err(bad("empty rule: expected an action (drop, pass or count)".into())),
        Some(w) => w.parse::<RuleAction>().map_err(|_| {
            bad(format!("`{w}` is not an action: a rule starts with drop, pass, count or rate-limit (or monitor)"))
        })?,
    };
    let mut rule = Rule::new(action).monitored(monitor);
    let mut limit = (action == RuleAction::RateLimit).then(RateLimit::default);
    let mut limit_seen: Vec<&'static str> = Vec::new();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut once = |what: &'static str| once(&mut seen, what);
    // `per src/LEN` with one length, as written (checked against the
    // rule's IP versions once they are all known).
    let mut single_per: Option<String> = None;
    while let Some(word) = words.next() {
        if limit.is_some() && word.eq_ignore_ascii_case("per") {
            single_per = words.peek().filter(|v| v.matches('/').count() == 1).map(|v| (*v).to_owned());
        }
        if let Some(l) = &mut limit {
            if l.parse_word(word, || words.next().map(str::to_owned), &mut limit_seen).map_err(&bad)? {
                continue;
            }
        }
        let lower = word.to_ascii_lowercase();
        let mut value =
            |what: &str| words.next().ok_or_else(|| format!("`{what}` needs a value after it")).map(str::to_owned);
        match lower.as_str() {
            "ipv4" | "ip4" | "ipv6" | "ip6" => {
                once("ipv4/ipv6").map_err(&bad)?;
                rule.family = Some(lower.parse::<IpFamily>().map_err(|e| bad(e.to_string()))?);
            }
            "tcp" | "udp" | "icmp" | "icmpv6" | "proto" => {
                once("protocol").map_err(&bad)?;
                rule.protocol = Some(match lower.as_str() {
                    "tcp" => RuleProtocol::Tcp,
                    "udp" => RuleProtocol::Udp,
                    "icmp" => RuleProtocol::Icmp,
                    "icmpv6" => RuleProtocol::Icmpv6,
                    _ => {
                        let v = value("proto").map_err(&bad)?;
                        let n = v
                            .parse::<u8>()
                            .map_err(|_| bad(format!("`proto {v}`: give the protocol number, 0 to 255")))?;
                        RuleProtocol::from_number(n)
                    }
                });
            }
            "fragment" => {
                once("fragment").map_err(&bad)?;
                rule.fragment = Some(true);
            }
            "not" | "from" | "to" => {
                let negated = lower == "not";
                let dir = if negated {
                    let w = words.next().map(str::to_ascii_lowercase);
                    match w.as_deref() {
                        Some("fragment") => {
                            once("fragment").map_err(&bad)?;
                            rule.fragment = Some(false);
                            continue;
                        }
                        Some(d @ ("from" | "to")) => d.to_owned(),
                        _ => return Err(bad("`not` goes before `from`, `to` or `fragment`".into())),
                    }
                } else {
                    lower.clone()
                };
                let mut value = |what: &str| {
                    words.next().ok_or_else(|| format!("`{what}` needs a value after it")).map(str::to_owned)
                };
                if dir == "from" {
                    once("from").map_err(&bad)?;
                    let v = value("from").map_err(&bad)?;
                    let source = if v.eq_ignore_ascii_case("set") {
                        Source::Set(value("from set").map_err(&bad)?)
                    } else {
                        Source::Prefix(parse_prefix(&v).map_err(|e| bad(e.to_string()))?)
                    };
                    rule.source = Some(SourceMatch { negated, source });
                } else {
                    once("to").map_err(&bad)?;
                    let v = value("to").map_err(&bad)?;
                    let prefix = parse_prefix(&v).map_err(|e| bad(e.to_string()))?;
                    rule.destination = Some(DestinationMatch { negated, prefix });
                }
            }
            "sport" | "dport" | "type" => {
                once(match lower.as_str() {
                    "sport" => "sport",
                    "dport" => "dport",
                    _ => "type",
                })
                .map_err(&bad)?;
                let v = value(&lower).map_err(&bad)?;
                let set = if lower == "type" {
                    icmp_types(&v, rule.protocol).map_err(|reason| bad(format!("`type {v}`: {reason}")))?
                } else {
                    v.parse::<RangeSet>().map_err(|e| match e {
                        RuleError::Invalid { reason, .. } => bad(format!("`{lower} {v}`: {reason}")),
                        other => other,
                    })?
                };
                match lower.as_str() {
                    "sport" => rule.source_ports = Some(set),
                    "dport" => rule.destination_ports = Some(set),
                    _ => rule.icmp_types = Some(set),
                }
            }
            "flags" => {
                once("flags").map_err(&bad)?;
                let v = value("flags").map_err(&bad)?;
                rule.tcp_flags = Some(v.parse::<TcpFlags>().map_err(|e| match e {
                    RuleError::Invalid { reason, .. } => bad(format!("`flags {v}`: {reason}")),
                    other => other,
                })?);
            }
            _ if limit.is_some() && word.starts_with(|c: char| c.is_ascii_digit()) => {
                return Err(bad(format!(
                    "`{word}` is not a rate: give it a unit, `100/s` (packets a second), `1mbit/s` or `64kB/s` \
                     (bytes)"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "unknown word `{word}` (expected ipv4, ipv6, tcp, udp, icmp, icmpv6, proto N, \
                     [not] fragment, [not] from PREFIX|set NAME, [not] to PREFIX, sport, dport, flags or type)"
                )))
            }
        }
    }
    // One length for a rule of both IP versions: which one it is (the
    // IPv4 one up to 32, else IPv6's) would be a guess, and the other
    // version keyed per address without a word said.
    let prefix_family = match (&rule.source, &rule.destination) {
        (Some(SourceMatch { source: Source::Prefix(p), .. }), _) => Some(IpFamily::of(p.ip())),
        (_, Some(d)) => Some(IpFamily::of(d.prefix.ip())),
        _ => None,
    };
    let family = rule.family.or(prefix_family);
    match (&single_per, family, &mut limit) {
        (Some(v), None, _) => {
            return Err(bad(format!(
                "`per {v}` gives one prefix length, and the rule matches both IPv4 and IPv6: give both \
                 (`per src/24/64`: IPv4's, then IPv6's), or put `ipv4` or `ipv6` in the rule"
            )))
        }
        // The one length is the rule's IP version's, whatever its size
        // (`per src/32 ipv6` keys IPv6 sources by /32).
        (Some(v), Some(family), Some(l)) => {
            let n = v.rsplit('/').next().and_then(|n| n.parse::<u8>().ok()).unwrap_or(l.per.v4_len);
            l.per = match family {
                IpFamily::V4 if n > 32 => {
                    return Err(bad(format!("`per {v}`: an IPv4 prefix length is 0 to 32")));
                }
                IpFamily::V4 => LimitKey { v4_len: n, ..LimitKey::default() },
                IpFamily::V6 => LimitKey { v6_len: n, ..LimitKey::default() },
            };
        }
        _ => {}
    }
    // A stored rule without `per` is from a build that left the default
    // out of the text, when IPv6's was /128: read back as it was compiled
    // and runs, not silently re-keyed by /64 at the next edit. This build
    // always writes `per`. An IPv4-only rule keeps the default: its IPv6
    // length keys nothing, and a /128 there would make `apply` replace it
    // (new id, counters and buckets) for a difference that does nothing.
    if let (false, Some(l)) = (strict, &mut limit) {
        if !limit_seen.contains(&"per") && family != Some(IpFamily::V4) {
            l.per = LimitKey::STORED_BEFORE_V6_64;
        }
    }
    rule.limit = limit;
    rule.normalize(strict).map_err(|e| match e {
        // Name the rule as written, not as normalized.
        RuleError::Invalid { reason, .. } => bad(reason),
        RuleError::FragmentWithTransport { what, word, .. } => {
            RuleError::FragmentWithTransport { rule: text.to_owned(), what, word }
        }
        other => other,
    })
}

/// Records that word `what` of a rule was given: an error the second time.
pub(crate) fn once(seen: &mut Vec<&'static str>, what: &'static str) -> Result<(), String> {
    if seen.contains(&what) {
        return Err(format!("`{what}` given twice"));
    }
    seen.push(what);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_examples_parse() {
        for (text, shown) in [
            ("drop udp sport 53 not from set resolvers", "drop udp not from set resolvers sport 53"),
            ("drop udp dport 1900,11211", "drop udp dport 1900,11211"),
            ("pass tcp dport 22 from 198.51.100.0/24", "pass tcp from 198.51.100.0/24 dport 22"),
            ("drop tcp dport 22", "drop tcp dport 22"),
            ("drop tcp flags syn,fin", "drop tcp flags fin,syn"),
            ("monitor drop icmp type 8", "monitor drop icmp type 8"),
            ("drop icmp type echo-request,echo-reply", "drop icmp type 0,8"),
            ("drop icmpv6 type Echo-Request-129", "drop icmpv6 type 128-129"),
            ("drop icmp type 3-time-exceeded", "drop icmp type 3-11"),
            ("count ipv6 icmpv6 type 128-129", "count ipv6 icmpv6 type 128-129"),
            ("DROP Proto 47 to 203.0.113.0/24  # GRE", "drop proto 47 to 203.0.113.0/24"),
            ("drop proto 6 flags syn/syn,ack", "drop tcp flags syn/syn,ack"),
            ("drop from 192.0.2.7 not to 192.0.2.0/24", "drop from 192.0.2.7/32 not to 192.0.2.0/24"),
            ("drop ipv4", "drop ipv4"),
            ("pass tcp flags none/syn,fin,rst,psh,ack,urg", "pass tcp flags none"),
            (
                "rate-limit 100/s 1mbit/s per src/24/64 burst 200 block 10m udp dport 53",
                "rate-limit 100/s 1mbit/s per src/24/64 burst 200 block 10m udp dport 53",
            ),
            ("rate-limit udp dport 53 50pps", "rate-limit 50/s per src/32/64 udp dport 53"),
            (
                "monitor rate-limit 10/s tcp flags syn/syn,ack",
                "monitor rate-limit 10/s per src/32/64 tcp flags syn/syn,ack",
            ),
            ("rate-limit 10/s ipv6 udp", "rate-limit 10/s per src/64 ipv6 udp"),
            ("rate-limit 10/s per src/128 ipv6 udp", "rate-limit 10/s per src/128 ipv6 udp"),
            ("rate-limit 10/s per src/24/128 ipv4 udp", "rate-limit 10/s per src/24/128 ipv4 udp"),
            ("rate-limit 10/s udp from 192.0.2.0/24", "rate-limit 10/s per src/32 udp from 192.0.2.0/24"),
            ("drop udp fragment", "drop udp fragment"),
            ("DROP Fragment UDP from 192.0.2.0/24", "drop udp fragment from 192.0.2.0/24"),
            ("monitor drop fragment", "monitor drop fragment"),
            ("drop from 192.0.2.0/24 udp not fragment dport 53", "drop udp not fragment from 192.0.2.0/24 dport 53"),
            ("rate-limit 10/s ipv6 udp fragment", "rate-limit 10/s per src/64 ipv6 udp fragment"),
        ] {
            let rule: Rule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rule.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<Rule>().unwrap(), rule, "{shown} round-trips");
        }
    }

    /// Later fragments carry no transport header: a `fragment` rule naming
    /// ports, flags or types could never match them, and is refused with
    /// a typed error that says why and what to write; in a file, by line.
    #[test]
    fn fragment_rules_name_no_transport_fields() {
        for (text, want) in [
            ("drop udp fragment dport 53", "dport"),
            ("drop udp sport 53 fragment", "sport"),
            ("drop tcp fragment flags syn", "flags"),
            ("drop icmpv6 fragment type echo-request", "type"),
            ("drop fragment dport 53", "dport"),
        ] {
            match text.parse::<Rule>() {
                Err(e @ RuleError::FragmentWithTransport { word, .. }) => {
                    assert_eq!(word, want, "{text}");
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("`{text}`")), "names the rule as written: {msg}");
                    assert!(msg.contains("later fragments carry none") && msg.contains("two rules"), "{msg}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Whole packets have them: `not fragment` may.
        assert!("drop udp not fragment dport 53".parse::<Rule>().is_ok());
        let built = Rule::new(RuleAction::Drop).tcp().fragment().tcp_flags(TcpFlags::set(TcpFlags::SYN));
        assert!(matches!(built.normalized(), Err(RuleError::FragmentWithTransport { word: "flags", .. })));
        for text in ["drop udp fragment fragment", "drop udp fragment not fragment", "drop not udp"] {
            assert!(matches!(text.parse::<Rule>(), Err(RuleError::Invalid { .. })), "{text}");
        }
        let err = parse_rules(b"drop udp fragment\ndrop udp fragment dport 53\n", "f").unwrap_err();
        let RuleError::BadLines { errors, .. } = err else { panic!("{err}") };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(
            errors[0].message.starts_with("a `fragment` rule cannot name ports (`dport`)"),
            "{}",
            errors[0].message
        );
    }

    /// A rule an older build stored with a byte burst under one frame is
    /// read back from the guard's text (not lost), though refused as new.
    #[test]
    fn stored_rules_read_back_what_new_ones_refuse() {
        let text = "rate-limit 1mbit/s burst 100B udp dport 9999";
        let err = text.parse::<Rule>().unwrap_err().to_string();
        assert!(err.contains("at least 9018 bytes"), "{err}");
        let stored = parse_stored(text).unwrap();
        assert_eq!(stored.limit.and_then(|l| l.burst_bytes), Some(100));
        assert_eq!(stored.to_string(), "rate-limit 1mbit/s per src/32/128 burst 100B udp dport 9999");
        assert!(parse_stored("rate-limit 0/s udp").is_err(), "what no build took is still refused");
    }

    /// IPv6 sources are keyed by their /64 by default. A rule stored by a
    /// build whose default was /128 wrote no `per`: read back with /128, as
    /// it was compiled and runs (an upgrade re-keys no running rule), and
    /// shown with it. Stored text now always says `per`, so a new rule's
    /// default survives the same read.
    #[test]
    fn the_default_ipv6_key_is_a_64_and_stored_rules_keep_theirs() {
        let key = |r: &Rule| r.limit.map(|l| (l.per.v4_len, l.per.v6_len));
        for (text, new, stored) in [
            ("rate-limit 10/s udp dport 53", (32, 64), (32, 128)),
            ("rate-limit 10/s per src udp dport 53", (32, 64), (32, 64)),
            ("rate-limit 10/s ipv6 udp", (32, 64), (32, 128)),
            ("rate-limit 10/s per src/128 ipv6 udp", (32, 128), (32, 128)),
            ("rate-limit 10/s per src/32/128 udp", (32, 128), (32, 128)),
            ("rate-limit 10/s per src/24/48 udp", (24, 48), (24, 48)),
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(key(&rule), Some(new), "{text} as a new rule");
            let back = parse_stored(&rule.to_string()).unwrap();
            assert_eq!(back, rule, "{text}: a rule this build stored reads back the same");
            let old = parse_stored(text).unwrap();
            assert_eq!(key(&old), Some(stored), "{text} stored by an older build");
            assert_eq!(parse_stored(&old.to_string()).unwrap(), old, "{text}: and stays so once stored again");
        }
        assert_eq!(parse_stored("rate-limit 10/s udp").unwrap().to_string(), "rate-limit 10/s per src/32/128 udp");
        assert_eq!(
            parse_stored("rate-limit 10/s ipv6 udp").unwrap().to_string(),
            "rate-limit 10/s per src/128 ipv6 udp"
        );
        // IPv4 only: its IPv6 length keys nothing, so the default stays
        // (equal to the same rule read from a file: no replace at `apply`).
        let v4 = parse_stored("rate-limit 10/s ipv4 udp").unwrap();
        assert_eq!(v4.to_string(), "rate-limit 10/s per src/32 ipv4 udp");
        assert_eq!(v4, "rate-limit 10/s ipv4 udp".parse::<Rule>().unwrap());
        let v4 = parse_stored("rate-limit 10/s udp from 192.0.2.0/24").unwrap();
        assert_eq!(v4, "rate-limit 10/s udp from 192.0.2.0/24".parse::<Rule>().unwrap());
    }

    #[test]
    fn bad_rules_say_why() {
        for (text, why) in [
            ("", "empty rule"),
            ("block udp", "not an action"),
            ("drop udp sport", "needs a value"),
            ("drop udp sport 70000", "0 to 65535"),
            ("drop udp sport 20-10", "backwards"),
            ("drop sport 53", "needs `tcp` or `udp`"),
            ("drop udp flags syn", "needs `tcp`"),
            ("drop tcp flags syn,bogus", "unknown TCP flag"),
            ("drop tcp type 3", "needs `icmp`"),
            ("drop icmp type 300", "`300` is not an ICMP type: give a number from 0 to 255"),
            ("drop icmp type echo", "`echo` is not an ICMP type: give a number from 0 to 255 or a name (echo-reply"),
            ("drop icmp type packet-too-big", "ICMPv6 type only"),
            ("drop icmp type 11-3", "backwards"),
            ("drop udp udp", "given twice"),
            ("drop from 192.0.2.0/33", "invalid prefix"),
            ("drop not udp", "`not` goes before"),
            ("drop udp dport 53 sometimes", "unknown word"),
            ("drop from set", "needs a value"),
            ("drop ipv6 from 192.0.2.0/24", "IPv4 prefix"),
            // Rules no packet can match.
            ("drop ipv4 icmpv6", "write `icmp` for IPv4"),
            ("drop ipv6 icmp", "write `icmpv6` for IPv6"),
            ("drop icmp to 2001:db8::/32", "write `icmpv6` for IPv6"),
            ("drop icmpv6 from 192.0.2.0/24", "write `icmp` for IPv4"),
        ] {
            let err = text.parse::<Rule>().expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        for (text, why) in [
            ("rate-limit udp", "needs a rate"),
            ("rate-limit 10/s 20/s", "given twice"),
            ("drop 10/s udp", "unknown word"),
            ("rate-limit 10/s block 1y", "duration"),
            ("rate-limit 100 udp", "`100` is not a rate: give it a unit"),
            ("rate-limit 100/x udp", "`100/x` is not a rate"),
            ("rate-limit 10/s per src/33 udp", "`per src/33` gives one prefix length"),
            ("rate-limit 10/s per src/24 udp", "give both"),
            ("rate-limit 10/s per src/48 ipv4 udp", "an IPv4 prefix length is 0 to 32"),
        ] {
            let err = text.parse::<Rule>().expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    /// `block` keyed by a /0 would block a whole address family (the
    /// reviewed repro: `per src/0/0 block 2m` took 0.0.0.0/0 after three
    /// packets): refused for every IP version the rule matches, with the
    /// fix named; a /1, or a /0 of a version the rule does not match, or
    /// no `block`, still parse; a stored rule is read back as it was.
    #[test]
    fn block_keyed_by_a_whole_family_is_refused() {
        for (text, family) in [
            ("rate-limit 2/s burst 2 per src/0/0 block 2m udp dport 9", "IPv4"),
            ("rate-limit 2/s per src/0/64 block 2m udp dport 9", "IPv4"),
            ("rate-limit 2/s per src/24/0 block 2m udp dport 9", "IPv6"),
            ("rate-limit 2/s per src/0 ipv4 block 2m udp", "IPv4"),
            ("rate-limit 2/s per src/0 block 2m udp from 192.0.2.0/24", "IPv4"),
            ("rate-limit 2/s per src/0 ipv6 block 2m udp", "IPv6"),
            ("rate-limit 2/s per src/0 block 2m icmpv6 from 2001:db8::/32", "IPv6"),
            ("rate-limit 2/s per src/0/0 block 2m after 5 udp from set trusted", "IPv4"),
        ] {
            let err = text.parse::<Rule>().expect_err(text);
            assert!(matches!(err, RuleError::Invalid { .. }), "{text}: {err:?}");
            let err = err.to_string();
            for want in [
                format!("an {family} source prefix length of 0 (`per src/0`)"),
                "key by a longer prefix".into(),
                "or leave out `block`".into(),
            ] {
                assert!(err.contains(&want), "{text}: {err} lacks {want}");
            }
            assert!(parse_stored(text).is_ok(), "{text}: a stored rule is read back");
        }
        for text in [
            "rate-limit 2/s per src/1/1 block 2m udp dport 9",
            "rate-limit 2/s per src/1 ipv4 block 2m udp",
            "rate-limit 2/s per src/1 ipv6 block 2m udp",
            "rate-limit 2/s per src/0/64 ipv6 block 2m udp",
            "rate-limit 2/s per src/24/0 ipv4 block 2m udp",
            "rate-limit 2/s per src/0/0 udp dport 9",
        ] {
            let rule: Rule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule, "{text} round-trips");
        }
    }

    /// One `per src/LEN` length is the rule's IP version's, whatever its
    /// size.
    #[test]
    fn one_per_length_keys_the_rules_ip_version() {
        for (text, v4_len, v6_len) in [
            ("rate-limit 100/s per src/32 ipv6 udp dport 9", 32, 32),
            ("rate-limit 100/s per src/16 udp from 2001:db8::/32", 32, 16),
            ("rate-limit 100/s per src/48 ipv6 udp", 32, 48),
            ("rate-limit 100/s per src/24 ipv4 udp", 24, 64),
            ("rate-limit 100/s per src/24 udp to 192.0.2.0/24", 24, 64),
            // Both given in a one-version rule: both kept, both written
            // (the other one not its default; `per src/24/64 ipv4` is
            // `per src/24 ipv4`).
            ("rate-limit 10/s per src/24/48 ipv4 udp", 24, 48),
            ("rate-limit 10/s per src/24/64 ipv6 udp", 24, 64),
            ("rate-limit 10/s per src/24/128 udp from 192.0.2.0/24", 24, 128),
        ] {
            let rule: Rule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let per = rule.limit.expect("a limit").per;
            assert_eq!((per.v4_len, per.v6_len), (v4_len, v6_len), "{text}");
            assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule, "{text} round-trips");
            // Written back as given: the rule's one length, not two.
            let shown = rule.to_string();
            if text.matches('/').count() == shown.matches('/').count() {
                continue;
            }
            panic!("{text} shown as {shown}: the same lengths, written as given");
        }
    }

    #[test]
    fn files_report_every_bad_line() {
        let text = b"# rules\ndrop udp sport 53\nbogus\n\ndrop tcp dport 1-2-3\n\xff\nrate-limit 10/x\npass icmp\n";
        let err = parse_rules(text, "r.txt").unwrap_err();
        let RuleError::BadLines { errors, source_name } = &err else { panic!("{err}") };
        assert_eq!(source_name, "r.txt");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 5, 6, 7], "{err}");
        let ok = parse_rules(b"drop udp sport 53\r\n  # x\npass icmp # ping\n", "r").unwrap();
        assert_eq!(ok.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3]);
    }
}
