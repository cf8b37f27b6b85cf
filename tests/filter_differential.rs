//! Differential test of the filter's exact CIDR semantics, through the real
//! kernel program (BPF_PROG_TEST_RUN with its live maps), against a
//! reference model written here: a plain Vec of (prefix, list) and a linear
//! scan. An address is allowlisted if any allow entry covers it, else
//! blocked if any block entry covers it, else passed.
//!
//! Random prefix sets (seeded), random addresses concentrated near prefix
//! boundaries, random interleaved single inserts and removals and bulk
//! `extend` / `remove_all` / `replace`, for IPv4 and IPv6. After every batch
//! of edits, every probed address's XDP action, its counter, and
//! `Filter::verdict` must agree with the model, and so must the lists.
//!
//! A small `v4_capacity` keeps the host-bucket table small (256 buckets), so
//! mixed /24s overflow buckets and leave tombstones, and single edits fall
//! back to rebuilding the tables. The test reads the filter's config map to
//! prove those rebuilds happened.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails, never skips, without it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use ipnetwork::{Ipv4Network, Ipv6Network};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::frame::udp_from;
use xdpguard::{Counter, Filter, FilterStats, IpNetwork, ListError, ListKind, PrefixList, Verdict, XdpAction};

// ---------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Entry {
    net: IpNetwork,
    list: ListKind,
}

/// The obvious implementation: no indexes, no cleverness.
#[derive(Debug, Default, Clone)]
struct Model {
    entries: Vec<Entry>,
}

fn covers(net: IpNetwork, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpNetwork::V4(n), IpAddr::V4(a)) => {
            let mask = if n.prefix() == 0 { 0 } else { u32::MAX << (32 - u32::from(n.prefix())) };
            u32::from(a) & mask == u32::from(n.network())
        }
        (IpNetwork::V6(n), IpAddr::V6(a)) => {
            let mask = if n.prefix() == 0 { 0 } else { u128::MAX << (128 - u32::from(n.prefix())) };
            u128::from(a) & mask == u128::from(n.network())
        }
        _ => false,
    }
}

impl Model {
    fn contains(&self, e: Entry) -> bool {
        self.entries.contains(&e)
    }

    fn insert(&mut self, e: Entry) -> bool {
        if self.contains(e) {
            return false;
        }
        self.entries.push(e);
        true
    }

    fn remove(&mut self, e: Entry) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&x| x != e);
        before != self.entries.len()
    }

    /// The most specific entry of `list` covering `addr`.
    fn matching(&self, addr: IpAddr, list: ListKind) -> Option<IpNetwork> {
        self.entries
            .iter()
            .filter(|e| e.list == list && covers(e.net, addr))
            .max_by_key(|e| e.net.prefix())
            .map(|e| e.net)
    }

    fn verdict(&self, addr: IpAddr) -> Verdict {
        if let Some(n) = self.matching(addr, ListKind::Allow) {
            Verdict::Allow(n)
        } else if let Some(n) = self.matching(addr, ListKind::Block) {
            Verdict::Block(n)
        } else {
            Verdict::Pass
        }
    }

    fn list(&self, list: ListKind) -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = self.entries.iter().filter(|e| e.list == list).map(|e| e.net).collect();
        v.sort_by_key(|n| (n.is_ipv6(), n.ip(), n.prefix()));
        v
    }

    fn count_v4(&self) -> usize {
        self.entries.iter().filter(|e| e.net.is_ipv4()).map(|e| e.net).collect::<HashSet<_>>().len()
    }
}

// ---------------------------------------------------------------------------
// Random prefixes and probe addresses.

fn v4_net(addr: u32, len: u8) -> IpNetwork {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(addr & mask), len).unwrap())
}

fn v6_net(addr: u128, len: u8) -> IpNetwork {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(addr & mask), len).unwrap())
}

/// Where prefixes are drawn from, per family.
struct Space {
    v6: bool,
    /// Short "regions" that most prefixes fall in, so they overlap.
    regions: Vec<(u128, u8)>,
    /// /24s (v4) or /64s (v6) that collect most long prefixes, so cells
    /// turn mixed and host buckets fill up.
    hot: Vec<u128>,
}

impl Space {
    fn bits(&self) -> u8 {
        if self.v6 {
            128
        } else {
            32
        }
    }

