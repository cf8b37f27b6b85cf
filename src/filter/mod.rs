//! [`Filter`]: the XDP source-address filter. Its rooms:
//!
//! - `builder.rs`: [`FilterBuilder`], which loads it through the core
//!   ([`Pinned`]); `maps.rs`: its maps and config; `layout.rs`: the shared
//!   structs and their compile-time checks.
//! - `lists.rs`: the lists as the API shows them ([`PrefixList`]);
//!   `prefix.rs`: parsing and normalising entries; `stats.rs`: counters.
//! - `state.rs`: the model of both lists, over each family's (`v4.rs`,
//!   `v6.rs`, sharing `entries.rs`); `editor.rs`: how an edit reaches the
//!   tables the data plane reads (`v4_tables.rs`; IPv6's in `v6.rs`);
//!   `hash.rs`: their hashes.
//!
//! [`FilterKind`] is what the core needs to know: its maps, its model, and
//! how to repair the tables after an edit that died.

mod builder;
pub(crate) mod editor;
mod entries;
pub(crate) mod events;
pub(crate) mod guard;
pub(crate) mod hash;
mod layout;
mod lists;
pub(crate) mod maps;
mod prefix;
mod ratelimit;
pub(crate) mod rules;
mod state;
mod stats;
mod ttl;
mod v4;
mod v4_tables;
mod v6;
mod v6_tables;

pub use builder::FilterBuilder;
pub use events::{DropEvent, DropReason, EventError, EventOptions, EventRate, EventReader, EventStats, SNAP_LEN};
pub use guard::maps::{
    RuleCapacities, DEFAULT_MAX_LIMIT_BUCKETS, DEFAULT_MAX_RULES, DEFAULT_MAX_SET_ENTRIES, DEFAULT_MAX_TIMED_BLOCKS,
    MAX_RULES,
};
pub use guard::syn::{
    host_wscale, nft_rules, nft_rules_for, nft_rules_with_wscale, SynGuard, SynMode, SynPolicy, SynPortStats,
    SynPortStatus, DEFAULT_SYN_THRESHOLD, MAX_SYN_PORTS,
};
pub use lists::{BulkChange, EntryChange, ListKind, PrefixList};
pub use prefix::{normalize, parse_list, parse_prefix, ListLine, Normalized};
pub use ratelimit::{LimitKey, RateLimit, MAX_BLOCK, MAX_RATE};
pub use rules::{
    parse_rule_lines, parse_rules, DestinationMatch, IpFamily, NamedSet, RangeSet, Rule, RuleAction, RuleChange,
    RuleEntry, RuleId, RuleLine, RuleProtocol, Rules, Sets, Source, SourceMatch, TcpFlags,
};
pub use stats::FilterStats;
pub use ttl::{BlockedBy, LimiterStats, TimedBlock, TimedBlocks, TimedChange};

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;

use crate::core::attach::{Attachment, Interface};
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::ProgramMaps;
use crate::core::pinned::{facade, same_size, CopyPass, Kind, Migration, Pinned, ProgramKind};
use crate::core::testrun::TestRun;
use crate::error::{Error, ListError, LoadError, PinError, RuleError};
use crate::AttachMode;
use editor::Editor;
use guard::Guard;
use maps::FilterMaps;
use state::ListState;

/// Default IPv4 capacity: entries (prefixes) per filter, both lists together.
pub const DEFAULT_V4_CAPACITY: usize = 1 << 20;
/// Default IPv6 capacity.
pub const DEFAULT_V6_CAPACITY: usize = 1 << 18;
/// The largest capacity accepted for either family.
pub const MAX_CAPACITY: usize = 1 << 24;

/// What the filter does with packets whose L2/L3 headers are malformed or
/// truncated. They are counted either way.
///
/// Truncated means cut short by the frame's end or by the packet's own IP
/// length (IPv4 total length, IPv6 40 + payload length): an IPv6 extension
/// header that runs past the payload length is cut short, as the kernel's
/// stack reads it (it trims the packet to its length, then drops it). Bytes
/// after the IP packet (Ethernet padding) are not part of it, and a
/// transport header cut short is not checked: the source decides. One
/// exception: an IPv6 payload length of 0 with a hop-by-hop header claims a
/// jumbogram (RFC 2675), which Linux delivers with the frame's length
/// (measured on 6.18, also without the jumbo option), so its headers are
/// read up to the frame's end and the source decides too.
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

crate::core::names::named_values! { MalformedPolicy, "malformed-packet policy", {
    Pass => "pass",
    Drop => "drop",
} }

/// What the lists do with packets from one source address
/// ([`Filter::verdict`]: the lists only, not the timed blocks or rules).
/// Exhaustive: two lists decide three ways, and what else judges a packet
/// has its own type ([`BlockedBy`](crate::BlockedBy), [`DropReason`](crate::DropReason)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// In neither list: not decided by them (the timed blocks and the
    /// rules, when the guard stage runs, judge it next; else passed).
    Pass,
    /// Allowlisted (by this, its most specific allowlist entry): passed.
    Allow(IpNetwork),
    /// Blocklisted (by this entry) and not allowlisted: dropped.
    Block(IpNetwork),
}

/// The filter, as the core drives it.
pub(crate) struct FilterKind;

