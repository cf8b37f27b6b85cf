//! The allowlist and the blocklist as the API shows them: [`ListKind`],
//! [`PrefixList`] (one list of a [`Filter`]) and what its edits return.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::ListError;
use crate::filter::editor::{Editor, Op};
use crate::filter::layout::{LIST_ALLOW, LIST_BLOCK};
use crate::filter::prefix::{normalize, Normalized};
use crate::filter::state::ListState;
use crate::filter::Filter;

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Checked first: a source on it always passes.
    Allow,
    /// A source on it (and not allowlisted) is dropped.
    Block,
}

impl ListKind {
    pub(crate) fn bit(self) -> u8 {
        match self {
            ListKind::Allow => LIST_ALLOW,
            ListKind::Block => LIST_BLOCK,
        }
    }
}

crate::core::names::named_values! { ListKind, "list", {
    Allow => "allowlist" | "allow",
    Block => "blocklist" | "block",
} }

/// The outcome of inserting or removing one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryChange {
    /// The entry as stored, and whether host bits were cleared to get it.
    pub entry: Normalized,
    /// Whether the list changed (false: it was already there, or not there).
    pub changed: bool,
}

/// The outcome of a bulk edit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BulkChange {
    /// Entries added or removed (for a replace: both).
    pub changed: usize,
    /// Entries given that needed no change: already in the list (or, when
    /// removing, not in it; for a replace, kept from the old list). Each
    /// distinct entry once: repeats are in `duplicates`.
    pub unchanged: usize,
    /// Entries given more than once (after normalising: `::ffff:192.0.2.5`
    /// repeats `192.0.2.5`), beyond their first: counted once in `changed`
    /// or `unchanged`, so `changed + unchanged + duplicates` is the number
    /// given (for [`PrefixList::extend`], [`PrefixList::remove_all`] and a
    /// set's bulk edits; a replace's `unchanged` counts kept entries).
    pub duplicates: usize,
    /// Entries stored in another form than given (host bits cleared, or an
    /// IPv4-mapped IPv6 prefix stored as IPv4; see [`normalize`]), as given →
    /// as stored.
    pub normalized: Vec<(IpNetwork, IpNetwork)>,
}

/// One of a filter's two lists. Every edit takes effect for the next packet
/// and never disturbs the verdict of any other address.
///
/// Every method that takes entries normalises them first ([`normalize`]):
/// host bits are cleared, and an IPv4-mapped IPv6 prefix
/// (`::ffff:192.0.2.0/120`) is the IPv4 prefix it covers (`192.0.2.0/24`),
/// so it matches the IPv4 packets it names.
///
/// The blocklist refuses an entry that covers a whole address family
/// (`0.0.0.0/0`, `::/0`) with [`ListError::WholeFamily`]: one such entry cuts
/// the host off, its SSH session included, and a list file that carries one
/// by mistake would do it silently. A default-deny filter (allowlist what may
/// pass, blocklist the rest) asks for it with
/// [`permit_whole_family`](Self::permit_whole_family). The allowlist takes
/// them as they are: allowlisting everything never cuts anyone off.
///
/// ```no_run
/// # let filter = xdpguard::Filter::builder().interface("eth0").attach()?;
/// let blocklist = filter.blocklist();
/// let change = blocklist.insert("192.0.2.77/24".parse()?)?;
/// assert_eq!(change.entry.network.to_string(), "192.0.2.0/24");
/// assert!(change.entry.host_bits_cleared);
///
/// // A file's worth of entries, applied all or nothing.
/// let text = std::fs::read("spamhaus-drop.txt")?;
/// let entries = xdpguard::parse_list(&text, "spamhaus-drop.txt")?;
/// blocklist.extend(entries.into_iter().map(|l| l.entry.network))?;
///
/// assert_eq!(blocklist.matching("192.0.2.9".parse()?)?, Some("192.0.2.0/24".parse()?));
/// for entry in blocklist.iter()? {
///     println!("{entry}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PrefixList<'f> {
    filter: &'f Filter,
    list: ListKind,
    whole_family: bool,
}

