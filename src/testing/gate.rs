//! The guard's gate (the filter's `xdpg_gate` map): whether the filter
//! passes a packet itself instead of tail-calling the guard stage, which it
//! does for packets the guard has nothing to do with (no rule for their
//! protocol and port, no SYN-guarded port, no timed block possible). For
//! tests that check the gate follows every edit.

use crate::filter::maps::FilterMaps;
use crate::Filter;

fn maps(filter: &Filter) -> &FilterMaps {
    &super::filter_core(filter).maps
}

/// Whether the gate is open (closed, every packet the lists pass goes to
/// the guard).
pub fn is_open(filter: &Filter) -> bool {
    crate::filter::guard::gate::is_open(maps(filter))
}

/// Whether the filter passes packets of IP protocol `proto` to `port` (TCP
/// and UDP: the destination port; ICMP and ICMPv6: the type; other
/// protocols: ignored) without the guard: the gate is open and the key's
/// bit is set.
pub fn skips(filter: &Filter, proto: u8, port: u16) -> bool {
    let key = crate::filter::rules::compile::packet_key(proto, Some(port)) as usize;
    is_open(filter) && maps(filter).gate.get(key / 64) >> (key % 64) & 1 == 1
}