    fn new(rng: &mut StdRng, v6: bool) -> Space {
        let (regions, hot) = if v6 {
            let mut regions: Vec<(u128, u8)> = vec![
                (u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)), 32),
                (u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0)), 48),
            ];
            for _ in 0..4 {
                regions.push((rng.random::<u128>(), 40));
            }
            let hot = (0..12)
                .map(|_| {
                    let r = regions[rng.random_range(0..regions.len())];
                    random_in(rng, r, 128) & !0xFF
                })
                .collect();
            (regions, hot)
        } else {
            let doc = [0xC000_0200u32, 0xC633_6400, 0xCB00_7100]; // 192.0.2/24, 198.51.100/24, 203.0.113/24
            let mut regions: Vec<(u128, u8)> = doc.iter().map(|&a| (u128::from(a), 24)).collect();
            for _ in 0..5 {
                regions.push((u128::from(rng.random::<u32>()), 12));
            }
            let mut hot: Vec<u128> = doc.iter().map(|&a| u128::from(a)).collect();
            for _ in 0..13 {
                let r = regions[rng.random_range(3..regions.len())];
                hot.push(random_in(rng, r, 32) & !0xFF);
            }
            (regions, hot)
        };
        Space { v6, regions, hot }
    }

    fn net(&self, addr: u128, len: u8) -> IpNetwork {
        if self.v6 {
            v6_net(addr, len)
        } else {
            v4_net(addr as u32, len)
        }
    }

    /// A random prefix, mostly long and mostly inside the regions.
    fn prefix(&self, rng: &mut StdRng) -> IpNetwork {
        let len: u8 = if self.v6 {
            match rng.random_range(0..100) {
                0 => rng.random_range(0..=16),
                1..=8 => rng.random_range(17..=47),
                9..=40 => rng.random_range(48..=64),
                41..=60 => rng.random_range(65..=127),
                _ => 128,
            }
        } else {
            match rng.random_range(0..200) {
                // /0-/7 rebuild the whole level-1 table: rare.
                0 => rng.random_range(0..=7),
                1..=14 => rng.random_range(8..=15),
                15..=90 => rng.random_range(16..=24),
                91..=150 => rng.random_range(25..=31),
                _ => 32,
            }
        };
        let long = len > self.bits() - 8;
        let addr = if long && rng.random_bool(0.5) {
            // Inside a hot /24 (v4) or hot /120 (v6).
            self.hot[rng.random_range(0..self.hot.len())] | u128::from(rng.random::<u8>())
        } else if rng.random_bool(0.9) {
            let r = self.regions[rng.random_range(0..self.regions.len())];
            random_in(rng, r, self.bits())
        } else {
            random_addr(rng, self.bits())
        };
        self.net(addr, len)
    }

    /// A prefix overlapping `net`: inside it, around it, or the same.
    fn overlapping(&self, rng: &mut StdRng, net: IpNetwork) -> IpNetwork {
        let len = net.prefix();
        let base = ip_u128(net.ip());
        match rng.random_range(0..3) {
            0 if len < self.bits() => {
                let l = rng.random_range(len + 1..=self.bits());
                self.net(base | random_addr(rng, self.bits()) & host_mask(len, self.bits()), l)
            }
            1 if len > 0 => self.net(base, rng.random_range(len.saturating_sub(8)..len)),
            _ => net,
        }
    }

    /// A probe address: mostly at and around prefix boundaries.
    fn probe(&self, rng: &mut StdRng, near: &[IpNetwork]) -> IpAddr {
        let bits = self.bits();
        let addr = match rng.random_range(0..10) {
            0..=6 if !near.is_empty() => {
                let n = near[rng.random_range(0..near.len())];
                let first = ip_u128(n.ip());
                let last = first | host_mask(n.prefix(), bits);
                let max = if self.v6 { u128::MAX } else { u128::from(u32::MAX) };
                match rng.random_range(0..7) {
                    0 => first.wrapping_sub(1) & max,
                    1 => first,
                    2 => first.wrapping_add(1) & max,
                    3 => last.wrapping_sub(1) & max,
                    4 => last,
                    5 => last.wrapping_add(1) & max,
                    _ => first | random_addr(rng, bits) & host_mask(n.prefix(), bits),
                }
            }
            0..=7 => self.hot[rng.random_range(0..self.hot.len())] | u128::from(rng.random::<u8>()),
            8 => {
                let r = self.regions[rng.random_range(0..self.regions.len())];
                random_in(rng, r, bits)
            }
            _ => random_addr(rng, bits),
        };
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(addr))
        } else {
            IpAddr::V4(Ipv4Addr::from(addr as u32))
        }
    }
}

fn host_mask(len: u8, bits: u8) -> u128 {
    let all = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    if len >= bits {
        0
    } else {
        all >> len
    }
}

fn random_addr(rng: &mut StdRng, bits: u8) -> u128 {
    if bits == 128 {
        rng.random()
    } else {
        u128::from(rng.random::<u32>())
    }
}

fn random_in(rng: &mut StdRng, (base, len): (u128, u8), bits: u8) -> u128 {
    let m = host_mask(len, bits);
    (base & !m) | (random_addr(rng, bits) & m)
}

