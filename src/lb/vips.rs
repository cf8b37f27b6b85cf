//! Adding and removing VIPs.

use std::sync::atomic::Ordering;

use super::hops::{neigh_err, sync_hops};
use super::maps::{map_err, LbMaps};
use super::state::{self, LbState, VipState};
use super::{maglev, ForwardingMode, LoadBalancer, Vip, VipConfig};
use crate::error::LbError;

impl LoadBalancer {
    /// Adds a VIP. Adding one that exists with the same configuration
    /// changes nothing; with another configuration it is an error. Until it
    /// has a backend, its packets are dropped (counted as `no_backend`).
    ///
    /// # Errors
    ///
    /// [`LbError::TableSizeOutOfRange`], [`LbError::TableSizeNotPrime`],
    /// [`LbError::Unsupported`] (NAT without connection tracking; port 0,
    /// which no packet is sent to: every port is `port: None`; an address
    /// no client's packet reaches: unspecified, loopback, multicast,
    /// broadcast, link-local), [`LbError::Ipv4Mapped`] (an IPv4-mapped
    /// IPv6 address: give the IPv4 one),
    /// [`LbError::VipAtLocalAddress`] (an address of the LB host itself:
    /// see [`add_vip_permit_local`](Self::add_vip_permit_local)),
    /// [`LbError::LocalAddressesUnknown`] (the host's addresses cannot be
    /// read to check that: the LB's network namespace cannot be entered
    /// from this process, without CAP_SYS_ADMIN or without a name under
    /// `/run/netns`), [`LbError::ConflictingVip`], [`LbError::VipTableFull`];
    /// [`LbError::Map`] when a map update fails; [`LbError::Pin`] when the
    /// pin directory cannot be locked.
    pub fn add_vip(&self, vip: Vip, config: VipConfig) -> Result<(), LbError> {
        self.add_vip_checked(vip, config, false)
    }

    /// Adds a VIP as [`add_vip`](Self::add_vip) does, also at an address of
    /// the LB host itself (configured on an interface of the LB's network
    /// namespace), which `add_vip` refuses: the VIP's packets then go to
    /// its backends (dropped until it has one) instead of the host's own
    /// services at that address, an SSH session to it among them. For a
    /// host that gives its only address to the service on purpose (CLI:
    /// `vip add --force`).
    ///
    /// # Errors
    ///
    /// As [`add_vip`](Self::add_vip), without [`LbError::VipAtLocalAddress`]
    /// and [`LbError::LocalAddressesUnknown`]: no netlink is needed, so it
    /// works from any namespace.
    pub fn add_vip_permit_local(&self, vip: Vip, config: VipConfig) -> Result<(), LbError> {
        self.add_vip_checked(vip, config, true)
    }

