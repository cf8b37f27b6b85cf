//! The rate-limit rule action's limit: [`RateLimit`], its text (the words
//! after `rate-limit` in a rule) and its checks. The data plane's side is
//! `src/bpf/guard_limit.h`; the compiled form is written by
//! `src/filter/guard/limits.rs`.
//!
//! ```text
//! rate-limit RATE [RATE] [per src[/V4LEN[/V6LEN]]] [burst N] [burst SIZE] [block DURATION [after N]] MATCH...
//! ```
//!
//! - RATE: packets (`100/s`, `100pps`) or bits (`1mbit/s`, `800kbit/s`,
//!   `10gbit/s`, `1mbps`) or bytes (`125kB/s`, `125kBps`: a capital `B` is
//!   a byte) per second; one of each kind at most. A bit rate is whole
//!   bytes a second (a multiple of 8 bits).
//! - `per src` (the default): one bucket per IPv4 address and per IPv6 /64
//!   (`per src/32/64`); `per src/24/48`: per IPv4 /24 and IPv6 /48; a rule
//!   for one IP version gives one length (`rate-limit 10/s per src/24 ipv4
//!   udp`), and `per src/32/128` keys each IPv6 address. IPv6 is keyed by
//!   its /64 by default because a /64 is what one customer (a home, a cloud
//!   instance) gets: keyed per address, one attacker rotates through 2^64
//!   sources, each with a fresh bucket.
//! - `burst N`: packets the bucket holds (default: one second of the rate);
//!   `burst 64kB`: the same in bytes, at least one jumbo frame (9,018
//!   bytes, also the least the default gives): a bucket smaller than a
//!   frame would never pass that frame.
//! - `block 10m`: a source over the limit is blocked for that long (a timed
//!   block, [`Filter::timed_blocks`](crate::Filter::timed_blocks)), by the
//!   data plane itself. Units: `s`, `m`, `h`, `d`. `block 10m after 20`:
//!   only once 20 of its packets were over the limit (counted in its exact
//!   bucket; a source the sketch decides for: by its estimate). Refused
//!   with a /0 key (`per src/0`) for an IP version the rule matches: the
//!   first source over the limit would block that whole family. The block
//!   drops every packet of the source (all protocols and ports) and the
//!   source is what the packets claim: keep `block` off traffic that needs
//!   no handshake, whose sources are forged at will
//!   ([`Rule::block_is_spoofable`](crate::Rule::block_is_spoofable)).

use std::fmt;
use std::time::Duration;

/// How a rate limit keys its buckets: by the source's prefix of these
/// lengths (the default: each IPv4 address, each IPv6 /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// IPv4 prefix length (0 to 32).
    pub v4_len: u8,
    /// IPv6 prefix length (0 to 128).
    pub v6_len: u8,
}

impl Default for LimitKey {
    fn default() -> Self {
        LimitKey { v4_len: 32, v6_len: 64 }
    }
}

impl LimitKey {
    /// The default key of builds before IPv6 defaulted to /64: a rule
    /// stored by one with no `per` word was compiled (and runs) with it,
    /// and is read back with it (`parse::parse_stored`), so an upgrade
    /// changes no running rule. Rule text now always writes `per`.
    pub(crate) const STORED_BEFORE_V6_64: LimitKey = LimitKey { v4_len: 32, v6_len: 128 };
}

/// A rate-limit rule's limit: token buckets in packets and/or bytes per
/// second, per source (or source prefix), with an optional auto-block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct RateLimit {
    /// Packets per second.
    pub packets_per_sec: Option<u64>,
    /// Bytes per second (rule text may give bits: `1mbit/s`).
    pub bytes_per_sec: Option<u64>,
    /// The bucket's key.
    pub per: LimitKey,
    /// Packets the bucket holds (default: `packets_per_sec`, at least 1).
    pub burst_packets: Option<u64>,
    /// Bytes the bucket holds (default: `bytes_per_sec`, at least 9018).
    pub burst_bytes: Option<u64>,
    /// Block a source over the limit for this long (whole seconds).
    pub block: Option<Duration>,
    /// ... once this many of its packets were over the limit (`block 10m
    /// after 20`; default: the first one).
    pub block_after: Option<u32>,
}

/// The longest auto-block or timed block: 365 days.
pub const MAX_BLOCK: Duration = Duration::from_secs(365 * 86_400);
/// The highest rate accepted (packets or bytes per second).
pub const MAX_RATE: u64 = 1 << 40;
/// The smallest byte burst, given or default: one jumbo frame, the largest
/// frame the limiter assumes (a frame costing more than the whole bucket
/// would never pass).
pub(crate) const MIN_BYTE_BURST: u64 = 9018;