fn ip_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Sets some host bits, so normalisation is exercised (the model compares
/// normalised prefixes).
fn with_host_bits(rng: &mut StdRng, net: IpNetwork) -> IpNetwork {
    let bits = if net.is_ipv4() { 32 } else { 128 };
    let m = host_mask(net.prefix(), bits);
    if m == 0 || rng.random_bool(0.7) {
        return net;
    }
    let a = ip_u128(net.ip()) | (random_addr(rng, bits) & m);
    let ip = if net.is_ipv4() { IpAddr::V4(Ipv4Addr::from(a as u32)) } else { IpAddr::V6(Ipv6Addr::from(a)) };
    IpNetwork::new(ip, net.prefix()).unwrap()
}

// ---------------------------------------------------------------------------
// Reading the filter's config map, to see table swaps (rebuilds).

/// The filter's `xdpg_filter_cfg` map.
fn config_map(prog: BorrowedFd<'_>) -> MapHandle {
    map_named(prog, "xdpg_filter_cfg")
}

/// One of the filter's maps, found through the program's map ids.
fn map_named(prog: BorrowedFd<'_>, name: &str) -> MapHandle {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a bpf_prog_info of the size given; the kernel fills it.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(rc, 0, "bpf_prog_get_info_by_fd");
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info2 = libbpf_sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: map_ids points at nr_map_ids u32s that outlive the call.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info2, &mut len) };
    assert_eq!(rc, 0, "bpf_prog_get_info_by_fd (map ids)");
    ids.into_iter()
        .filter_map(|id| MapHandle::from_map_id(id).ok())
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("the filter program uses {name}"))
}

/// Which v4 table pair the data plane reads (flips on every v4 rebuild).
fn v4_active(cfg: &MapHandle) -> u32 {
    let v = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().expect("config entry");
    // struct xdpg_filter_config: the 24-byte header, tables (bit 0: v4 pair), ...
    u32::from_ne_bytes(v[24..28].try_into().unwrap()) & 1
}

fn v6_view(cfg: &MapHandle) -> u32 {
    let v = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().expect("config entry");
    // tables bits 8-15: the live v6 view.
    (u32::from_ne_bytes(v[24..28].try_into().unwrap()) >> 8) & 0xFF
}

/// (slots holding an address, live or tombstone; slots with a live code) in
/// the active v4 host table.
fn v4_host_occupancy(prog: BorrowedFd<'_>, active: u32) -> (usize, usize) {
    let name = if active == 0 { "xdpg_v4_hosts_a" } else { "xdpg_v4_hosts_b" };
    let map = map_named(prog, name);
    let (mut used, mut live) = (0, 0);
    for i in 0..map.info().unwrap().info.max_entries {
        let b = map.lookup(&i.to_ne_bytes(), MapFlags::ANY).unwrap().expect("array entry");
        // struct xdpg_v4_bucket: 15 addresses, then meta (2-bit codes).
        let meta = u32::from_ne_bytes(b[60..64].try_into().unwrap());
        for s in 0..15 {
            let addr = u32::from_ne_bytes(b[4 * s..4 * s + 4].try_into().unwrap());
            let code = (meta >> (2 * s)) & 3;
            used += usize::from(addr != 0 || code != 0);
            live += usize::from(code != 0);
        }
    }
    (used, live)
}

/// (anchored entries, dense /48 marks) live in v6 table 0 (between edits
/// both tables hold the same entries).
fn v6_kinds(prog: BorrowedFd<'_>) -> (usize, usize) {
    let map = map_named(prog, "xdpg_v6_tab_a");
    let (mut anchored, mut dense) = (0, 0);
    for i in 0..map.info().unwrap().info.max_entries {
        let b = map.lookup(&i.to_ne_bytes(), MapFlags::ANY).unwrap().expect("array entry");
        // struct xdpg_v6_bucket: three 20-byte entries, len_code last in each
        // (bits 8-15 the code, 16-17 the kind).
        for s in 0..3 {
            let len_code = u32::from_ne_bytes(b[20 * s + 16..20 * s + 20].try_into().unwrap());
            if (len_code >> 8) & 0xFF != 0 {
                // Kinds 1 and 3: anchored among others, a /48's only one.
                anchored += usize::from(len_code >> 16 == 1 || len_code >> 16 == 3);
                dense += usize::from(len_code >> 16 == 2);
            }
        }
    }
    (anchored, dense)
}

fn v4_bucket_mask(cfg: &MapHandle) -> u32 {
    let v = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().expect("config entry");
    // After the header and tables.
    u32::from_ne_bytes(v[28..32].try_into().unwrap())
}

// ---------------------------------------------------------------------------
// The driver.

#[derive(Debug, Default)]
struct Tally {
    single_ops: usize,
    bulk_ops: usize,
    changed: usize,
    full_errors: usize,
    /// Single v4 edits (of prefixes small enough to patch in place) that
    /// made the filter rebuild and swap its v4 tables: the bucket-overflow /
    /// tombstone fallback.
    single_rebuilds: usize,
    /// Peak share of host-bucket slots in use (live or tombstone), percent.
    peak_bucket_use: usize,
    /// Peak v6 entries anchored in their /48's chain, and dense /48 marks.
    peak_anchored: usize,
    peak_dense: usize,
    probes: usize,
    dropped: usize,
    allowlisted: usize,
}

