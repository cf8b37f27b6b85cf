//! Reading a configuration file into the model, with every problem and
//! where it is.
//!
//! Why not serde's derive: a derived `Deserialize` stops at the first
//! error, and a bad file must be rejected with all of them at once. So the
//! document is parsed into the `toml` crate's spanned tree
//! (`DeTable::parse_recoverable`, which reports every syntax error too),
//! and each section is read key by key from it, each unknown key and bad
//! value recorded with its span and the reading going on. Values are
//! parsed by the library's own `FromStr`s, so the file takes the same
//! words as the tools, with the same messages.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::model::{Config, DecapConfig, FilterConfig, LbConfig, VipSpec};
use super::plan::Program;
use super::{DEFAULT_DECAP_PIN, DEFAULT_FILTER_PIN, DEFAULT_LB_PIN};
use crate::core::layout::consts::XDPG_SYN_MAX_WSCALE;
use crate::error::{ConfigError, ListError, Problem};
use crate::filter::guard::maps::{default_rule_records, default_rule_refs, MAX_RULE_RECORDS, MAX_RULE_REFS};
use crate::lb::{check_backend, check_nat_backend, maglev};
use crate::{
    normalize, parse_list, parse_prefix, AttachMode, Backend, BackendAddr, EchoPolicy, ForwardingMode, FragmentPolicy,
    HashInput, MalformedPolicy, NewFlowLimit, OptionsPolicy, RuleCapacities, SynMode, SynPolicy, Vip, VipConfig,
    DEFAULT_CONNECTIONS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_LIMIT_BUCKETS, DEFAULT_MAX_RULES, DEFAULT_MAX_SET_ENTRIES,
    DEFAULT_MAX_TIMED_BLOCKS, DEFAULT_MAX_VIPS, DEFAULT_NEXT_HOP_CACHE, DEFAULT_SYN_THRESHOLD, DEFAULT_TABLE_SIZE,
    DEFAULT_UDP_TIMEOUT, DEFAULT_V4_CAPACITY, DEFAULT_V6_CAPACITY, MAX_CAPACITY, MAX_RULES, MAX_SYN_PORTS, MAX_WEIGHT,
};

pub(super) type Val<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["filter", "lb", "decap"];
const FILTER_KEYS: &[&str] = &[
    "pin",
    "interfaces",
    "mode",
    "netns",
    "v4_capacity",
    "v6_capacity",
    "max_rules",
    "max_rule_records",
    "max_rule_refs",
    "max_set_entries",
    "max_timed_blocks",
    "max_limit_buckets",
    "malformed",
    "allowlist",
    "allowlist_files",
    "blocklist",
    "blocklist_files",
    "block_whole_family",
    "next",
    "monitor",
    "rules",
    "rules_file",
    "sets",
    "syn",
];
/// `[[filter.syn]]`: the words of `xdpguard syn protect` and [`SynPolicy`].
const SYN_KEYS: &[&str] = &["port", "mode", "threshold", "mss", "wscale", "mss_only", "drop_untracked_acks", "monitor"];
const LB_KEYS: &[&str] = &[
    "pin",
    "interfaces",
    "mode",
    "netns",
    "redirect",
    "ipip_sources",
    "hash_seed",
    "max_vips",
    "max_backends",
    "connections",
    "nat_connections",
    "max_interfaces",
    "udp_timeout_secs",
    "next_hop_cache_ms",
    "new_flow_limit",
    "echo",
    "fragments",
    "options",
    "keep_drained",
    "vip",
];
const VIP_KEYS: &[&str] = &["vip", "mode", "table_size", "hash", "conntrack", "permit_local", "backends"];
const BACKEND_KEYS: &[&str] = &["addr", "weight"];
const LIMIT_KEYS: &[&str] = &["per_second", "burst"];
const DECAP_KEYS: &[&str] = &["pin", "interfaces", "mode", "netns", "locals"];
/// The decapsulator's address map holds 64 entries (src/bpf).
const MAX_DECAP_LOCALS: usize = 64;

/// Where something was given: a span of the configuration file, or a line
/// of a list file.
#[derive(Debug, Clone)]
pub(super) enum Loc {
    Span(Range<usize>),
    Line(PathBuf, usize),
}

/// The file being read, and the problems found so far.
pub(super) struct Reader<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Reader<'_> {
    pub(super) fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.problems.push(Problem { file: self.file.to_owned(), line, column: Some(column), message: message.into() });
    }

    pub(super) fn at(&mut self, loc: &Loc, message: impl Into<String>) {
        match loc {
            Loc::Span(s) => self.problem(s.clone(), message),
            Loc::Line(file, line) => {
                self.problems.push(Problem { file: file.clone(), line: *line, column: None, message: message.into() })
            }
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }

    /// Reports keys of `table` not in `accepted`, naming the likely one meant.
    fn unknown_keys(&mut self, table: &DeTable<'_>, what: &str, accepted: &[&str]) {
        for (key, _) in table.iter() {
            let k: &str = key.get_ref();
            if accepted.contains(&k) {
                continue;
            }
            let close = accepted
                .iter()
                .map(|a| (strsim::damerau_levenshtein(k, a), *a))
                .filter(|(d, a)| *d <= 2.max(a.len() / 4))
                .min();
            let hint = close.map(|(_, a)| format!(" (did you mean `{a}`?)")).unwrap_or_default();
            self.problem(key.span(), format!("unknown key `{k}` in {what}{hint}; accepted: {}", accepted.join(", ")));
        }
    }

    pub(super) fn string<'v>(&mut self, v: &'v Val<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.problem(v.span(), format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    fn parsed<T: FromStr>(&mut self, v: &Val<'_>) -> Option<T>
    where
        T::Err: Display,
    {
        let s = self.string(v)?;
        match s.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(v.span(), e.to_string());
                None
            }
        }
    }

    fn int(&mut self, v: &Val<'_>, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.problem(v.span(), format!("expected an integer, found {}", v.get_ref().type_str()));
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()).ok().and_then(|n| u64::try_from(n).ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.problem(v.span(), format!("{} is out of range: expected {min} to {max}", i.as_str()));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, v: &Val<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.problem(v.span(), format!("expected true or false, found {}", other.type_str()));
                None
            }
        }
    }

    /// An array's elements (a bad value is reported: `None`).
    pub(super) fn array<'v, 'i>(&mut self, v: &'v Val<'i>) -> Option<&'v [Val<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            other => {
                self.problem(v.span(), format!("expected an array, found {}", other.type_str()));
                None
            }
        }
    }

    /// Each element of an array, converted; bad elements are reported and left out.
    pub(super) fn each<T>(
        &mut self,
        v: &Val<'_>,
        mut f: impl FnMut(&mut Self, &Val<'_>) -> Option<T>,
    ) -> Vec<(T, Range<usize>)> {
        let Some(items) = self.array(v) else { return Vec::new() };
        items.iter().filter_map(|item| f(self, item).map(|t| (t, item.span()))).collect()
    }

    /// The tables of `key` at the top level: one `[key]` table or an
    /// array of `[[key]]` tables.
    fn sections<'t, 'i>(&mut self, v: &'t Val<'i>, key: &str) -> Vec<(&'t DeTable<'i>, Range<usize>)> {
        match v.get_ref() {
            DeValue::Table(t) => vec![(t, v.span())],
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(t) => Some((t, item.span())),
                    other => {
                        self.problem(item.span(), format!("expected a [[{key}]] table, found {}", other.type_str()));
                        None
                    }
                })
                .collect(),
            other => {
                self.problem(v.span(), format!("expected [[{key}]] tables, found {}", other.type_str()));
                Vec::new()
            }
        }
    }
}