impl RateLimit {
    /// A limit of `pps` packets per second per source.
    pub fn packets(pps: u64) -> RateLimit {
        RateLimit { packets_per_sec: Some(pps), ..Default::default() }
    }

    /// A limit of `bps` bytes per second per source.
    pub fn bytes(bps: u64) -> RateLimit {
        RateLimit { bytes_per_sec: Some(bps), ..Default::default() }
    }

    /// Keyed by source prefixes of these lengths.
    pub fn per_prefix(mut self, v4_len: u8, v6_len: u8) -> RateLimit {
        self.per = LimitKey { v4_len, v6_len };
        self
    }

    /// With a bucket of `n` packets.
    pub fn burst(mut self, n: u64) -> RateLimit {
        self.burst_packets = Some(n);
        self
    }

    /// A source over the limit is blocked for `ttl`.
    pub fn block_for(mut self, ttl: Duration) -> RateLimit {
        self.block = Some(ttl);
        self
    }

    /// The packet bucket's depth.
    pub fn effective_burst_packets(&self) -> Option<u64> {
        self.packets_per_sec.map(|p| self.burst_packets.unwrap_or(p).max(1))
    }

    /// The byte bucket's depth.
    pub fn effective_burst_bytes(&self) -> Option<u64> {
        self.bytes_per_sec.map(|b| self.burst_bytes.unwrap_or(b.max(MIN_BYTE_BURST)).max(1))
    }

