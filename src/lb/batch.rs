//! Backend changes: [`BackendBatch`], and the Maglev batch edit that
//! applies a VIP's backend changes as one table swap (new backend slots
//! live first, then the table, then the removed slots freed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::hops::sync_hops;
use super::maps::map_err;
use super::state::{self, LbState, Slot};
use super::{maglev, Backend, BackendAddr, ForwardingMode, LoadBalancer, Vip, MAX_WEIGHT};
use crate::error::LbError;

/// The fewest Maglev table slots a VIP's backend may have on average.
pub(super) const MIN_SLOTS_PER_BACKEND: u64 = 10;

/// A batch of backend changes to one VIP, applied as one Maglev table swap:
/// a packet sees the backend set before the batch or after it, never a mix.
///
/// ```no_run
/// # use xdpguard::{LoadBalancer, Vip};
/// # fn f(lb: &LoadBalancer, vip: Vip) -> Result<(), xdpguard::LbError> {
/// lb.batch(&vip)
///     .add("198.51.100.14".parse::<std::net::IpAddr>().unwrap(), 1)
///     .set_weight("198.51.100.11".parse::<std::net::IpAddr>().unwrap(), 0)
///     .remove("198.51.100.12".parse::<std::net::IpAddr>().unwrap())
///     .apply()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until apply() is called"]
pub struct BackendBatch<'lb> {
    lb: &'lb LoadBalancer,
    vip: Vip,
    ops: Vec<BatchOp>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum BatchOp {
    Add(BackendAddr, u32),
    SetWeight(BackendAddr, u32),
    Remove(BackendAddr),
    /// The backend's tracked flows choose again (its slot's gen renewed
    /// after the table swap); its weight and slot stay.
    Repick(BackendAddr),
}

impl BackendBatch<'_> {
    /// Adds a backend (an error at apply time if it is already there).
    pub fn add(mut self, backend: impl Into<BackendAddr>, weight: u32) -> Self {
        self.ops.push(BatchOp::Add(backend.into(), weight));
        self
    }

    /// Changes a backend's weight; 0 drains it.
    pub fn set_weight(mut self, backend: impl Into<BackendAddr>, weight: u32) -> Self {
        self.ops.push(BatchOp::SetWeight(backend.into(), weight));
        self
    }

    /// Removes a backend; its tracked flows choose afresh.
    pub fn remove(mut self, backend: impl Into<BackendAddr>) -> Self {
        self.ops.push(BatchOp::Remove(backend.into()));
        self
    }

    /// Makes the backend's tracked flows choose again from their next
    /// packet, as if it had been removed, while it keeps its weight, slot
    /// and counters: what the health checker does to a backend that goes
    /// down (with weight 0 in the same batch, they choose among the others),
    /// not an operator's graceful drain. (Its slot's gen is renewed after
    /// the table swap, so a flow that chooses again chooses from the new
    /// table.)
    pub(crate) fn repick(mut self, backend: impl Into<BackendAddr>) -> Self {
        self.ops.push(BatchOp::Repick(backend.into()));
        self
    }

    /// Applies every change, or none of them if one is invalid, then makes
    /// the backends' next hops match (managed neighbour entries; see
    /// [`LoadBalancer`]).
    ///
    /// # Errors
    ///
    /// A typed error for an invalid change (nothing applied);
    /// [`LbError::VipNotFound`] (nothing applied);
    /// [`LbError::ForeignNamespace`] when the LB's network namespace cannot
    /// be reached from this thread, [`LbError::NamespaceNotEntered`] when
    /// this process may not enter it (without CAP_SYS_ADMIN): both before
    /// any change, nothing applied; [`LbError::Pin`] when the pin directory
    /// cannot be locked (nothing applied); [`LbError::Map`] when a map
    /// update fails; [`LbError::Neighbour`] when the kernel refuses a
    /// neighbour request after the change (the backend changes stay
    /// applied, and the data path resolves their next hops from traffic);
    /// [`LbError::NetlinkSocket`] before any change (nothing applied) when
    /// no rtnetlink socket can be opened in the LB's namespace at all (e.g.
    /// out of file descriptors).
    pub fn apply(self) -> Result<(), LbError> {
        self.lb.apply_batch(&self.vip, &self.ops)
    }
}

