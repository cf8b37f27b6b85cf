//! User space's model of a load balancer's configuration: VIPs, their
//! backends and Maglev tables. The maps are the source of truth (so any
//! process can reopen a pinned LB); the core rebuilds the model from them
//! whenever another handle has edited (the config's generation moved).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::hash::{addr_words, family_code, port_word};
use super::layout::{xdpg_lb_addr_key, xdpg_lb_backend, xdpg_lb_vip, xdpg_lb_vip_key, xdpg_lb_vip_key4};
use super::maglev;
use super::maps::{map_err, LbMaps};
use super::types::{BackendAddr, ForwardingMode, HashInput, Protocol, Vip, VipConfig};
use crate::core::layout::consts::*;
use crate::error::LbError;

/// A backend's slot in `xdpg_lb_backends` and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: u32,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct VipState {
    pub index: u32,
    pub config: VipConfig,
    pub backends: BTreeMap<BackendAddr, Slot>,
    /// The Maglev table as published (None: no usable backend), built on
    /// demand and dropped whenever the backends change.
    table: Option<Option<Arc<Vec<u32>>>>,
}

impl VipState {
    pub(crate) fn new(index: u32, config: VipConfig) -> Self {
        VipState { index, config, backends: BTreeMap::new(), table: None }
    }

    pub(crate) fn entries(&self) -> Vec<maglev::Entry> {
        self.backends.iter().map(|(addr, s)| maglev::Entry { addr: *addr, weight: s.weight, id: s.id }).collect()
    }

    /// The table the data plane reads for this VIP.
    pub(crate) fn table(&mut self) -> Option<Arc<Vec<u32>>> {
        if self.table.is_none() {
            self.table = Some(maglev::build(self.config.table_size, &self.entries()).map(Arc::new));
        }
        self.table.clone().expect("just filled")
    }

    pub(crate) fn set_table(&mut self, table: Option<Vec<u32>>) {
        self.table = Some(table.map(Arc::new));
    }

    pub(crate) fn backend_by_id(&self, id: u32) -> Option<BackendAddr> {
        self.backends.iter().find(|(_, s)| s.id == id).map(|(a, _)| *a)
    }
}

#[derive(Debug, Default)]
pub(crate) struct LbState {
    pub vips: BTreeMap<Vip, VipState>,
}