impl<'f> PrefixList<'f> {
    pub(crate) fn new(filter: &'f Filter, list: ListKind) -> Self {
        PrefixList { filter, list, whole_family: false }
    }
}

impl PrefixList<'_> {
    /// Which list this is.
    pub fn kind(&self) -> ListKind {
        self.list
    }

    /// This handle, letting its edits blocklist a whole address family
    /// (`0.0.0.0/0`, `::/0`): every packet of that family whose source is not
    /// allowlisted is dropped, the session the host is managed over
    /// included. Without it, the blocklist refuses such entries
    /// ([`ListError::WholeFamily`]). Makes no difference to the allowlist.
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::builder().interface("eth0").attach()?;
    /// // Default deny: only the management network and the web front ends get in.
    /// filter.allowlist().extend(["198.51.100.0/24".parse()?, "203.0.113.0/28".parse()?])?;
    /// filter.blocklist().permit_whole_family().insert("0.0.0.0/0".parse()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn permit_whole_family(self) -> Self {
        Self { whole_family: true, ..self }
    }

    /// Refuses a whole-family blocklist entry unless permitted.
    fn guard(&self, entry: &IpNetwork) -> Result<(), ListError> {
        if self.list == ListKind::Block && !self.whole_family && entry.prefix() == 0 {
            return Err(ListError::WholeFamily { entry: *entry });
        }
        Ok(())
    }

    /// Adds an entry, normalised ([`normalize`]: host bits cleared,
    /// IPv4-mapped IPv6 as IPv4; the result says which).
    ///
    /// Patched into the live tables in place (microseconds): every address
    /// it covers switches exactly once during the call and has its new
    /// verdict for the next packet after it returns; no other address ever
    /// changes. A wide prefix spans several table words, which switch one
    /// after another; use [`extend`](Self::extend) to switch many addresses
    /// at one single point.
    ///
    /// # Errors
    ///
    /// [`ListError::WholeFamily`] for `0.0.0.0/0` or `::/0` on the blocklist
    /// (see [`permit_whole_family`](Self::permit_whole_family)),
    /// [`ListError::Full`] when the table has no room; the list is then as
    /// it was. [`ListError::Pin`] when the pin directory cannot be locked,
    /// or was removed ([`PinError::Removed`](crate::PinError::Removed)).
    pub fn insert(&self, net: IpNetwork) -> Result<EntryChange, ListError> {
        let entry = normalize(net);
        self.guard(&entry.network)?;
        let op = Op { net: entry.network, bit: self.list.bit(), insert: true };
        let changed = self.edit(|ed| ed.apply_one(op))?;
        Ok(EntryChange { entry, changed })
    }

    /// Removes an entry. Addresses another entry covers stay covered. Patched
    /// in place like [`insert`](Self::insert).
    ///
    /// # Errors
    ///
    /// [`ListError::Full`] when removing it means rebuilding a table that
    /// no longer fits (a removal can split a /24 into more hosts); the list
    /// is then as it was. [`ListError::Pin`] as for
    /// [`insert`](Self::insert).
    pub fn remove(&self, net: IpNetwork) -> Result<EntryChange, ListError> {
        let entry = normalize(net);
        let op = Op { net: entry.network, bit: self.list.bit(), insert: false };
        let changed = self.edit(|ed| ed.apply_one(op))?;
        Ok(EntryChange { entry, changed })
    }

    /// Whether exactly this entry (after normalisation) is in the list.
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn contains(&self, net: IpNetwork) -> Result<bool, ListError> {
        let net = normalize(net).network;
        self.read(|st| st.contains(net, self.list))
    }

    /// The most specific entry of this list that covers `addr` (IPv4-mapped
    /// IPv6 addresses as in [`Filter::verdict`]).
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn matching(&self, addr: IpAddr) -> Result<Option<IpNetwork>, ListError> {
        self.read(|st| st.matching(addr, self.list))
    }

    /// A snapshot of the entries, IPv4 first, in address order.
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn iter(&self) -> Result<impl Iterator<Item = IpNetwork>, ListError> {
        Ok(self.read(|st| st.entries(self.list))?.into_iter())
    }

    /// Number of entries.
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn len(&self) -> Result<usize, ListError> {
        self.read(|st| st.count(self.list))
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn is_empty(&self) -> Result<bool, ListError> {
        Ok(self.len()? == 0)
    }

    /// Adds many entries as one atomic step: all of them or, on error, none.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert); nothing is applied.
    pub fn extend(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, ListError> {
        self.bulk(nets, true)
    }

    /// Removes many entries as one atomic step.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove); nothing is applied.
    pub fn remove_all(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, ListError> {
        self.bulk(nets, false)
    }

    fn bulk(&self, nets: impl IntoIterator<Item = IpNetwork>, insert: bool) -> Result<BulkChange, ListError> {
        let mut normalized = Vec::new();
        let mut seen = rustc_hash::FxHashSet::default();
        let mut ops = Vec::new();
        let mut given = 0;
        for net in nets {
            given += 1;
            let n = normalize(net);
            if insert {
                self.guard(&n.network)?;
            }
            if n.network != net {
                normalized.push((net, n.network));
            }
            if seen.insert(n.network) {
                ops.push(Op { net: n.network, bit: self.list.bit(), insert });
            }
        }
        let changed = self.edit(|ed| ed.apply_atomic(&ops))?;
        // `unblock A A B` with only A listed: one removed, one not present,
        // one repeat (it said "2 were not present").
        Ok(BulkChange { changed, unchanged: ops.len() - changed, duplicates: given - ops.len(), normalized })
    }

    /// Replaces the whole list, atomically: traffic sees the old list or the
    /// new one, never a mix.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert) (a whole-family entry is refused even if
    /// the list already holds it); the list is then as it was.
    pub fn replace(&self, nets: impl IntoIterator<Item = IpNetwork>) -> Result<BulkChange, ListError> {
        let mut normalized = Vec::new();
        let mut wanted = rustc_hash::FxHashSet::default();
        let mut duplicates = 0;
        for net in nets {
            let n = normalize(net);
            self.guard(&n.network)?;
            if n.network != net {
                normalized.push((net, n.network));
            }
            duplicates += usize::from(!wanted.insert(n.network));
        }
        let bit = self.list.bit();
        let (changed, kept) = self.edit(|ed| {
            let current = ed.st.entries(self.list);
            let current_set: rustc_hash::FxHashSet<_> = current.iter().copied().collect();
            let kept = wanted.iter().filter(|n| current_set.contains(n)).count();
            let ops: Vec<Op> = current
                .iter()
                .filter(|n| !wanted.contains(n))
                .map(|&net| Op { net, bit, insert: false })
                .chain(wanted.iter().filter(|n| !current_set.contains(n)).map(|&net| Op { net, bit, insert: true }))
                .collect();
            Ok((ed.apply_atomic(&ops)?, kept))
        })?;
        Ok(BulkChange { changed, unchanged: kept, duplicates, normalized })
    }

    /// Empties the list, atomically. Returns how many entries it held.
    ///
    /// # Errors
    ///
    /// As [`replace`](Self::replace).
    pub fn clear(&self) -> Result<usize, ListError> {
        Ok(self.replace(std::iter::empty())?.changed)
    }

    fn read<R>(&self, f: impl FnOnce(&ListState) -> R) -> Result<R, ListError> {
        self.filter.core.read(|st, _| f(st))
    }

    fn edit<R>(&self, f: impl FnOnce(&mut Editor<'_>) -> Result<R, ListError>) -> Result<R, ListError> {
        self.filter.core.edit(|st, maps| f(&mut Editor::new(st, maps)))
    }
}