    fn add_vip_checked(&self, vip: Vip, config: VipConfig, permit_local: bool) -> Result<(), LbError> {
        maglev::check_size(config.table_size)?;
        check_vip(&vip)?;
        if config.mode == ForwardingMode::Nat && !config.conntrack {
            return Err(LbError::Unsupported {
                what: format!("NAT without connection tracking for {vip}"),
                fix: "NAT replies are translated from connection state: keep conntrack on",
            });
        }
        // The host's own addresses are read in the LB's namespace. When they
        // cannot be (a namespace without a name under /run/netns, or one this
        // process may not enter), the VIP is refused: skipping the check let
        // a VIP at the host's own address cut its SSH port off. The refusal
        // comes after the existing-VIP check, so adding an existing VIP again
        // (a configuration applied anew) still changes nothing and succeeds.
        let mut rtnl = if permit_local { None } else { Some(self.rtnl()) };
        self.edit(|st, maps| {
            if let Some(existing) = st.vips.get(&vip) {
                if existing.config == config {
                    return Ok(());
                }
                return Err(LbError::ConflictingVip { vip, existing: existing.config.to_string() });
            }
            if let Some(opened) = rtnl.take() {
                let unknown = |reason| LbError::LocalAddressesUnknown { vip, reason: Box::new(reason) };
                let mut r = opened.map_err(unknown)?;
                let local = r
                    .local_of(vip.addr)
                    .map_err(|e| unknown(neigh_err("reading the addresses of the LB's network namespace")(e)))?;
                if let Some(interface) = local {
                    return Err(LbError::VipAtLocalAddress { vip, interface });
                }
            }
            let cap = maps.capacity().max_vips;
            let index = st.free_vip_index(cap).ok_or(LbError::VipTableFull { capacity: cap as usize })?;
            maps.vip_counters.zero(index).map_err(map_err("resetting the VIP's counters"))?;
            maps.publish_table(index, None)?;
            // Address bookkeeping and counts first, so the VIP is complete
            // when its key starts matching.
            let n = maps.vip_addr_users(vip.addr)?.unwrap_or(0);
            maps.set_vip_addr_users(vip.addr, n + 1)?;
            st.vips.insert(vip, VipState::new(index, config));
            Self::recount(st, maps);
            let value = state::vip_value(index, &config);
            maps.insert_vip(&state::vip_key(&vip), &value).map_err(map_err(format!("adding VIP {vip}")))?;
            Ok(())
        })
    }

    /// Removes a VIP and all its backends. Its packets pass untouched from
    /// the next one on.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::ForeignNamespace`] when it has
    /// backends whose next hops cannot be released from this thread, and
    /// [`LbError::NamespaceNotEntered`] when this process may not enter the
    /// LB's namespace to release them, [`LbError::NetlinkSocket`] when no
    /// rtnetlink socket can be opened there (nothing removed);
    /// [`LbError::Map`], [`LbError::Neighbour`].
    pub fn remove_vip(&self, vip: &Vip) -> Result<(), LbError> {
        // Its backends' next hops are released: check first that they can be.
        let has_backends = self.read(|st| st.vip(vip).map(|s| !s.backends.is_empty()))??;
        let mut look = if has_backends { Some(self.hop_lookup()?) } else { None };
        self.edit(|st, maps| {
            let vs = st.vip(vip)?.clone();
            maps.remove_vip(&state::vip_key(vip)).map_err(map_err(format!("removing VIP {vip}")))?;
            maps.publish_table(vs.index, None)?;
            maps.free_backends(vs.backends.values().map(|slot| slot.id));
            let n = maps.vip_addr_users(vip.addr)?.unwrap_or(1);
            maps.set_vip_addr_users(vip.addr, n.saturating_sub(1))?;
            st.vips.remove(vip);
            Self::recount(st, maps);
            if let Some(look) = look.as_mut() {
                sync_hops(st, maps, look)?;
            }
            Ok(())
        })
    }