impl ProgramKind for FilterKind {
    const KIND: &'static Kind = &Kind {
        name: "filter",
        program: names::XDPG_FILTER,
        maps: FilterMaps::NAMES,
        magic: XDPG_MAGIC,
        layout_version: XDPG_LAYOUT_VERSION,
        cli: "xdpguard",
        needs: "a BPF feature the filter needs (memory-mapped arrays, BPF links for XDP)",
        min_kernel: "5.15 or later with BTF",
        within: None,
    };
    type Maps = FilterMaps;
    type Model = ListState;
    type Error = ListError;

    const REHEARSAL: &'static [&'static str] = &[names::XDPG_FILTER_CNT, names::XDPG_V4_RULES];

    fn load_model(maps: &FilterMaps) -> Result<ListState, ListError> {
        Ok(ListState::load(maps))
    }

    /// The tables are rebuilt from the stored entries.
    fn repair(maps: &FilterMaps, st: &mut ListState) -> Result<(), ListError> {
        let mut ed = Editor::new(st, maps);
        ed.rebuild_v4().map_err(|_| ed.v4_hosts_full())?;
        ed.rebuild_v6()
    }

    /// From layouts 7, 6 and 5, whose IPv6 views leave `anchor_hash` 0
    /// (the /48s' chains under the murmur hash): this build's program reads
    /// those tables as they are, so every map is reused, and once it runs
    /// both IPv6 tables are rebuilt in the multiply hash (the idle table
    /// first, then a switch, then the other): no packet meets a table in a
    /// hash its program does not read.
    ///
    /// Layouts 6 and 5 also lack the guard's gate (`xdpg_gate`, and its open
    /// bit in the config's `tables`, which they leave clear): the map is
    /// created closed (every packet goes to the guard, as their filter sent
    /// it); the reopen that ends the upgrade opens it. Layout 5's IPv6
    /// tables also keep every entry in the chain of its own (length, prefix)
    /// hash, which this program reads too (no entry is anchored while the
    /// view's `short_from` is 0, as layout 5 wrote it); the same rebuild
    /// anchors the entries of /48 and longer.
    fn migration(from: u32) -> Option<Migration<FilterMaps>> {
        let added: &'static [&'static str] = match from {
            7 => &[],
            6 | 5 => &[names::XDPG_GATE],
            _ => return None,
        };
        Some(Migration {
            changed: &[],
            added,
            size: same_size,
            copy: |_, maps, pass| {
                if pass == CopyPass::AfterSwap {
                    let mut st = ListState::load(maps);
                    Editor::new(&mut st, maps).rebuild_v6()?;
                }
                Ok(())
            },
        })
    }
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
    core: Pinned<FilterKind>,
    /// The guard stage (rules), unless loaded without one.
    guard: Option<Guard>,
}