pub(super) fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Val<'i>> {
    table
        .iter()
        .find(|(k, _)| {
            let k: &str = k.get_ref();
            k == key
        })
        .map(|(_, v)| v)
}

/// What every section has: where it is pinned and attached.
struct Placement {
    pin: (PathBuf, Range<usize>),
    interfaces: Vec<(String, Range<usize>)>,
    mode: AttachMode,
    netns: Option<String>,
}

/// A section's pin directory (`pin`, else its kind's default) and where
/// the file gives it.
fn pin_of(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>, default_pin: &str) -> (PathBuf, Range<usize>) {
    match get(t, "pin") {
        Some(v) => match r.string(v) {
            Some(p) if Path::new(p).is_absolute() => (PathBuf::from(p), v.span()),
            Some(p) => {
                r.problem(v.span(), format!("pin `{p}` must be an absolute path on bpffs, e.g. {default_pin}"));
                (PathBuf::from(p), v.span())
            }
            None => (PathBuf::from(default_pin), v.span()),
        },
        None => (PathBuf::from(default_pin), span.clone()),
    }
}

/// A section's network namespace (`netns`), when it names one.
fn netns_of(r: &mut Reader<'_>, t: &DeTable<'_>) -> Option<String> {
    get(t, "netns").and_then(|v| {
        let name = r.string(v)?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            r.problem(v.span(), format!("`{name}` is not a network namespace name (as under /run/netns)"));
            return None;
        }
        Some(name.to_owned())
    })
}

fn placement(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>, default_pin: &str) -> Placement {
    let pin = pin_of(r, t, span, default_pin);
    let mut interfaces = Vec::new();
    if let Some(v) = get(t, "interfaces") {
        for (name, s) in r.each(v, |r, item| r.string(item).map(str::to_owned)) {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                r.problem(
                    s.clone(),
                    format!("`{name}` is not an interface name (1 to 15 characters, no `/`, `:` or space)"),
                );
            } else if interfaces.iter().any(|(n, _)| *n == name) {
                r.problem(s.clone(), format!("interface `{name}` is listed twice"));
            } else {
                interfaces.push((name, s));
            }
        }
    }
    let mode = get(t, "mode").and_then(|v| r.parsed(v)).unwrap_or_default();
    let netns = netns_of(r, t);
    Placement { pin, interfaces, mode, netns }
}

/// Prefix entries given inline (`key`) and in files (`key_files`), with
/// where each was given.
fn entries(r: &mut Reader<'_>, t: &DeTable<'_>, key: &str, base: &Path) -> Vec<(IpNetwork, Loc)> {
    let mut out = Vec::new();
    if let Some(v) = get(t, key) {
        for (text, s) in r.each(v, |r, item| r.string(item).map(str::to_owned)) {
            match parse_prefix(&text) {
                Ok(net) => out.push((normalize(net).network, Loc::Span(s))),
                Err(e) => r.problem(s, e.to_string()),
            }
        }
    }
    if let Some(v) = get(t, &format!("{key}_files")) {
        for (name, s) in r.each(v, |r, item| r.string(item).map(str::to_owned)) {
            let path = base.join(&name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    r.problem(s, format!("cannot read list file {}: {e}", path.display()));
                    continue;
                }
            };
            match parse_list(&bytes, &path.display().to_string()) {
                Ok(lines) => {
                    out.extend(lines.into_iter().map(|l| (l.entry.network, Loc::Line(path.clone(), l.line))));
                }
                Err(ListError::BadLines { errors, .. }) => {
                    for e in errors {
                        r.at(&Loc::Line(path.clone(), e.line), e.message);
                    }
                }
                Err(e) => r.problem(s, format!("list file {}: {e}", path.display())),
            }
        }
    }
    out
}

/// The rule stage's tables the file fills, checked against the file's
/// capacities: the named sets' prefixes in all (`max_set_entries`), and
/// the rules as compiled (`max_rule_records`, `max_rule_refs`), each a
/// problem at its key; else the filter would be created and pinned, then
/// refused half-built.
fn guard_room(
    r: &mut Reader<'_>,
    t: &DeTable<'_>,
    span: &Range<usize>,
    guard: &RuleCapacities,
    sets: &BTreeMap<String, Vec<IpNetwork>>,
    rules: &[crate::Rule],
) {
    let at = |key| get(t, key).map_or(span.clone(), |v| v.span());
    let prefixes: usize = sets
        .values()
        .map(|v| v.iter().map(|n| crate::filter::normalize(*n).network).collect::<BTreeSet<_>>().len())
        .sum();
    if prefixes > guard.max_set_entries {
        r.problem(
            at("max_set_entries"),
            format!(
                "the named sets hold {prefixes} prefixes in all but max_set_entries is {}: raise max_set_entries",
                guard.max_set_entries
            ),
        );
    }
    if rules.is_empty() || rules.len() > guard.max_rules {
        return;
    }
    let cap = crate::filter::guard::maps::GuardCapacity::new(guard);
    let limits = crate::filter::rules::compile::Limits { groups: cap.groups, refs: cap.refs, records: cap.records };
    let listed: Vec<(u32, &crate::Rule)> = rules.iter().enumerate().map(|(i, r)| (i as u32, r)).collect();
    if let Err(crate::RuleError::Full { what, capacity, setter }) =
        crate::filter::rules::compile::compile(&listed, &|_| Some(0), limits)
    {
        r.problem(at(setter), format!("the rules need more than {setter} = {capacity} gives ({what}): raise {setter}"));
    }
}