    /// What is wrong with it, if anything.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.packets_per_sec.is_none() && self.bytes_per_sec.is_none() {
            return Err(
                "`rate-limit` needs a rate after it: packets (`100/s`) and/or bits (`1mbit/s`) per second".into()
            );
        }
        for r in [self.packets_per_sec, self.bytes_per_sec].into_iter().flatten() {
            if r == 0 || r > MAX_RATE {
                return Err(format!("a rate must be 1 to {MAX_RATE} a second (to drop everything, use `drop`)"));
            }
        }
        if self.burst_packets.is_some() && self.packets_per_sec.is_none() {
            return Err("`burst N` (packets) needs a packet rate (`100/s`)".into());
        }
        if self.burst_bytes.is_some() && self.bytes_per_sec.is_none() {
            return Err("`burst SIZE` (bytes) needs a byte or bit rate (`1mbit/s`)".into());
        }
        for b in [self.burst_packets, self.burst_bytes].into_iter().flatten() {
            if b == 0 || b > MAX_RATE {
                return Err(format!("a burst must be 1 to {MAX_RATE}"));
            }
        }
        if self.per.v4_len > 32 || self.per.v6_len > 128 {
            return Err("`per src/V4/V6`: IPv4 lengths are 0 to 32, IPv6 ones 0 to 128".into());
        }
        if let Some(d) = self.block {
            check_ttl(d).map_err(str::to_owned)?;
        }
        if self.block_after.is_some() && self.block.is_none() {
            return Err("`after N` goes with `block DURATION`".into());
        }
        Ok(())
    }

    /// Refuses a byte burst smaller than one jumbo frame ([`MIN_BYTE_BURST`]):
    /// the bucket refuses a packet that costs more than it holds, so every
    /// larger frame would be dropped for good. (Rules stored by a build
    /// that took one are read back without this check: see
    /// `parse::parse_stored`.)
    pub(crate) fn check_byte_burst(&self) -> Result<(), String> {
        match self.burst_bytes {
            Some(b) if b < MIN_BYTE_BURST => Err(format!(
                "`burst {b}B` is smaller than one frame: a byte burst must be at least {MIN_BYTE_BURST} bytes (one \
                 jumbo frame, `burst {MIN_BYTE_BURST}B` or `burst 10kB`), or every larger packet is dropped for \
                 good; or leave it out (one second of the rate, at least {MIN_BYTE_BURST} bytes)"
            )),
            _ => Ok(()),
        }
    }

    /// Reads one word of a limit (`100/s`, `1mbit/s`, `per`, `burst`,
    /// `block`), taking its value from `next`. `Ok(false)`: not a limit word.
    pub(crate) fn parse_word(
        &mut self,
        word: &str,
        mut next: impl FnMut() -> Option<String>,
        seen: &mut Vec<&'static str>,
    ) -> Result<bool, String> {
        let mut once = |what: &'static str| crate::filter::rules::parse::once(seen, what);
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "per" => {
                once("per")?;
                let v = next().ok_or("`per` needs `src` or `src/LEN[/LEN]` after it")?.to_ascii_lowercase();
                let rest = v.strip_prefix("src").ok_or_else(|| format!("`per {v}`: only `per src[/LEN[/LEN]]`"))?;
                let lens: Vec<&str> = rest.split('/').skip(1).collect();
                let num = |s: &str, max: u8| {
                    s.parse::<u8>()
                        .ok()
                        .filter(|n| *n <= max)
                        .ok_or_else(|| format!("`per {v}`: `{s}` is not a prefix length (0 to {max})"))
                };
                if !rest.is_empty() && !rest.starts_with('/') {
                    return Err(format!("`per {v}`: write `per src/24` or `per src/24/64`"));
                }
                self.per = match lens[..] {
                    [] => LimitKey::default(),
                    [a] => {
                        // One length: the IPv4 one when it fits, else IPv6's,
                        // until the rule's IP version is known (its parse
                        // gives the length to that version).
                        let n = num(a, 128)?;
                        let d = LimitKey::default();
                        if n <= 32 {
                            LimitKey { v4_len: n, ..d }
                        } else {
                            LimitKey { v6_len: n, ..d }
                        }
                    }
                    [a, b] => LimitKey { v4_len: num(a, 32)?, v6_len: num(b, 128)? },
                    _ => return Err(format!("`per {v}`: at most two lengths (IPv4, IPv6)")),
                };
                Ok(true)
            }
            "burst" => {
                let v = next().ok_or("`burst` needs a number (packets) or a size (`64kB`)")?;
                if let Ok(n) = v.parse::<u64>() {
                    once("burst (packets)")?;
                    self.burst_packets = Some(n);
                } else {
                    once("burst (bytes)")?;
                    self.burst_bytes = Some(parse_size(&v).ok_or_else(|| {
                        format!("`burst {v}`: give packets (`200`) or bytes (`64kB`, `1MB`, `1500B`)")
                    })?);
                }
                Ok(true)
            }
            "block" => {
                once("block")?;
                let v = next().ok_or("`block` needs a duration (`10m`)")?;
                let d =
                    parse_duration(&v).ok_or_else(|| format!("`block {v}`: write a duration like 30s, 10m, 2h, 1d"))?;
                self.block = Some(d);
                Ok(true)
            }
            "after" => {
                once("after")?;
                let v = next().ok_or("`after` needs a number of packets over the limit")?;
                self.block_after =
                    Some(v.parse().map_err(|_| format!("`after {v}`: give a number of packets (`after 20`)"))?);
                Ok(true)
            }
            _ => match parse_rate(word) {
                Some(Rate::Packets(n)) => {
                    once("packet rate")?;
                    self.packets_per_sec = Some(n);
                    Ok(true)
                }
                Some(Rate::Bytes(n)) => {
                    once("byte rate")?;
                    self.bytes_per_sec = Some(n);
                    Ok(true)
                }
                Some(Rate::Bits(n)) => {
                    let (down, up) = (n / 8 * 8, n / 8 * 8 + 8);
                    Err(format!(
                        "`{word}` is {n} bits a second: a bit rate must be whole bytes a second (a multiple of 8 \
                         bits): write {}{up}bit/s",
                        if down > 0 { format!("{down}bit/s or ") } else { String::new() }
                    ))
                }
                None if lower.ends_with("/s") || lower.ends_with("pps") || lower.ends_with("bps") => Err(format!(
                    "`{word}` is not a rate: write packets (`100/s`, `100pps`) or bits (`1mbit/s`, `1mbps`) or \
                     bytes (`125kB/s`, `125kBps`) per second"
                )),
                None => Ok(false),
            },
        }
    }
}

/// Checks a time to live (timed blocks, auto-blocks).
pub(crate) fn check_ttl(d: Duration) -> Result<(), &'static str> {
    if d < Duration::from_secs(1) || d > MAX_BLOCK {
        return Err("a block lasts 1 second to 365 days");
    }
    Ok(())
}