facade!(Filter, FilterKind);

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
    /// [`verdict`](Filter::verdict) again: entries stored before that edit
    /// are kept, and of the edit itself, what reached the stored entries
    /// (a single insert or removal is one store; a bulk edit's entries are
    /// stored after its new tables are switched in, so one killed before
    /// that leaves nothing of it, and one killed in the short window while
    /// they are stored leaves those stored so far). The guard stage's slot
    /// is checked too: a check that fails is left to the next rule edit, not
    /// refused here (so `detach` still opens it).
    ///
    /// ```no_run
    /// let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
    /// filter.blocklist().insert("198.51.100.0/24".parse()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`PinError`](crate::PinError)s: nothing pinned there, not a filter,
    /// pinned by an xdpguard with another layout, bpffs not mounted;
    /// [`LoadError::MissingPrivileges`](crate::LoadError::MissingPrivileges);
    /// [`ListError::Full`] if the tables of a crashed edit no longer fit.
    /// The guard stage pinned beside it (rules, SYN guard) is reopened too,
    /// with its own errors: [`PinError::Incompatible`](crate::PinError::Incompatible)
    /// and [`PinError::Interrupted`](crate::PinError::Interrupted) (named with
    /// the filter's directory), the other `PinError`s of its pins (e.g.
    /// [`PinError::Incomplete`](crate::PinError::Incomplete)), and
    /// [`RuleError`](crate::RuleError)s when its rules cannot be read back or
    /// repaired.
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<Filter, Error> {
        let core: Pinned<FilterKind> = Pinned::open_pinned(dir.as_ref())?;
        Filter::with_pinned_guard(core, dir.as_ref())
    }

    /// Removes what a creation that died half-way left under `dir` (its
    /// process killed before every pin was in place, where
    /// [`open_pinned`](Self::open_pinned) answers
    /// [`PinError::Interrupted`](crate::PinError::Interrupted)), and the
    /// directory when that empties it: nothing it pinned stays attached. A
    /// creation still running is waited for. The filter's guard stage is
    /// pinned within the filter's creation: a creation that died before
    /// its guard was pinned is removed whole, its guard's directory with
    /// it; and so is a filter whose guard's creation died (as a build
    /// that pinned the guard after the filter could leave it).
    ///
    /// # Errors
    ///
    /// [`PinError::InUse`](crate::PinError::InUse) when a whole filter is
    /// pinned there (`open_pinned(dir)?.unpin()` removes it);
    /// [`PinError::NotOurs`](crate::PinError::NotOurs),
    /// [`PinError::BpffsNotMounted`](crate::PinError::BpffsNotMounted),
    /// [`PinError::Io`](crate::PinError::Io).
    pub fn remove_interrupted(dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        // The filter's own creation mark first: it covers its guard's
        // directory, whatever state that was left in.
        match Pinned::<FilterKind>::clear_interrupted(dir) {
            Err(Error::Pin(PinError::InUse { .. })) if Guard::clear_interrupted(dir)? => {
                let core: Pinned<FilterKind> = Pinned::open_pinned(dir)?;
                core.program.unpin()
            }
            r => r,
        }
    }

    /// The filter `core` with the guard stage pinned beside it, if any,
    /// put in (or taken out of) the filter's stage slot as its rules say.
    fn with_pinned_guard(core: Pinned<FilterKind>, dir: &Path) -> Result<Filter, Error> {
        let guard = Guard::open_pinned(dir)?;
        if let Some(g) = &guard {
            // A process that died between an edit and the stage switch left
            // the filter calling the guard for nothing, or not calling it,
            // and maybe the gate closed; pins upgraded from a layout
            // without the gate have it closed. Every guard edit does this
            // again, so one that fails here is not fatal: the handle must
            // open, to edit, list or detach.
            let _ = g.edit(&core.maps, |_, _| Ok(()));
        }
        Ok(Filter { core, guard })
    }

    /// Takes over the filter pinned under `dir` by another xdpguard build
    /// (an older version): its lists, policy and counters stay, and its
    /// program is replaced by this build's on every interface at once
    /// (`BPF_LINK_UPDATE`), so no packet goes unfiltered. Pins of the same
    /// layout are reused as they are; pins of an older layout are migrated
    /// when this build knows how, else refused before anything changes.
    /// Handles other processes hold keep working after a same-layout
    /// upgrade (the maps are the same); after a migration they must reopen.
    /// A program chained behind it with [`set_next`](Self::set_next) stays.
    /// Its guard stage (rules, SYN guard) is upgraded after it, the same
    /// way: the guard program replaced by this build's in the filter's stage
    /// slot, over its maps ([`UpgradeReport::guard`](crate::UpgradeReport::guard));
    /// it is rehearsed first (loaded and verified over its pinned maps, then
    /// dropped), so what would refuse it refuses the upgrade before anything
    /// changes. A handle opened before installs the new guard program at
    /// its next edit, never the old one.
    /// Pins of layout 7 (before the multiply hash of the IPv6 /48s' chains)
    /// are migrated: every map reused, the IPv6 tables rebuilt once the new
    /// program (which reads both hashes) runs. Pins of layouts 6 (before
    /// the guard's gate) and 5 (also IPv6 entries not yet anchored by /48)
    /// too, with the gate created.
    /// Pins of layouts 2 (before rules), 3 (before drop events, whose
    /// config fields no migration converts) and 4 (before the IPv4 lines)
    /// have no migration: detach and attach again.
    ///
    /// Requires Linux 5.9 or later (the filter itself needs 5.15).
    ///
    /// ```no_run
    /// let (filter, report) = xdpguard::Filter::upgrade_pinned("/sys/fs/bpf/xdpguard")?;
    /// println!("program {} replaced {}", report.new_program_id, report.old_program_id);
    /// # Ok::<(), xdpguard::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open_pinned`](Self::open_pinned), and
    /// [`PinError::NoMigration`](crate::PinError::NoMigration) (a layout
    /// this build cannot migrate), [`PinError::UpgradeRefused`](crate::PinError::UpgradeRefused),
    /// the [`LoadError`]s of loading the new program: all before anything is
    /// changed (the guard stage's too). [`AttachError::Bpf`](crate::AttachError::Bpf)
    /// when an interface refuses the new program (the others are switched
    /// back). An error of the guard stage's own swap after the filter's (a
    /// pin that cannot be replaced, the stage slot unwritable: what its
    /// rehearsal cannot foresee) leaves the new filter program running with
    /// the old guard program: run the upgrade again.
    pub fn upgrade_pinned(dir: impl AsRef<Path>) -> Result<(Filter, crate::UpgradeReport), Error> {
        let dir = dir.as_ref();
        Guard::rehearse_upgrade(dir)?;
        let (core, mut report) = Pinned::upgrade(dir, layout::filter_skel::FilterSkelBuilder::default())?;
        report.guard = Guard::upgrade(dir, &core.maps)?.map(Box::new);
        Ok((Filter::with_pinned_guard(core, dir)?, report))
    }

    /// The blocklist.
    pub fn blocklist(&self) -> PrefixList<'_> {
        PrefixList::new(self, ListKind::Block)
    }

    /// The allowlist, checked before the blocklist: an allowlisted source
    /// always passes, even inside a blocked range.
    pub fn allowlist(&self) -> PrefixList<'_> {
        PrefixList::new(self, ListKind::Allow)
    }

    /// What the lists (allowlist, then blocklist) do with packets from
    /// `addr`, and which entry decides.
    ///
    /// The lists only: what the kernel program's list stage decides for
    /// that source, the first step of the filter's path. A
    /// [`Verdict::Pass`] means no list entry decides, not that the packet
    /// passes: the guard stage then applies, in order, the timed blocks
    /// ([`Filter::timed_blocks`]; `TimedBlocks::list` gives them, and the
    /// CLI's `xdpguard check` looks the address up in them next), the rules
    /// ([`Rules::matching_source`] gives those a source alone decides;
    /// rules on protocols or ports depend on the packet) and the SYN guard.
    /// The
    /// lists and the timed blocks do not judge on-link neighbour discovery
    /// (ICMPv6 133-137 with hop limit 255), which this, given an address
    /// only, cannot see. For a whole frame's verdict: [`Filter::test_run`]
    /// (the real program), or the test kit's `FilterModel`.
    ///
    /// An IPv6 address is looked up in the IPv6 entries, an IPv4-mapped one
    /// (`::ffff:192.0.2.5`) included, as for an IPv6 packet with that
    /// source (not meant for the wire; see [`normalize`]). Packets from the
    /// host 192.0.2.5 are IPv4 packets: ask about `192.0.2.5`
    /// (`IpAddr::to_canonical` gives it).
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    #[expect(clippy::missing_panics_doc, reason = "an allow or block verdict always has its matching entry")]
    pub fn verdict(&self, addr: IpAddr) -> Result<Verdict, ListError> {
        self.core.read(|st, _| match st.verdict(addr) {
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
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the counter map cannot be read.
    pub fn stats(&self) -> Result<FilterStats, Error> {
        let c = self
            .core
            .maps
            .reasons()
            .map_err(|source| LoadError::Bpf { op: "reading counters".into(), error: source })?;
        Ok(from_reasons(&c))
    }

    /// Takes the counts a reader read (and showed) off the reason counters:
    /// what was counted since that read stays, for the next one. This is
    /// the reset for a reader that shows the counters and then starts them
    /// again (`xdpguard stats --reset`): [`reset_stats`](Self::reset_stats)
    /// would also drop what was counted while it showed them. What is
    /// counted within the one system call between the lookup and the write
    /// of a counter is still lost: user space cannot write a per-CPU
    /// counter atomically.
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the counter map cannot be read or written.
    pub fn subtract_stats(&self, read: &FilterStats) -> Result<(), Error> {
        self.core
            .maps
            .subtract_reasons(&to_reasons(read))
            .map_err(|source| LoadError::Bpf { op: "resetting counters".into(), error: source }.into())
    }

    /// Sets the reason counters ([`stats`](Self::stats)) to zero. The
    /// rules' counters, the SYN guard's per-port ones and the limiter's are
    /// kept: they go with their rule or port (a rule replaced by an equal
    /// one keeps its counters; [`FilterStats::since`] gives a window of
    /// the reasons without resetting anything). What is counted between a
    /// read of the counters and this is lost: a reader that shows them and
    /// then resets them uses [`subtract_stats`](Self::subtract_stats).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the counter map cannot be written.
    pub fn reset_stats(&self) -> Result<(), Error> {
        self.core
            .maps
            .reset_reasons()
            .map_err(|source| LoadError::Bpf { op: "resetting counters".into(), error: source }.into())
    }

    /// The malformed-packet policy in force.
    pub fn malformed_policy(&self) -> MalformedPolicy {
        match self.core.maps.malformed_policy().load(Ordering::Acquire) {
            XDPG_MALFORMED_DROP => MalformedPolicy::Drop,
            _ => MalformedPolicy::Pass,
        }
    }

    /// Changes the malformed-packet policy; takes effect for the next packet.
    pub fn set_malformed_policy(&self, policy: MalformedPolicy) {
        self.core.maps.malformed_policy().store(policy.code(), Ordering::Release);
    }

    /// Attaches to one more interface (pinning the link if the filter is
    /// pinned). Already attached there in `mode` (or asked for auto): does
    /// nothing, and returns that attachment.
    ///
    /// # Errors
    ///
    /// [`AttachError`](crate::AttachError)s (interface not found, another
    /// XDP program there, this one there in another mode, a mode the
    /// driver cannot do);
    /// [`PinError`](crate::PinError) when the link cannot be pinned.
    pub fn attach(&self, iface: impl Into<Interface>, mode: AttachMode) -> Result<Attachment, Error> {
        let attached = self.core.running().attach(&iface.into(), mode)?;
        self.next_hops_follow([self.next_program().ok().flatten()]);
        Ok(attached)
    }

    /// Detaches from one interface (by the name or index it was attached with).
    /// An attachment [lost](Self::lost_attachments) on an interface of
    /// that name (or index) is forgotten too: detaching by name after the
    /// interface was deleted leaves nothing of the program there.
    ///
    /// # Errors
    ///
    /// [`AttachError::NotAttached`](crate::AttachError::NotAttached)
    /// when not attached there; [`AttachError::Bpf`](crate::AttachError::Bpf),
    /// [`PinError`](crate::PinError) when the kernel or bpffs refuse.
    pub fn detach(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        self.core.running().detach(&iface.into())?;
        self.next_hops_follow([self.next_program().ok().flatten()]);
        Ok(())
    }

    /// After a change to the interfaces whose packets reach a next program
    /// (attached, detached, the next program set, replaced or cleared): a
    /// load balancer among `programs` receives on the filter's interfaces,
    /// so its managed next hops follow (reopening it reconciles them; best
    /// effort, as on its open).
    fn next_hops_follow(&self, programs: impl IntoIterator<Item = Option<u32>>) {
        let near: Vec<&Path> = self.pin_path().and_then(Path::parent).into_iter().collect();
        crate::LoadBalancer::reconcile_programs(programs, &near);
    }

    /// The interfaces the filter is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.core.running().attachments()
    }

    /// The attachments lost since the filter was attached: their interface
    /// was deleted (or the kernel otherwise took the program off it), as
    /// the pins recorded them (name, mode, the old index). Kept, so an
    /// agent or `status` can say where the filter no longer runs, until it
    /// is attached to an interface of that name again (the usual repair
    /// after an interface is made again), detached from that name, or
    /// unpinned. Reading them costs one `bpf()` call per attachment.
    pub fn lost_attachments(&self) -> Vec<Attachment> {
        self.core.running().lost()
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.core.program.pin_path()
    }

    /// Detaches from every interface and removes every pin, so nothing of
    /// the filter is left in bpffs or on any interface.
    ///
    /// The filter's own pins go first, its guard stage's (rules, sets) after:
    /// when the first part fails, the filter keeps running with its rules
    /// and a reopen still manages both.
    ///
    /// # Errors
    ///
    /// As [`detach`](Self::detach), for the first interface that fails.
    pub fn unpin(self) -> Result<(), Error> {
        let next = self.next_program().ok().flatten();
        let beside = self.pin_path().and_then(Path::parent).map(Path::to_path_buf);
        self.core.running().unpin()?;
        crate::LoadBalancer::reconcile_programs([next], &beside.as_deref().into_iter().collect::<Vec<_>>());
        if let Some(guard) = self.guard {
            guard.unpin()?;
            // Again: the filter's directory, empty now that the guard's is gone.
            self.core.running().unpin()?;
        }
        Ok(())
    }

    /// Sends whatever the filter passes on to `program` (an XDP program fd,
    /// e.g. [`LoadBalancer::program_fd`](crate::LoadBalancer::program_fd) or
    /// your own), through a tail call. Takes effect for the next packet.
    /// A load balancer's managed next hops follow (it receives on the
    /// filter's interfaces now; one that got the packets before no longer
    /// does), as they do when the filter is attached, detached or unpinned.
    ///
    /// # Errors
    ///
    /// [`LoadError::NextIsSelf`] for the filter's own program or its guard
    /// stage's (a loop); [`LoadError::Bpf`] when the kernel refuses the
    /// program (not an XDP program, or one that cannot be tail-called from
    /// here).
    pub fn set_next(&self, program: BorrowedFd<'_>) -> Result<(), Error> {
        if let Ok(id) = crate::core::sys::prog_id(program) {
            let own = [
                (Some(self.core.running().id()?), "program"),
                (self.guard.as_ref().map(|g| g.core.running().id()).transpose()?, "guard stage"),
            ];
            if let Some((_, stage)) = own.into_iter().find(|(own, _)| *own == Some(id)) {
                return Err(LoadError::NextIsSelf { id, stage }.into());
            }
        }
        let had = self.next_program().ok().flatten();
        self.core
            .maps
            .next
            .set(0, program)
            .map_err(|source| LoadError::Bpf { op: "installing the next program".into(), error: source })?;
        // The program now receiving first: a load balancer that starts
        // receiving here records the entries it needs before one that
        // stops lets go of them (an entry both need is never deleted on
        // the way; the other way round, the entry deleted and made again
        // is one the LB that no longer receives here needs).
        self.next_hops_follow([crate::core::sys::prog_id(program).ok(), had]);
        Ok(())
    }

    /// Stops passing packets on to a next program.
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the program array cannot be written.
    pub fn clear_next(&self) -> Result<(), Error> {
        let had = self.next_program().ok().flatten();
        self.core
            .maps
            .next
            .clear(0)
            .map_err(|source| LoadError::Bpf { op: "removing the next program".into(), error: source })?;
        self.next_hops_follow([had]);
        Ok(())
    }

    /// The kernel id of the program the filter passes packets on to
    /// ([`set_next`](Self::set_next)), if any: compare it with
    /// [`LoadBalancer::program_id`](crate::LoadBalancer::program_id).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the program array cannot be read.
    pub fn next_program(&self) -> Result<Option<u32>, Error> {
        self.core
            .maps
            .next
            .get(0)
            .map_err(|source| LoadError::Bpf { op: "reading the next program".into(), error: source }.into())
    }

    /// The filter program's kernel id (as `bpftool prog` shows it).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the kernel does not answer about the program.
    pub fn program_id(&self) -> Result<u32, Error> {
        self.core.running().id()
    }

    /// Whether the pin directory this filter was opened from (or pinned
    /// in) holds another filter now, or none: re-created there (`apply
    /// --recreate`, `detach` then `attach`) or removed. This handle still
    /// reads its own maps, which the new filter does not count in: a
    /// long-lived reader (`xdpguard stats --watch`) reopens it with
    /// [`open_pinned`](Self::open_pinned). An upgrade
    /// ([`upgrade_pinned`](Self::upgrade_pinned)) keeps the maps: not
    /// replaced. A filter never pinned: never replaced. One look-up of the
    /// pinned config map's id.
    pub fn replaced(&self) -> bool {
        self.core.replaced()
    }

    /// The lists' generation: every edit of either list, by any process,
    /// advances it by one (the malformed policy and interfaces are not
    /// counted). Unchanged, nothing was edited: `xdpguard apply` relies on
    /// it to show that a second run changes nothing.
    pub fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// The filter program's fd (to attach it elsewhere, or chain it).
    ///
    /// The program that runs now: after an upgrade (`upgrade_pinned`, by
    /// this or any process) of a pinned one, the new program, also through
    /// a handle opened before it. An fd handed out earlier stays open (and
    /// names the old program) while the handle lives.
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.core.running().fd()
    }

    /// Runs the real filter program, with its live maps, on one Ethernet
    /// frame through `BPF_PROG_TEST_RUN`. Counters count it. Nothing is sent.
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`] when the kernel refuses the run (a frame shorter
    /// than an Ethernet header, say).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.core.running().test_run(frame, None)
    }

    /// The capacities the filter was loaded with: (IPv4 entries, IPv6 entries).
    pub fn capacity(&self) -> (usize, usize) {
        let c = self.core.maps.capacity();
        (c.v4_rules, c.v6_rules)
    }

    /// The IPv4 host table's use: (host slots the lists take, slots it
    /// has). A /24 holding more than one verdict takes one slot per
    /// address differing from its most common verdict: a /32 one, a
    /// /25-/31 one per address it covers; see
    /// [`FilterBuilder::v4_capacity`] for sizing. (The table is hashed: an
    /// edit can find it full a little before every slot is used.)
    ///
    /// # Errors
    ///
    /// [`ListError::Pin`] when the pin directory cannot be locked.
    pub fn v4_host_slots(&self) -> Result<(usize, usize), ListError> {
        let c = self.core.maps.capacity();
        let used = self.core.read(|st, _| st.v4.host_slots())?;
        Ok((used, c.v4_buckets * XDPG_V4_BUCKET_SLOTS as usize))
    }

    /// The rule stage's capacities, as loaded (`None` for a filter loaded
    /// without one: [`FilterBuilder::guard`]`(false)`, an offloaded one).
    pub fn rule_capacities(&self) -> Option<RuleCapacities> {
        self.guard.as_ref().map(|g| g.core.maps.capacity().limits())
    }

    /// Kernel memory charged to the filter's maps (its guard stage's
    /// included), in bytes.
    pub fn map_memory_bytes(&self) -> u64 {
        self.map_memory_by_map().iter().map(|&(_, b)| b).sum()
    }

    /// Kernel memory charged to each of the filter's maps (its guard
    /// stage's included), in bytes, by map name (as `bpftool map` shows
    /// them): the IPv4 tables are the `xdpg_v4_*` maps, the IPv6 tables the
    /// `xdpg_v6_*` maps. Preallocated: set by the capacities, not by how
    /// many entries are loaded.
    pub fn map_memory_by_map(&self) -> Vec<(&'static str, u64)> {
        let mut maps = self.core.maps.memlock_by_map();
        maps.extend(self.guard.as_ref().map(Guard::memlock_by_map).unwrap_or_default());
        maps
    }

    /// Whether the filter is in monitor (dry-run) mode.
    pub fn monitor(&self) -> bool {
        self.core.maps.monitor().load(Ordering::Acquire) & XDPG_MONITOR_ON != 0
    }

    /// Switches monitor (dry-run) mode on or off, for the next packet (one
    /// store). In monitor mode the filter drops nothing: a blocklisted
    /// source is counted in [`FilterStats::would_drop_blocked`], a packet a
    /// drop rule matches in [`FilterStats::would_drop_rule`] (and the
    /// rule's counter), malformed packets are counted in
    /// [`FilterStats::malformed`] whatever the policy; all are passed on as
    /// if allowed. Allowlisting and pass rules work as always.
    pub fn set_monitor(&self, on: bool) {
        self.core.maps.monitor().store(if on { XDPG_MONITOR_ON } else { 0 }, Ordering::Release);
    }

    /// The rules, checked (by the filter's guard stage) for packets that
    /// neither list decided.
    ///
    /// # Order of evaluation
    ///
    /// 1. Packets that are not IP, or malformed, are decided first (see
    ///    [`MalformedPolicy`]).
    /// 2. An allowlisted source passes: no rule sees it.
    /// 3. A blocklisted source is dropped: no rule sees it.
    /// 4. A source in a timed block ([`Filter::timed_blocks`]) is dropped.
    /// 5. The rules, in order: the first drop or pass rule that matches
    ///    decides; count rules and monitored rules count and go on; a
    ///    rate-limit rule drops a packet over its limit and lets one within
    ///    it go on to the next rules.
    /// 6. The SYN guard ([`Filter::syn_guard`]), for TCP packets to the
    ///    ports it protects.
    /// 7. What no rule decided passes (to the next program, if one is set).
    ///
    /// Every packet is counted in one of [`FilterStats`]' reasons, and in
    /// the counter of every rule that matched it ([`Rules::list`]).
    ///
    /// # Rule syntax
    ///
    /// One rule per line; a `#` starts a comment:
    ///
    /// ```text
    /// [monitor] ACTION [ipv4|ipv6] [PROTO] [[not] fragment] [[not] from SRC]
    ///           [[not] to DST] [sport PORTS] [dport PORTS] [flags FLAGS] [type TYPES]
    /// ACTION: drop | pass | count | rate-limit RATE [RATE] [per src[/V4LEN[/V6LEN]]]
    ///                                  [burst N] [burst SIZE] [block DURATION [after N]]
    /// ```
    ///
    /// - ACTION: `drop`, `pass`, `count` or `rate-limit`. `monitor` in
    ///   front: the rule only counts (a dry run of it; a monitored
    ///   rate-limit rule counts what it would limit).
    /// - `rate-limit`: token buckets per source (by default, `per src`: per
    ///   IPv4 address and IPv6 /64; `per src/24/48`: per IPv4 /24 and IPv6
    ///   /48 prefix; `per src/32/128`: per address) of RATE packets (`100/s`) and/or
    ///   bits (`1mbit/s`) or bytes (`125kB/s`) a second; `burst` sets the
    ///   buckets' depth (default: one second of the rate; a number: packets,
    ///   a size like `64kB`: bytes); `block 10m` blocks a source over the
    ///   limit for that long (a timed block made by the data plane, listed
    ///   with the rule's id). Over the limit: dropped and counted in
    ///   [`FilterStats::rate_limited`] and the rule's
    ///   [`RuleEntry::limited`]. The state is bounded (a count-min sketch
    ///   admits light sources without state; only heavy ones get an exact
    ///   bucket in a 65,536-entry LRU; see `src/bpf/guard_limit.h`).
    /// - PROTO: `tcp`, `udp`, `icmp`, `icmpv6` or `proto N` (0-255).
    /// - `fragment`: only IP fragments, first or later (an IPv6 atomic
    ///   fragment is whole); `not fragment`: only whole packets. A
    ///   `fragment` rule names no ports, flags or types (later fragments
    ///   carry none: [`RuleError::FragmentWithTransport`]).
    /// - SRC: a prefix or address (`198.51.100.0/24`, `2001:db8::1`) or
    ///   `set NAME`, a named set ([`Filter::sets`]). DST: a prefix.
    /// - PORTS (TCP and UDP only) and TYPES (ICMP, ICMPv6 only): numbers,
    ///   ranges and lists: `53`, `1000-2000`, `1900,11211`.
    /// - FLAGS (TCP only): `syn,fin` (both set), `syn/syn,ack` (SYN set and
    ///   ACK clear), `none/syn,ack` (both clear): `VALUE[/MASK]` of fin,
    ///   syn, rst, psh, ack, urg, ece, cwr.
    /// - A condition left out matches anything. A packet whose transport
    ///   header cannot be read (a later fragment, a header cut short)
    ///   matches no rule with ports, flags or types.
    ///
    /// ```text
    /// drop udp sport 53 not from set resolvers   # DNS amplification
    /// drop udp dport 1900,11211                   # SSDP, memcached reflection
    /// pass tcp dport 22 from 198.51.100.0/24      # SSH from the office only...
    /// drop tcp dport 22                           # ...and from nowhere else
    /// drop tcp flags syn,fin                      # never legitimate
    /// drop udp fragment                           # fragmented UDP floods
    /// monitor drop icmp type 8                    # what would this drop?
    /// rate-limit 100/s per src/24/64 udp dport 53 # DNS queries per /24
    /// rate-limit 20/s burst 40 block 10m tcp flags syn/syn,ack dport 22
    /// ```
    ///
    /// # Cost
    ///
    /// A packet the lists did not decide pays, while the set is not empty,
    /// the guard stage's tail call and parse, one index read (by protocol
    /// and destination port, ICMP type or protocol number), and then one
    /// 64-byte record per rule that could match it, in order, until one
    /// decides: rules on other ports cost it nothing, so the cost does not
    /// grow with the number of rules. A rule without a destination port is
    /// checked by every packet of its protocol; many rules on one port that
    /// differ only by source are walked one by one (put those sources in a
    /// set or a list). Measured on clean traffic, hot (`BENCHMARKS.md`,
    /// *Rules*): about +13 ns for a packet whose port no rule names, then
    /// about 4 ns for each of the first four rules checked and 16 ns for
    /// each after them; +20 to +40 ns in the bench's rule sets, the same
    /// with 10 or 10,000 rules. Nothing is paid while the set is empty: the
    /// filter does not call the guard then.
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::builder().interface("eth0").attach()?;
    /// let rules = filter.rules();
    /// let id = rules.add("drop udp dport 1900,11211".parse()?)?;
    /// for entry in rules.list()? {
    ///     println!("{} {} ({} packets)", entry.id, entry.rule, entry.hits.packets);
    /// }
    /// rules.remove(id)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rules(&self) -> Rules<'_> {
        Rules::new(self)
    }

    /// The named sets of prefixes rules can name (`from set resolvers`).
    pub fn sets(&self) -> Sets<'_> {
        Sets::new(self)
    }

    /// The SYN-flood guard: the last step of the guard stage (after the
    /// lists and the rules), for TCP packets to the ports it protects. A
    /// port is protected in one of two modes ([`SynPolicy`]):
    ///
    /// - **drop** ([`SynPolicy::drop_above`]): the port's SYNs are counted
    ///   (the last second, estimated from one-second windows); above the
    ///   threshold, a SYN from a source that has not completed a handshake
    ///   is dropped. A source has completed one when it sent a pure ACK
    ///   (ACK set, SYN and RST clear) to a protected port while that port
    ///   was under its threshold, or an ACK with a valid cookie (cookie
    ///   mode); it is then known for an hour ([`SynGuard::set_known_ttl`]),
    ///   in an LRU of 65,536 sources. A pure ACK can be forged by a spoofer
    ///   who knows the port, so during a flood no source becomes known by
    ///   an ACK: the flood can neither let its own SYNs in nor evict the
    ///   known clients that way. New clients are refused while the flood
    ///   lasts: that is what cookie mode is for.
    /// - **cookie** ([`SynPolicy::cookies`]): every SYN is answered from
    ///   XDP with a SYN-ACK built in place (XDP_TX), its sequence number a
    ///   SYN cookie of the kernel's (`bpf_tcp_raw_gen_syncookie_ipv4/6`);
    ///   no SYN reaches the stack. An ACK with a valid cookie
    ///   (`bpf_tcp_raw_check_syncookie_ipv4/6`) is passed, and nftables
    ///   `synproxy` (conntrack, the same kernel secret) opens the
    ///   connection to the server; the host needs the rules [`nft_rules_for`]
    ///   prints (CLI: `xdpguard syn nft-rules --port P`). Other ACKs (of
    ///   established connections, or forged) go to conntrack, which drops
    ///   the forged: connections open before the port was protected go on.
    ///   Cookies are sent for every SYN, not only above a threshold: the
    ///   host needs synproxy anyway, which answers every SYN with a cookie
    ///   too, so passing some SYNs would only answer them the slow way. The
    ///   SYN-ACK carries the options the SYN offered and the policy allows:
    ///   the MSS by default, and SACK permitted, timestamps and window
    ///   scaling with [`SynPolicy::with_wscale`] (which cost a server that
    ///   speaks first a second a connection through synproxy:
    ///   [`SynPolicy::wscale`]). SYNs with
    ///   IPv4 options or IPv6 extension headers, and TCP first fragments
    ///   cutting the header short, are not answered (dropped, counted).
    ///
    /// In monitor mode (the filter's, [`Filter::set_monitor`], or the
    /// port's, [`SynPolicy::with_monitor`]) what would be dropped or
    /// answered is counted ([`FilterStats::would_drop_syn`]) and passed.
    /// Counters: [`FilterStats`] (`syn_dropped`, `syn_cookies_sent`,
    /// `syn_cookies_passed`, `would_drop_syn`) and per port
    /// ([`SynGuard::status`]).
    ///
    /// Needs the guard stage: Linux 6.0 or later (the cookie helpers).
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::builder().interface("eth0").attach()?;
    /// use xdpguard::SynPolicy;
    /// let syn = filter.syn_guard();
    /// syn.protect(443, SynPolicy::cookies())?;
    /// syn.protect(22, SynPolicy::drop_above(200))?;
    /// print!("{}", xdpguard::nft_rules_for(&[(443, SynPolicy::cookies())])); // for `nft -f -`
    /// for port in syn.status()? {
    ///     println!("{} {}: {} SYNs, {} cookies", port.port, port.policy, port.stats.syns, port.stats.cookies_sent);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn syn_guard(&self) -> SynGuard<'_> {
        SynGuard::new(self)
    }

    /// Moves the clock of the filter's guard stage (rate limits, blocks
    /// that expire, the SYN guard) forward by `by`, as if that much time had
    /// passed, for the next packet: tests step time without sleeping. The
    /// kernel's clock is not touched; nothing else reads this one.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`] if the filter was loaded without its guard stage.
    #[cfg(feature = "testing")]
    pub fn advance_clock(&self, by: std::time::Duration) -> Result<(), RuleError> {
        self.guard_stage()?.core.maps.advance_clock(by);
        Ok(())
    }

    /// The clock of the filter's guard stage (CLOCK_MONOTONIC plus what
    /// [`Filter::advance_clock`] added), as the next packet reads it: tests
    /// align their steps to the SYN guard's one-second rate windows with it.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`] if the filter was loaded without its guard stage.
    #[cfg(feature = "testing")]
    pub fn guard_clock(&self) -> Result<std::time::Duration, RuleError> {
        Ok(std::time::Duration::from_nanos(self.guard_stage()?.core.maps.now_ns()))
    }

    /// The guard stage, or why there is none.
    pub(crate) fn guard_stage(&self) -> Result<&Guard, RuleError> {
        self.guard.as_ref().ok_or(RuleError::NoGuard {
            reason: "it was loaded with FilterBuilder::guard(false), or for offload; load it again with the \
                     guard stage (Linux 6.0 or later)",
        })
    }
}

