//! Named sets of prefixes that rules name (`from set resolvers`): [`Sets`]
//! (all of a filter's sets) and [`NamedSet`] (one of them).
//!
//! A set is exact CIDR membership: an address is in it when any of its
//! prefixes covers it (IPv4 and IPv6 in one set). The data plane looks a
//! set up (one kernel LPM-trie lookup) only for packets that reach a rule
//! naming it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::RuleError;
use crate::filter::guard::maps::GuardMaps;
use crate::filter::guard::state::GuardState;
use crate::filter::guard::Guard;
use crate::filter::prefix::normalize;
use crate::filter::Filter;
use crate::BulkChange;

/// A filter's named sets. Get it with [`Filter::sets`].
///
/// ```no_run
/// # let filter = xdpguard::Filter::builder().interface("eth0").attach()?;
/// let sets = filter.sets();
/// sets.create("resolvers")?;
/// sets.get("resolvers").extend(["192.0.2.53".parse()?, "2001:db8::53".parse()?])?;
/// filter.rules().add("drop udp sport 53 not from set resolvers".parse()?)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Sets<'f> {
    filter: &'f Filter,
}

/// One named set of a filter (the set may not exist: its methods then
/// return [`RuleError::UnknownSet`]).
#[derive(Debug, Clone)]
pub struct NamedSet<'f> {
    filter: &'f Filter,
    name: String,
    whole_family: bool,
}

fn guard(filter: &Filter) -> Result<&Guard, RuleError> {
    filter.guard_stage()
}

fn read<R>(filter: &Filter, f: impl FnOnce(&GuardState) -> R) -> Result<R, RuleError> {
    guard(filter)?.core.read(|st, _| f(st))
}

fn edit<R>(
    filter: &Filter,
    f: impl FnOnce(&mut GuardState, &GuardMaps) -> Result<R, RuleError>,
) -> Result<R, RuleError> {
    guard(filter)?.edit(&filter.core.maps, f)
}

impl<'f> Sets<'f> {
    pub(crate) fn new(filter: &'f Filter) -> Self {
        Sets { filter }
    }

