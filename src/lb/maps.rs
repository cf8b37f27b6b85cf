//! The load balancer's maps (`src/bpf/lb_maps.h`), typed, and what the LB
//! does with them: its config entry, the backend slots, the per-VIP Maglev
//! tables, the recorded next hops and the counters.

use std::mem::offset_of;
use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::conntrack::{self, Ct4};
use super::layout::{
    xdpg_counter, xdpg_lb_addr_key, xdpg_lb_backend, xdpg_lb_backend_stats, xdpg_lb_config, xdpg_lb_conn,
    xdpg_lb_ct4_line, xdpg_lb_flow, xdpg_lb_flow4, xdpg_lb_nat_rev, xdpg_lb_nbr_key, xdpg_lb_vip, xdpg_lb_vip_key,
    xdpg_lb_vip_key4, xdpg_lb_vip_stats,
};
use super::neigh::{self, HopKey, NsId};
use crate::core::grace;
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::{program_maps, ArrayOfMaps, DevMap, Hash, Mmapped, Opaque, PerCpu, TypedMap};
use crate::core::mmap::cfg_fields;
use crate::error::LbError;
use crate::Counter;

program_maps! {
    /// The load balancer's maps (the per-CPU scratch space and VIP cache
    /// are the program's alone: not pinned).
    pub(crate) struct LbMaps {
        config cfg: Mmapped<xdpg_lb_config> = names::XDPG_LB_CFG,
        vips4: Hash<xdpg_lb_vip_key4, xdpg_lb_vip> = names::XDPG_LB_VIPS4,
        vips6: Hash<xdpg_lb_vip_key, xdpg_lb_vip> = names::XDPG_LB_VIPS6,
        vip_addrs: Hash<xdpg_lb_addr_key, u32> = names::XDPG_LB_VADDRS,
        tables: ArrayOfMaps = names::XDPG_LB_TABLES,
        backends: Mmapped<xdpg_lb_backend> = names::XDPG_LB_BACKEND,
        conns4: Mmapped<xdpg_lb_ct4_line> = names::XDPG_LB_CONNS4,
        conns6: Hash<xdpg_lb_flow, xdpg_lb_conn> = names::XDPG_LB_CONNS6,
        nat4: Hash<xdpg_lb_flow4, xdpg_lb_nat_rev> = names::XDPG_LB_NAT4,
        nat6: Hash<xdpg_lb_flow, xdpg_lb_nat_rev> = names::XDPG_LB_NAT6,
        vip_counters: PerCpu<xdpg_lb_vip_stats> = names::XDPG_LB_VIPCNT,
        backend_counters: PerCpu<xdpg_lb_backend_stats> = names::XDPG_LB_BECNT,
        counters: PerCpu<xdpg_counter> = names::XDPG_LB_CNT,
        next_hops: Opaque = names::XDPG_LB_NEXTHOP,
        rate: Opaque = names::XDPG_LB_RATE,
        devmap: DevMap = names::XDPG_LB_DEVMAP,
        neighbours: Hash<xdpg_lb_nbr_key, u32> = names::XDPG_LB_NBRS,
    }
}

/// Sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub max_vips: u32,
    pub max_backends: u32,
    pub connections: u32,
    pub nat_connections: u32,
    pub devices: u32,
}

impl Capacity {
    /// The maps' sizes, for loading.
    pub(crate) fn map_sizes(&self) -> [(&'static str, u32); 14] {
        [
            (names::XDPG_LB_VIPS4, self.max_vips),
            (names::XDPG_LB_VIPS6, self.max_vips),
            (names::XDPG_LB_VADDRS, self.max_vips),
            (names::XDPG_LB_TABLES, self.max_vips),
            (names::XDPG_LB_VIPCNT, self.max_vips),
            (names::XDPG_LB_BACKEND, self.max_backends),
            (names::XDPG_LB_BECNT, self.max_backends),
            (names::XDPG_LB_NEXTHOP, self.max_backends),
            (names::XDPG_LB_NBRS, self.max_backends),
            (names::XDPG_LB_CONNS4, conntrack::lines_for(self.connections)),
            (names::XDPG_LB_CONNS6, self.connections),
            (names::XDPG_LB_NAT4, self.nat_connections),
            (names::XDPG_LB_NAT6, self.nat_connections),
            (names::XDPG_LB_DEVMAP, self.devices),
        ]
    }
}

/// A hint for map failures: what usually causes them.
pub(crate) const MAP_HINT: &str = "check that the process still has CAP_BPF and that the pinned maps were not \
                                   removed; reopen the load balancer if they were recreated";

/// Turns a map operation's error into an [`LbError::Map`] saying what was
/// being done.
pub(crate) fn map_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> LbError {
    let op = op.into();
    move |source| LbError::Map { op, error: source, hint: MAP_HINT }
}

impl LbMaps {
    pub(crate) fn capacity(&self) -> Capacity {
        Capacity {
            max_vips: self.vips4.capacity(),
            max_backends: self.backends.len() as u32,
            connections: self.conns6.capacity(),
            nat_connections: self.nat4.capacity(),
            devices: self.devmap.capacity(),
        }
    }