enum Rate {
    Packets(u64),
    Bytes(u64),
    /// A bit rate that is not whole bytes (refused, by name).
    Bits(u64),
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

fn scale(unit: &str) -> Option<(u64, &str)> {
    let (k, rest) = match unit.as_bytes().first() {
        Some(b'k' | b'K') => (1_000, &unit[1..]),
        Some(b'm' | b'M') => (1_000_000, &unit[1..]),
        Some(b'g' | b'G') => (1_000_000_000, &unit[1..]),
        _ => (1, unit),
    };
    Some((k, rest))
}

/// `100/s`, `100pps` (packets); `1mbit/s`, `1mbps` (bits); `125kB/s`,
/// `125kBps` (bytes). A capital `B` is a byte, as in `1MB/s`: `1MBps` is
/// a megabyte a second, `1Mbps` a megabit.
fn parse_rate(s: &str) -> Option<Rate> {
    let (n, unit) = split_number(s)?;
    if unit == "/s" || unit.eq_ignore_ascii_case("pps") {
        return Some(Rate::Packets(n));
    }
    let (k, rest) = scale(unit)?;
    let total = n.checked_mul(k)?;
    let per_second = |tail: &str| tail == "/s" || tail.eq_ignore_ascii_case("ps");
    if rest.eq_ignore_ascii_case("bit/s") || rest.strip_prefix('b').is_some_and(|t| t.eq_ignore_ascii_case("ps")) {
        return Some(if total % 8 == 0 { Rate::Bytes(total / 8) } else { Rate::Bits(total) });
    }
    rest.strip_prefix('B').is_some_and(per_second).then_some(Rate::Bytes(total))
}

/// `1500B`, `64kB`, `1MB` (bytes, powers of 1000).
fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = split_number(s)?;
    let (k, rest) = scale(unit)?;
    (rest == "B").then(|| n.checked_mul(k)).flatten()
}

/// `30s`, `10m`, `2h`, `1d` (a number and one unit).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = split_number(s.trim())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// A duration as rule text writes it: the largest unit that divides it.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= secs && s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

fn fmt_scaled(n: u64, unit: &str) -> String {
    for (prefix, k) in [("g", 1_000_000_000u64), ("m", 1_000_000), ("k", 1_000)] {
        if n >= k && n % k == 0 {
            return format!("{}{prefix}{unit}", n / k);
        }
    }
    format!("{n}{unit}")
}

impl RateLimit {
    /// The limit as a rule of one IP version writes it: that version's
    /// prefix length alone (`per src/24` in an IPv4 rule, not
    /// `per src/24/64`) when the other length is its default, which is
    /// what such a rule's parse reads back.
    pub(crate) fn for_family(&self, family: Option<crate::IpFamily>) -> impl fmt::Display + '_ {
        struct One<'a>(&'a RateLimit, Option<crate::IpFamily>);
        impl fmt::Display for One<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write(f, self.1)
            }
        }
        One(self, family)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, family: Option<crate::IpFamily>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(p) = self.packets_per_sec {
            words.push(format!("{p}/s"));
        }
        if let Some(b) = self.bytes_per_sec {
            // In bytes when the bits would not fit in 64 (an absurd rate a
            // refusal still names).
            words.push(match b.checked_mul(8) {
                Some(bits) => format!("{}/s", fmt_scaled(bits, "bit")),
                None => format!("{b}B/s"),
            });
        }
        // Always written, the default too: the text shows the key the rule
        // runs with, and a stored rule's text says it (a rule stored
        // without `per` is from a build whose default was /128 for IPv6,
        // LimitKey::STORED_BEFORE_V6_64). One length where the other is its
        // default in a rule of one IP version, both else: the text parses
        // back to the same limit.
        let d = LimitKey::default();
        words.push(match family {
            Some(crate::IpFamily::V4) if self.per.v6_len == d.v6_len => format!("per src/{}", self.per.v4_len),
            Some(crate::IpFamily::V6) if self.per.v4_len == d.v4_len => format!("per src/{}", self.per.v6_len),
            _ => format!("per src/{}/{}", self.per.v4_len, self.per.v6_len),
        });
        if let Some(n) = self.burst_packets {
            words.push(format!("burst {n}"));
        }
        if let Some(n) = self.burst_bytes {
            let s = fmt_scaled(n, "B").replace("mB", "MB").replace("gB", "GB");
            words.push(format!("burst {s}"));
        }
        if let Some(d) = self.block {
            words.push(format!("block {}", fmt_duration(d)));
        }
        if let Some(n) = self.block_after {
            words.push(format!("after {n}"));
        }
        f.write_str(&words.join(" "))
    }
}

