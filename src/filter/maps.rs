//! The filter's maps as owned handles, whether just loaded or reopened from
//! pins, plus typed access to its config entry and counters.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::MapHandle;

use crate::error::{io_from_libbpf, missing_privileges, LoadError, PinError};
use crate::core::layout::consts::*;
use crate::filter::layout::filter_skel::FilterSkelBuilder;
use crate::filter::layout::{xdpg_filter_config, xdpg_v4_bucket, xdpg_v4_rule, xdpg_v6_bucket, xdpg_v6_rule, xdpg_v6_view};
use crate::core::maps::{load_err, program_fd, MapSet};
use crate::core::mmap::{cfg_fields, MappedArray};
use crate::core::pin::PinDir;
use crate::Counter;

/// The name of the filter program, also its pin name.
pub(crate) const PROGRAM_NAME: &str = "xdpg_filter";
/// The pin that marks a directory as holding a filter.
pub(crate) const MARKER: &str = "xdpg_filter_cfg";

const MAP_NAMES: [&str; 13] = [
    "xdpg_filter_cfg",
    "xdpg_filter_cnt",
    "xdpg_v4_l1_a",
    "xdpg_v4_l1_b",
    "xdpg_v4_hosts_a",
    "xdpg_v4_hosts_b",
    "xdpg_v4_rules",
    "xdpg_v6_tab_a",
    "xdpg_v6_tab_b",
    "xdpg_v6_views",
    "xdpg_v6_bloom",
    "xdpg_v6_rules",
    "xdpg_next",
];

/// Sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub v4_rules: usize,
    pub v6_rules: usize,
    pub v4_buckets: usize,
    pub v6_buckets: usize,
    pub v6_bloom_words: usize,
}

impl Capacity {
    /// Host buckets for `v4_rules` entries: room for 1.25 hosts per entry at
    /// a load factor of about 0.75, rounded up to a power of two.
    pub(crate) fn new(v4_rules: usize, v6_rules: usize) -> Self {
        let slots = v4_rules + v4_rules / 4 + 64;
        let buckets = (slots * 4 / 3).div_ceil(XDPG_V4_BUCKET_SLOTS as usize);
        // About 8 bits per v6 entry: a few percent of false positives, and
        // 256 KiB at the default capacity, small enough to stay in L2.
        let bloom_bits = (v6_rules * 8).next_power_of_two().max(1 << 16);
        // v6 buckets hold three entries: a load factor of at most 0.75.
        let v6_buckets = (v6_rules * 4 / 3 + 64).div_ceil(XDPG_V6_BUCKET_SLOTS as usize);
        Self {
            v4_rules,
            v6_rules,
            v4_buckets: buckets.next_power_of_two().max(64),
            v6_buckets: v6_buckets.next_power_of_two().max(64),
            v6_bloom_words: bloom_bits / 64,
        }
    }
}

pub(crate) struct FilterMaps {
    pub set: MapSet,
    pub cfg: MappedArray<xdpg_filter_config>,
    pub l1: [MappedArray<u64>; 2],
    pub hosts: [MappedArray<xdpg_v4_bucket>; 2],
    pub v4_rules: MappedArray<xdpg_v4_rule>,
    pub v6_tables: [MappedArray<xdpg_v6_bucket>; 2],
    pub v6_views: MappedArray<xdpg_v6_view>,
    pub v6_bloom: MappedArray<u64>,
    pub v6_rules: MappedArray<xdpg_v6_rule>,
}

impl FilterMaps {
    fn new(set: MapSet) -> std::io::Result<Self> {
        let get = |name: &str| set.get(name);
        Ok(Self {
            cfg: MappedArray::new(get("xdpg_filter_cfg"))?,
            l1: [MappedArray::new(get("xdpg_v4_l1_a"))?, MappedArray::new(get("xdpg_v4_l1_b"))?],
            hosts: [MappedArray::new(get("xdpg_v4_hosts_a"))?, MappedArray::new(get("xdpg_v4_hosts_b"))?],
            v4_rules: MappedArray::new(get("xdpg_v4_rules"))?,
            v6_tables: [MappedArray::new(get("xdpg_v6_tab_a"))?, MappedArray::new(get("xdpg_v6_tab_b"))?],
            v6_views: MappedArray::new(get("xdpg_v6_views"))?,
            v6_bloom: MappedArray::new(get("xdpg_v6_bloom"))?,
            v6_rules: MappedArray::new(get("xdpg_v6_rules"))?,
            set,
        })
    }