impl LoadBalancer {
    /// Adds a backend with a weight (0 adds it drained). See
    /// [`ForwardingMode`] for which families and ports each mode takes.
    ///
    /// # Errors
    ///
    /// As [`BackendBatch::apply`]: [`LbError::BackendExists`],
    /// [`LbError::InvalidWeight`], [`LbError::Unsupported`] and
    /// [`LbError::IpipSourceUnset`] for a backend the VIP's mode cannot
    /// reach (`Unsupported` also for an address no packet reaches:
    /// unspecified, loopback, multicast, broadcast, or the VIP's own),
    /// [`LbError::Ipv4Mapped`] (an IPv4-mapped IPv6 address: give the IPv4
    /// one), [`LbError::BackendAtBroadcast`] (the broadcast address of a
    /// subnet the LB's namespace is on), [`LbError::BackendAtLocalAddress`]
    /// (an address of the LB host itself), [`LbError::TableTooSmall`],
    /// [`LbError::BackendTableFull`]; for NAT, [`LbError::NatPortOnAllPortsVip`] (a port on an all-ports VIP's
    /// backend) and [`LbError::NatBackendConflict`] (a backend address and
    /// port another NAT VIP already reaches; see [`ForwardingMode::Nat`]);
    /// [`LbError::VipNotFound`], [`LbError::ForeignNamespace`],
    /// [`LbError::NamespaceNotEntered`], [`LbError::Pin`], [`LbError::Map`],
    /// [`LbError::Neighbour`] as there.
    pub fn add_backend(&self, vip: &Vip, backend: impl Into<BackendAddr>, weight: u32) -> Result<(), LbError> {
        self.batch(vip).add(backend, weight).apply()
    }

    /// Changes a backend's weight. 0 drains it: no new flows, tracked flows
    /// keep going to it.
    ///
    /// # Errors
    ///
    /// As [`BackendBatch::apply`]: [`LbError::BackendNotFound`],
    /// [`LbError::InvalidWeight`]; [`LbError::VipNotFound`],
    /// [`LbError::ForeignNamespace`], [`LbError::NamespaceNotEntered`],
    /// [`LbError::Pin`], [`LbError::Map`], [`LbError::Neighbour`] as there.
    pub fn set_weight(&self, vip: &Vip, backend: impl Into<BackendAddr>, weight: u32) -> Result<(), LbError> {
        self.batch(vip).set_weight(backend, weight).apply()
    }

    /// Removes a backend. Its tracked flows choose afresh from their next
    /// packet (to drain gracefully, set its weight to 0 first).
    ///
    /// # Errors
    ///
    /// As [`BackendBatch::apply`]: [`LbError::BackendNotFound`];
    /// [`LbError::VipNotFound`], [`LbError::ForeignNamespace`],
    /// [`LbError::NamespaceNotEntered`], [`LbError::Pin`], [`LbError::Map`],
    /// [`LbError::Neighbour`] as there.
    pub fn remove_backend(&self, vip: &Vip, backend: impl Into<BackendAddr>) -> Result<(), LbError> {
        self.batch(vip).remove(backend).apply()
    }