/// The reason counters, by index, as [`Filter::stats`] shows them.
fn from_reasons(c: &[crate::Counter]) -> FilterStats {
    let get = |r: u32| c[r as usize];
    FilterStats {
        passed: get(XDPG_REASON_PASSED),
        allowlisted: get(XDPG_REASON_ALLOWLISTED),
        blocked_v4: get(XDPG_REASON_BLOCKED_V4),
        blocked_v6: get(XDPG_REASON_BLOCKED_V6),
        malformed: get(XDPG_REASON_MALFORMED),
        non_ip: get(XDPG_REASON_NON_IP),
        rule_dropped: get(XDPG_REASON_RULE_DROPPED),
        rule_passed: get(XDPG_REASON_RULE_PASSED),
        would_drop_blocked: get(XDPG_REASON_WOULD_DROP_BLOCKED),
        would_drop_rule: get(XDPG_REASON_WOULD_DROP_RULE),
        syn_dropped: get(XDPG_REASON_SYN_DROPPED),
        would_drop_syn: get(XDPG_REASON_WOULD_DROP_SYN),
        syn_cookies_sent: get(XDPG_REASON_SYN_COOKIE_SENT),
        syn_cookies_passed: get(XDPG_REASON_SYN_COOKIE_PASSED),
        rate_limited: get(XDPG_REASON_RATE_LIMITED),
        would_drop_limit: get(XDPG_REASON_WOULD_DROP_LIMIT),
        timed_blocked: get(XDPG_REASON_TIMED_BLOCKED),
        would_drop_timed: get(XDPG_REASON_WOULD_DROP_TIMED),
    }
}