struct Run<'a> {
    filter: &'a Filter,
    cfg: MapHandle,
    model: Model,
    space: Space,
    /// The other family: a fixed set of its entries sits in both lists.
    other: Space,
    rng: StdRng,
    /// Recently removed prefixes: their boundaries are probed too.
    removed: Vec<IpNetwork>,
    tally: Tally,
}

fn list_of<'f>(f: &'f Filter, kind: ListKind) -> PrefixList<'f> {
    match kind {
        ListKind::Allow => f.allowlist(),
        // Random prefixes include /0s, which the blocklist refuses unless asked.
        ListKind::Block => f.blocklist().permit_whole_family(),
    }
}

impl Run<'_> {
    fn random_list(&mut self) -> ListKind {
        if self.rng.random_bool(0.25) {
            ListKind::Allow
        } else {
            ListKind::Block
        }
    }

    /// A random entry of the family under test.
    fn existing(&mut self) -> Option<Entry> {
        let v6 = self.space.v6;
        let ours: Vec<Entry> = self.model.entries.iter().copied().filter(|e| e.net.is_ipv6() == v6).collect();
        (!ours.is_empty()).then(|| ours[self.rng.random_range(0..ours.len())])
    }

    fn new_prefix(&mut self, kind: ListKind) -> IpNetwork {
        loop {
            let net = match self.existing() {
                Some(e) if self.rng.random_bool(0.3) => self.space.overlapping(&mut self.rng, e.net),
                _ => self.space.prefix(&mut self.rng),
            };
            // Short allow entries would swallow most of the space: keep them rare.
            let short = net.prefix() < if self.space.v6 { 40 } else { 16 };
            if kind == ListKind::Block || !short || self.rng.random_bool(0.1) {
                return net;
            }
        }
    }

    fn on_error(&mut self, what: &str, e: ListError) {
        match e {
            ListError::Full { .. } => self.tally.full_errors += 1,
            other => panic!("{what}: unexpected error {other}"),
        }
    }

    fn single(&mut self) {
        self.tally.single_ops += 1;
        let insert = self.rng.random_bool(0.62);
        let kind = self.random_list();
        let existing = if insert { None } else { self.existing() };
        let entry = match existing {
            Some(e) if self.rng.random_bool(0.9) => e,
            // An insert, or a removal of something probably absent (a no-op).
            _ => Entry { net: self.new_prefix(kind), list: kind },
        };
        self.apply_single(entry, insert);
    }

    /// Tombstone churn: a /25 or /26 in a fresh /24, removed a few edits
    /// later. Each one writes 64 or 128 host exceptions, and its removal
    /// leaves them as tombstones that only the same hosts can reuse, so the
    /// host table fills until an edit has to rebuild (compact) it.
    fn churn(&mut self, pending: &mut Vec<Entry>) {
        self.tally.single_ops += 1;
        if pending.len() >= 3 {
            let e = pending.remove(0);
            self.apply_single(e, false);
            return;
        }
        let r = self.space.regions[self.rng.random_range(0..self.space.regions.len())];
        let addr = random_in(&mut self.rng, r, 32);
        let kind = self.random_list();
        let entry = Entry { net: v4_net(addr as u32, self.rng.random_range(25..=26)), list: kind };
        if !self.model.contains(entry) {
            pending.push(entry);
            self.apply_single(entry, true);
        }
    }

    fn apply_single(&mut self, entry: Entry, insert: bool) {
        let given = with_host_bits(&mut self.rng, entry.net);
        let list = list_of(self.filter, entry.list);
        let active_before = v4_active(&self.cfg);
        let result = if insert { list.insert(given) } else { list.remove(given) };
        let what = format!("{} {given} ({:?})", if insert { "insert" } else { "remove" }, entry.list);
        match result {
            Ok(change) => {
                assert_eq!(change.entry.network, entry.net, "{what}: normalised entry");
                assert_eq!(change.entry.host_bits_cleared, given != entry.net, "{what}: normalisation reported");
                let model_changed = if insert { self.model.insert(entry) } else { self.model.remove(entry) };
                assert_eq!(change.changed, model_changed, "{what}: changed");
                if change.changed {
                    self.tally.changed += 1;
                    if !insert {
                        self.removed.push(entry.net);
                    }
                }
                // A /8 or longer is patched in place unless the buckets overflow.
                let patchable = entry.net.is_ipv4() && entry.net.prefix() >= 8;
                if change.changed && patchable && v4_active(&self.cfg) != active_before {
                    self.tally.single_rebuilds += 1;
                }
            }
            Err(e) => {
                assert!(insert, "{what}: removals never fail: {e}");
                self.on_error(&what, e);
            }
        }
    }

    fn bulk(&mut self) {
        self.tally.bulk_ops += 1;
        let kind = self.random_list();
        let list = list_of(self.filter, kind);
        let v6 = self.space.v6;
        let current: Vec<IpNetwork> = self.model.list(kind).into_iter().filter(|n| n.is_ipv6() == v6).collect();
        match self.rng.random_range(0..3) {
            0 => {
                let n = self.rng.random_range(1..60);
                let nets: Vec<IpNetwork> = (0..n).map(|_| self.new_prefix(kind)).collect();
                let given: Vec<IpNetwork> = nets.iter().map(|&n| with_host_bits(&mut self.rng, n)).collect();
                match list.extend(given.iter().copied()) {
                    Ok(change) => {
                        let mut model_changed = 0;
                        for &net in &nets {
                            model_changed += usize::from(self.model.insert(Entry { net, list: kind }));
                        }
                        assert_eq!(change.changed, model_changed, "extend: changed");
                        let distinct = nets.iter().collect::<HashSet<_>>().len();
                        assert_eq!(change.unchanged, distinct - model_changed, "extend: unchanged");
                        assert_eq!(change.duplicates, given.len() - distinct, "extend: repeats");
                        let renamed = given.iter().zip(&nets).filter(|(g, n)| g != n).count();
                        assert_eq!(change.normalized.len(), renamed, "extend: normalisations reported");
                        self.tally.changed += model_changed;
                    }
                    Err(e) => self.on_error("extend", e),
                }
            }
            1 => {
                let mut nets: Vec<IpNetwork> = current.iter().copied().filter(|_| self.rng.random_bool(0.3)).collect();
                for _ in 0..self.rng.random_range(0..5) {
                    nets.push(self.new_prefix(kind));
                }
                let change = list.remove_all(nets.iter().copied()).expect("remove_all never fails");
                let mut model_changed = 0;
                for &net in &nets {
                    if self.model.remove(Entry { net, list: kind }) {
                        model_changed += 1;
                        self.removed.push(net);
                    }
                }
                assert_eq!(change.changed, model_changed, "remove_all: changed");
                let distinct = nets.iter().collect::<HashSet<_>>().len();
                assert_eq!(
                    (change.unchanged, change.duplicates),
                    (distinct - model_changed, nets.len() - distinct),
                    "remove_all: not present, repeats"
                );
                self.tally.changed += model_changed;
            }
            _ => {
                // Keep most, drop some, add some; the other family is kept by the model below.
                let mut nets: Vec<IpNetwork> = current.iter().copied().filter(|_| self.rng.random_bool(0.75)).collect();
                for _ in 0..self.rng.random_range(0..40) {
                    nets.push(self.new_prefix(kind));
                }
                // replace() swaps the whole list, both families: pass the
                // other family's entries through unchanged.
                let other: Vec<IpNetwork> = self.model.list(kind).into_iter().filter(|n| n.is_ipv6() != v6).collect();
                let all: Vec<IpNetwork> = nets.iter().chain(&other).copied().collect();
                let before: HashSet<IpNetwork> = self.model.list(kind).into_iter().collect();
                match list.replace(all.iter().copied()) {
                    Ok(change) => {
                        let wanted: HashSet<IpNetwork> = all.iter().copied().collect();
                        let edits = wanted.symmetric_difference(&before).count();
                        assert_eq!(change.changed, edits, "replace: changed = added + removed");
                        self.tally.changed += edits;
                        // change.unchanged is not checked here: see
                        // replace_reports_kept_entries_as_unchanged.
                        for net in &current {
                            if !wanted.contains(net) {
                                self.removed.push(*net);
                            }
                        }
                        self.model.entries.retain(|e| e.list != kind);
                        // In the order given (not the set's), so runs repeat.
                        for &net in &all {
                            self.model.insert(Entry { net, list: kind });
                        }
                    }
                    Err(e) => self.on_error("replace", e),
                }
            }
        }
    }

    /// Probes `n` addresses through the real program and checks every one,
    /// then the counters and the lists.
    fn check(&mut self, n: usize, batch: usize) {
        let stats_before = self.filter.stats().unwrap();
        let mut want = FilterStats::default();
        let mut near: Vec<IpNetwork> =
            self.model.entries.iter().map(|e| e.net).filter(|n| n.is_ipv6() == self.space.v6).collect();
        let recent = self.removed.len().saturating_sub(50);
        near.extend(self.removed[recent..].iter().filter(|n| n.is_ipv6() == self.space.v6));
        let near_other: Vec<IpNetwork> =
            self.model.entries.iter().map(|e| e.net).filter(|n| n.is_ipv6() != self.space.v6).collect();
        // Mostly the family under test; some of the other, whose entries
        // the edits must never disturb.
        for i in 0..n {
            let addr = if i % 10 == 9 {
                self.other.probe(&mut self.rng, &near_other)
            } else {
                self.space.probe(&mut self.rng, &near)
            };
            let expected = self.model.verdict(addr);
            let frame = udp_from(addr);
            let run = self.filter.test_run(&frame).unwrap();
            let bytes = frame.len() as u64;
            let one = Counter { packets: 1, bytes };
            let action = match expected {
                Verdict::Block(_) => {
                    self.tally.dropped += 1;
                    if addr.is_ipv4() {
                        want.blocked_v4 = want.blocked_v4 + one;
                    } else {
                        want.blocked_v6 = want.blocked_v6 + one;
                    }
                    XdpAction::Drop
                }
                Verdict::Allow(_) => {
                    self.tally.allowlisted += 1;
                    want.allowlisted = want.allowlisted + one;
                    XdpAction::Pass
                }
                Verdict::Pass => {
                    want.passed = want.passed + one;
                    XdpAction::Pass
                }
            };
            if run.action != action {
                panic!(
                    "batch {batch}: {addr}: kernel says {:?}, model says {expected:?}\n\
                     covering allow entries: {:?}\ncovering block entries: {:?}",
                    run.action,
                    self.model
                        .entries
                        .iter()
                        .filter(|e| e.list == ListKind::Allow && covers(e.net, addr))
                        .collect::<Vec<_>>(),
                    self.model
                        .entries
                        .iter()
                        .filter(|e| e.list == ListKind::Block && covers(e.net, addr))
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(self.filter.verdict(addr).unwrap(), expected, "batch {batch}: Filter::verdict({addr})");
            self.tally.probes += 1;
        }
        let delta = self.filter.stats().unwrap().since(&stats_before);
        assert_eq!(delta, want, "batch {batch}: counters over the batch's probes");
        for kind in [ListKind::Block, ListKind::Allow] {
            let list = list_of(self.filter, kind);
            let got: Vec<IpNetwork> = list.iter().unwrap().collect();
            assert_eq!(got, self.model.list(kind), "batch {batch}: {kind} entries");
            assert_eq!(list.len().unwrap(), got.len(), "batch {batch}: {kind} len");
        }
        // contains() and matching() on a few entries and probes.
        for _ in 0..5 {
            if let Some(e) = self.existing() {
                assert!(list_of(self.filter, e.list).contains(e.net).unwrap(), "batch {batch}: contains {e:?}");
                let addr = self.space.probe(&mut self.rng, &[e.net]);
                assert_eq!(
                    list_of(self.filter, e.list).matching(addr).unwrap(),
                    self.model.matching(addr, e.list),
                    "batch {batch}: matching({addr}) in the {}",
                    e.list
                );
            }
        }
    }
}

fn load(v4_capacity: usize, v6_capacity: usize) -> Filter {
    Filter::builder()
        .v4_capacity(v4_capacity)
        .v6_capacity(v6_capacity)
        .load()
        .unwrap_or_else(|e| panic!("loading the filter failed; this test needs root and a BPF-capable kernel: {e}"))
}

fn drive(v6: bool, seed: u64, batches: usize, ops_per_batch: usize, probes: usize) -> Tally {
    let filter = load(2000, 2000);
    let mut rng = StdRng::seed_from_u64(seed);
    let space = Space::new(&mut rng, v6);
    let cfg = config_map(filter.program_fd());
    if !v6 {
        // 2000 entries → 256 buckets of 15 host slots.
        assert_eq!(v4_bucket_mask(&cfg), 255, "a small host table, so buckets overflow");
    }
    // A fixed set of the other family's entries, in both lists.
    let other = Space::new(&mut rng, !v6);
    let mut model = Model::default();
    for kind in [ListKind::Block, ListKind::Allow] {
        let nets: Vec<IpNetwork> = (0..20).map(|_| other.prefix(&mut rng)).filter(|n| n.prefix() >= 8).collect();
        list_of(&filter, kind).extend(nets.iter().copied()).unwrap();
        for net in nets {
            model.insert(Entry { net, list: kind });
        }
    }
    let mut run = Run { filter: &filter, cfg, model, space, other, rng, removed: Vec::new(), tally: Tally::default() };
    let started = Instant::now();
    let mut pending = Vec::new();
    for batch in 0..batches {
        for _ in 0..ops_per_batch {
            if !v6 && batch % 3 == 2 {
                // Twice the edits, so one churn batch alone overfills the table.
                run.churn(&mut pending);
                run.churn(&mut pending);
            } else if run.rng.random_bool(0.02) {
                run.bulk();
            } else {
                run.single();
            }
            // Stay well inside the rule capacity, so growth does not stall.
            if run.model.count_v4() > 1500 || run.model.entries.len() > 1500 {
                let kind = run.random_list();
                let drop: Vec<IpNetwork> = run
                    .model
                    .list(kind)
                    .into_iter()
                    .filter(|n| n.is_ipv6() == v6 && run.rng.random_bool(0.5))
                    .collect();
                list_of(&filter, kind).remove_all(drop.iter().copied()).unwrap();
                for net in drop {
                    run.model.remove(Entry { net, list: kind });
                    run.removed.push(net);
                }
            }
        }
        run.check(probes, batch);
        if !v6 {
            let (used, _live) = v4_host_occupancy(filter.program_fd(), v4_active(&run.cfg));
            run.tally.peak_bucket_use = run.tally.peak_bucket_use.max(used * 100 / (256 * 15));
        } else {
            let (anchored, dense) = v6_kinds(filter.program_fd());
            run.tally.peak_anchored = run.tally.peak_anchored.max(anchored);
            run.tally.peak_dense = run.tally.peak_dense.max(dense);
        }
    }
    eprintln!(
        "{} differential: {:?} in {:.1?}; final entries {}",
        if v6 { "IPv6" } else { "IPv4" },
        run.tally,
        started.elapsed(),
        run.model.entries.len()
    );
    if v6 {
        eprintln!("v6 view index at the end: {}", v6_view(&run.cfg));
    }
    run.tally
}

#[test]
fn v4_matches_the_reference_model() {
    // 200 batches: host entries are written only for hosts that differ from
    // their /24's default, so the buckets fill slowly; this many batches
    // still overflow them (5 rebuilds with this seed).
    let t = drive(false, 0x5eed_0004, 200, 50, 400);
    // The run must have exercised what it claims to.
    assert!(t.dropped > 1000 && t.allowlisted > 500 && t.probes - t.dropped - t.allowlisted > 1000, "{t:?}");
    assert!(t.single_rebuilds >= 3, "single edits must hit the bucket-overflow rebuild path: {t:?}");
    assert!(t.bulk_ops >= 20, "{t:?}");
}

#[test]
fn v6_matches_the_reference_model() {
    let t = drive(true, 0x5eed_0006, 60, 40, 400);
    assert!(t.dropped > 1000 && t.allowlisted > 500 && t.probes - t.dropped - t.allowlisted > 1000, "{t:?}");
    // Both placements of v6 entries, and /48s turning dense (hot /64s).
    assert!(t.peak_anchored >= 50 && t.peak_dense >= 2, "{t:?}");
    assert!(t.bulk_ops >= 20, "{t:?}");
}

/// Mixed /24s built from /25–/31 and /32 entries of both lists, with the
/// majority (and so the cell default) flipping back and forth: every host
/// of the /24 is checked against the model after every edit.
#[test]
fn v4_mixed_slash24s_every_host() {
    let filter = load(2000, 16);
    let mut rng = StdRng::seed_from_u64(0x24);
    let mut model = Model::default();
    let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
    let cover = v4_net(base, 23);
    for step in 0..150 {
        let len = rng.random_range(24..=32u8);
        let net = v4_net(base | rng.random_range(0..512u32), len);
        let entry = Entry { net, list: if rng.random_bool(0.3) { ListKind::Allow } else { ListKind::Block } };
        let list = list_of(&filter, entry.list);
        if model.contains(entry) && rng.random_bool(0.7) {
            assert!(list.remove(net).unwrap().changed);
            model.remove(entry);
        } else if !model.contains(entry) {
            assert!(list.insert(net).unwrap().changed);
            model.insert(entry);
        }
        // A short block over both /24s now and then flips their base verdict.
        if step % 25 == 12 {
            let e = Entry { net: cover, list: ListKind::Block };
            if model.remove(e) {
                filter.blocklist().remove(cover).unwrap();
            } else {
                model.insert(e);
                filter.blocklist().insert(cover).unwrap();
            }
        }
        for host in 0..512u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(base | host));
            let frame = udp_from(addr);
            let want = match model.verdict(addr) {
                Verdict::Block(_) => XdpAction::Drop,
                _ => XdpAction::Pass,
            };
            let got = filter.test_run(&frame).unwrap().action;
            assert_eq!(got, want, "step {step}: {addr}; model {:?}", model.verdict(addr));
        }
    }
}