    /// The IPv4 connection table.
    pub(crate) fn ct4(&self) -> Ct4<'_> {
        Ct4 { lines: &self.conns4, seed: self.hash_seed().load(Ordering::Acquire) }
    }

    cfg_fields! {
        xdpg_lb_config;
        hash_seed: AtomicU32 => atomic_u32,
        nat_vips: AtomicU32 => atomic_u32,
        allport_vips: AtomicU32 => atomic_u32,
        next_backend: AtomicU32 => atomic_u32,
        ct4_mask: AtomicU32 => atomic_u32,
        udp_timeout: AtomicU64 => atomic_u64,
        ns_per_jiffy: AtomicU64 => atomic_u64,
        new_flow_interval: AtomicU64 => atomic_u64,
        new_flow_burst: AtomicU64 => atomic_u64,
        nexthop_ttl: AtomicU64 => atomic_u64,
        ipip_v4_src: AtomicU32 => atomic_u32,
        ipip_v4_mask: AtomicU32 => atomic_u32,
    }

    /// The network namespace the LB was loaded in.
    pub(crate) fn netns(&self) -> NsId {
        let c = self.config();
        NsId { dev: c.netns_dev, ino: c.netns_ino }
    }

    /// The next hops whose managed neighbour entries this LB created.
    pub(crate) fn recorded_hops(&self) -> std::collections::BTreeSet<HopKey> {
        self.neighbours
            .keys()
            .filter_map(|k| Some(HopKey { ifindex: k.ifindex, addr: super::state::ip_from_words(k.family, k.addr)? }))
            .collect()
    }

    fn hop_key(hop: HopKey) -> xdpg_lb_nbr_key {
        xdpg_lb_nbr_key {
            addr: super::hash::addr_words(hop.addr),
            ifindex: hop.ifindex,
            family: super::hash::family_code(hop.addr),
            pad: [0; 3],
        }
    }

    /// Records a managed neighbour entry this LB created, as `owner`'s
    /// (its namespace's, `hops::hop_owner`).
    pub(crate) fn record_hop(&self, hop: HopKey, owner: u32) -> std::io::Result<()> {
        self.neighbours.insert(&Self::hop_key(hop), &owner, libbpf_rs::MapFlags::ANY)
    }

