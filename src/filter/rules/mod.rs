//! Rules beyond the source address, run by the filter's guard stage:
//! [`Rules`] (one filter's rule set, from [`Filter::rules`]) and
//! [`Sets`] (its named sets, from [`Filter::sets`]).
//!
//! - `syntax.rs`: [`Rule`] and its parts, their checks and canonical text;
//! - `parse.rs`: rule text and rule files ([`parse_rules`]);
//! - `compile.rs`: the index the data plane reads;
//! - `sets.rs`: [`Sets`] and [`NamedSet`].
//!
//! The model and the maps are the guard's (`src/filter/guard/`).

pub(crate) mod compile;
pub(crate) mod parse;
mod sets;
pub(crate) mod syntax;

pub use parse::{parse_rule_lines, parse_rules, RuleLine};
pub use sets::{NamedSet, Sets};
pub use syntax::{DestinationMatch, IpFamily, RangeSet, Rule, RuleAction, RuleProtocol, Source, SourceMatch, TcpFlags};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::RuleError;
use crate::filter::guard::maps::GuardMaps;
use crate::filter::guard::state::{GuardState, StoredRule};
use crate::filter::guard::Guard;
use crate::filter::Filter;
use crate::Counter;

/// Whether `rule`'s source conditions admit packets from `addr`.
fn admits_source(st: &GuardState, rule: &Rule, addr: IpAddr) -> bool {
    let covers = |n: &ipnetwork::IpNetwork| n.is_ipv4() == addr.is_ipv4() && n.contains(addr);
    let family = rule.effective_family().or(match rule.protocol {
        Some(RuleProtocol::Icmp) => Some(IpFamily::V4),
        Some(RuleProtocol::Icmpv6) => Some(IpFamily::V6),
        _ => None,
    });
    if family.is_some_and(|f| (f == IpFamily::V4) != addr.is_ipv4()) {
        return false;
    }
    let Some(s) = &rule.source else { return true };
    let hit = match &s.source {
        Source::Prefix(n) => covers(n),
        Source::Set(name) => st.set(name).is_ok_and(|set| set.entries.iter().any(covers)),
    };
    hit != s.negated
}

/// Pairs a new rule set with the old one: for each new rule, the index of
/// the old rule whose id and counter it keeps, if any (the others are new
/// rules). Rules written the same (normalized) pair first, in order; then
/// rules that differ only in `monitor`, in order: switching a rule to
/// monitor mode in a rule file is the file's `rule monitor`, and keeps its
/// id, counter and metric series (a new id would zero the count the switch
/// is meant to watch). Exact pairs go first so that of two rules differing
/// only in `monitor`, each keeps its own counter when both stay.
///
/// Both [`Rules::replace`] and `apply`'s plan (its `kept` count) pair by
/// this.
pub(crate) fn pair_rules<R: std::borrow::Borrow<Rule>>(old: &[R], new: &[Rule]) -> Vec<Option<usize>> {
    let mut exact: HashMap<&Rule, VecDeque<usize>> = HashMap::new();
    for (i, r) in old.iter().enumerate() {
        exact.entry(r.borrow()).or_default().push_back(i);
    }
    let mut pairs: Vec<Option<usize>> = new.iter().map(|r| exact.get_mut(r).and_then(VecDeque::pop_front)).collect();
    let unmonitored = |r: &Rule| Rule { monitor: false, ..r.clone() };
    let mut loose: HashMap<Rule, VecDeque<usize>> = HashMap::new();
    for i in exact.into_values().flatten().collect::<BTreeSet<usize>>() {
        loose.entry(unmonitored(old[i].borrow())).or_default().push_back(i);
    }
    for (pair, r) in pairs.iter_mut().zip(new) {
        if pair.is_none() {
            *pair = loose.get_mut(&unmonitored(r)).and_then(VecDeque::pop_front);
        }
    }
    pairs
}

/// A rule's id: stable while the rule is in the set (moves and other
/// rules' edits keep it), and the slot of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub(crate) u32);

