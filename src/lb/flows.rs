//! Where flows go: which VIP takes a flow, the backend the kernel will
//! choose for it, the IPIP outer source it gets, and the kernel's tables
//! read back.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::hash::{self, addr_words, family_code, flow_hash, port_word, FlowKey};
use super::layout::{xdpg_lb_flow, xdpg_lb_flow4};
use super::maps::map_err;
use super::settings::{ipip_v4_base_mask, ipip_v6_base_mask};
use super::state::LbState;
use super::{BackendAddr, Flow, ForwardingMode, FragmentPolicy, HashInput, LoadBalancer, Vip};
use crate::core::layout::consts::XDPG_LB_BACKEND_ACTIVE;
use crate::error::LbError;

impl LoadBalancer {
    /// The VIP that takes a flow's packets, matched as the kernel matches
    /// them: the VIP of the flow's destination address, port and protocol,
    /// else the all-ports VIP of its address and protocol. A fragment
    /// ([`Flow::fragment`]) carries no ports, so only an all-ports VIP can
    /// take it ([`LoadBalancer::backend_for`] then says whether the fragment
    /// policy forwards it). `None`: no VIP takes the flow; its packets pass
    /// to the stack (a fragment to a VIP address is dropped).
    ///
    /// With [`LoadBalancer::backend_for`] this answers "where does a new
    /// flow from this client to this address and port go", which is what
    /// `xdpguard-lb which` prints.
    ///
    /// # Errors
    ///
    /// [`LbError::FlowMismatch`] when source and destination are of
    /// different families; [`LbError::Map`] when the configuration cannot
    /// be read back.
    pub fn vip_for(&self, flow: &Flow) -> Result<Option<Vip>, LbError> {
        if flow.src.is_ipv4() != flow.dst.is_ipv4() {
            // The VIP the destination names (its port, unless a fragment's).
            let port = (!flow.fragment).then(|| flow.dst.port());
            let vip = Vip { addr: flow.dst.ip(), port, protocol: flow.protocol };
            return Err(LbError::FlowMismatch {
                flow: flow.to_string(),
                vip,
                reason: "source and destination are of different families",
            });
        }
        self.read(|st| {
            let exact = Vip { addr: flow.dst.ip(), port: Some(flow.dst.port()), protocol: flow.protocol };
            let any = Vip { port: None, ..exact };
            if !flow.fragment && st.vips.contains_key(&exact) {
                Some(exact)
            } else if st.vips.contains_key(&any) {
                Some(any)
            } else {
                None
            }
        })
    }

    /// Whether `flow` is one `vip` takes, for [`LoadBalancer::backend_for`]
    /// and [`LoadBalancer::ipip_source_for`]: the questions they answer
    /// depend on the flow's real destination port, also for all-ports VIPs.
    fn check_flow(st: &LbState, vip: &Vip, flow: &Flow) -> Result<(), LbError> {
        let mismatch = |reason| LbError::FlowMismatch { flow: flow.to_string(), vip: *vip, reason };
        if flow.dst.ip() != vip.addr {
            return Err(mismatch("its destination is not the VIP address"));
        }
        if flow.src.is_ipv4() != flow.dst.is_ipv4() {
            return Err(mismatch("source and destination are of different families"));
        }
        if flow.protocol != vip.protocol {
            return Err(mismatch("its protocol is not the VIP's"));
        }
        if flow.fragment {
            return Ok(());
        }
        match vip.port {
            Some(p) if p != flow.dst.port() => Err(mismatch("its destination port is not the VIP's")),
            Some(_) => Ok(()),
            // Port 0 is how a caller says "any port" by mistake: the kernel
            // hashes the port each packet carries.
            None if flow.dst.port() == 0 => Err(LbError::DestinationPortRequired { flow: flow.to_string(), vip: *vip }),
            None if st.vips.contains_key(&Vip { port: Some(flow.dst.port()), ..*vip }) => Err(mismatch(
                "a VIP for its destination port takes it, before the all-ports VIP; ask about that VIP \
                 (LoadBalancer::vip_for finds it)",
            )),
            None => Ok(()),
        }
    }

    /// The backend the kernel will choose for a new flow of `vip` (same
    /// hash, same Maglev table), or `None` when it would not forward it to
    /// any (no usable backend; a fragment the fragment policy drops).
    ///
    /// The flow's destination port counts for all-ports VIPs too: the
    /// kernel hashes the port each packet carries. To ask about a client's
    /// flow to an address and port without knowing which VIP takes it,
    /// find the VIP with [`LoadBalancer::vip_for`] first.
    ///
    /// Tracked flows keep the backend they started with, which is this
    /// one unless the backend set changed since.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::FlowMismatch`] when the flow is
    /// not one the VIP takes (another address, family, protocol or port, or
    /// a port a single-port VIP of the same address takes first);
    /// [`LbError::DestinationPortRequired`] for a flow to an all-ports VIP
    /// with destination port 0 (give the port the client connects to, or
    /// ask about a fragment with [`Flow::fragment`]).
    pub fn backend_for(&self, vip: &Vip, flow: &Flow) -> Result<Option<BackendAddr>, LbError> {
        let seed = self.maps().hash_seed().load(Ordering::Acquire);
        let frag_policy = FragmentPolicy::from_code(self.maps().config().frag_policy);
        self.read(|st| {
            st.vip(vip)?;
            Self::check_flow(st, vip, flow)?;
            let vs = st.vip_mut(vip)?;
            if flow.fragment
                && (vip.port.is_some() || vs.config.mode == ForwardingMode::Nat || frag_policy == FragmentPolicy::Drop)
            {
                return Ok(None);
            }
            let h = flow_hash(&Self::flow_key(flow), seed, vs.config.hash == HashInput::SourceAddress);
            let Some(table) = vs.table() else {
                return Ok(None);
            };
            let id = table[(h % vs.config.table_size) as usize];
            Ok(vs.backend_by_id(id))
        })?
    }