    pub(crate) fn handle(&self, name: &str) -> &MapHandle {
        self.set.get(name)
    }

    pub(crate) fn capacity(&self) -> Capacity {
        Capacity {
            v4_rules: self.v4_rules.len(),
            v6_rules: self.v6_rules.len(),
            v4_buckets: self.hosts[0].len(),
            v6_buckets: self.v6_tables[0].len(),
            v6_bloom_words: self.v6_bloom.len(),
        }
    }

    cfg_fields! {
        xdpg_filter_config;
        tables: AtomicU32 => atomic_u32,
        malformed_policy: AtomicU32 => atomic_u32,
        dirty: AtomicU32 => atomic_u32,
        v4_rule_count: AtomicU32 => atomic_u32,
        v6_rule_count: AtomicU32 => atomic_u32,
        generation: AtomicU64 => atomic_u64,
    }

    pub(crate) fn config(&self) -> xdpg_filter_config {
        self.cfg.get(0)
    }

    /// The live v4 table pair (0 or 1).
    pub(crate) fn v4_active(&self) -> usize {
        (self.tables().load(Ordering::Acquire) & XDPG_TABLES_V4_MASK) as usize
    }

    fn v6_view_index(&self) -> u32 {
        (self.tables().load(Ordering::Acquire) >> XDPG_TABLES_V6_SHIFT) & XDPG_TABLES_V6_MASK
    }

    pub(crate) fn current_v6_view(&self) -> xdpg_v6_view {
        self.v6_views.get(self.v6_view_index() as usize)
    }

    /// Writes `view` into a view slot no reader is using and returns the
    /// slot; [`switch_tables`](Self::switch_tables) makes it live.
    pub(crate) fn stage_v6_view(&self, view: xdpg_v6_view) -> u32 {
        let next = (self.v6_view_index() + 1) % XDPG_V6_VIEWS;
        self.v6_views.set(next as usize, view);
        next
    }

    /// Makes a v4 table pair and/or a staged v6 view live with one store,
    /// so packets see all of an edit or none of it.
    pub(crate) fn switch_tables(&self, v4_pair: Option<usize>, v6_view: Option<u32>) {
        let mut word = self.tables().load(Ordering::Acquire);
        if let Some(pair) = v4_pair {
            word = (word & !XDPG_TABLES_V4_MASK) | (pair as u32 & XDPG_TABLES_V4_MASK);
        }
        if let Some(view) = v6_view {
            word = (word & !(XDPG_TABLES_V6_MASK << XDPG_TABLES_V6_SHIFT)) | (view << XDPG_TABLES_V6_SHIFT);
        }
        // Everything staged before is visible no later than the switch.
        fence(Ordering::SeqCst);
        self.tables().store(word, Ordering::Release);
    }

    /// Per-reason counters, summed over CPUs.
    pub(crate) fn counters(&self) -> std::io::Result<Vec<Counter>> {
        (0..XDPG_REASON_COUNT).map(|reason| self.set.counter("xdpg_filter_cnt", reason)).collect()
    }

    pub(crate) fn reset_counters(&self) -> std::io::Result<()> {
        (0..XDPG_REASON_COUNT).try_for_each(|reason| self.set.zero_percpu("xdpg_filter_cnt", reason))
    }

    /// Reopens the maps pinned in `dir`, checking they are a filter's.
    pub(crate) fn open_pinned(dir: &PinDir) -> Result<Self, PinError> {
        let set = MapSet::open_pinned(dir, &MAP_NAMES)?;
        let maps = Self::new(set).map_err(|source| PinError::Io {
            op: "mapping",
            path: dir.path().to_owned(),
            source,
        })?;
        let cfg = maps.config();
        if cfg.magic != XDPG_MAGIC {
            return Err(PinError::NotOurs {
                path: dir.path().to_owned(),
                kind: dir.kind(),
                found: MARKER.into(),
            });
        }
        if cfg.layout_version != XDPG_LAYOUT_VERSION {
            return Err(PinError::Incompatible {
                path: dir.path().to_owned(),
                found: cfg.layout_version,
                expected: XDPG_LAYOUT_VERSION,
            });
        }
        Ok(maps)
    }
}