    /// Starts a batch of backend changes to `vip`, applied as one table swap.
    pub fn batch(&self, vip: &Vip) -> BackendBatch<'_> {
        BackendBatch { lb: self, vip: *vip, ops: Vec::new() }
    }

    /// A VIP's backends, in canonical order.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`].
    pub fn backends(&self, vip: &Vip) -> Result<Vec<Backend>, LbError> {
        self.read(|st| {
            st.vip(vip).map(|s| s.backends.iter().map(|(a, slot)| Backend { addr: *a, weight: slot.weight }).collect())
        })?
    }

    fn check_backend(&self, vip: &Vip, mode: ForwardingMode, b: &BackendAddr) -> Result<(), LbError> {
        let cfg = self.maps().config();
        check_backend(vip, mode, b, |v6| {
            if v6 {
                cfg.ipip_v6_src.iter().chain(&cfg.ipip_v6_mask).any(|w| *w != 0)
            } else {
                cfg.ipip_v4_src != 0 || cfg.ipip_v4_mask != 0
            }
        })
    }

    fn check_nat_backend(st: &LbState, vip: &Vip, b: &BackendAddr) -> Result<(), LbError> {
        let others = st.vips.iter().flat_map(|(v, vs)| vs.backends.keys().map(move |ob| (v, vs.config.mode, ob)));
        check_nat_backend(vip, b, others)
    }

    pub(super) fn apply_batch(&self, vip: &Vip, ops: &[BatchOp]) -> Result<(), LbError> {
        // Next hops are managed in the LB's namespace: fail before any
        // change when it cannot be reached.
        let mut look = self.hop_lookup()?;
        self.edit(|st, maps| {
            let vs = st.vip(vip)?;
            let mode = vs.config.mode;
            let size = vs.config.table_size;
            let index = vs.index;
            // The desired set: Some(slot) for existing, None for new.
            let mut desired: BTreeMap<BackendAddr, (Option<u32>, u32)> =
                vs.backends.iter().map(|(a, s)| (*a, (Some(s.id), s.weight))).collect();
            let mut repick = BTreeSet::new();
            for op in ops {
                match *op {
                    BatchOp::Add(b, w) | BatchOp::SetWeight(b, w) if w > MAX_WEIGHT => {
                        let _ = b;
                        return Err(LbError::InvalidWeight { weight: w, max: MAX_WEIGHT });
                    }
                    BatchOp::Add(b, w) => {
                        self.check_backend(vip, mode, &b)?;
                        // The LB host's own address: its route is a local
                        // one, so nothing is forwarded to it (passed_no_route).
                        if let Ok(Some(interface)) = look.rtnl.local_of(b.ip) {
                            return Err(LbError::BackendAtLocalAddress { vip: *vip, backend: b, interface });
                        }
                        if let IpAddr::V4(ip) = b.ip {
                            // Its route is a broadcast one: no packet is
                            // forwarded to it (passed_no_route forever).
                            // Addresses that cannot be read skip the check:
                            // it only names a mistake sooner.
                            if let Ok(Some((interface, subnet))) = look.rtnl.broadcast_of(ip) {
                                return Err(LbError::BackendAtBroadcast { vip: *vip, backend: b, interface, subnet });
                            }
                        }
                        if mode == ForwardingMode::Nat {
                            Self::check_nat_backend(st, vip, &b)?;
                        }
                        if let Some((_, weight)) = desired.get(&b) {
                            return Err(LbError::BackendExists { vip: *vip, backend: b, weight: *weight });
                        }
                        desired.insert(b, (None, w));
                    }
                    BatchOp::SetWeight(b, w) => match desired.get_mut(&b) {
                        Some(entry) => entry.1 = w,
                        None => return Err(not_found(vip, b, desired.keys())),
                    },
                    BatchOp::Remove(b) => {
                        if desired.remove(&b).is_none() {
                            return Err(not_found(vip, b, desired.keys()));
                        }
                    }
                    BatchOp::Repick(b) => {
                        if !desired.contains_key(&b) {
                            return Err(not_found(vip, b, desired.keys()));
                        }
                        repick.insert(b);
                    }
                }
            }
            // Fewer than 10 slots a backend and one slot is over a tenth of
            // its share: refused. 100 or more (Maglev's advice, for shares
            // within about 1% of the weights) is what the docs recommend,
            // not required: at the default 65537 slots that would cap a VIP
            // at 655 backends, while 6,553 still get shares within ~10%.
            if desired.len() as u64 * MIN_SLOTS_PER_BACKEND > u64::from(size) {
                return Err(LbError::TableTooSmall { vip: *vip, backends: desired.len(), size });
            }
            // Slots for new backends, searched from where the last search
            // stopped, so a freed slot is not reused at once (its stale
            // connection entries also carry the old gen, and miss).
            let capacity = maps.backends.len() as u32;
            let used: BTreeSet<u32> = st.vips.values().flat_map(|s| s.backends.values().map(|slot| slot.id)).collect();
            let needed = desired.values().filter(|(id, _)| id.is_none()).count();
            let mut fresh = Vec::with_capacity(needed);
            let start = maps.next_backend().load(Ordering::Acquire) % capacity;
            for k in 0..capacity {
                if fresh.len() == needed {
                    break;
                }
                let id = (start + k) % capacity;
                if !used.contains(&id) && maps.backends.get(id as usize).family == 0 {
                    fresh.push(id);
                }
            }
            if fresh.len() < needed {
                return Err(LbError::BackendTableFull { capacity: capacity as usize });
            }
            if let Some(last) = fresh.last() {
                maps.next_backend().store((last + 1) % capacity, Ordering::Release);
            }
            // New slots go live before the table that references them.
            let mut fresh = fresh.into_iter();
            let mut new_backends = BTreeMap::new();
            for (addr, (id, weight)) in &desired {
                let id = match id {
                    Some(id) => {
                        maps.set_backend_weight(*id, *weight);
                        // A weight given back, by whoever: no longer the
                        // health checker's drain (keep_drained holds only
                        // those), so a later 0 set by hand is not taken
                        // for one.
                        if *weight > 0 {
                            let mark = crate::core::layout::consts::XDPG_LB_BACKEND_CHECKER_DRAINED as u8;
                            maps.set_backend_flag(*id, mark, false);
                        }
                        *id
                    }
                    None => {
                        let id = fresh.next().expect("enough slots reserved");
                        maps.backend_counters.zero(id).map_err(map_err("resetting a backend's counters"))?;
                        maps.write_backend(id, state::backend_value(addr, index, *weight));
                        id
                    }
                };
                new_backends.insert(*addr, Slot { id, weight: *weight });
            }
            let entries: Vec<maglev::Entry> =
                new_backends.iter().map(|(a, s)| maglev::Entry { addr: *a, weight: s.weight, id: s.id }).collect();
            let table = maglev::build(size, &entries);
            maps.publish_table(index, table.as_deref())?;
            // Removed backends go after the swap: no new flow picks them.
            // So do renewed gens: a flow that misses then chooses from the
            // new table (for a backend drained in the batch, not it again).
            let vs = st.vip_mut(vip)?;
            maps.free_backends(
                vs.backends.iter().filter(|(addr, _)| !new_backends.contains_key(*addr)).map(|(_, slot)| slot.id),
            );
            for addr in &repick {
                // A backend removed after its repick in the same batch was
                // freed above, which did the same.
                if let Some(slot) = new_backends.get(addr) {
                    maps.renew_backend_gen(slot.id);
                }
            }
            vs.backends = new_backends;
            vs.set_table(table);
            sync_hops(st, maps, &mut look)?;
            Ok(())
        })
    }
}