impl fmt::Display for RateLimit {
    /// `RATE [RATE] per src/.. [burst N] [burst SIZE] [block DURATION]`
    /// (what follows `rate-limit` in a rule of either IP version).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &str) -> Result<RateLimit, String> {
        let mut l = RateLimit::default();
        let mut it = words.split_whitespace().map(str::to_owned);
        let mut seen = Vec::new();
        while let Some(w) = it.next() {
            if !l.parse_word(&w, || it.next(), &mut seen)? {
                return Err(format!("not a limit word: {w}"));
            }
        }
        l.check()?;
        l.check_byte_burst()?;
        Ok(l)
    }

    #[test]
    fn limits_round_trip() {
        for (text, shown) in [
            ("100/s", "100/s per src/32/64"),
            ("100/s per src", "100/s per src/32/64"),
            ("100pps 1mbit/s", "100/s 1mbit/s per src/32/64"),
            ("8000bit/s", "8kbit/s per src/32/64"),
            ("125kB/s", "1mbit/s per src/32/64"),
            ("10/s per src/24/48 burst 20 block 10m", "10/s per src/24/48 burst 20 block 10m"),
            ("10/s per src/24", "10/s per src/24/64"),
            ("10/s per src/128", "10/s per src/32/128"),
            ("10/s per src/32/128", "10/s per src/32/128"),
            ("1gbit/s burst 64kB", "1gbit/s per src/32/64 burst 64kB"),
            ("5/s block 90s", "5/s per src/32/64 block 90s"),
            ("5/s block 7200s", "5/s per src/32/64 block 2h"),
            ("5/s block 10m after 20", "5/s per src/32/64 block 10m after 20"),
        ] {
            let l = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(l.to_string(), shown, "{text}");
            assert_eq!(parse(shown).unwrap(), l, "{shown} round-trips");
        }
        // A rate whose bits overflow 64 is shown in bytes (a refusal names it).
        assert_eq!(RateLimit::bytes(1 << 62).to_string(), format!("{}B/s per src/32/64", 1u64 << 62));
        let l = parse("1mbit/s").unwrap();
        assert_eq!(l.bytes_per_sec, Some(125_000));
        assert_eq!(l.effective_burst_bytes(), Some(125_000));
        assert_eq!(parse("100/s").unwrap().effective_burst_packets(), Some(100));
    }

    /// A capital `B` is a byte whatever follows it (`MBps` as `MB/s`); a
    /// small `b` or `bit` a bit.
    #[test]
    fn bytes_and_bits_by_their_letter() {
        for (text, bytes) in [
            ("1MBps", 1_000_000),
            ("1MB/s", 1_000_000),
            ("125kBps", 125_000),
            ("64kBPS", 64_000),
            ("1500Bps", 1500),
            ("1mbps", 125_000),
            ("1Mbps", 125_000),
            ("8kbit/s", 1000),
            ("8KBit/s", 1000),
        ] {
            assert_eq!(parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).bytes_per_sec, Some(bytes), "{text}");
        }
    }

    /// A byte burst under one jumbo frame would drop every larger frame for
    /// good: refused, naming the least. The default is at least that.
    #[test]
    fn byte_bursts_hold_a_frame() {
        for text in ["1mbit/s burst 100B", "1mbit/s burst 9017B", "1mbit/s burst 9kB"] {
            let err = parse(text).expect_err(text);
            assert!(err.contains("at least 9018 bytes") && err.contains("smaller than one frame"), "{text}: {err}");
        }
        assert_eq!(parse("1mbit/s burst 9018B").unwrap().effective_burst_bytes(), Some(9018));
        assert_eq!(parse("8kbit/s").unwrap().effective_burst_bytes(), Some(9018), "1 kB/s: a frame, not a second");
        assert_eq!(parse("100kbit/s").unwrap().effective_burst_bytes(), Some(12_500), "one second");
    }

    #[test]
    fn bad_limits_say_why() {
        for (text, why) in [
            ("per src", "needs a rate"),
            ("0/s", "1 to"),
            ("100/s 200/s", "given twice"),
            ("12bit/s", "`12bit/s` is 12 bits a second: a bit rate must be whole bytes a second (a multiple of 8 bits): write 8bit/s or 16bit/s"),
            ("7bit/s", "write 8bit/s"),
            ("1MBit", "not a limit word"),
            ("1Mb/s", "not a rate"),
            ("10/s burst 64kB", "needs a byte"),
            ("1mbit/s burst 5", "needs a packet rate"),
            ("10/s per src/33/64", "0 to 32"),
            ("10/s per dst", "only `per src"),
            ("10/s block 0s", "1 second"),
            ("10/s block soon", "duration"),
            ("10/s after 5", "goes with `block"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
