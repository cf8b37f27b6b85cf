//! The load balancer's maps as owned handles, whether just loaded or
//! reopened from pins: typed access to the config entry, the backend slots,
//! the per-VIP Maglev tables and the counters.

use std::mem::{offset_of, MaybeUninit};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::layout::lb_skel::LbSkelBuilder;
use super::layout::{xdpg_lb_backend, xdpg_lb_backend_stats, xdpg_lb_config, xdpg_lb_nbr_key, xdpg_lb_vip_stats};
use super::neigh::{HopKey, NsId};
use crate::error::{io_from_libbpf, missing_privileges, LbError, LoadError, PinError};
use crate::core::maps::{load_err, program_fd, MapSet};
use crate::Counter;
use crate::core::layout::consts::*;
use crate::core::mmap::{cfg_fields, MappedArray};
use crate::core::pin::PinDir;

/// The name of the LB program, also its pin name.
pub(crate) const PROGRAM_NAME: &str = "xdpg_lb";
/// The pin that marks a directory as holding a load balancer.
pub(crate) const MARKER: &str = "xdpg_lb_cfg";
/// What PinDir calls it in messages.
pub(crate) const KIND: &str = "load balancer";

const MAP_NAMES: [&str; 17] = [
    "xdpg_lb_cfg",
    "xdpg_lb_vips4",
    "xdpg_lb_vips6",
    "xdpg_lb_vaddrs",
    "xdpg_lb_tables",
    "xdpg_lb_backend",
    "xdpg_lb_conns4",
    "xdpg_lb_conns6",
    "xdpg_lb_nat4",
    "xdpg_lb_nat6",
    "xdpg_lb_vipcnt",
    "xdpg_lb_becnt",
    "xdpg_lb_cnt",
    "xdpg_lb_nexthop",
    "xdpg_lb_rate",
    "xdpg_lb_devmap",
    "xdpg_lb_nbrs",
];

/// Sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub max_vips: u32,
    pub max_backends: u32,
    pub connections: u32,
    pub nat_connections: u32,
    pub devices: u32,
}

/// A hint for map failures: what usually causes them.
pub(crate) const MAP_HINT: &str = "check that the process still has CAP_BPF and that the pinned maps were not \
                                   removed; reopen the load balancer if they were recreated";

