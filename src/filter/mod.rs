//! [`Filter`]: the XDP source-address filter, its builder, and its lists.

mod hash;
pub(crate) mod layout;
mod lists;
mod maps;
mod prefix;
mod stats;
mod v4;
mod v6;

pub use lists::ListKind;
pub use prefix::{normalize, parse_list, parse_prefix, ListLine, Normalized};
pub use stats::FilterStats;

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags};

use crate::core::attach::{Attachment, Interface};
use crate::error::{io_from_libbpf, AttachError, Error, ListError, LoadError};
use maps::{Capacity, FilterMaps};
use crate::core::layout::consts::*;
use lists::{Editor, ListState, Op};
use crate::core::pin::PinDir;
use crate::core::program::{self, XdpProgram};
use crate::core::testrun::TestRun;
use crate::AttachMode;

/// Default IPv4 capacity: entries (prefixes) per filter, both lists together.
pub const DEFAULT_V4_CAPACITY: usize = 1 << 20;
/// Default IPv6 capacity.
pub const DEFAULT_V6_CAPACITY: usize = 1 << 18;
/// The largest capacity accepted for either family.
pub const MAX_CAPACITY: usize = 1 << 24;

/// What the filter does with packets whose L2/L3 headers are malformed or
/// truncated. They are counted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MalformedPolicy {
    /// Let them through (the kernel stack drops what it cannot parse).
    #[default]
    Pass,
    /// Drop them in XDP.
    Drop,
}

impl MalformedPolicy {
    fn code(self) -> u32 {
        match self {
            MalformedPolicy::Pass => XDPG_MALFORMED_PASS,
            MalformedPolicy::Drop => XDPG_MALFORMED_DROP,
        }
    }
}

/// What the filter does with packets from one source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// In neither list: passed.
    Pass,
    /// Allowlisted (by this, its most specific allowlist entry): passed.
    Allow(IpNetwork),
    /// Blocklisted (by this entry) and not allowlisted: dropped.
    Block(IpNetwork),
}

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
    /// removing, not in it; for a replace, kept from the old list).
    pub unchanged: usize,
    /// Entries stored in another form than given (host bits cleared, or an
    /// IPv4-mapped IPv6 prefix stored as IPv4; see [`normalize`]), as given →
    /// as stored.
    pub normalized: Vec<(IpNetwork, IpNetwork)>,
}

/// An XDP filter: allowlist, then blocklist, then pass, by source address,
/// for IPv4 and IPv6, on one or more interfaces.
///
/// Create one with [`Filter::builder`], or reopen a pinned one with
/// [`Filter::open_pinned`]. Unpinned, dropping it detaches it. Pinned, it
/// keeps filtering after the process exits, and any process can reopen it.
///
/// Requires Linux 5.15 or later with BTF (tested on 6.18), and CAP_BPF plus
/// CAP_NET_ADMIN (or root).
///
/// ```no_run
/// use xdpguard::{AttachMode, Filter};
///
/// let filter = Filter::builder()
///     .interface("eth0")
///     .mode(AttachMode::Auto)
///     .attach()?;
/// filter.blocklist().insert("192.0.2.0/24".parse()?)?;
/// filter.allowlist().insert("192.0.2.10/32".parse()?)?;
/// let stats = filter.stats()?;
/// println!("blocked {} packets", stats.blocked().packets);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Filter {
    maps: FilterMaps,
    program: XdpProgram,
    state: Mutex<ListState>,
}

program::impl_pinnable!(Filter, maps.set);

/// Builds and attaches a [`Filter`].
///
/// ```no_run
/// use xdpguard::{AttachMode, Filter, MalformedPolicy};
///
/// let filter = Filter::builder()
///     .interface("eth0")
///     .interface(7u32)                  // by index
///     .mode(AttachMode::Native)
///     .v4_capacity(4 << 20)            // room for 4M IPv4 prefixes
///     .malformed(MalformedPolicy::Drop)
///     .pin("/sys/fs/bpf/edge")
///     .attach()?;
/// # Ok::<(), xdpguard::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FilterBuilder {
    interfaces: Vec<Interface>,
    mode: AttachMode,
    pin: Option<PathBuf>,
    v4_capacity: usize,
    v6_capacity: usize,
    malformed: MalformedPolicy,
}

impl Default for FilterBuilder {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: AttachMode::Auto,
            pin: None,
            v4_capacity: DEFAULT_V4_CAPACITY,
            v6_capacity: DEFAULT_V6_CAPACITY,
            malformed: MalformedPolicy::Pass,
        }
    }
}