/// `replace` reports what it did like the other bulk edits: `changed`
/// counts entries added or removed, `unchanged` the entries of the new list
/// that were already there.
#[test]
fn replace_reports_kept_entries_as_unchanged() {
    let filter = load(64, 64);
    let list = filter.blocklist();
    let a = "192.0.2.0/24".parse().unwrap();
    let b = "198.51.100.0/24".parse().unwrap();
    let c = "203.0.113.0/24".parse().unwrap();
    list.extend([a, b, c]).unwrap();
    // Keep a, drop b and c.
    let change = list.replace([a]).unwrap();
    assert_eq!(list.iter().unwrap().collect::<Vec<_>>(), vec![a]);
    assert_eq!((change.changed, change.unchanged), (2, 1), "replace [a,b,c] → [a]: {change:?}");
}

/// When even a rebuild cannot fit the host exceptions, the edit fails with
/// `ListError::Full`, and both the lists and what the data plane does stay
/// exactly as they were (single edits and atomic bulk edits alike).
#[test]
fn full_host_table_leaves_lists_and_verdicts_as_they_were() {
    // Capacity 16 → the minimum of 64 buckets (960 host slots).
    let filter = load(16, 16);
    let mut model = Model::default();
    let mut rng = StdRng::seed_from_u64(0xf011);
    let check = |model: &Model, nets: &[IpNetwork], what: &str| {
        assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), model.list(ListKind::Block), "{what}");
        for net in nets {
            let IpNetwork::V4(n) = net else { unreachable!() };
            let first = u32::from(n.network()) & !0xFF;
            for host in (0..256).step_by(3) {
                let addr = IpAddr::V4(Ipv4Addr::from(first | host));
                let want =
                    if matches!(model.verdict(addr), Verdict::Block(_)) { XdpAction::Drop } else { XdpAction::Pass };
                let got = filter.test_run(&udp_from(addr)).unwrap().action;
                assert_eq!(got, want, "{what}: {addr}");
                assert_eq!(filter.verdict(addr).unwrap(), model.verdict(addr), "{what}: verdict({addr})");
            }
        }
    };
    // /25s in distinct /24s: 128 exceptions each, until the table is full.
    let mut tried = Vec::new();
    let mut full = false;
    for i in 0..16u32 {
        let net = v4_net(0x0A00_0000 | (i << 8), 25);
        tried.push(net);
        match filter.blocklist().insert(net) {
            Ok(c) => {
                assert!(c.changed);
                model.insert(Entry { net, list: ListKind::Block });
            }
            Err(ListError::Full { capacity, .. }) => {
                assert!(capacity >= 64 * 15, "the host table's capacity is reported: {capacity}");
                full = true;
                break;
            }
            Err(e) => panic!("insert {net}: {e}"),
        }
    }
    assert!(full, "960 host slots cannot hold 16 half-/24s");
    check(&model, &tried, "after a failed single insert");
    // An atomic bulk edit that does not fit changes nothing either.
    let bulk: Vec<IpNetwork> = (16..24u32).map(|i| v4_net(0x0A00_0000 | (i << 8) | 0x80, 25)).collect();
    let err = filter.blocklist().extend(bulk.iter().copied()).expect_err("does not fit");
    assert!(matches!(err, ListError::Full { .. }), "{err}");
    tried.extend(&bulk);
    check(&model, &tried, "after a failed extend");
    // Removing frees room again, and the freed room is usable: by the
    // half of the removed /25 (its hosts' slots are the ones freed; a /26
    // elsewhere fits only where its hosts' buckets have room, which the
    // filter's random hash seed decides: it failed once in CI, 0 of 46
    // runs here).
    let gone = model.list(ListKind::Block)[rng.random_range(0..model.entries.len())];
    filter.blocklist().remove(gone).unwrap();
    model.remove(Entry { net: gone, list: ListKind::Block });
    let IpNetwork::V4(half) = gone else { unreachable!() };
    let net = v4_net(u32::from(half.network()), 26);
    filter.blocklist().insert(net).unwrap();
    model.insert(Entry { net, list: ListKind::Block });
    tried.push(net);
    check(&model, &tried, "after freeing room");
}

