//! The metric families: every name, its help, type and labels, written once
//! ([`FAMILIES`]), and the buffer a scrape fills ([`Samples`]) before it is
//! encoded.
//!
//! Samples are gathered first and encoded per family afterwards because
//! both text formats require a family's samples to follow its one
//! `# TYPE` line: with two filters pinned, encoding per program would
//! repeat every `# TYPE` (which `promtool check metrics` rejects).

use std::borrow::Cow;
use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Counter (only ever grows, until a reset) or gauge (a value now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Counter,
    Gauge,
}

/// One metric family. A counter's samples carry `_total` after the name
/// (and after the unit, if any): `xdpguard_filter` with unit bytes is
/// `xdpguard_filter_bytes_total`.
#[derive(Debug)]
pub(crate) struct Family {
    /// The family's name without unit or `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub ty: Type,
    /// Only [`Unit::Bytes`] here (no other unit is measured).
    pub bytes: bool,
    /// The label names, in the order every sample gives its values.
    pub labels: &'static [&'static str],
}

impl Family {
    /// The name samples carry, as scraped: with the unit and, for a
    /// counter, `_total`.
    #[cfg(test)]
    pub(crate) fn sample_name(&self) -> String {
        let unit = if self.bytes { "_bytes" } else { "" };
        let total = if self.ty == Type::Counter { "_total" } else { "" };
        format!("{}{unit}{total}", self.name)
    }
}

/// Declares the families: `IDENT = (name, type, unit, [labels], help)`.
/// A new counter is one line here (and, if it is a new family rather than a
/// new `reason` of one, one `push` where it is read).
macro_rules! families {
    ($($id:ident = ($name:literal, $ty:ident, $bytes:literal, [$($label:literal),*], $help:literal),)*) => {
        /// Indexes into [`FAMILIES`].
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub(crate) enum Id { $($id,)* }

        /// Every family, in the order they are encoded.
        pub(crate) const FAMILIES: &[Family] = &[
            $(Family { name: $name, help: $help, ty: Type::$ty, bytes: $bytes, labels: &[$($label),*] },)*
        ];
    };
}