impl RuleId {
    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl From<u32> for RuleId {
    fn from(n: u32) -> RuleId {
        RuleId(n)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RuleId {
    type Err = crate::ParseError;

    /// A number, as `Display` shows it (`#12` is accepted too).
    fn from_str(s: &str) -> Result<RuleId, crate::ParseError> {
        let t = s.trim();
        t.strip_prefix('#').unwrap_or(t).parse().map(RuleId).map_err(|_| crate::ParseError::Invalid {
            what: "rule id",
            input: s.to_owned(),
            example: "12 (the ids `xdpguard rule list` shows)",
        })
    }
}

/// A rule of the set, where it stands and what it has matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    /// Its id.
    pub id: RuleId,
    /// Its place in the priority order (0 first).
    pub position: usize,
    /// The rule.
    pub rule: Rule,
    /// Packets and bytes it matched (a monitored drop rule: would have
    /// dropped), summed over CPUs, since it was added or its counter reset.
    pub hits: Counter,
    /// A rate-limit rule: the packets and bytes over its limit (dropped, or
    /// in monitor mode would have been), summed over CPUs. Zero for others.
    pub limited: Counter,
    /// A rate-limit rule with `block`: the sources it blocked.
    pub auto_blocks: u64,
}

/// The outcome of replacing a rule set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleChange {
    /// Rules of the new set that were not in the old one.
    pub added: usize,
    /// Rules of the old set that are not in the new one.
    pub removed: usize,
    /// Rules in both (same text, `monitor` aside): they keep their ids and
    /// counters.
    pub kept: usize,
    /// The new set's ids, in order.
    pub ids: Vec<RuleId>,
}

/// A filter's rule set, checked by its guard stage for the packets neither
/// list decided. Get it with [`Filter::rules`]; see there for the syntax
/// and the order of evaluation.
///
/// Every edit compiles the whole new set beside the live one and switches
/// to it with one store: traffic sees the old set or the new one, never a
/// mix, and a refused or failed edit changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'f> {
    filter: &'f Filter,
}

impl<'f> Rules<'f> {
    pub(crate) fn new(filter: &'f Filter) -> Self {
        Rules { filter }
    }