/// Whether `vip`'s mode can reach backend `b`; `ipip_source(ipv6)` says
/// whether an IPIP outer source of that family is set. Also what a
/// configuration file is checked with before anything is applied.
pub(crate) fn check_backend(
    vip: &Vip,
    mode: ForwardingMode,
    b: &BackendAddr,
    ipip_source: impl Fn(bool) -> bool,
) -> Result<(), LbError> {
    let what = |s: &str| format!("{s} (VIP {vip}, backend {b})");
    if let Some(why) = super::types::unusable(b.ip) {
        return Err(LbError::Unsupported {
            what: what(&format!("a backend at {why}")),
            fix: "give the address the backend host is reached at",
        });
    }
    if let Some(v4) = super::types::ipv4_mapped(b.ip) {
        let as_ipv4 = BackendAddr { ip: v4.into(), port: b.port };
        return Err(LbError::Ipv4Mapped { what: format!("backend {b} of VIP {vip}"), as_ipv4: as_ipv4.to_string() });
    }
    if super::types::link_local(b.ip) {
        return Err(LbError::Unsupported {
            what: what("a backend at a link-local address (an address of no link in particular: its next hop would be looked up on whichever interface the routes name)"),
            fix: "give the backend host's global or unique-local address",
        });
    }
    // Stored as "no port" (the slot's port word is 0 for both), so a file
    // naming `ADDR:0` would never match what runs: every apply re-adding it.
    if b.port == Some(0) {
        return Err(LbError::Unsupported {
            what: what("port 0 for a backend"),
            fix: "give the port the backend serves (NAT), or no port to keep the VIP's",
        });
    }
    if b.ip == vip.addr {
        return Err(LbError::Unsupported {
            what: what("a backend at the VIP's own address"),
            fix: "give the backend host's own address (in DSR and IPIP modes it holds the VIP on a loopback too)",
        });
    }
    match mode {
        ForwardingMode::L2Dsr | ForwardingMode::Nat if vip.addr.is_ipv4() != b.ip.is_ipv4() => {
            Err(LbError::Unsupported {
                what: what(&format!("{mode} between address families")),
                fix: if vip.addr.is_ipv4() {
                    "use an IPv4 backend, or IPIP mode (which carries IPv4 in IPv6)"
                } else {
                    "use an IPv6 backend (no mode carries IPv6 in IPv4)"
                },
            })
        }
        ForwardingMode::L2Dsr | ForwardingMode::Ipip if b.port.is_some() => Err(LbError::Unsupported {
            what: what(&format!("a backend port in {mode} mode")),
            fix: "DSR and IPIP backends serve the VIP's own port; give the backend without a port, or use NAT",
        }),
        ForwardingMode::Nat if vip.port.is_none() && b.port.is_some() => {
            Err(LbError::NatPortOnAllPortsVip { vip: *vip, backend: *b })
        }
        ForwardingMode::Ipip if vip.addr.is_ipv6() && b.ip.is_ipv4() => Err(LbError::Unsupported {
            what: what("IPv6 in IPv4 encapsulation"),
            fix: "give IPv6 VIPs IPv6 backends (IPv4 VIPs may have IPv4 or IPv6 backends)",
        }),
        ForwardingMode::Ipip if !ipip_source(b.ip.is_ipv6()) => {
            Err(LbError::IpipSourceUnset { family: if b.ip.is_ipv4() { 4 } else { 6 } })
        }
        _ => Ok(()),
    }
}