families! {
    UP = ("xdpguard_up", Gauge, false, ["program", "pin"],
        "Whether the pinned program could be read at this scrape (1) or not (0: see the exporter's log)."),
    ATTACHED = ("xdpguard_attached", Gauge, false, ["program", "pin", "interface", "mode"],
        "1 for each interface a pinned program is attached to, with its XDP mode; 0 for an attachment lost since (its interface deleted: `xdpguard status` says lost), until it is attached there again or detached."),
    FILTER_PACKETS = ("xdpguard_filter_packets", Counter, false, ["pin", "reason"],
        "Packets the filter saw, by verdict reason (each packet counted once)."),
    FILTER_BYTES = ("xdpguard_filter", Counter, true, ["pin", "reason"],
        "Bytes the filter saw (from the Ethernet header), by verdict reason."),
    FILTER_ENTRIES = ("xdpguard_filter_list_entries", Gauge, false, ["pin", "list"],
        "Entries in the filter's blocklist and allowlist."),
    FILTER_MONITOR = ("xdpguard_filter_monitor", Gauge, false, ["pin"],
        "1 while the filter is in monitor (dry-run) mode: it counts what it would drop and drops nothing."),
    RULE_PACKETS = ("xdpguard_filter_rule_packets", Counter, false, ["pin", "rule", "action", "text"],
        "Packets a filter rule matched (a monitored drop rule: would have dropped), by rule id."),
    RULE_BYTES = ("xdpguard_filter_rule", Counter, true, ["pin", "rule", "action", "text"],
        "Bytes a filter rule matched, by rule id."),
    RULE_LIMITED_PACKETS = ("xdpguard_filter_rule_limited_packets", Counter, false, ["pin", "rule"],
        "Packets a rate-limit rule found over its limit (dropped; in monitor mode, counted and passed), by rule id."),
    RULE_LIMITED_BYTES = ("xdpguard_filter_rule_limited", Counter, true, ["pin", "rule"],
        "Bytes a rate-limit rule found over its limit, by rule id."),
    RULE_AUTO_BLOCKS = ("xdpguard_filter_rule_auto_blocks", Counter, false, ["pin", "rule"],
        "Timed blocks a rate-limit rule with `block` made, by rule id."),
    RULE_MONITOR = ("xdpguard_filter_rule_monitor", Gauge, false, ["pin", "rule"],
        "1 for a rule in monitor mode (it counts, decides nothing), 0 for the others."),
    SYN_PACKETS = ("xdpguard_filter_syn_packets", Counter, false, ["pin", "port", "counted"],
        "A SYN-guarded port's packets, by what was counted (syns, dropped, would_drop, cookies_sent, cookies_ok, acks_other, known_passed, unanswerable)."),
    SYN_RATE = ("xdpguard_filter_syn_rate", Gauge, false, ["pin", "port"],
        "A SYN-guarded port's SYNs a second, as the guard measured it last (drop mode only: cookie-mode ports have no sample)."),
    LIMITER = ("xdpguard_filter_limiter", Counter, false, ["pin", "counted"],
        "The rate limiter's events: buckets_made, promote_capped, sketch_over, blocks_failed (auto-blocks the full timed-block table refused; expired blocks hold their slots until a list, an edit or a scrape reclaims them), expired."),
    LIMITER_BUCKETS = ("xdpguard_filter_limiter_buckets", Gauge, false, ["pin"],
        "Exact rate-limit buckets in use."),
    LIMITER_BUCKETS_CAPACITY = ("xdpguard_filter_limiter_buckets_capacity", Gauge, false, ["pin"],
        "Exact rate-limit buckets the table holds (max_limit_buckets at load); full, the least recently used is evicted."),
    TIMED_BLOCKS = ("xdpguard_filter_timed_blocks", Gauge, false, ["pin"],
        "Live timed blocks (blocks that expire)."),
    TIMED_BLOCKS_CAPACITY = ("xdpguard_filter_timed_blocks_capacity", Gauge, false, ["pin"],
        "Timed blocks the table holds (max_timed_blocks at load); full, auto-blocks fail."),
    EVENTS = ("xdpguard_filter_drop_events", Counter, false, ["pin", "counted"],
        "Drop events: sent to the ring, limited by the per-CPU rate, lost (ring full)."),
    LB_DROPPED_PACKETS = ("xdpguard_lb_dropped_packets", Counter, false, ["pin", "reason"],
        "Packets the load balancer dropped, by reason."),
    LB_DROPPED_BYTES = ("xdpguard_lb_dropped", Counter, true, ["pin", "reason"],
        "Bytes the load balancer dropped, by reason."),
    LB_PASSED_PACKETS = ("xdpguard_lb_passed_packets", Counter, false, ["pin", "reason"],
        "Packets the load balancer passed to the host's stack, by reason."),
    LB_PASSED_BYTES = ("xdpguard_lb_passed", Counter, true, ["pin", "reason"],
        "Bytes the load balancer passed to the host's stack, by reason."),
    LB_EVENT_PACKETS = ("xdpguard_lb_event_packets", Counter, false, ["pin", "event"],
        "Packets the load balancer forwarded or answered, and other events, by event (may overlap)."),
    LB_EVENT_BYTES = ("xdpguard_lb_event", Counter, true, ["pin", "event"],
        "Bytes of the load balancer's events, by event."),
    VIP_PACKETS = ("xdpguard_lb_vip_packets", Counter, false, ["pin", "vip"],
        "Packets for a VIP (ICMP errors about its flows included), whatever happened to them next."),
    VIP_BYTES = ("xdpguard_lb_vip", Counter, true, ["pin", "vip"],
        "Bytes for a VIP."),
    VIP_NEW_FLOWS = ("xdpguard_lb_vip_new_flows", Counter, false, ["pin", "vip"],
        "Connection-table entries created for a VIP."),
    VIP_LRU_HITS = ("xdpguard_lb_vip_lru_hits", Counter, false, ["pin", "vip"],
        "A VIP's packets whose flow was in the connection table."),
    VIP_LRU_MISSES = ("xdpguard_lb_vip_lru_misses", Counter, false, ["pin", "vip"],
        "A VIP's packets that chose a backend by Maglev."),
    VIP_BACKENDS = ("xdpguard_lb_vip_backends", Gauge, false, ["pin", "vip", "state"],
        "A VIP's backends, active (weight > 0) or draining (weight 0)."),
    BACKEND_PACKETS = ("xdpguard_lb_backend_packets", Counter, false, ["pin", "vip", "backend"],
        "Packets sent to a backend (as received, before encapsulation)."),
    BACKEND_BYTES = ("xdpguard_lb_backend", Counter, true, ["pin", "vip", "backend"],
        "Bytes sent to a backend (as received, before encapsulation)."),
    BACKEND_NO_NEIGH_PACKETS = ("xdpguard_lb_backend_no_neighbour_packets", Counter, false, ["pin", "vip", "backend"],
        "A backend's packets that found its next hop unresolved and went through the host's stack."),
    BACKEND_NO_NEIGH_BYTES = ("xdpguard_lb_backend_no_neighbour", Counter, true, ["pin", "vip", "backend"],
        "Bytes of a backend's packets that found its next hop unresolved."),
    BACKEND_WEIGHT = ("xdpguard_lb_backend_weight", Gauge, false, ["pin", "vip", "backend"],
        "A backend's Maglev weight (0: draining)."),
    BACKEND_NEIGHBOUR = ("xdpguard_lb_backend_neighbour_state", Gauge, false, ["pin", "vip", "backend", "state"],
        "1 for the state of a backend's next-hop neighbour now, 0 for the others."),
    BACKEND_NEXT_HOP = ("xdpguard_lb_backend_next_hop", Gauge, false, ["pin", "vip", "backend", "via", "interface"],
        "1 per backend: its next hop (the backend or a gateway) and egress interface, empty without a route."),
    DECAP_PACKETS = ("xdpguard_decap_packets", Counter, false, ["pin", "reason"],
        "Packets the decapsulator saw: decapsulated, or passed untouched."),
    DECAP_BYTES = ("xdpguard_decap", Counter, true, ["pin", "reason"],
        "Bytes the decapsulator saw."),
    DECAP_LOCALS = ("xdpguard_decap_local_addresses", Gauge, false, ["pin"],
        "Local tunnel endpoints the decapsulator decapsulates for."),
}