/// Loads the filter program and creates its maps, sized by `cap`.
/// `offload_ifindex` binds program and maps to one device for offload.
pub(crate) fn load(
    cap: Capacity,
    malformed_policy: u32,
    offload_ifindex: Option<u32>,
) -> Result<(FilterMaps, OwnedFd), LoadError> {
    if let Some(missing) = missing_privileges() {
        return Err(LoadError::MissingPrivileges { missing });
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = FilterSkelBuilder::default().open(&mut storage).map_err(load_err("opening the filter object"))?;
    let m = &mut open.maps;
    for (map, entries) in [
        (&mut m.xdpg_v4_hosts_a, cap.v4_buckets),
        (&mut m.xdpg_v4_hosts_b, cap.v4_buckets),
        (&mut m.xdpg_v4_rules, cap.v4_rules),
        (&mut m.xdpg_v6_tab_a, cap.v6_buckets),
        (&mut m.xdpg_v6_tab_b, cap.v6_buckets),
        (&mut m.xdpg_v6_rules, cap.v6_rules),
        (&mut m.xdpg_v6_bloom, cap.v6_bloom_words),
    ] {
        map.set_max_entries(entries as u32).map_err(load_err("sizing maps"))?;
    }
    if let Some(ifindex) = offload_ifindex {
        open.progs.xdpg_filter.set_ifindex(ifindex);
        for mut map in open.open_object_mut().maps_mut() {
            map.set_map_ifindex(ifindex);
        }
    }
    let skel = open.load().map_err(|e| classify_load_error(e, offload_ifindex.is_some()))?;

    let set = MapSet::from_object(skel.object(), &MAP_NAMES)?;
    let prog = program_fd(skel.object(), PROGRAM_NAME)?;
    drop(skel);
    let maps = FilterMaps::new(set)
        .map_err(|source| LoadError::Bpf { op: "mapping filter tables".into(), source })?;
    // Both v4 pairs and both v6 tables start empty; pair 0 and view 0 are live.
    let cfg = xdpg_filter_config {
        magic: XDPG_MAGIC,
        layout_version: XDPG_LAYOUT_VERSION,
        v4_bucket_mask: (cap.v4_buckets - 1) as u32,
        v4_hash_seed: random_seed(),
        v6_bloom_mask: (cap.v6_bloom_words * 64 - 1) as u32,
        v6_bucket_mask: (cap.v6_buckets - 1) as u32,
        malformed_policy,
        ..Default::default()
    };
    maps.cfg.set(0, cfg);
    Ok((maps, prog))
}

fn random_seed() -> u32 {
    let mut buf = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        // Only the bucket spread depends on it; fall back to the clock.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(buf)
}

fn classify_load_error(e: libbpf_rs::Error, offload: bool) -> LoadError {
    let source = io_from_libbpf(e);
    if let Some(missing) = missing_privileges() {
        return LoadError::MissingPrivileges { missing };
    }
    match source.kind() {
        std::io::ErrorKind::PermissionDenied => LoadError::MissingPrivileges {
            missing: "CAP_BPF (or the kernel's BPF LSM policy refused it)".into(),
        },
        _ if offload => LoadError::KernelFeature {
            feature: "BPF offload for this device",
            hint: format!(
                "the driver cannot offload this program and its maps ({source}); use native or \
                 auto mode"
            ),
        },
        std::io::ErrorKind::Unsupported => LoadError::KernelFeature {
            feature: "a BPF feature xdpguard needs",
            hint: format!("use Linux 5.15 or later with BTF ({source})"),
        },
        _ => LoadError::Rejected { program: PROGRAM_NAME, message: source.to_string() },
    }
}