/// IPv6 churn in a small bucket table: removals leave tombstones that only
/// the same prefix may reuse, so a stream of new prefixes fills the chains
/// and forces the packing rebuild (both tables, then a switch). Every entry
/// present, and every one removed, is checked in the kernel after each step.
#[test]
fn v6_tombstones_force_packing_rebuilds_without_wrong_verdicts() {
    // Capacity 64 → 64 buckets of three entries.
    let filter = load(16, 64);
    let cfg = config_map(filter.program_fd());
    let mut model = Model::default();
    let mut rng = StdRng::seed_from_u64(0x7006);
    let base: u128 = 0x2001_0db8 << 96;
    let mut switches = 0;
    let mut view = v6_view(&cfg);
    let mut gone: Vec<IpNetwork> = Vec::new();
    for step in 0..600u128 {
        // A fresh /128 or /64 each step; keep at most 40 present.
        let len = if step % 3 == 0 { 64 } else { 128 };
        let net = v6_net(base | (step << 64) | u128::from(rng.random::<u16>()), len);
        let entry = Entry { net, list: if step % 7 == 0 { ListKind::Allow } else { ListKind::Block } };
        assert!(list_of(&filter, entry.list).insert(net).unwrap().changed, "step {step}: insert {net}");
        model.insert(entry);
        if model.entries.len() > 40 {
            let old = model.entries[rng.random_range(0..model.entries.len())];
            assert!(list_of(&filter, old.list).remove(old.net).unwrap().changed);
            model.remove(old);
            gone.push(old.net);
        }
        // Both lengths are in use from step 1 on, so from then on only a
        // packing rebuild switches the view.
        if step > 1 && v6_view(&cfg) != view {
            switches += 1;
        }
        view = v6_view(&cfg);
        if step % 25 == 0 || step == 599 {
            let recent_gone = gone.iter().rev().take(40);
            for net in model.entries.iter().map(|e| e.net).chain(recent_gone.copied()) {
                let addr = net.ip();
                let want = match model.verdict(addr) {
                    Verdict::Block(_) => XdpAction::Drop,
                    _ => XdpAction::Pass,
                };
                assert_eq!(filter.test_run(&udp_from(addr)).unwrap().action, want, "step {step}: {addr}");
                assert_eq!(filter.verdict(addr).unwrap(), model.verdict(addr), "step {step}: verdict({addr})");
            }
        }
    }
    // 560 retired prefixes cannot fit in 192 slots without packing.
    assert!(switches >= 2, "packing rebuilds switched the live v6 table {switches} times");
}