/// A label value: most are words of this crate, pins and VIPs are not.
pub(crate) type Label = Cow<'static, str>;

/// A sample: its label values, and its value.
type Sample = (Vec<Label>, u64);

/// What one scrape read, by family; each sample's label values in the
/// order of its family's `labels`.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    by_family: BTreeMap<Id, Vec<Sample>>,
}

impl Samples {
    /// Adds a sample.
    ///
    /// # Panics
    ///
    /// When the label values do not match the family's label names (a bug
    /// in this module, caught by its tests).
    pub(crate) fn push<const N: usize>(&mut self, id: Id, labels: [Label; N], value: u64) {
        assert_eq!(FAMILIES[id as usize].labels.len(), N, "labels of {}", FAMILIES[id as usize].name);
        self.by_family.entry(id).or_default().push((labels.to_vec(), value));
    }

    /// A packets and a bytes counter of the same labels.
    pub(crate) fn push_counter<const N: usize>(
        &mut self,
        packets: Id,
        bytes: Id,
        labels: [Label; N],
        c: crate::Counter,
    ) {
        self.push(packets, labels.clone(), c.packets);
        self.push(bytes, labels, c.bytes);
    }

    /// Moves `other`'s samples in.
    pub(crate) fn extend(&mut self, other: Samples) {
        for (id, mut samples) in other.by_family {
            self.by_family.entry(id).or_default().append(&mut samples);
        }
    }

    /// Encodes every family that has samples, each with its descriptor once.
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (id, samples) in &self.by_family {
            let f = &FAMILIES[*id as usize];
            let ty = match f.ty {
                Type::Counter => MetricType::Counter,
                Type::Gauge => MetricType::Gauge,
            };
            let unit = f.bytes.then_some(&Unit::Bytes);
            let mut metric = encoder.encode_descriptor(f.name, f.help, unit, ty)?;
            for (values, value) in samples {
                let labels: Vec<(&str, &str)> =
                    f.labels.iter().copied().zip(values.iter().map(|v| v.as_ref())).collect();
                let mut m = metric.encode_family(&labels)?;
                match f.ty {
                    Type::Counter => m.encode_counter::<NoLabelSet, _, u64>(value, None)?,
                    Type::Gauge => m.encode_gauge(value)?,
                }
            }
        }
        Ok(())
    }
}