/// What pin-directory errors call a filter.
const KIND: &str = "filter";

impl FilterBuilder {
    /// Adds an interface, by name (`"eth0"`) or index (`3u32`).
    pub fn interface(mut self, iface: impl Into<Interface>) -> Self {
        self.interfaces.push(iface.into());
        self
    }

    /// The attach mode for every interface (default: [`AttachMode::Auto`]).
    pub fn mode(mut self, mode: AttachMode) -> Self {
        self.mode = mode;
        self
    }

    /// Pins the program, maps and links under this bpffs directory (e.g.
    /// `/sys/fs/bpf/xdpguard`), so the filter outlives the process.
    pub fn pin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pin = Some(dir.into());
        self
    }

    /// Maximum IPv4 entries, both lists together (default 1,048,576).
    pub fn v4_capacity(mut self, entries: usize) -> Self {
        self.v4_capacity = entries;
        self
    }

    /// Maximum IPv6 entries, both lists together (default 262,144).
    pub fn v6_capacity(mut self, entries: usize) -> Self {
        self.v6_capacity = entries;
        self
    }

    /// What to do with malformed packets (default: pass).
    pub fn malformed(mut self, policy: MalformedPolicy) -> Self {
        self.malformed = policy;
        self
    }

    /// Loads the filter without attaching it anywhere (for chaining, or for
    /// [`Filter::test_run`]). A pin directory, if set, is still used.
    pub fn load(self) -> Result<Filter, Error> {
        self.build(false)
    }

    /// Loads the filter and attaches it to every interface given. If any
    /// step fails, nothing is left attached or pinned.
    pub fn attach(self) -> Result<Filter, Error> {
        if self.interfaces.is_empty() {
            return Err(AttachError::NoInterface.into());
        }
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<Filter, Error> {
        for (what, value) in [("v4_capacity", self.v4_capacity), ("v6_capacity", self.v6_capacity)] {
            if value == 0 || value > MAX_CAPACITY {
                return Err(LoadError::InvalidCapacity { what, value, hint: "between 1 and 16,777,216" }.into());
            }
        }
        let offload_ifindex = match (self.mode, attach) {
            (AttachMode::Offload, true) => {
                if self.interfaces.len() != 1 {
                    return Err(AttachError::ModeUnsupported {
                        interface: self.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
                        mode: AttachMode::Offload,
                        hint: "an offloaded program is loaded for one device: give exactly one interface",
                    }
                    .into());
                }
                Some(self.interfaces[0].resolve()?.0)
            }
            _ => None,
        };
        let interfaces: &[Interface] = if attach { &self.interfaces } else { &[] };
        program::create(self.pin.as_deref(), KIND, maps::MARKER, interfaces, self.mode, || {
            let cap = Capacity::new(self.v4_capacity, self.v6_capacity);
            let (maps, fd) = maps::load(cap, self.malformed.code(), offload_ifindex)?;
            Ok(Filter {
                maps,
                program: XdpProgram::new(fd, maps::PROGRAM_NAME),
                state: Mutex::new(ListState::default()),
            })
        })
    }
}

impl Filter {
    /// Starts building a filter.
    pub fn builder() -> FilterBuilder {
        FilterBuilder::default()
    }