    /// Whether another load balancer in this one's network namespace
    /// (another `xdpg_lb_nbrs` map than this one's, found in the kernel's
    /// list of maps, whose record of `hop` names `owner`, this LB's
    /// namespace) still needs the managed entry for `hop`: then it stays.
    /// A record of an earlier build names no namespace (0): `Maybe`, and
    /// the entry stays while that record does not say (its LB's next
    /// reconciling writes its owner). An LB in another namespace whose next
    /// hop has the same interface index and address does not keep this
    /// namespace's entry (it did, before the records named their
    /// namespace).
    pub(crate) fn hop_recorded_elsewhere(&self, hop: HopKey, owner: u32) -> neigh::Shared {
        use libbpf_rs::MapCore;
        let own = self.neighbours.handle().info().map(|i| i.info.id).ok();
        let key = Self::hop_key(hop);
        let mut shared = neigh::Shared::No;
        for m in libbpf_rs::query::MapInfoIter::default().filter(|m| m.name == names::XDPG_LB_NBRS && Some(m.id) != own)
        {
            let theirs = libbpf_rs::MapHandle::from_map_id(m.id)
                .ok()
                .and_then(|h| h.lookup(bytemuck::bytes_of(&key), libbpf_rs::MapFlags::ANY).ok().flatten())
                .and_then(|v| v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
            match theirs {
                Some(theirs) if theirs == owner => return neigh::Shared::Yes,
                Some(0) => shared = neigh::Shared::Maybe,
                _ => {}
            }
        }
        shared
    }

    /// Forgets one (it was removed, or is no longer ours).
    pub(crate) fn forget_hop(&self, hop: HopKey) -> std::io::Result<()> {
        self.neighbours.remove(&Self::hop_key(hop)).map(drop)
    }

    /// How many VIPs use `addr`: the data plane's set of VIP addresses
    /// (for ICMP echo and fragments), counted so VIPs can share an address.
    pub(crate) fn vip_addr_users(&self, addr: IpAddr) -> Result<Option<u32>, LbError> {
        self.vip_addrs.get(&super::state::addr_key(addr)).map_err(map_err("reading VIP addresses"))
    }

    /// Sets that count; at 0 the address stops being a VIP address.
    pub(crate) fn set_vip_addr_users(&self, addr: IpAddr, n: u32) -> Result<(), LbError> {
        let key = super::state::addr_key(addr);
        if n == 0 {
            let _ = self.vip_addrs.remove(&key);
            return Ok(());
        }
        self.vip_addrs.insert(&key, &n, libbpf_rs::MapFlags::ANY).map_err(map_err("updating VIP addresses"))
    }

    /// A config field counted in kernel jiffies, as a duration.
    pub(crate) fn duration(&self, field: &AtomicU64) -> Duration {
        let tick = self.ns_per_jiffy().load(Ordering::Acquire);
        Duration::from_nanos(field.load(Ordering::Acquire).saturating_mul(tick))
    }

    /// Stores a duration into a config field counted in kernel jiffies.
    pub(crate) fn set_duration(&self, field: &AtomicU64, d: Duration) {
        let tick = self.ns_per_jiffy().load(Ordering::Acquire);
        field.store(to_jiffies(d, tick), Ordering::Release);
    }

    /// The four policy bytes (echo, fragments, options, pad) as one word.
    pub(crate) fn policies(&self) -> &AtomicU32 {
        self.cfg.atomic_u32(0, offset_of!(xdpg_lb_config, echo_policy))
    }

    /// Word `i` of the IPv6 IPIP source prefix (0..4), or of its mask (4..6).
    pub(crate) fn ipip_v6_word(&self, i: usize) -> &AtomicU32 {
        let base = if i < 4 {
            offset_of!(xdpg_lb_config, ipip_v6_src) + 4 * i
        } else {
            offset_of!(xdpg_lb_config, ipip_v6_mask) + 4 * (i - 4)
        };
        self.cfg.atomic_u32(0, base)
    }

    pub(crate) fn config(&self) -> xdpg_lb_config {
        self.cfg.get(0)
    }

    /// The word at offset 16 of a backend slot: port, family, flags.
    fn backend_head(&self, id: u32) -> &AtomicU32 {
        self.backends.atomic_u32(id as usize, offset_of!(xdpg_lb_backend, port))
    }

    /// Fills a free backend slot and makes it live, gen bumped so stale
    /// connection entries for the slot's previous owner miss.
    pub(crate) fn write_backend(&self, id: u32, mut value: xdpg_lb_backend) -> u32 {
        let old = self.backends.get(id as usize);
        value.gen = old.gen.wrapping_add(1);
        let live = value;
        // Not live while the rest changes: a reader sees the old owner
        // (inactive) or the new one.
        value.flags = 0;
        self.backend_head(id).store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        self.backends.set(id as usize, value);
        fence(Ordering::SeqCst);
        let head: [u16; 2] = [live.port, u16::from_ne_bytes([live.family, live.flags])];
        self.backend_head(id).store(bytemuck::cast(head), Ordering::Release);
        live.gen
    }

    /// Updates a live slot's weight (user-space bookkeeping only).
    pub(crate) fn set_backend_weight(&self, id: u32, weight: u32) {
        self.backends.atomic_u32(id as usize, offset_of!(xdpg_lb_backend, weight)).store(weight, Ordering::Release);
    }

    /// Sets or clears a live slot's user-space flag `flag`
    /// (`XDPG_LB_BACKEND_CHECKER_DRAINED`) with one atomic read-modify-write
    /// of its head word, so the data plane's `ACTIVE` bit, read from the
    /// same byte, never changes under it.
    pub(crate) fn set_backend_flag(&self, id: u32, flag: u8, on: bool) {
        let mut bytes = [0u8; 4];
        bytes[offset_of!(xdpg_lb_backend, flags) - offset_of!(xdpg_lb_backend, port)] = flag;
        let mask = u32::from_ne_bytes(bytes);
        let head = self.backend_head(id);
        if on {
            head.fetch_or(mask, Ordering::AcqRel);
        } else {
            head.fetch_and(!mask, Ordering::AcqRel);
        }
    }

    /// A slot's flags byte.
    pub(crate) fn backend_flags(&self, id: u32) -> u8 {
        self.backends.get(id as usize).flags
    }

    /// Bumps a live slot's gen in place: its tracked flows miss and choose
    /// afresh from their next packet, while the slot, its address and its
    /// counters stay. One store: a reader sees the old gen (the flow still
    /// goes there, as before) or the new one (it chooses again).
    pub(crate) fn renew_backend_gen(&self, id: u32) {
        self.backends.atomic_u32(id as usize, offset_of!(xdpg_lb_backend, gen)).fetch_add(1, Ordering::AcqRel);
    }

    /// Frees slots: tracked flows to them choose afresh from the next
    /// packet. Each goes inactive first; the rest is cleared only once no
    /// packet still reads it ([`grace::wait`], one for all of them): a
    /// packet that found a slot active just before reads its address
    /// after, and cleared under it, that was family 0 (dropped as
    /// unsupported) or, reused, another backend's.
    pub(crate) fn free_backends(&self, ids: impl IntoIterator<Item = u32>) {
        let ids: Vec<u32> = ids.into_iter().collect();
        if ids.is_empty() {
            return;
        }
        for &id in &ids {
            self.backend_head(id).store(0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        grace::wait();
        for id in ids {
            let gen = self.backends.get(id as usize).gen;
            self.backends.set(id as usize, xdpg_lb_backend { gen, ..Default::default() });
        }
    }

    /// Makes `table` the VIP slot's Maglev table with one map-in-map update
    /// (or removes it: the VIP then has no usable backend). A packet sees
    /// the old table or the new one, never a mix.
    pub(crate) fn publish_table(&self, index: u32, table: Option<&[u32]>) -> Result<(), LbError> {
        let op = match table {
            Some(t) => format!("publishing a {}-slot Maglev table", t.len()),
            None => "removing a Maglev table".into(),
        };
        self.tables.publish(index, names::XDPG_LB_TABLE, table).map_err(map_err(op))
    }

    /// Reads back a VIP slot's live table (tests and diagnostics).
    pub(crate) fn read_table(&self, index: u32) -> Result<Option<Vec<u32>>, LbError> {
        self.tables.read(index, XDPG_LB_NO_BACKEND).map_err(map_err("reading a Maglev table"))
    }

    pub(crate) fn vip_stats(&self, index: u32) -> Result<xdpg_lb_vip_stats, LbError> {
        self.vip_counters.sum(index).map_err(map_err("reading the VIP counters"))
    }

    /// A backend slot's (traffic, no-neighbour) counters, summed over CPUs.
    pub(crate) fn backend_stats(&self, id: u32) -> Result<(Counter, Counter), LbError> {
        let s = self.backend_counters.sum(id).map_err(map_err("reading the backend counters"))?;
        Ok((
            Counter { packets: s.packets, bytes: s.bytes },
            Counter { packets: s.no_neigh_packets, bytes: s.no_neigh_bytes },
        ))
    }

    pub(crate) fn global_counters(&self) -> Result<Vec<Counter>, LbError> {
        (0..XDPG_LB_COUNTER_COUNT)
            .map(|i| self.counters.sum(i).map(Counter::from).map_err(map_err("reading the LB counters")))
            .collect()
    }
}

/// The kernel's tick length: the resolution of the coarse monotonic clock
/// (the data plane keeps time in jiffies, which cost nothing to read).
pub(crate) fn ns_per_jiffy() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec for the duration of the call.
    let ret = unsafe { nix::libc::clock_getres(nix::libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    if ret != 0 || ns == 0 {
        4_000_000 // HZ=250, the most common
    } else {
        ns
    }
}

/// A UDP idle timeout in jiffies: below `u32::MAX`, since the program
/// compares it with a 32-bit difference of ticks (`lb.bpf.c`), which never
/// exceeds `u32::MAX`: a timeout of that or more would never expire (about
/// 49 days at 1000 Hz).
pub(crate) fn udp_timeout_jiffies(d: Duration, ns_per_jiffy: u64) -> u64 {
    to_jiffies(d, ns_per_jiffy).min(u64::from(u32::MAX) - 1)
}

/// A duration in ticks, rounded up (so a timeout is never shorter than asked).
pub(crate) fn to_jiffies(d: Duration, ns_per_jiffy: u64) -> u64 {
    let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    ns.div_ceil(ns_per_jiffy.max(1))
}