    /// The hash input the kernel builds from a flow (fragments: no ports).
    fn flow_key(flow: &Flow) -> FlowKey {
        FlowKey {
            src: flow.src.ip(),
            dst: flow.dst.ip(),
            sport: if flow.fragment { 0 } else { flow.src.port() },
            dport: if flow.fragment { 0 } else { flow.dst.port() },
            proto: flow.protocol.number(),
        }
    }

    /// The IPIP outer source address the kernel uses for `flow` to `vip`
    /// when its backend is of the family of `backend` (None: not IPIP, or no
    /// source prefix for that family).
    ///
    /// # Errors
    ///
    /// As [`LoadBalancer::backend_for`], for the same flows.
    pub fn ipip_source_for(&self, vip: &Vip, flow: &Flow, backend: IpAddr) -> Result<Option<IpAddr>, LbError> {
        let config = self.read(|st| {
            let config = st.vip(vip)?.config;
            Self::check_flow(st, vip, flow).map(|()| config)
        })??;
        if config.mode != ForwardingMode::Ipip {
            return Ok(None);
        }
        let seed = self.maps().hash_seed().load(Ordering::Acquire);
        let h = flow_hash(&Self::flow_key(flow), seed, config.hash == HashInput::SourceAddress);
        let cfg = self.maps().config();
        Ok(match backend {
            IpAddr::V4(_) => {
                let (base, mask) = ipip_v4_base_mask(&cfg);
                Some(IpAddr::V4(hash::ipip_source_v4(base, mask, h)))
            }
            IpAddr::V6(_) => {
                let (base, mask) = ipip_v6_base_mask(&cfg);
                Some(IpAddr::V6(hash::ipip_source_v6(base, mask, h)))
            }
        })
    }

    /// The VIP's Maglev table as the kernel holds it, slot by slot (`None`:
    /// no usable backend). Reads every slot: for diagnostics and tests.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::Map`] when the table cannot be
    /// read, or names a backend slot the VIP no longer has (another process
    /// is editing it).
    pub fn kernel_table(&self, vip: &Vip) -> Result<Option<Vec<BackendAddr>>, LbError> {
        let (index, backends) = self.read(|st| st.vip(vip).map(|s| (s.index, s.backends.clone())))??;
        let Some(ids) = self.maps().read_table(index)? else {
            return Ok(None);
        };
        let by_id: std::collections::HashMap<u32, BackendAddr> = backends.iter().map(|(a, s)| (s.id, *a)).collect();
        ids.into_iter()
            .map(|id| {
                by_id.get(&id).copied().ok_or_else(|| LbError::Map {
                    op: format!("reading the table of {vip}"),
                    error: std::io::Error::other(format!("slot refers to unknown backend slot {id}")),
                    hint: "another process is editing this VIP; try again",
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The backend the connection table holds for `flow`: where its next
    /// non-SYN packet goes, whatever Maglev would choose now. `None`: the
    /// flow has no entry (never seen, untracked, evicted or flushed), or its
    /// backend has gone since. An idle UDP flow past the idle timeout is
    /// still reported until its next packet chooses afresh.
    ///
    /// # Errors
    ///
    /// [`LbError::Map`] when the IPv6 table cannot be read.
    pub fn tracked_backend(&self, flow: &Flow) -> Result<Option<BackendAddr>, LbError> {
        let key = Self::flow_key(flow);
        if key.src.is_ipv4() != key.dst.is_ipv4() {
            return Ok(None);
        }
        let maps = self.maps();
        let conn = if key.src.is_ipv4() {
            let k = xdpg_lb_flow4 {
                src: addr_words(key.src)[0],
                dst: addr_words(key.dst)[0],
                sport: port_word(key.sport),
                dport: port_word(key.dport),
                proto: key.proto,
                ..Default::default()
            };
            maps.ct4().find(super::conntrack::key_words(&k))
        } else {
            let k = xdpg_lb_flow {
                src: addr_words(key.src),
                dst: addr_words(key.dst),
                sport: port_word(key.sport),
                dport: port_word(key.dport),
                proto: key.proto,
                family: family_code(key.src),
                ..Default::default()
            };
            maps.conns6.get(&k).map_err(map_err("reading the IPv6 connection table"))?
        };
        let Some(conn) = conn else { return Ok(None) };
        if conn.backend as usize >= maps.backends.len() {
            return Ok(None);
        }
        let slot = maps.backends.get(conn.backend as usize);
        if u32::from(slot.flags) & XDPG_LB_BACKEND_ACTIVE == 0 || slot.gen != conn.gen {
            return Ok(None);
        }
        self.read(|st| st.vips.values().find_map(|vs| vs.backend_by_id(conn.backend)))
    }
}