    /// Reopens a filter pinned under `dir`, with its lists and counters,
    /// still attached wherever it was.
    ///
    /// If the last process editing it died mid-edit, the tables are rebuilt
    /// here from the stored entries, so the kernel's verdicts match
    /// [`verdict`](Filter::verdict) again. Entries stored before that edit
    /// are kept; a bulk edit cut short may be partly applied.
    ///
    /// ```no_run
    /// let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
    /// filter.blocklist().insert("198.51.100.0/24".parse()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<Filter, Error> {
        let dir = PinDir::open(dir.as_ref(), KIND, maps::MARKER)?;
        if let Some(missing) = crate::error::missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let _lock = dir.lock()?;
        let maps = FilterMaps::open_pinned(&dir)?;
        let program = XdpProgram::open_pinned(dir.clone(), maps::PROGRAM_NAME)?;
        let mut state = ListState::load(&maps);
        if maps.dirty().load(Ordering::Acquire) != 0 {
            // A process died mid-edit: rebuild the tables from the rules.
            let mut ed = Editor::begin(&mut state, &maps);
            ed.rebuild_v4().map_err(|_| ListError::Full {
                what: "the IPv4 host table",
                capacity: maps.capacity().v4_buckets * XDPG_V4_BUCKET_SLOTS as usize,
                setter: "v4_capacity",
            })?;
            ed.rebuild_v6()?;
            ed.finish();
        }
        Ok(Filter { maps, program, state: Mutex::new(state) })
    }

    /// The blocklist.
    pub fn blocklist(&self) -> PrefixList<'_> {
        PrefixList { filter: self, list: ListKind::Block, whole_family: false }
    }

    /// The allowlist, checked before the blocklist: an allowlisted source
    /// always passes, even inside a blocked range.
    pub fn allowlist(&self) -> PrefixList<'_> {
        PrefixList { filter: self, list: ListKind::Allow, whole_family: false }
    }

    /// What the filter does with packets from `addr`, and which entry decides.
    ///
    /// Exactly what the kernel program does: an IPv6 address is looked up in
    /// the IPv6 entries, an IPv4-mapped one (`::ffff:192.0.2.5`) included,
    /// as for an IPv6 packet with that source (not meant for the wire; see
    /// [`normalize`]). Packets from the host 192.0.2.5 are IPv4 packets: ask
    /// about `192.0.2.5` (`IpAddr::to_canonical` gives it).
    pub fn verdict(&self, addr: IpAddr) -> Result<Verdict, ListError> {
        self.read(|st| match st.verdict(addr) {
            v if v == XDPG_VERDICT_ALLOW as u8 => {
                Verdict::Allow(st.matching(addr, ListKind::Allow).expect("allow verdict has an entry"))
            }
            v if v == XDPG_VERDICT_BLOCK as u8 => {
                Verdict::Block(st.matching(addr, ListKind::Block).expect("block verdict has an entry"))
            }
            _ => Verdict::Pass,
        })
    }

    /// Counters, summed over CPUs.
    pub fn stats(&self) -> Result<FilterStats, Error> {
        let c = self.maps.counters().map_err(|source| LoadError::Bpf { op: "reading counters".into(), source })?;
        let get = |r: u32| c[r as usize];
        Ok(FilterStats {
            passed: get(XDPG_REASON_PASSED),
            allowlisted: get(XDPG_REASON_ALLOWLISTED),
            blocked_v4: get(XDPG_REASON_BLOCKED_V4),
            blocked_v6: get(XDPG_REASON_BLOCKED_V6),
            malformed: get(XDPG_REASON_MALFORMED),
            non_ip: get(XDPG_REASON_NON_IP),
        })
    }

    /// Sets every counter to zero.
    pub fn reset_stats(&self) -> Result<(), Error> {
        self.maps
            .reset_counters()
            .map_err(|source| LoadError::Bpf { op: "resetting counters".into(), source }.into())
    }

    /// The malformed-packet policy in force.
    pub fn malformed_policy(&self) -> MalformedPolicy {
        match self.maps.malformed_policy().load(Ordering::Acquire) {
            XDPG_MALFORMED_DROP => MalformedPolicy::Drop,
            _ => MalformedPolicy::Pass,
        }
    }

    /// Changes the malformed-packet policy; takes effect for the next packet.
    pub fn set_malformed_policy(&self, policy: MalformedPolicy) {
        self.maps.malformed_policy().store(policy.code(), Ordering::Release);
    }

    /// Attaches to one more interface (pinning the link if the filter is pinned).
    pub fn attach(&self, iface: impl Into<Interface>, mode: AttachMode) -> Result<Attachment, Error> {
        self.program.attach(&iface.into(), mode)
    }

    /// Detaches from one interface (by the name or index it was attached with).
    pub fn detach(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        self.program.detach(&iface.into())
    }

    /// The interfaces the filter is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.program.attachments()
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.program.pin_path()
    }

    /// Detaches from every interface and removes every pin, so nothing of
    /// the filter is left in bpffs or on any interface.
    pub fn unpin(self) -> Result<(), Error> {
        self.program.unpin()
    }

    /// Sends whatever the filter passes on to `program` (an XDP program fd,
    /// e.g. [`LoadBalancer::program_fd`](crate::LoadBalancer::program_fd) or
    /// your own), through a tail call. Takes effect for the next packet.
    pub fn set_next(&self, program: BorrowedFd<'_>) -> Result<(), Error> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&program) as u32;
        self.maps
            .handle("xdpg_next")
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| LoadError::Bpf { op: "installing the next program".into(), source: io_from_libbpf(e) }.into())
    }

    /// Stops passing packets on to a next program.
    pub fn clear_next(&self) -> Result<(), Error> {
        match self.maps.handle("xdpg_next").delete(&0u32.to_ne_bytes()) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(LoadError::Bpf { op: "removing the next program".into(), source: io_from_libbpf(e) }.into())
            }
            _ => Ok(()),
        }
    }

    /// The filter program's fd (to attach it elsewhere, or chain it).
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.program.fd()
    }

    /// Runs the real filter program, with its live maps, on one Ethernet
    /// frame through `BPF_PROG_TEST_RUN`. Counters count it. Nothing is sent.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.program.test_run(frame, None)
    }

    /// The capacities the filter was loaded with: (IPv4 entries, IPv6 entries).
    pub fn capacity(&self) -> (usize, usize) {
        let c = self.maps.capacity();
        (c.v4_rules, c.v6_rules)
    }

    /// Kernel memory charged to the filter's maps, in bytes.
    pub fn map_memory_bytes(&self) -> u64 {
        self.maps.set.memlock_bytes()
    }

    fn lock_pin(&self) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ListError> {
        self.program
            .lock()
            .map_err(|e| ListError::Bpf { op: "locking the pin directory".into(), source: std::io::Error::other(e.to_string()) })
    }

    fn state(&self) -> MutexGuard<'_, ListState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read<R>(&self, f: impl FnOnce(&ListState) -> R) -> Result<R, ListError> {
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        st.sync(&self.maps);
        Ok(f(&st))
    }

    fn edit<R>(&self, f: impl FnOnce(&mut Editor<'_>) -> Result<R, ListError>) -> Result<R, ListError> {
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        let mut ed = Editor::begin(&mut st, &self.maps);
        let result = f(&mut ed);
        ed.finish();
        result
    }
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
    /// it was.
    pub fn insert(&self, net: IpNetwork) -> Result<EntryChange, ListError> {
        let entry = normalize(net);
        self.guard(&entry.network)?;
        let op = Op { net: entry.network, bit: self.list.bit(), insert: true };
        let changed = self.filter.edit(|ed| ed.apply_one(op))?;
        Ok(EntryChange { entry, changed })
    }

    /// Removes an entry. Addresses another entry covers stay covered. Patched
    /// in place like [`insert`](Self::insert).
    pub fn remove(&self, net: IpNetwork) -> Result<EntryChange, ListError> {
        let entry = normalize(net);
        let op = Op { net: entry.network, bit: self.list.bit(), insert: false };
        let changed = self.filter.edit(|ed| ed.apply_one(op))?;
        Ok(EntryChange { entry, changed })
    }

    /// Whether exactly this entry (after normalisation) is in the list.
    pub fn contains(&self, net: IpNetwork) -> Result<bool, ListError> {
        let net = normalize(net).network;
        self.filter.read(|st| st.contains(net, self.list))
    }

    /// The most specific entry of this list that covers `addr` (IPv4-mapped
    /// IPv6 addresses as in [`Filter::verdict`]).
    pub fn matching(&self, addr: IpAddr) -> Result<Option<IpNetwork>, ListError> {
        self.filter.read(|st| st.matching(addr, self.list))
    }

    /// A snapshot of the entries, IPv4 first, in address order.
    pub fn iter(&self) -> Result<impl Iterator<Item = IpNetwork>, ListError> {
        Ok(self.filter.read(|st| st.entries(self.list))?.into_iter())
    }

    /// Number of entries.
    pub fn len(&self) -> Result<usize, ListError> {
        self.filter.read(|st| st.count(self.list))
    }

    /// Whether the list is empty.
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
        let changed = self.filter.edit(|ed| ed.apply_atomic(&ops))?;
        Ok(BulkChange { changed, unchanged: given - changed, normalized })
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
        for net in nets {
            let n = normalize(net);
            self.guard(&n.network)?;
            if n.network != net {
                normalized.push((net, n.network));
            }
            wanted.insert(n.network);
        }
        let bit = self.list.bit();
        let (changed, kept) = self.filter.edit(|ed| {
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
        Ok(BulkChange { changed, unchanged: kept, normalized })
    }

    /// Empties the list, atomically. Returns how many entries it held.
    pub fn clear(&self) -> Result<usize, ListError> {
        Ok(self.replace(std::iter::empty())?.changed)
    }
}
