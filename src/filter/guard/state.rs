//! The guard's model: the rule set (each rule with its id) and the named
//! sets, read back from the maps (the rule text of the live half, the set
//! slots and the set trie), and the edits that keep maps and model in step.
//!
//! A rule-set edit compiles the whole new set into the idle half (index,
//! groups, entries, records, text), zeroes the counters of new rule ids, and makes
//! the half live with one store: traffic sees the old set or the new one.
//! A whole-set replace of a named set fills the set's idle physical set,
//! then switches the rules to it the same way.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libbpf_rs::MapFlags;

use crate::core::layout::consts::*;
use crate::error::RuleError;
use crate::filter::guard::layout::{xdpg_set_key, xdpg_set_name};
use crate::filter::guard::maps::GuardMaps;
use crate::filter::rules::compile::{addr_words, compile, Limits};
use crate::filter::rules::syntax::Rule;

/// A rule of the live set and its id (its counter slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRule {
    pub id: u32,
    pub rule: Rule,
}

/// A named set: its slot's live physical set and its prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedSetState {
    pub name: String,
    pub phys: u32,
    pub entries: BTreeSet<IpNetwork>,
}

/// Everything the guard is configured with.
#[derive(Debug, Default)]
pub(crate) struct GuardState {
    pub rules: Vec<StoredRule>,
    /// By slot (`XDPG_MAX_SETS`).
    pub sets: Vec<Option<NamedSetState>>,
    /// Live timed blocks at the last edit or list (limits.rs).
    pub timed_blocks: usize,
    /// The SYN guard's protected ports.
    pub syn: crate::filter::guard::syn::SynState,
}