/// The counters of `s` by reason index: [`from_reasons`] undone.
fn to_reasons(s: &FilterStats) -> Vec<crate::Counter> {
    let mut c = vec![crate::Counter::default(); XDPG_REASON_COUNT as usize];
    c[XDPG_REASON_PASSED as usize] = s.passed;
    c[XDPG_REASON_ALLOWLISTED as usize] = s.allowlisted;
    c[XDPG_REASON_BLOCKED_V4 as usize] = s.blocked_v4;
    c[XDPG_REASON_BLOCKED_V6 as usize] = s.blocked_v6;
    c[XDPG_REASON_MALFORMED as usize] = s.malformed;
    c[XDPG_REASON_NON_IP as usize] = s.non_ip;
    c[XDPG_REASON_RULE_DROPPED as usize] = s.rule_dropped;
    c[XDPG_REASON_RULE_PASSED as usize] = s.rule_passed;
    c[XDPG_REASON_WOULD_DROP_BLOCKED as usize] = s.would_drop_blocked;
    c[XDPG_REASON_WOULD_DROP_RULE as usize] = s.would_drop_rule;
    c[XDPG_REASON_SYN_DROPPED as usize] = s.syn_dropped;
    c[XDPG_REASON_WOULD_DROP_SYN as usize] = s.would_drop_syn;
    c[XDPG_REASON_SYN_COOKIE_SENT as usize] = s.syn_cookies_sent;
    c[XDPG_REASON_SYN_COOKIE_PASSED as usize] = s.syn_cookies_passed;
    c[XDPG_REASON_RATE_LIMITED as usize] = s.rate_limited;
    c[XDPG_REASON_WOULD_DROP_LIMIT as usize] = s.would_drop_limit;
    c[XDPG_REASON_TIMED_BLOCKED as usize] = s.timed_blocked;
    c[XDPG_REASON_WOULD_DROP_TIMED as usize] = s.would_drop_timed;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Counter;

    #[test]
    fn reasons_round_trip_through_filter_stats() {
        let raw: Vec<Counter> =
            (0..XDPG_REASON_COUNT).map(|r| Counter { packets: u64::from(r) + 1, bytes: 100 * u64::from(r) }).collect();
        assert_eq!(to_reasons(&from_reasons(&raw)), raw, "every reason goes back to its own index");
    }
}