fn filter(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>, base: &Path) -> (FilterConfig, Placement) {
    r.unknown_keys(t, "[[filter]]", FILTER_KEYS);
    let place = placement(r, t, span, DEFAULT_FILTER_PIN);
    if place.interfaces.is_empty() {
        r.problem(span.clone(), "a [[filter]] needs `interfaces = [\"eth0\"]`: it filters nothing attached nowhere");
    }
    let monitor = get(t, "monitor").and_then(|v| r.boolean(v)).unwrap_or(false);
    let block_whole_family = get(t, "block_whole_family").and_then(|v| r.boolean(v)).unwrap_or(false);
    let sets = super::rules::sets(r, t, block_whole_family);
    let rules = super::rules::rules(r, t, base, &sets);
    let cap = |r: &mut Reader<'_>, key, default| {
        get(t, key).and_then(|v| r.int(v, 1, MAX_CAPACITY as u64)).map_or(default, |n| n as usize)
    };
    let v4_capacity = cap(r, "v4_capacity", DEFAULT_V4_CAPACITY);
    let v6_capacity = cap(r, "v6_capacity", DEFAULT_V6_CAPACITY);
    let num =
        |r: &mut Reader<'_>, key, max: usize| get(t, key).and_then(|v| r.int(v, 1, max as u64)).map(|n| n as usize);
    let max_rules = num(r, "max_rules", MAX_RULES).unwrap_or(DEFAULT_MAX_RULES);
    let guard = RuleCapacities {
        max_rules,
        max_rule_records: num(r, "max_rule_records", MAX_RULE_RECORDS).unwrap_or(default_rule_records(max_rules)),
        max_rule_refs: num(r, "max_rule_refs", MAX_RULE_REFS).unwrap_or(default_rule_refs(max_rules)),
        max_set_entries: cap(r, "max_set_entries", DEFAULT_MAX_SET_ENTRIES),
        max_timed_blocks: cap(r, "max_timed_blocks", DEFAULT_MAX_TIMED_BLOCKS),
        max_limit_buckets: cap(r, "max_limit_buckets", DEFAULT_MAX_LIMIT_BUCKETS),
    };
    if rules.len() > max_rules {
        let s = get(t, "max_rules").map_or(span.clone(), |v| v.span());
        r.problem(s, format!("{} rules are configured but max_rules is {max_rules}: raise max_rules", rules.len()));
    }
    guard_room(r, t, span, &guard, &sets, &rules);
    let malformed = get(t, "malformed").and_then(|v| r.parsed::<MalformedPolicy>(v)).unwrap_or_default();
    let allow = entries(r, t, "allowlist", base);
    let block = entries(r, t, "blocklist", base);
    if !block_whole_family {
        for (net, loc) in block.iter().filter(|(n, _)| n.prefix() == 0) {
            r.at(
                loc,
                format!(
                    "blocklisting {net} drops every IPv{} packet from any source that is not allowlisted, this \
                     host's own management session included; if a default-deny filter is meant, allowlist what must \
                     stay reachable and set `block_whole_family = true`",
                    if net.is_ipv4() { 4 } else { 6 }
                ),
            );
        }
    }
    let set = |v: &[(IpNetwork, Loc)]| v.iter().map(|(n, _)| *n).collect::<BTreeSet<IpNetwork>>();
    let (allowlist, blocklist) = (set(&allow), set(&block));
    for (v6, capacity, key) in [(false, v4_capacity, "v4_capacity"), (true, v6_capacity, "v6_capacity")] {
        let n = allowlist.union(&blocklist).filter(|n| n.is_ipv6() == v6).count();
        if n > capacity {
            let s = get(t, key).map_or(span.clone(), |v| v.span());
            r.problem(
                s,
                format!(
                    "the lists hold {n} distinct IPv{} entries but {key} is {capacity}: raise {key}",
                    if v6 { 6 } else { 4 }
                ),
            );
        }
    }
    let next = get(t, "next").and_then(|v| r.string(v)).map(PathBuf::from);
    let mut syn: BTreeMap<u16, SynPolicy> = BTreeMap::new();
    if let Some(v) = get(t, "syn") {
        let mut lines: BTreeMap<u16, usize> = BTreeMap::new();
        for (st, sspan) in r.sections(v, "filter.syn") {
            if let Some((port, policy)) = syn_port(r, st, &sspan) {
                if let Some(line) = lines.get(&port) {
                    r.problem(sspan, format!("port {port} is SYN-guarded twice (also on line {line})"));
                } else if syn.len() == MAX_SYN_PORTS {
                    r.problem(sspan, format!("the SYN guard protects at most {MAX_SYN_PORTS} ports"));
                } else {
                    lines.insert(port, r.position(sspan.start).0);
                    syn.insert(port, policy);
                }
            }
        }
    }
    let cfg = FilterConfig {
        pin: place.pin.0.clone(),
        interfaces: place.interfaces.iter().map(|(n, _)| n.clone()).collect(),
        mode: place.mode,
        netns: place.netns.clone(),
        v4_capacity,
        v6_capacity,
        guard,
        malformed,
        allowlist: allowlist.into_iter().collect(),
        blocklist: blocklist.into_iter().collect(),
        block_whole_family,
        next,
        monitor,
        rules,
        sets,
        syn,
    };
    (cfg, place)
}

/// A `[[filter.syn]]` table: `port`, `mode` (`cookie` or `drop`),
/// `threshold` (drop mode, SYNs a second; default 1000), `mss` (cookie
/// mode; 0 or 536 to 9000), `wscale` (cookie mode; 0 to 14: window
/// scaling, SACK and timestamps; default none, the MSS alone:
/// `SynPolicy::wscale`), `mss_only` (cookie mode: no window scaling, SACK or
/// timestamps, the default), `drop_untracked_acks` (cookie mode), `monitor`.
fn syn_port(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>) -> Option<(u16, SynPolicy)> {
    r.unknown_keys(t, "[[filter.syn]]", SYN_KEYS);
    let port = match get(t, "port") {
        Some(v) => r.int(v, 1, u64::from(u16::MAX)).map(|n| n as u16),
        None => {
            r.problem(span.clone(), "a [[filter.syn]] needs `port`, the server's TCP port, e.g. port = 443");
            None
        }
    };
    let mode = match get(t, "mode") {
        Some(v) => r.parsed::<SynMode>(v),
        None => {
            r.problem(span.clone(), "a [[filter.syn]] needs `mode`: cookie or drop");
            None
        }
    };
    let threshold = get(t, "threshold").map(|v| (v, r.int(v, 1, u64::from(u32::MAX)).map(|n| n as u32)));
    let mss = get(t, "mss").map(|v| (v, r.int(v, 0, 9000)));
    let mss_only = get(t, "mss_only").map(|v| (v, r.boolean(v)));
    let untracked = get(t, "drop_untracked_acks").map(|v| (v, r.boolean(v)));
    let wscale = get(t, "wscale").map(|v| (v, r.int(v, 0, u64::from(XDPG_SYN_MAX_WSCALE)).map(|n| n as u8)));
    let monitor = get(t, "monitor").and_then(|v| r.boolean(v)).unwrap_or(false);
    let mut policy = match mode? {
        SynMode::Cookie => {
            if let Some((v, _)) = threshold {
                r.problem(v.span(), "`threshold` is for mode = \"drop\": cookie mode answers every SYN");
            }
            match (wscale, mss_only.and_then(|(_, b)| b)) {
                (Some((v, _)), Some(true)) => {
                    r.problem(v.span(), "`wscale` with `mss_only = true`: the MSS alone offers no window scale");
                    return None;
                }
                (_, Some(true)) => SynPolicy::cookies().with_wscale(None),
                (Some((_, w)), _) => SynPolicy::cookies().with_wscale(Some(w?)),
                (None, _) => SynPolicy::cookies(),
            }
        }
        SynMode::Drop { .. } => {
            if let Some((v, _)) = mss {
                r.problem(v.span(), "`mss` is for mode = \"cookie\": drop mode sends no SYN-ACK");
            }
            let keys = [
                ("mss_only", mss_only.map(|m| m.0)),
                ("wscale", wscale.map(|w| w.0)),
                ("drop_untracked_acks", untracked.map(|u| u.0)),
            ];
            for (key, v) in keys {
                if let Some(v) = v {
                    r.problem(v.span(), format!("`{key}` is for mode = \"cookie\": drop mode sends no SYN-ACK"));
                }
            }
            SynPolicy::drop_above(threshold.map_or(Some(DEFAULT_SYN_THRESHOLD), |(_, t)| t)?)
        }
    };
    if let Some((v, m)) = mss {
        let m = m?;
        if m != 0 && m < 536 {
            r.problem(v.span(), format!("an MSS of {m} is too small: give 536 to 9000 (or 0 for 1460 / 1440)"));
            return None;
        }
        policy = policy.with_mss(m as u16);
    }
    if policy.mode == SynMode::Cookie {
        policy = policy.with_drop_untracked_acks(untracked.and_then(|(_, b)| b).unwrap_or(false));
    }
    Some((port?, policy.with_monitor(monitor)))
}