pub(crate) fn ip_from_words(family: u8, words: [u32; 4]) -> Option<IpAddr> {
    match u32::from(family) {
        XDPG_LB_FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        XDPG_LB_FAMILY_V6 => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// A port as stored by the kernel (network order), back to a number.
pub(crate) fn port_from_word(w: u16) -> u16 {
    u16::from_be_bytes(w.to_ne_bytes())
}

/// A VIP's key: IPv4 VIPs have their own map, with a shorter key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum VipKey {
    V4(xdpg_lb_vip_key4),
    V6(xdpg_lb_vip_key),
}

pub(crate) fn vip_key(vip: &Vip) -> VipKey {
    let port = port_word(vip.port.unwrap_or(0));
    match vip.addr {
        IpAddr::V4(_) => {
            VipKey::V4(xdpg_lb_vip_key4 { addr: addr_words(vip.addr)[0], port, proto: vip.protocol.number(), pad: 0 })
        }
        IpAddr::V6(_) => VipKey::V6(xdpg_lb_vip_key {
            addr: addr_words(vip.addr),
            port,
            proto: vip.protocol.number(),
            family: family_code(vip.addr),
        }),
    }
}

/// The VIP a key names, if this build wrote it.
fn vip_from_key(key: &VipKey) -> Option<Vip> {
    let (addr, port, proto) = match key {
        VipKey::V4(k) => (ip_from_words(XDPG_LB_FAMILY_V4 as u8, [k.addr, 0, 0, 0])?, k.port, k.proto),
        VipKey::V6(k) => (ip_from_words(k.family, k.addr)?, k.port, k.proto),
    };
    let port = port_from_word(port);
    Some(Vip { addr, port: (port != 0).then_some(port), protocol: Protocol::from_number(proto)? })
}

impl LbMaps {
    /// Adds a VIP's key (it must not be there yet).
    pub(crate) fn insert_vip(&self, key: &VipKey, value: &xdpg_lb_vip) -> std::io::Result<()> {
        let flags = libbpf_rs::MapFlags::NO_EXIST;
        match key {
            VipKey::V4(k) => self.vips4.insert(k, value, flags),
            VipKey::V6(k) => self.vips6.insert(k, value, flags),
        }
    }

    /// Replaces the value of a VIP's key (it must be there): one update,
    /// so a reader sees the old value or the new one.
    pub(crate) fn update_vip(&self, key: &VipKey, value: &xdpg_lb_vip) -> std::io::Result<()> {
        let flags = libbpf_rs::MapFlags::EXIST;
        match key {
            VipKey::V4(k) => self.vips4.insert(k, value, flags),
            VipKey::V6(k) => self.vips6.insert(k, value, flags),
        }
    }

    /// Removes a VIP's key; returns whether it was there.
    pub(crate) fn remove_vip(&self, key: &VipKey) -> std::io::Result<bool> {
        match key {
            VipKey::V4(k) => self.vips4.remove(k),
            VipKey::V6(k) => self.vips6.remove(k),
        }
    }

    /// Every VIP key with its value.
    fn all_vips(&self) -> Result<Vec<(VipKey, xdpg_lb_vip)>, LbError> {
        let mut found = Vec::new();
        for k in self.vips4.keys() {
            // None: removed meanwhile.
            if let Some(v) = self.vips4.get(&k).map_err(map_err("reading a VIP"))? {
                found.push((VipKey::V4(k), v));
            }
        }
        for k in self.vips6.keys() {
            if let Some(v) = self.vips6.get(&k).map_err(map_err("reading a VIP"))? {
                found.push((VipKey::V6(k), v));
            }
        }
        Ok(found)
    }
}

pub(crate) fn addr_key(ip: IpAddr) -> xdpg_lb_addr_key {
    xdpg_lb_addr_key { addr: addr_words(ip), family: family_code(ip), pad: [0; 3] }
}

pub(crate) fn vip_value(index: u32, config: &VipConfig) -> xdpg_lb_vip {
    xdpg_lb_vip {
        index,
        table_size: config.table_size,
        mode: config.mode.code(),
        flags: config.flags(),
        pad: 0,
        reserved: 0,
    }
}

pub(crate) fn backend_value(addr: &BackendAddr, vip_index: u32, weight: u32) -> xdpg_lb_backend {
    xdpg_lb_backend {
        addr: addr_words(addr.ip),
        port: port_word(addr.port.unwrap_or(0)),
        family: family_code(addr.ip),
        flags: XDPG_LB_BACKEND_ACTIVE as u8,
        gen: 0,
        vip_index,
        weight,
    }
}

impl LbState {
    /// Reads the whole configuration back from the maps.
    pub(crate) fn load(maps: &LbMaps) -> Result<Self, LbError> {
        let mut vips = BTreeMap::new();
        let mut by_index = BTreeMap::new();
        for (key, v) in maps.all_vips()? {
            let (Some(vip), Some(mode)) = (vip_from_key(&key), ForwardingMode::from_code(v.mode)) else {
                continue; // not something this build writes
            };
            let config = VipConfig {
                mode,
                table_size: v.table_size,
                hash: if u32::from(v.flags) & XDPG_LB_VIP_HASH_SRC_ONLY != 0 {
                    HashInput::SourceAddress
                } else {
                    HashInput::FiveTuple
                },
                conntrack: u32::from(v.flags) & XDPG_LB_VIP_NO_CONNTRACK == 0,
            };
            by_index.insert(v.index, vip);
            vips.insert(vip, VipState::new(v.index, config));
        }
        for id in 0..maps.backends.len() {
            let b = maps.backends.get(id);
            if b.family == 0 {
                continue;
            }
            let (Some(ip), Some(vip)) = (ip_from_words(b.family, b.addr), by_index.get(&b.vip_index)) else {
                continue;
            };
            let port = port_from_word(b.port);
            let addr = BackendAddr { ip, port: (port != 0).then_some(port) };
            if let Some(vs) = vips.get_mut(vip) {
                vs.backends.insert(addr, Slot { id: id as u32, weight: b.weight });
            }
        }
        Ok(LbState { vips })
    }

    pub(crate) fn vip(&self, vip: &Vip) -> Result<&VipState, LbError> {
        self.vips.get(vip).ok_or(LbError::VipNotFound { vip: *vip })
    }

    pub(crate) fn vip_mut(&mut self, vip: &Vip) -> Result<&mut VipState, LbError> {
        self.vips.get_mut(vip).ok_or(LbError::VipNotFound { vip: *vip })
    }

    /// The lowest VIP slot no VIP uses.
    pub(crate) fn free_vip_index(&self, capacity: u32) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self.vips.values().map(|v| v.index).collect();
        (0..capacity).find(|i| !used.contains(i))
    }

    pub(crate) fn count_where(&self, f: impl Fn(&Vip, &VipState) -> bool) -> u32 {
        self.vips.iter().filter(|(v, s)| f(v, s)).count() as u32
    }
}