    /// The sets' names, in slot order.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn names(&self) -> Result<Vec<String>, RuleError> {
        read(self.filter, |st| st.sets.iter().flatten().map(|s| s.name.clone()).collect())
    }

    /// Creates an empty set (at most 64 sets).
    ///
    /// # Errors
    ///
    /// [`RuleError::InvalidSetName`], [`RuleError::SetExists`],
    /// [`RuleError::Full`], [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn create(&self, name: &str) -> Result<NamedSet<'f>, RuleError> {
        edit(self.filter, |st, maps| st.create_set(maps, name))?;
        Ok(self.get(name))
    }

    /// Deletes a set that no rule names; returns how many prefixes it held.
    ///
    /// # Errors
    ///
    /// [`RuleError::UnknownSet`], [`RuleError::SetInUse`] (with the rules),
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`].
    pub fn delete(&self, name: &str) -> Result<usize, RuleError> {
        edit(self.filter, |st, maps| st.delete_set(maps, name))
    }

    /// Whether a set of this name exists.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn exists(&self, name: &str) -> Result<bool, RuleError> {
        read(self.filter, |st| st.set_slot(name).is_some())
    }

    /// The set of this name (whether it exists is checked by each call).
    pub fn get(&self, name: &str) -> NamedSet<'f> {
        NamedSet { filter: self.filter, name: name.to_owned(), whole_family: false }
    }
}

impl NamedSet<'_> {
    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle, letting its edits add a whole address family
    /// (`0.0.0.0/0`, `::/0`, or `::ffff:0:0/96`, which is `0.0.0.0/0`):
    /// a drop rule naming the set then drops every packet of that family
    /// from any source that is not allowlisted, the session the host is
    /// managed over included. Without it, such entries are refused
    /// ([`RuleError::SetWholeFamily`]), as the blocklist refuses them: a
    /// set is checked when it is edited, not when a rule names it, so the
    /// rule checks that refuse `drop from 0.0.0.0/0` never see inside it.
    pub fn permit_whole_family(self) -> Self {
        Self { whole_family: true, ..self }
    }

    /// Refuses a given prefix that normalises to a whole family, unless
    /// permitted.
    fn check_whole_family(&self, given: IpNetwork, stored: IpNetwork) -> Result<(), RuleError> {
        if stored.prefix() == 0 && !self.whole_family {
            return Err(RuleError::SetWholeFamily { set: self.name.clone(), given, entry: stored });
        }
        Ok(())
    }

    /// Adds a prefix (normalized: host bits cleared, IPv4-mapped IPv6 as
    /// IPv4). One trie update: the addresses it covers join at one instant.
    /// Returns whether the set changed.
    ///
    /// # Errors
    ///
    /// [`RuleError::SetWholeFamily`] for a prefix that is a whole address
    /// family once normalised, unless [`permit_whole_family`](Self::permit_whole_family);
    /// [`RuleError::UnknownSet`], [`RuleError::Full`],
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`]; the
    /// set is then as it was.
    pub fn insert(&self, net: IpNetwork) -> Result<bool, RuleError> {
        let given = net;
        let net = normalize(net).network;
        self.check_whole_family(given, net)?;
        edit(self.filter, |st, maps| st.edit_set_entry(maps, &self.name, net, true))
    }

    /// Removes a prefix; addresses another prefix covers stay in the set.
    /// Returns whether the set changed.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn remove(&self, net: IpNetwork) -> Result<bool, RuleError> {
        let net = normalize(net).network;
        edit(self.filter, |st, maps| st.edit_set_entry(maps, &self.name, net, false))
    }

    /// Adds many prefixes, all or nothing. While the prefix table has room
    /// for a second copy of the set, as one atomic step: the set is rebuilt
    /// beside the live one and switched in. Without that room (a set over
    /// half the table), or for one prefix, they are added in place: only
    /// they need room, and a packet may see some added before the rest.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert) ([`RuleError::Full`]: no room for the
    /// new prefixes themselves); nothing is applied.
    pub fn extend(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, RuleError> {
        self.bulk(nets, true, |cur, new| cur.extend(new))
    }

    /// Removes many prefixes, all or nothing; never refused for want of
    /// room. While the prefix table has room for a second copy of what is
    /// left, as one atomic step (as [`extend`](Self::extend)); else, or for
    /// one prefix, in place.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), [`RuleError::Full`] aside; nothing is
    /// applied.
    pub fn remove_all(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, RuleError> {
        self.bulk(nets, false, |cur, gone| cur.retain(|n| !gone.contains(n)))
    }

    /// Replaces the whole set atomically: rules naming it see the old set
    /// or the new one, never a mix. The new set is built beside the live
    /// one (a replace that only adds, or only removes, goes as
    /// [`extend`](Self::extend) or [`remove_all`](Self::remove_all) when
    /// the table has no room for both).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert) ([`RuleError::Full`] names the room for
    /// both copies); nothing is applied.
    pub fn replace(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, RuleError> {
        self.bulk(nets, true, |cur, new| *cur = new.clone())
    }

    /// `adds`: the edit adds the given prefixes (checked for whole
    /// families); removing them never needs the check.
    fn bulk(
        &self,
        nets: impl IntoIterator<Item = IpNetwork>,
        adds: bool,
        apply: impl FnOnce(&mut BTreeSet<IpNetwork>, &BTreeSet<IpNetwork>),
    ) -> Result<BulkChange, RuleError> {
        let mut normalized = Vec::new();
        let mut given = BTreeSet::new();
        let mut duplicates = 0;
        for net in nets {
            let n = normalize(net).network;
            if adds {
                self.check_whole_family(net, n)?;
            }
            if n != net {
                normalized.push((net, n));
            }
            duplicates += usize::from(!given.insert(n));
        }
        edit(self.filter, |st, maps| {
            let current = st.set(&self.name)?.entries.clone();
            let mut next = current.clone();
            apply(&mut next, &given);
            let changed = next.symmetric_difference(&current).count();
            let unchanged = given.iter().filter(|n| current.contains(n) == next.contains(n)).count();
            let added: Vec<IpNetwork> = next.difference(&current).copied().collect();
            let removed: Vec<IpNetwork> = current.difference(&next).copied().collect();
            // One way only, and one prefix or no room for a second copy:
            // in place (all or nothing, atomic per prefix).
            let one_way = added.is_empty() || removed.is_empty();
            if one_way && (changed == 1 || !st.trie_has_room(maps, next.len())) {
                st.edit_set_in_place(maps, &self.name, &added, &removed)?;
            } else {
                st.replace_set(maps, &self.name, next)?;
            }
            Ok(BulkChange { changed, unchanged, duplicates, normalized })
        })
    }

    /// Whether exactly this prefix (normalized) is in the set.
    ///
    /// # Errors
    ///
    /// [`RuleError::UnknownSet`], [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn contains(&self, net: IpNetwork) -> Result<bool, RuleError> {
        let net = normalize(net).network;
        read(self.filter, |st| st.set(&self.name).map(|s| s.entries.contains(&net)))?
    }

    /// The most specific prefix of the set that covers `addr`: what the
    /// data plane's lookup finds.
    ///
    /// # Errors
    ///
    /// As [`contains`](Self::contains).
    pub fn matching(&self, addr: IpAddr) -> Result<Option<IpNetwork>, RuleError> {
        read(self.filter, |st| {
            st.set(&self.name).map(|s| {
                s.entries
                    .iter()
                    .filter(|n| n.is_ipv4() == addr.is_ipv4() && n.contains(addr))
                    .max_by_key(|n| n.prefix())
                    .copied()
            })
        })?
    }

    /// A snapshot of the prefixes, IPv4 first, in address order.
    ///
    /// # Errors
    ///
    /// As [`contains`](Self::contains).
    pub fn iter(&self) -> Result<impl Iterator<Item = IpNetwork>, RuleError> {
        let mut v: Vec<IpNetwork> =
            read(self.filter, |st| st.set(&self.name).map(|s| s.entries.clone()))??.into_iter().collect();
        v.sort_by_key(|n| (n.is_ipv6(), n.ip(), n.prefix()));
        Ok(v.into_iter())
    }

    /// Number of prefixes.
    ///
    /// # Errors
    ///
    /// As [`contains`](Self::contains).
    pub fn len(&self) -> Result<usize, RuleError> {
        read(self.filter, |st| st.set(&self.name).map(|s| s.entries.len()))?
    }

    /// Whether the set is empty.
    ///
    /// # Errors
    ///
    /// As [`contains`](Self::contains).
    pub fn is_empty(&self) -> Result<bool, RuleError> {
        Ok(self.len()? == 0)
    }
}