fn backend(r: &mut Reader<'_>, v: &Val<'_>) -> Option<Backend> {
    match v.get_ref() {
        DeValue::String(_) => r.parsed::<BackendAddr>(v).map(|addr| Backend { addr, weight: 1 }),
        DeValue::Table(t) => {
            r.unknown_keys(t, "a backend", BACKEND_KEYS);
            let addr = match get(t, "addr") {
                Some(a) => r.parsed::<BackendAddr>(a),
                None => {
                    r.problem(v.span(), "a backend table needs `addr`, e.g. { addr = \"198.51.100.11\", weight = 2 }");
                    None
                }
            };
            let weight = match get(t, "weight") {
                Some(w) => r.int(w, 0, u64::from(MAX_WEIGHT)).map(|w| w as u32),
                None => Some(1),
            };
            Some(Backend { addr: addr?, weight: weight? })
        }
        other => {
            r.problem(
                v.span(),
                format!(
                    "expected a backend (\"198.51.100.11\" or {{ addr = \"198.51.100.11\", weight = 2 }}), found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

/// One `[[lb.vip]]`, with where its parts are.
struct VipRead {
    spec: VipSpec,
    span: Range<usize>,
    backend_spans: Vec<Range<usize>>,
}

fn vip(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>) -> Option<VipRead> {
    r.unknown_keys(t, "[[lb.vip]]", VIP_KEYS);
    let vip = match get(t, "vip") {
        Some(v) => r.parsed::<Vip>(v).and_then(|vip| match crate::lb::check_vip(&vip) {
            Ok(()) => Some(vip),
            Err(e) => {
                r.problem(v.span(), e.to_string());
                None
            }
        }),
        None => {
            r.problem(span.clone(), "a [[lb.vip]] needs `vip`, e.g. vip = \"tcp 203.0.113.10:80\"");
            None
        }
    };
    let mode = match get(t, "mode") {
        Some(v) => r.parsed::<ForwardingMode>(v),
        None => {
            r.problem(span.clone(), "a [[lb.vip]] needs `mode`: dsr, ipip or nat");
            None
        }
    };
    let table_size = match get(t, "table_size") {
        Some(v) => r.int(v, 0, u64::from(u32::MAX)).and_then(|n| match maglev::check_size(n as u32) {
            Ok(()) => Some(n as u32),
            Err(e) => {
                r.problem(v.span(), e.to_string());
                None
            }
        }),
        None => Some(DEFAULT_TABLE_SIZE),
    };
    // Without `hash`: the five-tuple, for every VIP. The CLI's `vip add`
    // gives an all-ports VIP the source hash (its fragments then reach its
    // flows' backend), but a file keeps the default it was written under:
    // a new default would re-create every such VIP of a running fleet at
    // its next apply (its flows hashed again) and move its digest.
    let hash = get(t, "hash").map(|v| r.parsed::<HashInput>(v));
    let conntrack = get(t, "conntrack").map_or(Some(true), |v| r.boolean(v));
    let permit_local = get(t, "permit_local").map_or(Some(false), |v| r.boolean(v));
    let mut backends: Vec<(Backend, Range<usize>)> = Vec::new();
    if let Some(v) = get(t, "backends") {
        for (b, s) in r.each(v, backend) {
            if let Some((_, first)) = backends.iter().find(|(x, _)| x.addr == b.addr) {
                let line = r.position(first.start).0;
                r.problem(
                    s,
                    format!("backend {} is listed twice (also on line {line}): give it once, with its weight", b.addr),
                );
            } else {
                backends.push((b, s));
            }
        }
    }
    let (vip, mode, table_size, conntrack, permit_local) = (vip?, mode?, table_size?, conntrack?, permit_local?);
    let hash = hash.unwrap_or(Some(HashInput::FiveTuple))?;
    let config = VipConfig::new(mode).table_size(table_size).hash(hash).conntrack(conntrack);
    if mode == ForwardingMode::Nat && !conntrack {
        let s = get(t, "conntrack").map_or(span.clone(), |v| v.span());
        r.problem(s, format!("NAT VIP {vip} needs connection tracking: its replies are translated from it"));
    }
    if backends.len() as u64 * 10 > u64::from(table_size) {
        let s = get(t, "table_size").or_else(|| get(t, "backends")).map_or(span.clone(), |v| v.span());
        r.problem(s, crate::LbError::TableTooSmall { vip, backends: backends.len(), size: table_size }.to_string());
    }
    backends.sort_by_key(|(b, _)| b.addr);
    let (backends, backend_spans) = backends.into_iter().unzip();
    Some(VipRead { spec: VipSpec { vip, config, backends, permit_local }, span: span.clone(), backend_spans })
}

fn lb(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>) -> (LbConfig, Placement) {
    r.unknown_keys(t, "[[lb]]", LB_KEYS);
    let place = placement(r, t, span, DEFAULT_LB_PIN);
    if let (true, Some(v)) = (place.interfaces.is_empty(), get(t, "mode")) {
        // Attached nowhere (behind a filter's `next`), it has no attach
        // mode: the key would be ignored.
        r.problem(
            v.span(),
            "`mode` is the attach mode of the LB's `interfaces`, and it has none (it runs behind a filter's \
             `next`, which attaches in the filter's mode): remove `mode`, or give the LB `interfaces`",
        );
    }
    let mut redirect: Vec<String> = Vec::new();
    if let Some(v) = get(t, "redirect") {
        for (name, s) in r.each(v, |r, item| r.string(item).map(str::to_owned)) {
            if redirect.contains(&name) {
                r.problem(s, format!("interface `{name}` is listed twice"));
            } else {
                redirect.push(name);
            }
        }
    }
    let mut ipip_sources: Vec<IpNetwork> = Vec::new();
    if let Some(v) = get(t, "ipip_sources") {
        for (net, s) in r.each(v, |r, item| r.parsed::<IpNetwork>(item)) {
            if let Err(e) = crate::lb::check_ipip_source(net) {
                r.problem(s, e.to_string());
            } else if ipip_sources.iter().any(|n| n.is_ipv4() == net.is_ipv4()) {
                r.problem(
                    s,
                    format!(
                        "one IPIP source prefix per family: {net} is a second IPv{} one",
                        if net.is_ipv4() { 4 } else { 6 }
                    ),
                );
            } else {
                ipip_sources.push(net);
            }
        }
    }
    let num = |r: &mut Reader<'_>, key, default: u32, max: u64| {
        get(t, key).and_then(|v| r.int(v, 1, max)).map_or(default, |n| n as u32)
    };
    let max_vips = num(r, "max_vips", DEFAULT_MAX_VIPS, 1 << 16);
    let max_backends = num(r, "max_backends", DEFAULT_MAX_BACKENDS, 1 << 20);
    let connections = num(r, "connections", DEFAULT_CONNECTIONS, 1 << 26);
    let nat_connections = num(r, "nat_connections", connections, 1 << 26);
    let max_interfaces = num(r, "max_interfaces", 64, 1 << 12);
    let hash_seed = get(t, "hash_seed").and_then(|v| r.int(v, 0, u64::from(u32::MAX))).map_or(0, |n| n as u32);
    let udp_timeout = get(t, "udp_timeout_secs")
        .and_then(|v| r.int(v, 1, 86_400 * 30))
        .map_or(DEFAULT_UDP_TIMEOUT, Duration::from_secs);
    let next_hop_cache = get(t, "next_hop_cache_ms")
        .and_then(|v| r.int(v, 0, 3_600_000))
        .map_or(DEFAULT_NEXT_HOP_CACHE, Duration::from_millis);
    let new_flow_limit = match get(t, "new_flow_limit") {
        None => NewFlowLimit::default(),
        Some(v) => match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "unlimited" => NewFlowLimit::Unlimited,
            DeValue::Table(l) => {
                r.unknown_keys(l, "new_flow_limit", LIMIT_KEYS);
                let field = |r: &mut Reader<'_>, key| match get(l, key) {
                    Some(x) => r.int(x, 1, u64::from(u32::MAX)).map(|n| n as u32),
                    None => {
                        r.problem(v.span(), format!("new_flow_limit needs `{key}`"));
                        None
                    }
                };
                match (field(r, "per_second"), field(r, "burst")) {
                    (Some(per_second), Some(burst)) => NewFlowLimit::PerCpu { per_second, burst },
                    _ => NewFlowLimit::default(),
                }
            }
            _ => {
                r.problem(v.span(), "new_flow_limit is \"unlimited\" or { per_second = 200000, burst = 20000 }");
                NewFlowLimit::default()
            }
        },
    };
    let echo = get(t, "echo").and_then(|v| r.parsed::<EchoPolicy>(v)).unwrap_or_default();
    let fragments = get(t, "fragments").and_then(|v| r.parsed::<FragmentPolicy>(v)).unwrap_or_default();
    let options = get(t, "options").and_then(|v| r.parsed::<OptionsPolicy>(v)).unwrap_or_default();

    let mut vips: Vec<VipRead> = Vec::new();
    if let Some(v) = get(t, "vip") {
        for (vt, vspan) in r.sections(v, "lb.vip") {
            if let Some(read) = vip(r, vt, &vspan) {
                if let Some(first) = vips.iter().find(|x| x.spec.vip == read.spec.vip) {
                    let line = r.position(first.span.start).0;
                    r.problem(vspan, format!("VIP {} is configured twice (also on line {line})", read.spec.vip));
                } else {
                    vips.push(read);
                }
            }
        }
    }
    // What the library would refuse, checked against the whole file.
    let has_source = |v6: bool| ipip_sources.iter().any(|n| n.is_ipv6() == v6);
    for (i, read) in vips.iter().enumerate() {
        for (b, s) in read.spec.backends.iter().zip(&read.backend_spans) {
            if let Err(e) = check_backend(&read.spec.vip, read.spec.config.mode, &b.addr, has_source) {
                r.problem(s.clone(), e.to_string());
            } else if read.spec.config.mode == ForwardingMode::Nat {
                let earlier = vips[..i]
                    .iter()
                    .flat_map(|o| o.spec.backends.iter().map(move |ob| (&o.spec.vip, o.spec.config.mode, &ob.addr)));
                if let Err(e) = check_nat_backend(&read.spec.vip, &b.addr, earlier) {
                    r.problem(s.clone(), e.to_string());
                }
            }
        }
    }
    if vips.len() > max_vips as usize {
        let s = get(t, "max_vips").map_or(span.clone(), |v| v.span());
        r.problem(s, format!("{} VIPs are configured but max_vips is {max_vips}: raise max_vips", vips.len()));
    }
    let backends: usize = vips.iter().map(|v| v.spec.backends.len()).sum();
    if backends > max_backends as usize {
        let s = get(t, "max_backends").map_or(span.clone(), |v| v.span());
        r.problem(
            s,
            format!("the VIPs have {backends} backends in all but max_backends is {max_backends}: raise max_backends"),
        );
    }
    vips.sort_by_key(|v| v.spec.vip);
    let cfg = LbConfig {
        pin: place.pin.0.clone(),
        interfaces: place.interfaces.iter().map(|(n, _)| n.clone()).collect(),
        mode: place.mode,
        netns: place.netns.clone(),
        redirect,
        ipip_sources,
        hash_seed,
        max_vips,
        max_backends,
        connections,
        nat_connections,
        max_interfaces,
        udp_timeout,
        next_hop_cache,
        new_flow_limit,
        echo,
        fragments,
        options,
        keep_drained: get(t, "keep_drained").and_then(|v| r.boolean(v)).unwrap_or(false),
        vips: vips.into_iter().map(|v| v.spec).collect(),
    };
    let egress = cfg.egress().len();
    if egress > max_interfaces as usize {
        let s = get(t, "max_interfaces").map_or(span.clone(), |v| v.span());
        r.problem(s, format!("{egress} interfaces to send out of but max_interfaces is {max_interfaces}"));
    }
    if place.mode == AttachMode::Offload && !place.interfaces.is_empty() {
        let s = get(t, "mode").map_or(span.clone(), |v| v.span());
        r.problem(s, "the load balancer cannot be offloaded (map-in-map, LRU maps and the FIB): use native or auto");
    }
    (cfg, place)
}

fn decap(r: &mut Reader<'_>, t: &DeTable<'_>, span: &Range<usize>) -> (DecapConfig, Placement) {
    r.unknown_keys(t, "[[decap]]", DECAP_KEYS);
    let place = placement(r, t, span, DEFAULT_DECAP_PIN);
    if place.interfaces.is_empty() {
        r.problem(span.clone(), "a [[decap]] needs `interfaces = [\"eth0\"]`");
    }
    let mut locals: Vec<IpAddr> = Vec::new();
    match get(t, "locals") {
        Some(v) => {
            for (a, s) in r.each(v, |r, item| r.parsed::<IpAddr>(item)) {
                if let Err(e) = crate::lb::check_decap_local(a) {
                    r.problem(s, e.to_string());
                } else if locals.contains(&a) {
                    r.problem(s, format!("local address {a} is listed twice"));
                } else {
                    locals.push(a);
                }
            }
            if locals.len() > MAX_DECAP_LOCALS {
                r.problem(
                    v.span(),
                    format!("{} local addresses; a decapsulator holds at most {MAX_DECAP_LOCALS}", locals.len()),
                );
            }
        }
        None => r.problem(span.clone(), "a [[decap]] needs `locals`: the addresses the LB sends tunnels to"),
    }
    locals.sort();
    let cfg = DecapConfig {
        pin: place.pin.0.clone(),
        interfaces: place.interfaces.iter().map(|(n, _)| n.clone()).collect(),
        mode: place.mode,
        netns: place.netns.clone(),
        locals,
    };
    (cfg, place)
}

/// Reads and checks a whole file: the configuration, or every problem.
/// The document's tree, or its syntax errors alone (whatever follows one
/// is guesswork).
fn document<'i>(r: &mut Reader<'i>) -> Result<DeTable<'i>, ConfigError> {
    let (doc, syntax) = DeTable::parse_recoverable(r.text);
    if syntax.is_empty() {
        return Ok(doc.into_inner());
    }
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        r.problem(span, format!("TOML syntax: {}", e.message().trim_end()));
    }
    Err(invalid(r.file, std::mem::take(&mut r.problems)))
}