/// Refuses a NAT backend whose connections would arrive on a backend
/// address and port that another NAT VIP's connections arrive on too
/// (see [`ForwardingMode::Nat`]). The backend sees a connection by
/// client address and port and its own address and port, and so does
/// the reply translation (its key holds no VIP), so a client that uses
/// one source port for both VIPs would be one connection there.
/// `others` are every VIP's (mode, backend); checked against those of the
/// other NAT VIPs of the protocol: at most a few hundred VIPs and their
/// backends, once per added backend. Also what a configuration file is
/// checked with.
pub(crate) fn check_nat_backend<'a>(
    vip: &Vip,
    b: &BackendAddr,
    others: impl IntoIterator<Item = (&'a Vip, ForwardingMode, &'a BackendAddr)>,
) -> Result<(), LbError> {
    // The backend port a VIP's connections reach: the backend's own, else
    // the VIP's, else (an all-ports VIP) each packet's destination port.
    let port_of = |v: &Vip, b: &BackendAddr| b.port.or(v.port);
    let mine = port_of(vip, b);
    for (other, mode, ob) in others {
        if other == vip || other.protocol != vip.protocol || mode != ForwardingMode::Nat || ob.ip != b.ip {
            continue;
        }
        let theirs = port_of(other, ob);
        let clash = match (mine, theirs) {
            (Some(p), Some(q)) => p == q,
            // An all-ports VIP takes every port of its address but
            // those of its single-port VIPs, and one of those may use
            // the backend on its own port (its target is its port).
            (None, Some(q)) => !(other.addr == vip.addr && other.port == Some(q)),
            (Some(p), None) => !(vip.addr == other.addr && vip.port == Some(p)),
            (None, None) => true,
        };
        if clash {
            let at = match mine.or(theirs) {
                Some(p) => std::net::SocketAddr::new(b.ip, p).to_string(),
                None => format!("every port of {}", b.ip),
            };
            let (vip, backend, other, other_backend) = (*vip, *b, *other, *ob);
            return Err(LbError::NatBackendConflict { vip, backend, other, other_backend, at });
        }
    }
    Ok(())
}

/// [`LbError::BackendNotFound`] for `backend`, naming the VIP's backend at
/// the same address with another port, if it has one.
fn not_found<'a>(vip: &Vip, backend: BackendAddr, have: impl Iterator<Item = &'a BackendAddr>) -> LbError {
    let near = have.into_iter().copied().find(|b| b.ip == backend.ip);
    LbError::BackendNotFound { vip: *vip, backend, near }
}