    /// Changes a VIP's table size, flow hash or connection tracking in
    /// place. Its backends keep their slots, so every connection it tracks
    /// stays on its backend, and no packet of it passes or is dropped on
    /// the way: the new Maglev table and the VIP's new settings go live one
    /// map update each, ordered so that the data plane never reads a slot
    /// past the table it has (a larger table is published before the VIP
    /// names its size, a smaller one after). Removing the VIP and adding it
    /// again frees its backends' slots instead, and every tracked
    /// connection then chooses a backend afresh. The settings it has
    /// change nothing.
    ///
    /// Only new flows (and, with tracking turned off, every flow) are
    /// hashed on the new table: with the same backends, a new table size
    /// moves about as many untracked flows as a new backend would.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::VipModeChange`] (another
    /// forwarding mode: remove the VIP and add it again);
    /// [`LbError::TableSizeOutOfRange`], [`LbError::TableSizeNotPrime`],
    /// [`LbError::TableTooSmall`] (fewer than 10 slots per backend it
    /// has); [`LbError::Unsupported`] (NAT without connection tracking);
    /// [`LbError::Map`] when a map update fails.
    pub fn reconfigure_vip(&self, vip: &Vip, config: VipConfig) -> Result<(), LbError> {
        maglev::check_size(config.table_size)?;
        if config.mode == ForwardingMode::Nat && !config.conntrack {
            return Err(LbError::Unsupported {
                what: format!("NAT without connection tracking for {vip}"),
                fix: "NAT replies are translated from connection state: keep conntrack on",
            });
        }
        self.edit(|st, maps| {
            let vs = st.vip_mut(vip)?;
            let from = vs.config;
            if from == config {
                return Ok(());
            }
            if from.mode != config.mode {
                return Err(LbError::VipModeChange { vip: *vip, from: from.mode, to: config.mode });
            }
            let backends = vs.backends.len();
            if backends as u64 * super::batch::MIN_SLOTS_PER_BACKEND > u64::from(config.table_size) {
                return Err(LbError::TableTooSmall { vip: *vip, backends, size: config.table_size });
            }
            let table = maglev::build(config.table_size, &vs.entries());
            let key = state::vip_key(vip);
            let value = state::vip_value(vs.index, &config);
            let update = || maps.update_vip(&key, &value).map_err(map_err(format!("reconfiguring VIP {vip}")));
            if config.table_size >= from.table_size {
                maps.publish_table(vs.index, table.as_deref())?;
                update()?;
            } else {
                // A packet that read the VIP's old, larger size still picks
                // a slot past the new table's end: it must be done first.
                update()?;
                crate::core::grace::wait();
                maps.publish_table(vs.index, table.as_deref())?;
            }
            vs.config = config;
            vs.set_table(table);
            Ok(())
        })
    }

    fn recount(st: &LbState, maps: &LbMaps) {
        maps.nat_vips().store(st.count_where(|_, s| s.config.mode == ForwardingMode::Nat), Ordering::Release);
        maps.allport_vips().store(st.count_where(|v, _| v.port.is_none()), Ordering::Release);
    }

    /// Every VIP and its configuration.
    ///
    /// # Errors
    ///
    /// [`LbError::Pin`] when the pin directory cannot be locked;
    /// [`LbError::Map`] when another process's edit cannot be read back.
    pub fn vips(&self) -> Result<Vec<(Vip, VipConfig)>, LbError> {
        self.read(|st| st.vips.iter().map(|(v, s)| (*v, s.config)).collect())
    }

    /// One VIP's configuration.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`].
    pub fn vip_config(&self, vip: &Vip) -> Result<VipConfig, LbError> {
        self.read(|st| st.vip(vip).map(|s| s.config))?
    }
}

/// Refuses a VIP no client's packet reaches: at an unusable address
/// (`types::unusable`) or on port 0 (every port is `port: None`). Also what
/// a configuration file is checked with.
pub(crate) fn check_vip(vip: &Vip) -> Result<(), LbError> {
    if let Some(why) = super::types::unusable(vip.addr) {
        return Err(LbError::Unsupported {
            what: format!("VIP {vip} at {why}"),
            fix: "give the address clients send the service's packets to",
        });
    }
    if let Some(v4) = super::types::ipv4_mapped(vip.addr) {
        let as_ipv4 = Vip { addr: v4.into(), ..*vip }.endpoint();
        return Err(LbError::Ipv4Mapped { what: format!("VIP {vip}"), as_ipv4 });
    }
    if super::types::link_local(vip.addr) {
        return Err(LbError::Unsupported {
            what: format!("VIP {vip} at a link-local address (reached only on its own link, not through a router)"),
            fix: "give the address clients send the service's packets to",
        });
    }
    if vip.port == Some(0) {
        return Err(LbError::Unsupported {
            what: format!("port 0 in VIP {vip}"),
            fix: "give the port the VIP serves, or every port (`ADDR:*`, `Vip::all_ports`)",
        });
    }
    Ok(())
}