/// Each section's program, pin directory and network namespace, read
/// from `text` and nothing else: what taking its programs down needs
/// ([`Config::plan_down_file`](crate::config::Config::plan_down_file)), so
/// that a file whose other settings no longer check (a list file gone, a
/// typo, a newer build's key) still takes them down.
///
/// # Errors
///
/// [`ConfigError::Invalid`] for TOML syntax, sections that are not tables,
/// pins that are not absolute paths and malformed namespace names.
pub(crate) fn places(text: &str, path: &Path) -> Result<Vec<(Program, PathBuf, Option<String>)>, ConfigError> {
    let mut r = Reader { file: path, text, problems: Vec::new() };
    let doc = document(&mut r)?;
    let mut out = Vec::new();
    for (key, program, default_pin) in [
        ("filter", Program::Filter, DEFAULT_FILTER_PIN),
        ("lb", Program::Lb, DEFAULT_LB_PIN),
        ("decap", Program::Decap, DEFAULT_DECAP_PIN),
    ] {
        let Some(v) = get(&doc, key) else { continue };
        for (t, span) in r.sections(v, key) {
            let (pin, _) = pin_of(&mut r, t, &span, default_pin);
            let netns = netns_of(&mut r, t);
            out.push((program, pin, netns));
        }
    }
    if r.problems.is_empty() {
        Ok(out)
    } else {
        Err(invalid(path, r.problems))
    }
}