    fn guard(&self) -> Result<&'f Guard, RuleError> {
        self.filter.guard_stage()
    }

    fn read<R>(&self, f: impl FnOnce(&GuardState, &GuardMaps) -> R) -> Result<R, RuleError> {
        self.guard()?.core.read(|st, maps| f(st, maps))
    }

    /// Runs an edit under the guard's lock, then puts the guard in the
    /// filter's stage slot or takes it out, as the new set needs.
    fn edit<R>(&self, f: impl FnOnce(&mut GuardState, &GuardMaps) -> Result<R, RuleError>) -> Result<R, RuleError> {
        self.guard()?.edit(&self.filter.core.maps, f)
    }

    /// The rules in priority order, with their counters.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`]; [`RuleError::Pin`] when the pin directory
    /// cannot be locked; [`RuleError::Bpf`] when the counters cannot be read.
    pub fn list(&self) -> Result<Vec<RuleEntry>, RuleError> {
        let maps = &self.guard()?.core.maps;
        let rules = self.read(|st, _| st.rules.clone())?;
        rules
            .into_iter()
            .enumerate()
            .map(|(position, r)| {
                let hits = maps.counters.sum(r.id).map_err(|source| RuleError::Bpf {
                    op: format!("reading the counter of rule {}", r.id),
                    error: source,
                })?;
                let (limited, auto_blocks) = if r.rule.action == RuleAction::RateLimit {
                    let l = maps.lcnt.sum(r.id).map_err(|source| RuleError::Bpf {
                        op: format!("reading the limit counter of rule {}", r.id),
                        error: source,
                    })?;
                    (Counter { packets: l.packets, bytes: l.bytes }, l.blocks)
                } else {
                    (Counter::default(), 0)
                };
                Ok(RuleEntry { id: RuleId(r.id), position, rule: r.rule, hits: hits.into(), limited, auto_blocks })
            })
            .collect()
    }

    /// The rules that may see packets from `addr`, in priority order, with
    /// their counters: those whose source conditions (prefix or named set,
    /// `not`, IP version, and the IP version `icmp` or `icmpv6` implies)
    /// admit it. Of these, one whose only conditions are on the source
    /// ([`Rule::only_on_source`]) matches every packet from `addr`: the
    /// first such `drop` or `pass` (not monitored) decides for all of them
    /// that earlier rules left; the others match some of its packets.
    /// (What the lists and timed blocks decide first is
    /// [`Filter::verdict`](crate::Filter::verdict)'s and
    /// [`Filter::timed_blocks`](crate::Filter::timed_blocks)'.)
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
    /// let addr = "198.51.100.7".parse()?;
    /// let decides = filter.rules().matching_source(addr)?.into_iter().find(|e| {
    ///     e.rule.only_on_source()
    ///         && !e.rule.monitor
    ///         && matches!(e.rule.action, xdpguard::RuleAction::Drop | xdpguard::RuleAction::Pass)
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub fn matching_source(&self, addr: IpAddr) -> Result<Vec<RuleEntry>, RuleError> {
        let admitted: BTreeSet<u32> =
            self.read(|st, _| st.rules.iter().filter(|r| admits_source(st, &r.rule, addr)).map(|r| r.id).collect())?;
        Ok(self.list()?.into_iter().filter(|e| admitted.contains(&e.id.0)).collect())
    }

    /// Number of rules.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn len(&self) -> Result<usize, RuleError> {
        self.read(|st, _| st.rules.len())
    }

    /// Whether the set is empty (the guard is then not called at all).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn is_empty(&self) -> Result<bool, RuleError> {
        Ok(self.len()? == 0)
    }

    /// The rule with this id.
    ///
    /// # Errors
    ///
    /// [`RuleError::NotFound`], [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn get(&self, id: RuleId) -> Result<Rule, RuleError> {
        self.read(|st, _| st.rules.iter().find(|r| r.id == id.0).map(|r| r.rule.clone()))?
            .ok_or(RuleError::NotFound { id: id.0 })
    }

    /// Adds a rule after all the others; returns its id.
    ///
    /// # Errors
    ///
    /// [`RuleError::Invalid`] (see [`Rule::normalized`]),
    /// [`RuleError::UnknownSet`], [`RuleError::Full`],
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`]; the
    /// rule set is then as it was.
    pub fn add(&self, rule: Rule) -> Result<RuleId, RuleError> {
        self.insert_at(None, rule)
    }

    /// Adds a rule at `position` (0: before all the others; `len()`: after
    /// them); returns its id.
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add), and [`RuleError::InvalidPosition`].
    pub fn insert(&self, position: usize, rule: Rule) -> Result<RuleId, RuleError> {
        self.insert_at(Some(position), rule)
    }

    fn insert_at(&self, position: Option<usize>, rule: Rule) -> Result<RuleId, RuleError> {
        let rule = rule.normalized()?;
        self.edit(|st, maps| {
            let len = st.rules.len();
            let at = position.unwrap_or(len);
            if at > len {
                return Err(RuleError::InvalidPosition { position: at, len });
            }
            let id = st.fresh_ids(&[], 1, maps.capacity().rules)?[0];
            let mut rules = st.rules.clone();
            rules.insert(at, StoredRule { id, rule });
            st.commit(maps, rules, None)?;
            Ok(RuleId(id))
        })
    }

    /// Removes a rule; returns it.
    ///
    /// # Errors
    ///
    /// [`RuleError::NotFound`], [`RuleError::NoGuard`], [`RuleError::Bpf`],
    /// [`RuleError::Pin`]; the rule set is then as it was.
    pub fn remove(&self, id: RuleId) -> Result<Rule, RuleError> {
        self.edit(|st, maps| {
            let at = st.rules.iter().position(|r| r.id == id.0).ok_or(RuleError::NotFound { id: id.0 })?;
            let mut rules = st.rules.clone();
            let gone = rules.remove(at);
            st.commit(maps, rules, None)?;
            Ok(gone.rule)
        })
    }

    /// Puts one rule in or out of monitor mode (it then counts what it
    /// matches and decides nothing), keeping its id, place and counter.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove).
    pub fn set_monitor(&self, id: RuleId, on: bool) -> Result<(), RuleError> {
        self.edit(|st, maps| {
            let at = st.rules.iter().position(|r| r.id == id.0).ok_or(RuleError::NotFound { id: id.0 })?;
            if st.rules[at].rule.monitor == on {
                return Ok(());
            }
            let mut rules = st.rules.clone();
            rules[at].rule.monitor = on;
            st.commit(maps, rules, None)
        })
    }

    /// Replaces the whole set, atomically. Rules of the new set written the
    /// same as a rule of the old one (after normalizing), `monitor` aside,
    /// keep its id and counter: a rule only switched in or out of monitor
    /// mode is switched in place, as [`set_monitor`](Self::set_monitor)
    /// does (its series, and a rate-limit rule's buckets and timed blocks,
    /// stay its own). Rules written the same pair first, in order; then
    /// those that differ only in `monitor`.
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add), for any rule; nothing is applied.
    pub fn replace(&self, rules: impl IntoIterator<Item = Rule>) -> Result<RuleChange, RuleError> {
        let wanted: Vec<Rule> = rules.into_iter().map(Rule::normalized).collect::<Result<_, _>>()?;
        self.edit(|st, maps| {
            let live: Vec<&Rule> = st.rules.iter().map(|r| &r.rule).collect();
            let ids: Vec<Option<u32>> =
                pair_rules(&live, &wanted).into_iter().map(|i| i.map(|i| st.rules[i].id)).collect();
            let kept_ids: Vec<u32> = ids.iter().flatten().copied().collect();
            let added = ids.iter().filter(|i| i.is_none()).count();
            let capacity = maps.capacity().rules;
            let mut fresh = st.fresh_ids(&kept_ids, added, capacity)?.into_iter();
            // fresh_ids gave one id per new rule (or refused).
            let new: Vec<StoredRule> = wanted
                .into_iter()
                .zip(ids)
                .map(|(rule, id)| id.or_else(|| fresh.next()).map(|id| StoredRule { id, rule }))
                .collect::<Option<_>>()
                .ok_or(RuleError::Full { what: "the rule table", capacity, setter: "max_rules" })?;
            let change = RuleChange {
                added,
                removed: st.rules.len() - kept_ids.len(),
                kept: kept_ids.len(),
                ids: new.iter().map(|r| RuleId(r.id)).collect(),
            };
            st.commit(maps, new, None)?;
            Ok(change)
        })
    }

    /// Removes every rule, atomically (the filter then stops calling the
    /// guard). Returns how many there were.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove).
    pub fn clear(&self) -> Result<usize, RuleError> {
        Ok(self.replace(std::iter::empty())?.removed)
    }

    /// Sets every rule's counter to zero.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`].
    pub fn reset_counters(&self) -> Result<(), RuleError> {
        let maps = &self.guard()?.core.maps;
        let ids: Vec<u32> = self.read(|st, _| st.rules.iter().map(|r| r.id).collect())?;
        ids.into_iter().try_for_each(|id| {
            maps.counters
                .zero(id)
                .map_err(|source| RuleError::Bpf { op: format!("resetting the counter of rule {id}"), error: source })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &[&str]) -> Vec<Rule> {
        text.iter().map(|t| t.parse::<Rule>().unwrap().normalized().unwrap()).collect()
    }

    #[test]
    fn pairing_ignores_monitor_after_exact_matches() {
        let old = rules(&["drop udp dport 1", "monitor drop udp dport 2", "count tcp"]);
        // Each switched: paired in place.
        let new = rules(&["monitor drop udp dport 1", "drop udp dport 2", "monitor count tcp"]);
        assert_eq!(pair_rules(&old, &new), [Some(0), Some(1), Some(2)]);
        // Another rule is not paired, monitor or not.
        assert_eq!(pair_rules(&old, &rules(&["monitor drop udp dport 3", "drop tcp"])), [None, None]);
        // Written the same pairs first: each of two rules differing only in
        // monitor keeps its own, in whatever order.
        let old = rules(&["drop udp dport 1", "monitor drop udp dport 1"]);
        assert_eq!(pair_rules(&old, &rules(&["monitor drop udp dport 1", "drop udp dport 1"])), [Some(1), Some(0)]);
        assert_eq!(pair_rules(&old, &rules(&["drop udp dport 1"])), [Some(0)]);
        assert_eq!(pair_rules(&old, &rules(&["monitor drop udp dport 1"])), [Some(1)]);
        // Duplicates pair off in order, then the rest loosely; no old rule twice.
        let new = rules(&["drop udp dport 1", "drop udp dport 1", "drop udp dport 1"]);
        assert_eq!(pair_rules(&old, &new), [Some(0), Some(1), None]);
    }
}