pub(crate) fn map_err(op: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> LbError {
    let op = op.into();
    move |e| LbError::Map { op, source: io_from_libbpf(e), hint: MAP_HINT }
}

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> LbError {
    let op = op.into();
    move |source| LbError::Map { op, source, hint: MAP_HINT }
}

pub(crate) struct LbMaps {
    pub set: MapSet,
    pub cfg: MappedArray<xdpg_lb_config>,
    pub backends: MappedArray<xdpg_lb_backend>,
}

impl LbMaps {
    fn new(set: MapSet) -> std::io::Result<Self> {
        Ok(Self {
            cfg: MappedArray::new(set.get("xdpg_lb_cfg"))?,
            backends: MappedArray::new(set.get("xdpg_lb_backend"))?,
            set,
        })
    }

    pub(crate) fn handle(&self, name: &str) -> &MapHandle {
        self.set.get(name)
    }

    pub(crate) fn capacity(&self) -> Capacity {
        Capacity {
            max_vips: self.handle("xdpg_lb_vips4").max_entries(),
            max_backends: self.backends.len() as u32,
            connections: self.handle("xdpg_lb_conns4").max_entries(),
            nat_connections: self.handle("xdpg_lb_nat4").max_entries(),
            devices: self.handle("xdpg_lb_devmap").max_entries(),
        }
    }

    cfg_fields! {
        xdpg_lb_config;
        hash_seed: AtomicU32 => atomic_u32,
        nat_vips: AtomicU32 => atomic_u32,
        allport_vips: AtomicU32 => atomic_u32,
        next_backend: AtomicU32 => atomic_u32,
        dirty: AtomicU32 => atomic_u32,
        generation: AtomicU64 => atomic_u64,
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
        self.handle("xdpg_lb_nbrs")
            .keys()
            .filter_map(|k| {
                let k: xdpg_lb_nbr_key = bytemuck::pod_read_unaligned(&k);
                let addr = super::state::ip_from_words(k.family, k.addr)?;
                Some(HopKey { ifindex: k.ifindex, addr })
            })
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

    /// Records a managed neighbour entry this LB created.
    pub(crate) fn record_hop(&self, hop: HopKey) -> std::io::Result<()> {
        let key = Self::hop_key(hop);
        self.handle("xdpg_lb_nbrs")
            .update(bytemuck::bytes_of(&key), &0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(io_from_libbpf)
    }

    /// Forgets one (it was removed, or is no longer ours).
    pub(crate) fn forget_hop(&self, hop: HopKey) -> std::io::Result<()> {
        let key = Self::hop_key(hop);
        match self.handle("xdpg_lb_nbrs").delete(bytemuck::bytes_of(&key)) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(io_from_libbpf(e)),
            _ => Ok(()),
        }
    }

    /// How many VIPs use `addr`: the data plane's set of VIP addresses
    /// (for ICMP echo and fragments), counted so VIPs can share an address.
    pub(crate) fn vip_addr_users(&self, addr: IpAddr) -> Result<Option<u32>, LbError> {
        let key = super::state::addr_key(addr);
        Ok(self
            .handle("xdpg_lb_vaddrs")
            .lookup(bytemuck::bytes_of(&key), MapFlags::ANY)
            .map_err(map_err("reading VIP addresses"))?
            .map(|v| u32::from_ne_bytes(v[..4].try_into().expect("4 bytes"))))
    }

    /// Sets that count; at 0 the address stops being a VIP address.
    pub(crate) fn set_vip_addr_users(&self, addr: IpAddr, n: u32) -> Result<(), LbError> {
        let key = super::state::addr_key(addr);
        let map = self.handle("xdpg_lb_vaddrs");
        if n == 0 {
            let _ = map.delete(bytemuck::bytes_of(&key));
            return Ok(());
        }
        map.update(bytemuck::bytes_of(&key), &n.to_ne_bytes(), MapFlags::ANY).map_err(map_err("updating VIP addresses"))
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
        let head: [u8; 4] = bytemuck::cast_slice(&[live])[16..20].try_into().expect("4 bytes");
        self.backend_head(id).store(u32::from_ne_bytes(head), Ordering::Release);
        live.gen
    }

    /// Updates a live slot's weight (user-space bookkeeping only).
    pub(crate) fn set_backend_weight(&self, id: u32, weight: u32) {
        self.backends.atomic_u32(id as usize, offset_of!(xdpg_lb_backend, weight)).store(weight, Ordering::Release);
    }

    /// Frees a slot: tracked flows to it choose afresh from the next packet.
    pub(crate) fn free_backend(&self, id: u32) {
        self.backend_head(id).store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        let mut v = self.backends.get(id as usize);
        let gen = v.gen;
        v = xdpg_lb_backend { gen, ..Default::default() };
        self.backends.set(id as usize, v);
    }

    /// Makes `table` the VIP slot's Maglev table with one map-in-map update
    /// (or removes it: the VIP then has no usable backend). A packet sees
    /// the old table or the new one, never a mix.
    pub(crate) fn publish_table(&self, index: u32, table: Option<&[u32]>) -> Result<(), LbError> {
        let outer = self.handle("xdpg_lb_tables");
        let key = index.to_ne_bytes();
        let Some(table) = table else {
            return match outer.delete(&key) {
                Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(map_err("removing a Maglev table")(e)),
                _ => Ok(()),
            };
        };
        let size = table.len() as u32;
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_INNER_MAP,
            ..Default::default()
        };
        let inner = MapHandle::create(MapType::Array, Some("xdpg_lb_table"), 4, 4, size, &opts)
            .map_err(map_err(format!("creating a {size}-slot Maglev table")))?;
        let keys: Vec<u8> = (0..size).flat_map(|k| k.to_ne_bytes()).collect();
        let values: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
        inner
            .update_batch(&keys, &values, size, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_err("filling a Maglev table"))?;
        let fd = inner.as_fd().as_raw_fd() as u32;
        outer.update(&key, &fd.to_ne_bytes(), MapFlags::ANY).map_err(map_err("swapping in a Maglev table"))
        // `inner` closes here; the outer map holds the table from now on.
    }

    /// Reads back a VIP slot's live table (tests and diagnostics).
    pub(crate) fn read_table(&self, index: u32) -> Result<Option<Vec<u32>>, LbError> {
        let outer = self.handle("xdpg_lb_tables");
        let Some(id) = outer.lookup(&index.to_ne_bytes(), MapFlags::ANY).map_err(map_err("reading a table id"))? else {
            return Ok(None);
        };
        let id = u32::from_ne_bytes(id[..4].try_into().expect("4 bytes"));
        let inner = MapHandle::from_map_id(id).map_err(map_err("opening a Maglev table"))?;
        let n = inner.max_entries();
        let mut out = Vec::with_capacity(n as usize);
        for k in 0..n {
            let v = inner.lookup(&k.to_ne_bytes(), MapFlags::ANY).map_err(map_err("reading a Maglev table"))?;
            out.push(v.map(|v| u32::from_ne_bytes(v[..4].try_into().expect("4 bytes"))).unwrap_or(XDPG_LB_NO_BACKEND));
        }
        Ok(Some(out))
    }

    pub(crate) fn vip_stats(&self, index: u32) -> Result<xdpg_lb_vip_stats, LbError> {
        self.set
            .sum_percpu("xdpg_lb_vipcnt", index, |a: xdpg_lb_vip_stats, b| xdpg_lb_vip_stats {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
                new_flows: a.new_flows + b.new_flows,
                lru_hits: a.lru_hits + b.lru_hits,
                lru_misses: a.lru_misses + b.lru_misses,
            })
            .map_err(io_err("reading xdpg_lb_vipcnt"))
    }

    /// A backend slot's (traffic, no-neighbour) counters, summed over CPUs.
    pub(crate) fn backend_stats(&self, id: u32) -> Result<(Counter, Counter), LbError> {
        let s = self
            .set
            .sum_percpu("xdpg_lb_becnt", id, |a: xdpg_lb_backend_stats, b| xdpg_lb_backend_stats {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
                no_neigh_packets: a.no_neigh_packets + b.no_neigh_packets,
                no_neigh_bytes: a.no_neigh_bytes + b.no_neigh_bytes,
            })
            .map_err(io_err("reading xdpg_lb_becnt"))?;
        Ok((
            Counter { packets: s.packets, bytes: s.bytes },
            Counter { packets: s.no_neigh_packets, bytes: s.no_neigh_bytes },
        ))
    }

    pub(crate) fn counters(&self) -> Result<Vec<Counter>, LbError> {
        (0..XDPG_LB_COUNTER_COUNT)
            .map(|i| self.set.counter("xdpg_lb_cnt", i).map_err(io_err("reading xdpg_lb_cnt")))
            .collect()
    }

    /// Zeroes one entry of a per-CPU map on every CPU.
    pub(crate) fn zero_percpu(&self, map: &str, key: u32) -> Result<(), LbError> {
        self.set.zero_percpu(map, key).map_err(io_err(format!("resetting {map}")))
    }

    /// Reopens the maps pinned in `dir`, checking they are an LB's.
    pub(crate) fn open_pinned(dir: &PinDir) -> Result<Self, PinError> {
        let maps = Self::new(MapSet::open_pinned(dir, &MAP_NAMES)?).map_err(|source| PinError::Io {
            op: "mapping",
            path: dir.path().to_owned(),
            source,
        })?;
        let cfg = maps.config();
        if cfg.magic != XDPG_LB_MAGIC {
            return Err(PinError::NotOurs { path: dir.path().to_owned(), kind: KIND, found: MARKER.into() });
        }
        if cfg.layout_version != XDPG_LB_LAYOUT_VERSION {
            return Err(PinError::Incompatible {
                path: dir.path().to_owned(),
                found: cfg.layout_version,
                expected: XDPG_LB_LAYOUT_VERSION,
            });
        }
        Ok(maps)
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

/// A duration in ticks, rounded up (so a timeout is never shorter than asked).
pub(crate) fn to_jiffies(d: Duration, ns_per_jiffy: u64) -> u64 {
    let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    ns.div_ceil(ns_per_jiffy.max(1))
}

/// Loads the LB program and creates its maps, sized by `cap`, with `cfg`
/// as the initial config entry (magic and layout version are set here).
pub(crate) fn load(cap: Capacity, mut cfg: xdpg_lb_config) -> Result<(LbMaps, OwnedFd), LoadError> {
    if let Some(missing) = missing_privileges() {
        return Err(LoadError::MissingPrivileges { missing });
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = LbSkelBuilder::default().open(&mut storage).map_err(load_err("opening the load balancer object"))?;
    let m = &mut open.maps;
    for (map, entries) in [
        (&mut m.xdpg_lb_vips4, cap.max_vips),
        (&mut m.xdpg_lb_vips6, cap.max_vips),
        (&mut m.xdpg_lb_vaddrs, cap.max_vips),
        (&mut m.xdpg_lb_tables, cap.max_vips),
        (&mut m.xdpg_lb_vipcnt, cap.max_vips),
        (&mut m.xdpg_lb_backend, cap.max_backends),
        (&mut m.xdpg_lb_becnt, cap.max_backends),
        (&mut m.xdpg_lb_nexthop, cap.max_backends),
        (&mut m.xdpg_lb_nbrs, cap.max_backends),
        (&mut m.xdpg_lb_conns4, cap.connections),
        (&mut m.xdpg_lb_conns6, cap.connections),
        (&mut m.xdpg_lb_nat4, cap.nat_connections),
        (&mut m.xdpg_lb_nat6, cap.nat_connections),
        (&mut m.xdpg_lb_devmap, cap.devices),
    ] {
        map.set_max_entries(entries).map_err(load_err("sizing maps"))?;
    }
    let skel = open.load().map_err(classify_load_error)?;

    let set = MapSet::from_object(skel.object(), &MAP_NAMES)?;
    let prog = program_fd(skel.object(), PROGRAM_NAME)?;
    drop(skel);
    let maps = LbMaps::new(set)
        .map_err(|source| LoadError::Bpf { op: "mapping load-balancer tables".into(), source })?;
    cfg.ns_per_jiffy = ns_per_jiffy();
    cfg.magic = XDPG_LB_MAGIC;
    cfg.layout_version = XDPG_LB_LAYOUT_VERSION;
    maps.cfg.set(0, cfg);
    Ok((maps, prog))
}

fn classify_load_error(e: libbpf_rs::Error) -> LoadError {
    let source = io_from_libbpf(e);
    if let Some(missing) = missing_privileges() {
        return LoadError::MissingPrivileges { missing };
    }
    match source.kind() {
        std::io::ErrorKind::PermissionDenied => LoadError::MissingPrivileges {
            missing: "CAP_BPF (or the kernel's BPF LSM policy refused it)".into(),
        },
        std::io::ErrorKind::Unsupported => LoadError::KernelFeature {
            feature: "a BPF feature the load balancer needs (map-in-map with BPF_F_INNER_MAP, DEVMAP_HASH)",
            hint: format!("use Linux 5.15 or later with BTF ({source})"),
        },
        _ => LoadError::Rejected { program: PROGRAM_NAME, message: source.to_string() },
    }
}

// Keep the stats value layouts honest for sum_percpu.
const _: () = assert!(size_of::<xdpg_lb_vip_stats>() % 8 == 0);
const _: () = assert!(size_of::<xdpg_lb_backend_stats>() % 8 == 0);