pub(crate) fn read(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut r = Reader { file: path, text, problems: Vec::new() };
    let doc = document(&mut r)?;
    r.unknown_keys(&doc, "the file (sections are [[filter]], [[lb]] and [[decap]])", TOP_KEYS);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut placements: Vec<(&'static str, Placement)> = Vec::new();
    let mut filters = Vec::new();
    let mut lbs = Vec::new();
    let mut decaps = Vec::new();
    let mut next_spans = Vec::new();
    if let Some(v) = get(&doc, "filter") {
        for (t, span) in r.sections(v, "filter") {
            let (cfg, place) = filter(&mut r, t, &span, &base);
            next_spans.push(get(t, "next").map(|v| v.span()));
            filters.push(cfg);
            placements.push(("filter", place));
        }
    }
    if let Some(v) = get(&doc, "lb") {
        for (t, span) in r.sections(v, "lb") {
            let (cfg, place) = lb(&mut r, t, &span);
            lbs.push(cfg);
            placements.push(("lb", place));
        }
    }
    if let Some(v) = get(&doc, "decap") {
        for (t, span) in r.sections(v, "decap") {
            let (cfg, place) = decap(&mut r, t, &span);
            decaps.push(cfg);
            placements.push(("decap", place));
        }
    }
    if placements.is_empty() {
        r.problem(0..0, "the file describes nothing: add a [[filter]], [[lb]] or [[decap]] section");
    }
    // One program per pin directory, and per interface (in each namespace).
    let mut pins: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut ifaces: BTreeMap<(Option<String>, String), (&'static str, usize)> = BTreeMap::new();
    for (kind, place) in &placements {
        let (pin, span) = &place.pin;
        if let Some(first) = pins.get(pin) {
            let line = r.position(*first).0;
            r.problem(
                span.clone(),
                format!(
                    "pin directory {} is already the one of the section on line {line} (a section without `pin` \
                     has its kind's default): give each program its own `pin`",
                    pin.display()
                ),
            );
        } else {
            pins.insert(pin.clone(), span.start);
        }
        for (name, s) in &place.interfaces {
            let key = (place.netns.clone(), name.clone());
            if let Some((other, at)) = ifaces.get(&key) {
                let line = r.position(*at).0;
                r.problem(
                    s.clone(),
                    format!("interface `{name}` already runs the [[{other}]] of line {line}: an interface runs one XDP program (chain the LB behind the filter with `next`)"),
                );
            } else {
                ifaces.insert(key, (kind, s.start));
            }
        }
    }
    // A filter's next is an LB of this file, in its namespace.
    let mut chained: BTreeSet<PathBuf> = BTreeSet::new();
    for (f, span) in filters.iter().zip(&next_spans) {
        let (Some(next), Some(span)) = (&f.next, span) else { continue };
        // Named as a next, even a wrong one: "no packet" would be a second
        // problem for the same mistake.
        chained.insert(next.clone());
        match lbs.iter().find(|l| &l.pin == next) {
            None => r.problem(
                span.clone(),
                format!("next = {}: no [[lb]] of this file is pinned there (give the `pin` of one)", next.display()),
            ),
            Some(l) if l.netns != f.netns => r.problem(
                span.clone(),
                format!(
                    "the filter and the LB it passes packets to must be in the same network namespace (the filter's \
                     is {}, the LB's {}: give both the same `netns`)",
                    f.netns.as_deref().unwrap_or("the caller's"),
                    l.netns.as_deref().unwrap_or("the caller's")
                ),
            ),
            Some(_) => {}
        }
    }
    for (l, (_, place)) in lbs.iter().zip(placements.iter().filter(|(k, _)| *k == "lb")) {
        if l.interfaces.is_empty() && !chained.contains(&l.pin) {
            r.problem(
                place.pin.1.clone(),
                format!(
                    "the [[lb]] pinned at {} would receive no packet: give it `interfaces`, or name it as a filter's `next`",
                    l.pin.display()
                ),
            );
        }
    }
    if r.problems.is_empty() {
        Ok(Config { path: path.to_owned(), filters, lbs, decaps })
    } else {
        Err(invalid(path, r.problems))
    }
}

/// Every problem, the configuration file's first, each file's in order.
fn invalid(path: &Path, mut problems: Vec<Problem>) -> ConfigError {
    problems
        .sort_by(|a, b| (a.file != path, &a.file, a.line, a.column).cmp(&(b.file != path, &b.file, b.line, b.column)));
    problems.dedup();
    ConfigError::Invalid { file: path.to_owned(), problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(usize, Option<usize>, String)> {
        match read(text, Path::new("/etc/xdpguard/x.toml")) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.line, p.column, p.message)).collect()
            }
            Err(e) => panic!("another error: {e}"),
        }
    }

    /// Each expected problem (line, column, a part of the message) is
    /// reported, and nothing else.
    fn expect(text: &str, want: &[(usize, usize, &str)]) {
        let got = problems(text);
        for (line, col, part) in want {
            assert!(
                got.iter().any(|(l, c, m)| l == line && *c == Some(*col) && m.contains(part)),
                "no problem at {line}:{col} containing {part:?}; got {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_with_its_line_and_column() {
        let text = r#"
[[filter]]
interfaces = ["eth0", "eth0"]
blocklsit = ["192.0.2.0/24"]
blocklist = ["192.0.2.0/33", "0.0.0.0/0"]
v4_capacity = 0
mode = "fast"
next = "/sys/fs/bpf/nowhere"

[[lb]]
interfaces = ["eth0"]
hash_seed = "seven"

[[lb.vip]]
vip = "tcp 203.0.113.10:99999"
mode = "ipip"

[[lb.vip]]
vip = "tcp 203.0.113.11:80"
mode = "dsr"
table_size = 7
backends = ["198.51.100.11", "198.51.100.11", "198.51.100.12:8080", { addr = "198.51.100.13", wieght = 2 }]
"#;
        expect(
            text,
            &[
                (3, 23, "interface `eth0` is listed twice"),
                (4, 1, "unknown key `blocklsit` in [[filter]] (did you mean `blocklist`?)"),
                (5, 14, "192.0.2.0/33"),
                (5, 30, "blocklisting 0.0.0.0/0 drops every IPv4 packet"),
                (6, 15, "0 is out of range: expected 1 to 16777216"),
                (7, 8, "unknown XDP mode `fast`"),
                (8, 8, "no [[lb]] of this file is pinned there"),
                (11, 15, "interface `eth0` already runs the [[filter]] of line 3"),
                (12, 13, "expected an integer, found string"),
                (15, 7, "203.0.113.10:99999"),
                (21, 14, "would have 3 backends but its Maglev table has only 7 slots"),
                (22, 30, "backend 198.51.100.11 is listed twice (also on line 22)"),
                (22, 47, "a backend port in dsr mode"),
                (22, 95, "unknown key `wieght` in a backend (did you mean `weight`?)"),
            ],
        );
    }

    #[test]
    fn a_next_in_another_namespace_is_one_problem_naming_both() {
        let text = "[[filter]]\ninterfaces = [\"eth0\"]\nnetns = \"edge\"\nnext = \"/sys/fs/bpf/lb\"\n\n\
                    [[lb]]\npin = \"/sys/fs/bpf/lb\"\n";
        expect(text, &[(4, 8, "the filter's is edge, the LB's the caller's: give both the same `netns`")]);
    }

    #[test]
    fn syntax_errors_are_reported_alone_with_their_place() {
        let got = problems("[[filter]]\ninterfaces = [\"eth0\"\nblocklist = 3\n");
        assert!(!got.is_empty());
        assert!(got.iter().all(|(_, c, m)| m.starts_with("TOML syntax:") && c.is_some()), "{got:#?}");
        assert!(got.iter().any(|(l, _, _)| *l == 2 || *l == 3), "{got:#?}");
    }

    #[test]
    fn list_file_lines_are_reported_by_their_own_line_numbers() {
        let dir = std::env::temp_dir().join(format!("xdpg-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("drop.txt"), "192.0.2.0/24\n# fine\nnot-a-prefix\n198.51.100.7\n10.0.0.0/99\n")
            .unwrap();
        let text = "[[filter]]\ninterfaces = [\"eth0\"]\nblocklist_files = [\"drop.txt\", \"missing.txt\"]\n";
        let err = read(text, &dir.join("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else { panic!("{err}") };
        let at: Vec<(String, usize, Option<usize>)> = problems
            .iter()
            .map(|p| (p.file.file_name().unwrap().to_string_lossy().into_owned(), p.line, p.column))
            .collect();
        assert_eq!(
            at,
            vec![("x.toml".into(), 3, Some(32)), ("drop.txt".into(), 3, None), ("drop.txt".into(), 5, None)],
            "{err}"
        );
        assert!(err.to_string().contains("x.toml:3:32: cannot read list file"), "{err}");
        assert!(err.to_string().contains("drop.txt:3: "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// VIPs the load balancer refuses (port 0, an address no packet
    /// reaches) are problems of the file, placed, before anything runs.
    #[test]
    fn vips_the_lb_refuses_are_placed() {
        let bad = "[[lb]]\ninterfaces = [\"eth0\"]\n[[lb.vip]]\nvip = \"tcp 203.0.113.10:0\"\nmode = \"dsr\"\n\n\
                   [[lb.vip]]\nvip = \"udp 127.0.0.1:53\"\nmode = \"dsr\"\n\n\
                   [[lb.vip]]\nvip = \"tcp 203.0.113.20\"\nmode = \"nat\"\n\n\
                   [[lb.vip]]\nvip = \"udp 2001:db8:10::10:53\"\nmode = \"nat\"\n";
        expect(
            bad,
            &[
                (4, 7, "port 0 in VIP"),
                (8, 7, "a loopback address"),
                (12, 7, "VIP `203.0.113.20` has no port"),
                (16, 7, "VIP `2001:db8:10::10:53` has no port"),
            ],
        );
    }

    #[test]
    fn syn_guard_tables_are_read_and_their_problems_placed() {
        let good = "[[filter]]\ninterfaces = [\"eth0\"]\n\n[[filter.syn]]\nport = 443\nmode = \"drop\"\n\n\
                    [[filter.syn]]\nport = 8443\nmode = \"cookie\"\nmss = 1400\nmonitor = true\n\n\
                    [[filter.syn]]\nport = 8444\nmode = \"cookie\"\nwscale = 9\n\n\
                    [[filter.syn]]\nport = 8445\nmode = \"cookie\"\nmss_only = true\ndrop_untracked_acks = true\n";
        let c = read(good, Path::new("/etc/xdpguard/x.toml")).unwrap();
        let want = [
            (443, crate::SynPolicy::drop_above(crate::DEFAULT_SYN_THRESHOLD)),
            (8443, crate::SynPolicy::cookies().with_mss(1400).with_monitor(true)),
            (8444, crate::SynPolicy::cookies().with_wscale(Some(9))),
            (8445, crate::SynPolicy::cookies().with_wscale(None).with_drop_untracked_acks(true)),
        ];
        assert_eq!(c.filters[0].syn, want.into_iter().collect());
        let bad = "[[filter]]\ninterfaces = [\"eth0\"]\n\n\
                   [[filter.syn]]\nport = 443\nmode = \"cookie\"\nthreshold = 5\n\n\
                   [[filter.syn]]\nport = 443\nmode = \"drop\"\n\n\
                   [[filter.syn]]\nport = 0\nmode = \"cookie\"\nmss = 100\nspeed = 1\n\n\
                   [[filter.syn]]\nport = 80\n\n\
                   [[filter.syn]]\nport = 81\nmode = \"drop\"\nwscale = 7\nmss_only = false\n\n\
                   [[filter.syn]]\nport = 82\nmode = \"cookie\"\nwscale = 15\n\n\
                   [[filter.syn]]\nport = 83\nmode = \"cookie\"\nwscale = 7\nmss_only = true\n";
        expect(
            bad,
            &[
                (7, 13, "`threshold` is for mode = \"drop\""),
                (9, 1, "port 443 is SYN-guarded twice (also on line 4)"),
                (14, 8, "0 is out of range: expected 1 to 65535"),
                (16, 7, "an MSS of 100 is too small"),
                (17, 1, "speed"),
                (19, 1, "a [[filter.syn]] needs `mode`"),
                (25, 10, "`wscale` is for mode = \"cookie\""),
                (26, 12, "`mss_only` is for mode = \"cookie\""),
                (31, 10, "15 is out of range: expected 0 to 14"),
                (36, 10, "`wscale` with `mss_only = true`"),
            ],
        );
    }

    #[test]
    fn a_good_file_is_read_normalised_with_defaults() {
        let text = r#"
[[filter]]
interfaces = ["eth0"]
blocklist = ["192.0.2.7/24", "2001:db8::1", "192.0.2.0/24"]
next = "/sys/fs/bpf/xdpguard-lb"

[[lb]]
ipip_sources = ["203.0.113.128/25"]
hash_seed = 7

[[lb.vip]]
vip = "tcp 203.0.113.10:80"
mode = "ipip"
backends = [{ addr = "198.51.100.12", weight = 2 }, "198.51.100.11"]
"#;
        let c = read(text, Path::new("x.toml")).unwrap();
        let f = &c.filters[0];
        assert_eq!(f.pin, Path::new(DEFAULT_FILTER_PIN));
        assert_eq!(f.v4_capacity, DEFAULT_V4_CAPACITY);
        let g = f.guard;
        assert_eq!(
            (
                g.max_rules,
                g.max_rule_records,
                g.max_rule_refs,
                g.max_set_entries,
                g.max_timed_blocks,
                g.max_limit_buckets
            ),
            (DEFAULT_MAX_RULES, 2 * DEFAULT_MAX_RULES, 16 * DEFAULT_MAX_RULES, DEFAULT_MAX_SET_ENTRIES, 65536, 65536),
            "the builder's defaults, resolved"
        );
        let block: Vec<String> = f.blocklist.iter().map(ToString::to_string).collect();
        assert_eq!(block, ["192.0.2.0/24", "2001:db8::1/128"]);
        let lb = &c.lbs[0];
        assert_eq!((lb.pin.as_path(), lb.hash_seed, lb.interfaces.len()), (Path::new(DEFAULT_LB_PIN), 7, 0));
        let v = &lb.vips[0];
        assert_eq!(v.config.table_size, DEFAULT_TABLE_SIZE);
        assert!(!v.permit_local, "a VIP at a host address is refused unless the file permits it");
        let b: Vec<(String, u32)> = v.backends.iter().map(|b| (b.addr.to_string(), b.weight)).collect();
        assert_eq!(b, [("198.51.100.11".to_string(), 1), ("198.51.100.12".to_string(), 2)]);
        // The same file in another order promises the same digest.
        assert_eq!(lb.expected_digest().vips.len(), 1);
        assert!("".parse::<Config>().is_err(), "an empty file describes nothing");
    }

    /// Decap locals and IPIP sources no packet is addressed to or comes
    /// back to are reported where they stand, with the library's message.
    #[test]
    fn unusable_decap_locals_and_ipip_sources_are_reported() {
        let text = r#"
[[lb]]
ipip_sources = ["0.0.0.0/0", "ff02::/64"]
interfaces = ["eth0"]

[[decap]]
interfaces = ["eth1"]
locals = ["::ffff:198.51.100.99", "0.0.0.0", "224.0.0.5", "198.51.100.11"]
"#;
        expect(
            text,
            &[
                (3, 17, "IPIP source prefix 0.0.0.0/0 (every address of the family)"),
                (3, 30, "IPIP source prefix ff02::/64 at a multicast address"),
                (8, 11, "give it as IPv4 (198.51.100.99)"),
                (8, 35, "local endpoint 0.0.0.0, the unspecified address"),
                (8, 46, "local endpoint 224.0.0.5, a multicast address"),
            ],
        );
    }

    /// Without `hash`, every VIP hashes the five-tuple (a file means what
    /// it meant when written); a `hash` given wins.
    #[test]
    fn a_vip_without_hash_gets_its_default() {
        let text = r#"
[[lb]]
interfaces = ["eth0"]
[[lb.vip]]
vip = "udp 203.0.113.10:*"
mode = "dsr"
[[lb.vip]]
vip = "udp 203.0.113.10:53"
mode = "dsr"
[[lb.vip]]
vip = "udp 203.0.113.11:*"
mode = "dsr"
hash = "source"
"#;
        let c = read(text, Path::new("x.toml")).unwrap();
        let got: Vec<(String, HashInput)> = c.lbs[0].vips.iter().map(|v| (v.vip.to_string(), v.config.hash)).collect();
        assert_eq!(
            got,
            [
                ("udp 203.0.113.10:*".to_string(), HashInput::FiveTuple),
                ("udp 203.0.113.10:53".to_string(), HashInput::FiveTuple),
                ("udp 203.0.113.11:*".to_string(), HashInput::SourceAddress),
            ]
        );
    }

    /// The rule stage's capacities: read, bounded, and a rule set larger
    /// than `max_rules` reported at its key.
    #[test]
    fn rule_stage_capacities_are_read_and_checked() {
        let text = r#"
[[filter]]
interfaces = ["eth0"]
max_rules = 8
max_rule_refs = 33
max_timed_blocks = 1000000
max_limit_buckets = 300
rules = "drop udp dport 53"
"#;
        let c = read(text, Path::new("x.toml")).unwrap();
        let g = c.filters[0].guard;
        assert_eq!(
            (g.max_rules, g.max_rule_records, g.max_rule_refs, g.max_timed_blocks, g.max_limit_buckets),
            (8, 16, 33, 1_000_000, 300)
        );
        expect(
            r#"
[[filter]]
interfaces = ["eth0"]
max_rules = 1
max_set_entries = 0
rules = "drop udp dport 53\ndrop udp dport 54"
"#,
            &[(4, 13, "2 rules are configured but max_rules is 1: raise max_rules"), (5, 19, "out of range")],
        );
    }

    /// `mode` on an LB attached nowhere is a problem at the key, not
    /// ignored.
    #[test]
    fn an_lb_mode_without_interfaces_is_a_problem() {
        let text = "[[filter]]\ninterfaces = [\"eth0\"]\nnext = \"/sys/fs/bpf/xdpguard-lb\"\n\n\
                    [[lb]]\nredirect = [\"eth0\"]\nmode = \"native\"\n";
        expect(text, &[(7, 8, "`mode` is the attach mode")]);
        read("[[lb]]\ninterfaces = [\"eth0\"]\nmode = \"native\"\n", Path::new("x.toml")).unwrap();
    }

    /// The shipped example shows every key the parser takes.
    #[test]
    fn the_example_file_shows_every_key() {
        let example = include_str!("../../dist/xdpguard.toml");
        let lists = [FILTER_KEYS, SYN_KEYS, LB_KEYS, VIP_KEYS, BACKEND_KEYS, LIMIT_KEYS, DECAP_KEYS];
        for key in lists.iter().flat_map(|l| l.iter()).filter(|k| !["sets", "syn"].contains(k)) {
            let shown = example.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.contains(&format!("{{ {key} ="))
                    || l.contains(&format!(", {key} ="))
            });
            assert!(shown, "dist/xdpguard.toml does not show `{key}`");
        }
        assert!(example.contains("[filter.sets]") && example.contains("[[filter.syn]]"));
    }

    /// `permit_local` is a VIP's boolean, false when not given.
    #[test]
    fn permit_local_is_read_per_vip() {
        let text = "[[lb]]\ninterfaces = [\"eth0\"]\n\n[[lb.vip]]\nvip = \"tcp 192.0.2.2:22\"\nmode = \"dsr\"\n\
                    permit_local = true\n\n[[lb.vip]]\nvip = \"tcp 192.0.2.2:80\"\nmode = \"dsr\"\n";
        let c = read(text, Path::new("x.toml")).unwrap();
        let permits: Vec<bool> = c.lbs[0].vips.iter().map(|v| v.permit_local).collect();
        assert_eq!(permits, [true, false]);
        expect(&text.replace("permit_local = true", "permit_local = \"yes\""), &[(7, 16, "")]);
    }

    /// The named sets' prefixes in all, and the rules as compiled, are
    /// checked against their capacities when the file is: a problem at the
    /// key, not a filter created and then refused half-built.
    #[test]
    fn set_totals_and_compiled_rules_are_checked_against_their_capacities() {
        expect(
            r#"
[[filter]]
interfaces = ["eth0"]
max_set_entries = 5
max_rule_records = 1
rules = "drop udp dport 53\ndrop udp dport 54\ndrop udp dport 55 from set a"

[filter.sets]
a = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.3/32"]
b = ["198.51.100.0/24", "2001:db8::/32", "203.0.113.7"]
"#,
            &[
                (4, 19, "the named sets hold 6 prefixes in all but max_set_entries is 5: raise max_set_entries"),
                (5, 20, "raise max_rule_records"),
            ],
        );
        // At the capacities: accepted.
        let text = r#"
[[filter]]
interfaces = ["eth0"]
max_set_entries = 4
max_rule_records = 3
rules = "drop udp dport 53\ndrop udp dport 54\ndrop udp dport 55 from set a"

[filter.sets]
a = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
b = ["198.51.100.0/24"]
"#;
        let c = read(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.filters[0].guard.max_set_entries, 4);
    }
}