fn bpf(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuleError {
    let op = op.into();
    move |source| RuleError::Bpf { op, error: source }
}

/// The trie key of `net` in physical set `phys`.
pub(crate) fn set_key(phys: u32, net: IpNetwork) -> xdpg_set_key {
    let v6 = u32::from(net.is_ipv6());
    xdpg_set_key {
        prefixlen: XDPG_SET_TAG_BITS + u32::from(net.prefix()),
        tag: ((phys << 1) | v6).to_be(),
        addr: addr_words(net.network()),
    }
}

/// The (physical set, prefix) of a trie key.
fn key_entry(key: &xdpg_set_key) -> Option<(u32, IpNetwork)> {
    let tag = u32::from_be(key.tag);
    let len = u8::try_from(key.prefixlen.checked_sub(XDPG_SET_TAG_BITS)?).ok()?;
    let addr = if tag & 1 == 1 {
        IpAddr::from(bytemuck::cast::<[u32; 4], [u8; 16]>(key.addr))
    } else {
        IpAddr::from(key.addr[0].to_ne_bytes())
    };
    Some((tag >> 1, IpNetwork::new(addr, len).ok()?))
}

fn name_of(rec: &xdpg_set_name) -> String {
    let end = rec.name.iter().position(|&b| b == 0).unwrap_or(rec.name.len());
    String::from_utf8_lossy(&rec.name[..end]).into_owned()
}

impl GuardState {
    /// Reads the model back from the maps.
    pub(crate) fn load(maps: &GuardMaps) -> Result<GuardState, RuleError> {
        let text = maps.read_text(maps.live_half());
        let mut rules = Vec::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let corrupt = || RuleError::Corrupt { what: format!("rule text line `{}`", String::from_utf8_lossy(line)) };
            let s = std::str::from_utf8(line).map_err(|_| corrupt())?;
            let (id, rule) = s.split_once(' ').ok_or_else(corrupt)?;
            rules.push(StoredRule {
                id: id.parse().map_err(|_| corrupt())?,
                rule: crate::filter::rules::parse::parse_stored(rule).map_err(|_| corrupt())?,
            });
        }
        let mut sets: Vec<Option<NamedSetState>> = (0..XDPG_MAX_SETS as usize)
            .map(|slot| {
                let rec = maps.set_names.get(slot);
                (rec.used != 0).then(|| NamedSetState { name: name_of(&rec), phys: rec.phys, entries: BTreeSet::new() })
            })
            .collect();
        for key in maps.sets.keys() {
            let Some((phys, net)) = key_entry(&key) else { continue };
            if let Some(Some(set)) = sets.get_mut((phys / 2) as usize) {
                if set.phys == phys {
                    set.entries.insert(net);
                }
            }
        }
        let timed_blocks = crate::filter::guard::limits::entries(maps).len();
        Ok(GuardState { rules, sets, timed_blocks, syn: crate::filter::guard::syn::SynState::load(maps) })
    }

    pub(crate) fn set_slot(&self, name: &str) -> Option<usize> {
        self.sets.iter().position(|s| s.as_ref().is_some_and(|s| s.name == name))
    }

    pub(crate) fn set(&self, name: &str) -> Result<&NamedSetState, RuleError> {
        self.set_slot(name)
            .and_then(|i| self.sets[i].as_ref())
            .ok_or_else(|| RuleError::UnknownSet { name: name.to_owned() })
    }

    /// The rules naming a set.
    pub(crate) fn rules_using(&self, name: &str) -> Vec<String> {
        self.rules.iter().filter(|r| r.rule.set_name() == Some(name)).map(|r| r.rule.to_string()).collect()
    }

    /// Ids for `n` new rules: the first ones after the highest id the live
    /// set or `kept` uses, wrapping around the id window, that neither
    /// uses. An id freed is so not handed out again until the window wraps
    /// (a stale `rule del N` from an earlier listing finds no rule rather
    /// than another's), unless it was the highest one; and an id freed by
    /// this edit, which packets of the old set may still count in, is not
    /// reused before a later edit. Ids run to twice the rule capacity, so a
    /// set can always be replaced by as many new rules.
    pub(crate) fn fresh_ids(&self, kept: &[u32], n: usize, capacity: usize) -> Result<Vec<u32>, RuleError> {
        let used: BTreeSet<u32> = self.rules.iter().map(|r| r.id).chain(kept.iter().copied()).collect();
        let window = 2 * capacity as u32;
        let start = used.last().map_or(0, |&high| high.saturating_add(1)).min(window);
        let ids: Vec<u32> = (start..window).chain(0..start).filter(|i| !used.contains(i)).take(n).collect();
        if ids.len() < n {
            return Err(RuleError::Full { what: "the rule table", capacity, setter: "max_rules" });
        }
        Ok(ids)
    }

    /// Makes `rules` the live rule set: compiled into the idle half (with
    /// `set_override`: one set's physical set replaced), counters of new ids
    /// zeroed, then switched in with one store. The model changes only once
    /// the switch is done; on error the live set is untouched.
    pub(crate) fn commit(
        &mut self,
        maps: &GuardMaps,
        rules: Vec<StoredRule>,
        set_override: Option<(usize, u32)>,
    ) -> Result<(), RuleError> {
        let cap = maps.capacity();
        if rules.len() > cap.rules {
            return Err(RuleError::Full { what: "the rule table", capacity: cap.rules, setter: "max_rules" });
        }
        let phys_of = |name: &str| {
            let slot = self.set_slot(name)?;
            match set_override {
                Some((s, phys)) if s == slot => Some(phys),
                _ => self.sets[slot].as_ref().map(|s| s.phys),
            }
        };
        let listed: Vec<(u32, &Rule)> = rules.iter().map(|r| (r.id, &r.rule)).collect();
        let compiled = compile(&listed, &phys_of, Limits { groups: cap.groups, refs: cap.refs, records: cap.records })?;
        let mut text = Vec::new();
        for r in &rules {
            text.extend_from_slice(format!("{} {}\n", r.id, r.rule).as_bytes());
        }
        if text.len() > cap.text_words * 8 {
            return Err(RuleError::Full {
                what: "the rule text store (about 128 bytes a rule)",
                capacity: cap.text_words * 8,
                setter: "max_rules",
            });
        }
        let old: BTreeSet<u32> = self.rules.iter().map(|r| r.id).collect();
        for r in rules.iter().filter(|r| !old.contains(&r.id)) {
            maps.counters.zero(r.id).map_err(bpf(format!("zeroing the counter of rule {}", r.id)))?;
        }
        self.timed_blocks = crate::filter::guard::limits::prepare(maps, &rules, &self.rules)?;
        let idle = 1 - maps.live_half();
        maps.write_half(idle, &compiled);
        maps.write_text(idle, &text);
        maps.switch_half(idle);
        self.rules = rules;
        Ok(())
    }

    /// Recompiles the live set into the idle half and switches (after a
    /// crash), and removes trie entries of physical sets no slot uses.
    pub(crate) fn repair(&mut self, maps: &GuardMaps) -> Result<(), RuleError> {
        self.syn.repair(maps);
        let live: BTreeSet<u32> = self.sets.iter().flatten().map(|s| s.phys).collect();
        let stale: Vec<xdpg_set_key> =
            maps.sets.keys().filter(|k| key_entry(k).is_none_or(|(phys, _)| !live.contains(&phys))).collect();
        for k in stale {
            maps.sets.remove(&k).map_err(bpf("removing a stale set entry"))?;
        }
        let rules = std::mem::take(&mut self.rules);
        // Same ids: no counter is zeroed (commit compares with self.rules).
        self.rules = rules.clone();
        self.commit(maps, rules, None)
    }

    /// Creates an empty set.
    pub(crate) fn create_set(&mut self, maps: &GuardMaps, name: &str) -> Result<(), RuleError> {
        crate::filter::rules::syntax::check_set_name(name)?;
        if self.set_slot(name).is_some() {
            return Err(RuleError::SetExists { name: name.to_owned() });
        }
        let slot = self.sets.iter().position(Option::is_none).ok_or(RuleError::Full {
            what: "the named-set table",
            capacity: XDPG_MAX_SETS as usize,
            setter: "(fixed)",
        })?;
        let mut rec = xdpg_set_name { phys: 2 * slot as u32, used: 1, ..Default::default() };
        rec.name[..name.len()].copy_from_slice(name.as_bytes());
        maps.set_names.set(slot, rec);
        self.sets[slot] = Some(NamedSetState { name: name.to_owned(), phys: rec.phys, entries: BTreeSet::new() });
        Ok(())
    }

    /// Deletes a set no rule names; returns how many prefixes it held.
    pub(crate) fn delete_set(&mut self, maps: &GuardMaps, name: &str) -> Result<usize, RuleError> {
        let slot = self.set_slot(name).ok_or_else(|| RuleError::UnknownSet { name: name.to_owned() })?;
        let rules = self.rules_using(name);
        if !rules.is_empty() {
            return Err(RuleError::SetInUse { name: name.to_owned(), rules });
        }
        let set = self.sets[slot].take().expect("slot found above");
        maps.set_names.set(slot, xdpg_set_name::default());
        for net in &set.entries {
            maps.sets.remove(&set_key(set.phys, *net)).map_err(bpf("removing a set entry"))?;
        }
        Ok(set.entries.len())
    }

    /// Whether the prefix table has room for `more` entries.
    pub(crate) fn trie_has_room(&self, maps: &GuardMaps, more: usize) -> bool {
        let used: usize = self.sets.iter().flatten().map(|s| s.entries.len()).sum();
        used + more <= maps.capacity().set_entries
    }

    fn trie_room(&self, maps: &GuardMaps, more: usize, what: &'static str) -> Result<(), RuleError> {
        if !self.trie_has_room(maps, more) {
            return Err(RuleError::Full { what, capacity: maps.capacity().set_entries, setter: "max_set_entries" });
        }
        Ok(())
    }

    /// Adds or removes one prefix in place (one trie update: atomic for the
    /// addresses it covers). Returns whether the set changed.
    pub(crate) fn edit_set_entry(
        &mut self,
        maps: &GuardMaps,
        name: &str,
        net: IpNetwork,
        insert: bool,
    ) -> Result<bool, RuleError> {
        let slot = self.set_slot(name).ok_or_else(|| RuleError::UnknownSet { name: name.to_owned() })?;
        let present = self.sets[slot].as_ref().is_some_and(|s| s.entries.contains(&net));
        if present == insert {
            return Ok(false);
        }
        if insert {
            self.trie_room(maps, 1, "the named sets' prefix table")?;
        }
        let set = self.sets[slot].as_mut().expect("slot found above");
        let key = set_key(set.phys, net);
        if insert {
            maps.sets.insert(&key, &1, MapFlags::ANY).map_err(bpf(format!("adding {net} to set {name}")))?;
            set.entries.insert(net);
        } else {
            maps.sets.remove(&key).map_err(bpf(format!("removing {net} from set {name}")))?;
            set.entries.remove(&net);
        }
        Ok(true)
    }

    /// Adds `added` (not in the set) or removes `removed` (in it) in place,
    /// in the set's live physical set, all or nothing: a failed update
    /// undoes the ones before it. Only the additions need room; removing
    /// never does. Each update is atomic for the addresses it covers, not
    /// the edit as a whole: a packet may see part of it (never a prefix
    /// not given).
    pub(crate) fn edit_set_in_place(
        &mut self,
        maps: &GuardMaps,
        name: &str,
        added: &[IpNetwork],
        removed: &[IpNetwork],
    ) -> Result<(), RuleError> {
        let slot = self.set_slot(name).ok_or_else(|| RuleError::UnknownSet { name: name.to_owned() })?;
        self.trie_room(maps, added.len(), "the named sets' prefix table")?;
        let phys = self.sets[slot].as_ref().expect("slot found above").phys;
        let mut done: Vec<(IpNetwork, bool)> = Vec::new();
        let undo = |done: &[(IpNetwork, bool)]| {
            for (net, inserted) in done.iter().rev() {
                let key = set_key(phys, *net);
                let _ = if *inserted {
                    maps.sets.remove(&key).map(drop)
                } else {
                    maps.sets.insert(&key, &1, MapFlags::ANY)
                };
            }
        };
        let steps = added.iter().map(|n| (*n, true)).chain(removed.iter().map(|n| (*n, false)));
        for (net, insert) in steps {
            let key = set_key(phys, net);
            let r = if insert {
                maps.sets.insert(&key, &1, MapFlags::ANY).map_err(bpf(format!("adding {net} to set {name}")))
            } else {
                maps.sets.remove(&key).map(drop).map_err(bpf(format!("removing {net} from set {name}")))
            };
            if let Err(e) = r {
                undo(&done);
                return Err(e);
            }
            done.push((net, insert));
        }
        let set = self.sets[slot].as_mut().expect("slot found above");
        set.entries.extend(added.iter().copied());
        for net in removed {
            set.entries.remove(net);
        }
        Ok(())
    }

    /// Replaces a whole set atomically: the new prefixes go into the slot's
    /// idle physical set, the rules naming the set switch to it in one
    /// store, then the old physical set is emptied.
    pub(crate) fn replace_set(
        &mut self,
        maps: &GuardMaps,
        name: &str,
        entries: BTreeSet<IpNetwork>,
    ) -> Result<(), RuleError> {
        let slot = self.set_slot(name).ok_or_else(|| RuleError::UnknownSet { name: name.to_owned() })?;
        let old = self.sets[slot].clone().expect("slot found above");
        if old.entries == entries {
            return Ok(());
        }
        self.trie_room(
            maps,
            entries.len(),
            "the named sets' prefix table (a whole-set replace builds the new set beside the live one, so it \
             needs room for both; to change a large set, add and remove its differences instead: \
             `NamedSet::extend` and `remove_all`, CLI `xdpguard set add` and `set del` without --replace)",
        )?;
        let idle = old.phys ^ 1;
        let fill = || -> Result<(), RuleError> {
            for net in &entries {
                maps.sets
                    .insert(&set_key(idle, *net), &1, MapFlags::ANY)
                    .map_err(bpf(format!("adding {net} to set {name}")))?;
            }
            Ok(())
        };
        let clear = |phys: u32, nets: &BTreeSet<IpNetwork>| {
            for net in nets {
                let _ = maps.sets.remove(&set_key(phys, *net));
            }
        };
        if let Err(e) = fill() {
            clear(idle, &entries);
            return Err(e);
        }
        if !self.rules_using(name).is_empty() {
            let rules = self.rules.clone();
            if let Err(e) = self.commit(maps, rules, Some((slot, idle))) {
                clear(idle, &entries);
                return Err(e);
            }
        }
        let mut rec = maps.set_names.get(slot);
        rec.phys = idle;
        maps.set_names.set(slot, rec);
        clear(old.phys, &old.entries);
        self.sets[slot] = Some(NamedSetState { name: name.to_owned(), phys: idle, entries });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ids(ids: &[u32]) -> GuardState {
        let rule: Rule = "drop udp".parse().unwrap();
        GuardState {
            rules: ids.iter().map(|&id| StoredRule { id, rule: rule.clone() }).collect(),
            ..Default::default()
        }
    }

    /// New ids come after the highest live one, so an id freed is not
    /// handed out at once (a stale `rule del` would remove another rule).
    #[test]
    fn fresh_ids_follow_the_highest_and_wrap() {
        assert_eq!(with_ids(&[]).fresh_ids(&[], 2, 4).unwrap(), [0, 1]);
        assert_eq!(with_ids(&[0, 2]).fresh_ids(&[], 1, 4).unwrap(), [3], "1 was freed: not reused yet");
        assert_eq!(with_ids(&[0, 6]).fresh_ids(&[], 3, 4).unwrap(), [7, 1, 2], "wraps within 2x capacity");
        assert_eq!(with_ids(&[7]).fresh_ids(&[], 2, 4).unwrap(), [0, 1]);
        assert_eq!(with_ids(&[1]).fresh_ids(&[5], 1, 4).unwrap(), [6], "kept ids count as used");
        // An id of the live set (freed by this edit) is not given again.
        assert_eq!(with_ids(&[0, 1, 2, 3, 4, 5, 6]).fresh_ids(&[], 1, 4).unwrap(), [7]);
        assert!(matches!(with_ids(&[0, 1, 2, 3, 4, 5, 6, 7]).fresh_ids(&[], 1, 4), Err(RuleError::Full { .. })));
        // A smaller capacity than an id (not made by this build): still in range.
        assert_eq!(with_ids(&[20]).fresh_ids(&[], 1, 4).unwrap(), [0]);
    }

    #[test]
    fn set_keys_round_trip() {
        for (phys, net) in [(0u32, "192.0.2.0/24"), (7, "2001:db8::/32"), (127, "0.0.0.0/0"), (3, "2001:db8::1/128")] {
            let net: IpNetwork = net.parse().unwrap();
            let key = set_key(phys, net);
            assert_eq!(key_entry(&key), Some((phys, net)));
            assert_eq!(key.prefixlen, 32 + u32::from(net.prefix()));
        }
    }
}
