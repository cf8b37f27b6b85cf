//! Load-balancer counter snapshots, and the methods that read them. The
//! data plane keeps one slot per CPU (no atomics on the hot path); these
//! are the sums.

use super::hops::{self, neigh_err};
use super::layout::{xdpg_counter, xdpg_lb_backend_stats, xdpg_lb_vip_stats};
use super::maps::map_err;
use super::neigh::{self, HopKey};
use super::state::Slot;
use super::types::{Backend, BackendAddr, NextHop, VipConfig};
use super::{LoadBalancer, Vip};
use crate::core::layout::consts::*;
use crate::error::LbError;
use crate::Counter;

/// One VIP's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VipStats {
    /// Packets and bytes for the VIP (including ICMP errors about its
    /// flows), whatever happened to them next.
    pub traffic: Counter,
    /// Connection-table entries created.
    pub new_flows: u64,
    /// Packets whose flow was in the connection table.
    pub lru_hits: u64,
    /// Packets that chose a backend by Maglev: new flows, TCP SYNs (which
    /// always choose afresh), expired UDP flows, untracked packets.
    pub lru_misses: u64,
}

impl VipStats {
    pub(crate) fn from_raw(s: xdpg_lb_vip_stats) -> Self {
        VipStats {
            traffic: Counter { packets: s.packets, bytes: s.bytes },
            new_flows: s.new_flows,
            lru_hits: s.lru_hits,
            lru_misses: s.lru_misses,
        }
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &VipStats) -> VipStats {
        VipStats {
            traffic: self.traffic - earlier.traffic,
            new_flows: self.new_flows.saturating_sub(earlier.new_flows),
            lru_hits: self.lru_hits.saturating_sub(earlier.lru_hits),
            lru_misses: self.lru_misses.saturating_sub(earlier.lru_misses),
        }
    }
}

/// One VIP at one moment, as [`LoadBalancer::all_vip_stats`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipReport {
    /// The VIP.
    pub vip: Vip,
    /// Its settings.
    pub config: VipConfig,
    /// Its counters, as [`LoadBalancer::vip_stats`] gives them.
    pub stats: VipStats,
    /// Its backends, as [`LoadBalancer::backend_stats`] gives them.
    pub backends: Vec<BackendStats>,
}

/// One backend's counters, and its next hop's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendStats {
    /// The backend and its weight.
    pub backend: Backend,
    /// Packets and bytes sent to it (as received, before encapsulation).
    pub traffic: Counter,
    /// Of those, the ones that found no resolved neighbour for its next hop
    /// and went through the LB host's stack instead of XDP: IPIP and NAT
    /// packets rewritten (the stack forwards them once the neighbour is
    /// resolved, or drops them when it cannot be), L2 DSR packets as a
    /// probe (the packet itself is lost; see [`ForwardingMode::L2Dsr`](crate::ForwardingMode::L2Dsr)).
    /// Also counted in [`LbStats::passed_no_neighbour`].
    pub no_neighbour: Counter,
    /// Its next hop now, as the data plane's route lookup finds it from the
    /// first interface the LB receives on that routes it (those it is
    /// attached to first; the main table's while it receives nowhere), and
    /// the kernel's neighbour table's state of it.
    pub next_hop: NextHop,
}

impl BackendStats {
    /// Its address.
    pub fn addr(&self) -> BackendAddr {
        self.backend.addr
    }
}

/// Packets the LB dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LbDrops {
    /// For a VIP without usable backend (none, or all draining).
    pub no_backend: Counter,
    /// Too big for the egress link after encapsulation (or, for any mode,
    /// bigger than the egress MTU); see also [`LbStats::too_big_sent`].
    pub mtu: Counter,
    /// Fragments to a VIP address, by the [`FragmentPolicy`](crate::FragmentPolicy).
    pub fragment: Counter,
    /// IPv4 options to a VIP, by the [`OptionsPolicy`](crate::OptionsPolicy).
    pub ip_options: Counter,
    /// ICMP echo to a VIP, by the [`EchoPolicy`](crate::EchoPolicy), or
    /// one to answer that came from or to a multicast or broadcast MAC.
    pub echo: Counter,
    /// ICMP errors about a VIP flow with no backend to deliver them to.
    pub icmp: Counter,
    /// A backend of a family its VIP's mode cannot reach.
    pub unsupported: Counter,
    /// No room to encapsulate, or to grow a short frame into an L2 DSR
    /// probe (the driver gives too little).
    pub headroom: Counter,
    /// New NAT flows over the [`NewFlowLimit`](crate::NewFlowLimit): NAT
    /// translates replies from the connection entry, so a flow that gets
    /// none is dropped (and the client retries) rather than forwarded and
    /// broken. Also counted in [`LbStats::conntrack_refused`].
    pub nat_untracked: Counter,
}

/// The LB's global counters: every drop reason, and what happened to
/// packets that are not simply forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LbStats {
    /// Drops by reason.
    pub drops: LbDrops,
    /// Not for a VIP (also VLAN-tagged and non-IP frames): passed untouched.
    pub passed_non_vip: Counter,
    /// Bad or truncated headers (by the frame's end or by the packet's own
    /// IP length): passed untouched.
    pub passed_malformed: Counter,
    /// The next hop had no resolved neighbour: passed to the stack, which
    /// resolves it (towards a backend: IPIP and NAT packets rewritten, L2
    /// DSR packets as a probe; see [`BackendStats::no_neighbour`]; towards
    /// a client: NAT replies translated).
    pub passed_no_neighbour: Counter,
    /// No route, or forwarding disabled on the ingress interface: passed.
    pub passed_no_route: Counter,
    /// The egress interface is not in the LB's devmap: passed rewritten
    /// (add it with [`LoadBalancer::add_redirect_interface`](crate::LoadBalancer::add_redirect_interface)).
    pub passed_no_devmap: Counter,
    /// NAT: the TTL/hop limit would expire: passed so the stack answers.
    pub passed_ttl: Counter,
    /// ICMP echo to a VIP passed by the echo policy.
    pub passed_echo: Counter,
    /// New flows not tracked because the per-CPU new-flow bound was hit:
    /// forwarded untracked, or for NAT VIPs dropped (see [`LbDrops::nat_untracked`]).
    pub conntrack_refused: Counter,
    /// Fragments forwarded (hashed without ports).
    pub fragments_forwarded: Counter,
    /// IPv4 TCP/UDP packets with options to a VIP that the options policy
    /// let through (counted whatever happens to them next).
    pub options_forwarded: Counter,
    /// ICMP errors about a VIP's flow that found a backend to go to
    /// (destination unreachable, fragmentation needed, packet too big: see
    /// [`LoadBalancer`](crate::LoadBalancer)), counted whatever happens to
    /// them next.
    pub icmp_forwarded: Counter,
    /// ICMP echo to a VIP answered.
    pub echo_answered: Counter,
    /// NAT replies translated back to the VIP, and ICMP errors about a NAT
    /// flow translated on their way to the client.
    pub nat_replies: Counter,
    /// Forwarded back out of the receiving interface (`XDP_TX`). The LB's
    /// own answers (echo replies, too-big messages) leave by `XDP_TX` too,
    /// but are counted in `echo_answered` and `too_big_sent` only.
    pub tx: Counter,
    /// Sent out of another interface (`XDP_REDIRECT`).
    pub redirected: Counter,
    /// Too big for the next hop (also counted in `drops.mtu`): an ICMP
    /// "fragmentation needed" (IPv4 with DF) or "packet too big" (IPv6)
    /// went back to the sender.
    pub too_big_sent: Counter,
}

impl LbStats {
    pub(crate) fn from_raw(c: &[Counter]) -> Self {
        let g = |i: u32| c[i as usize];
        LbStats {
            drops: LbDrops {
                no_backend: g(XDPG_LB_DROP_NO_BACKEND),
                mtu: g(XDPG_LB_DROP_MTU),
                fragment: g(XDPG_LB_DROP_FRAGMENT),
                ip_options: g(XDPG_LB_DROP_IP_OPTIONS),
                echo: g(XDPG_LB_DROP_ECHO),
                icmp: g(XDPG_LB_DROP_ICMP),
                unsupported: g(XDPG_LB_DROP_UNSUPPORTED),
                headroom: g(XDPG_LB_DROP_HEADROOM),
                nat_untracked: g(XDPG_LB_DROP_NAT_UNTRACKED),
            },
            passed_non_vip: g(XDPG_LB_PASS_NON_VIP),
            passed_malformed: g(XDPG_LB_PASS_MALFORMED),
            passed_no_neighbour: g(XDPG_LB_PASS_NO_NEIGH),
            passed_no_route: g(XDPG_LB_PASS_NO_ROUTE),
            passed_no_devmap: g(XDPG_LB_PASS_NO_DEVMAP),
            passed_ttl: g(XDPG_LB_PASS_TTL),
            passed_echo: g(XDPG_LB_PASS_ECHO),
            conntrack_refused: g(XDPG_LB_EV_CT_REFUSED),
            fragments_forwarded: g(XDPG_LB_EV_FRAG_FORWARDED),
            options_forwarded: g(XDPG_LB_EV_OPTIONS_FORWARDED),
            icmp_forwarded: g(XDPG_LB_EV_ICMP_FORWARDED),
            echo_answered: g(XDPG_LB_EV_ECHO_ANSWERED),
            nat_replies: g(XDPG_LB_EV_NAT_REPLY),
            tx: g(XDPG_LB_EV_TX),
            redirected: g(XDPG_LB_EV_REDIRECT),
            too_big_sent: g(XDPG_LB_EV_TOO_BIG_SENT),
        }
    }

    /// The counters by index, as [`from_raw`](Self::from_raw) reads them.
    pub(crate) fn to_raw(self) -> Vec<Counter> {
        let mut raw = vec![Counter::default(); XDPG_LB_COUNTER_COUNT as usize];
        let d = &self.drops;
        for (i, c) in [
            (XDPG_LB_DROP_NO_BACKEND, d.no_backend),
            (XDPG_LB_DROP_MTU, d.mtu),
            (XDPG_LB_DROP_FRAGMENT, d.fragment),
            (XDPG_LB_DROP_IP_OPTIONS, d.ip_options),
            (XDPG_LB_DROP_ECHO, d.echo),
            (XDPG_LB_DROP_ICMP, d.icmp),
            (XDPG_LB_DROP_UNSUPPORTED, d.unsupported),
            (XDPG_LB_DROP_HEADROOM, d.headroom),
            (XDPG_LB_DROP_NAT_UNTRACKED, d.nat_untracked),
            (XDPG_LB_PASS_NON_VIP, self.passed_non_vip),
            (XDPG_LB_PASS_MALFORMED, self.passed_malformed),
            (XDPG_LB_PASS_NO_NEIGH, self.passed_no_neighbour),
            (XDPG_LB_PASS_NO_ROUTE, self.passed_no_route),
            (XDPG_LB_PASS_NO_DEVMAP, self.passed_no_devmap),
            (XDPG_LB_PASS_TTL, self.passed_ttl),
            (XDPG_LB_PASS_ECHO, self.passed_echo),
            (XDPG_LB_EV_CT_REFUSED, self.conntrack_refused),
            (XDPG_LB_EV_FRAG_FORWARDED, self.fragments_forwarded),
            (XDPG_LB_EV_OPTIONS_FORWARDED, self.options_forwarded),
            (XDPG_LB_EV_ICMP_FORWARDED, self.icmp_forwarded),
            (XDPG_LB_EV_ECHO_ANSWERED, self.echo_answered),
            (XDPG_LB_EV_NAT_REPLY, self.nat_replies),
            (XDPG_LB_EV_TX, self.tx),
            (XDPG_LB_EV_REDIRECT, self.redirected),
            (XDPG_LB_EV_TOO_BIG_SENT, self.too_big_sent),
        ] {
            raw[i as usize] = c;
        }
        raw
    }

    /// Every drop, whatever the reason.
    pub fn dropped(&self) -> Counter {
        let d = &self.drops;
        d.no_backend
            + d.mtu
            + d.fragment
            + d.ip_options
            + d.echo
            + d.icmp
            + d.unsupported
            + d.headroom
            + d.nat_untracked
    }

    /// (name, counter) pairs, drops first, in a stable order, for tables and JSON.
    pub fn rows(&self) -> Vec<(&'static str, Counter)> {
        let d = &self.drops;
        vec![
            ("drop_no_backend", d.no_backend),
            ("drop_mtu", d.mtu),
            ("drop_fragment", d.fragment),
            ("drop_ip_options", d.ip_options),
            ("drop_echo", d.echo),
            ("drop_icmp", d.icmp),
            ("drop_unsupported", d.unsupported),
            ("drop_headroom", d.headroom),
            ("drop_nat_untracked", d.nat_untracked),
            ("passed_non_vip", self.passed_non_vip),
            ("passed_malformed", self.passed_malformed),
            ("passed_no_neighbour", self.passed_no_neighbour),
            ("passed_no_route", self.passed_no_route),
            ("passed_no_devmap", self.passed_no_devmap),
            ("passed_ttl", self.passed_ttl),
            ("passed_echo", self.passed_echo),
            ("conntrack_refused", self.conntrack_refused),
            ("fragments_forwarded", self.fragments_forwarded),
            ("options_forwarded", self.options_forwarded),
            ("icmp_forwarded", self.icmp_forwarded),
            ("echo_answered", self.echo_answered),
            ("nat_replies", self.nat_replies),
            ("tx", self.tx),
            ("redirected", self.redirected),
            ("too_big_sent", self.too_big_sent),
        ]
    }

    /// The counts since `earlier` (per row).
    pub fn since(&self, earlier: &LbStats) -> LbStats {
        let d = |a: Counter, b: Counter| a - b;
        LbStats {
            drops: LbDrops {
                no_backend: d(self.drops.no_backend, earlier.drops.no_backend),
                mtu: d(self.drops.mtu, earlier.drops.mtu),
                fragment: d(self.drops.fragment, earlier.drops.fragment),
                ip_options: d(self.drops.ip_options, earlier.drops.ip_options),
                echo: d(self.drops.echo, earlier.drops.echo),
                icmp: d(self.drops.icmp, earlier.drops.icmp),
                unsupported: d(self.drops.unsupported, earlier.drops.unsupported),
                headroom: d(self.drops.headroom, earlier.drops.headroom),
                nat_untracked: d(self.drops.nat_untracked, earlier.drops.nat_untracked),
            },
            passed_non_vip: d(self.passed_non_vip, earlier.passed_non_vip),
            passed_malformed: d(self.passed_malformed, earlier.passed_malformed),
            passed_no_neighbour: d(self.passed_no_neighbour, earlier.passed_no_neighbour),
            passed_no_route: d(self.passed_no_route, earlier.passed_no_route),
            passed_no_devmap: d(self.passed_no_devmap, earlier.passed_no_devmap),
            passed_ttl: d(self.passed_ttl, earlier.passed_ttl),
            passed_echo: d(self.passed_echo, earlier.passed_echo),
            conntrack_refused: d(self.conntrack_refused, earlier.conntrack_refused),
            fragments_forwarded: d(self.fragments_forwarded, earlier.fragments_forwarded),
            options_forwarded: d(self.options_forwarded, earlier.options_forwarded),
            icmp_forwarded: d(self.icmp_forwarded, earlier.icmp_forwarded),
            echo_answered: d(self.echo_answered, earlier.echo_answered),
            nat_replies: d(self.nat_replies, earlier.nat_replies),
            tx: d(self.tx, earlier.tx),
            redirected: d(self.redirected, earlier.redirected),
            too_big_sent: d(self.too_big_sent, earlier.too_big_sent),
        }
    }
}

impl LoadBalancer {
    /// A VIP's counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::Map`] when the counters cannot
    /// be read.
    pub fn vip_stats(&self, vip: &Vip) -> Result<VipStats, LbError> {
        let index = self.read(|st| st.vip(vip).map(|s| s.index))??;
        Ok(VipStats::from_raw(self.maps().vip_stats(index)?))
    }

    /// A VIP's backends with their counters and the state of their next
    /// hops (the data plane's route lookup's, with the kernel's neighbour
    /// table's state, in the LB's network namespace;
    /// [`NeighbourState::Unknown`](super::NeighbourState::Unknown) when that
    /// namespace cannot be reached from this thread, or entered by this
    /// process).
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::Map`] or [`LbError::Neighbour`]
    /// when reading the counters or the kernel's tables fails;
    /// [`LbError::NetlinkSocket`] when no rtnetlink socket can be opened.
    pub fn backend_stats(&self, vip: &Vip) -> Result<Vec<BackendStats>, LbError> {
        let mut one = self.backend_stats_of(Some(vip))?;
        Ok(one.pop().map(|(_, _, backends)| backends).unwrap_or_default())
    }

    /// Every VIP with its settings, its counters and its backends (as
    /// [`vip_stats`](Self::vip_stats) and
    /// [`backend_stats`](Self::backend_stats) give them), read at one
    /// moment: one look at the LB's state and one route lookup in its
    /// namespace for them all, where those two per VIP make one each, and
    /// a VIP removed between two of them fails the second (what
    /// `xdpguard-lb stats` and each metrics scrape read).
    ///
    /// # Errors
    ///
    /// As [`backend_stats`](Self::backend_stats), without
    /// [`LbError::VipNotFound`].
    pub fn all_vip_stats(&self) -> Result<Vec<VipReport>, LbError> {
        self.backend_stats_of(None)?
            .into_iter()
            .map(|((vip, index), config, backends)| {
                let stats = VipStats::from_raw(self.maps().vip_stats(index)?);
                Ok(VipReport { vip, config, stats, backends })
            })
            .collect()
    }

    /// `vip`'s backends (every VIP's when `None`), in the state's order,
    /// each group with its VIP's counter index.
    #[allow(clippy::type_complexity)]
    fn backend_stats_of(&self, vip: Option<&Vip>) -> Result<Vec<((Vip, u32), VipConfig, Vec<BackendStats>)>, LbError> {
        type Group = ((Vip, u32), VipConfig, Vec<(BackendAddr, Slot)>);
        let (groups, questions): (Vec<Group>, _) = self.core.read(|st, maps| {
            if let Some(vip) = vip {
                st.vip(vip)?;
            }
            let groups = st
                .vips
                .iter()
                .filter(|(v, _)| vip.is_none_or(|want| want == *v))
                .map(|(v, s)| ((*v, s.index), s.config, s.backends.iter().map(|(a, slot)| (*a, *slot)).collect()))
                .collect();
            // In the same order: the VIPs', then each one's backends'.
            Ok::<_, LbError>((groups, hops::questions(st, maps, vip)))
        })??;
        // No backend: nothing to ask the LB's namespace.
        let looked = if questions.is_empty() { None } else { Some(self.hop_lookup()) };
        let hops = match looked {
            None => Vec::new(),
            Some(Ok(mut look)) => {
                const OP: &str = "reading the backends' next hops";
                // The first receiving interface's (those the LB is attached
                // to come first).
                let found: Vec<Option<HopKey>> = look
                    .hops(&questions)
                    .map_err(neigh_err(OP))?
                    .each
                    .into_iter()
                    .map(|h| h.first().copied())
                    .collect();
                neigh::next_hops(&mut look.rtnl, &found).map_err(neigh_err(OP))?
            }
            Some(Err(LbError::ForeignNamespace { .. } | LbError::NamespaceNotEntered { .. })) => {
                vec![NextHop::UNKNOWN; questions.len()]
            }
            Some(Err(e)) => return Err(e),
        };
        let mut hops = hops.into_iter();
        groups
            .into_iter()
            .map(|(vip, config, slots)| {
                let backends = slots
                    .into_iter()
                    .map(|(addr, slot)| {
                        let next_hop = hops.next().unwrap_or(NextHop::UNKNOWN);
                        let (traffic, no_neighbour) = self.maps().backend_stats(slot.id)?;
                        Ok(BackendStats {
                            backend: Backend { addr, weight: slot.weight },
                            traffic,
                            no_neighbour,
                            next_hop,
                        })
                    })
                    .collect::<Result<_, LbError>>()?;
                Ok((vip, config, backends))
            })
            .collect()
    }

    /// The global counters: drops by reason, and events.
    ///
    /// # Errors
    ///
    /// [`LbError::Map`] when the counters cannot be read.
    pub fn stats(&self) -> Result<LbStats, LbError> {
        Ok(LbStats::from_raw(&self.maps().global_counters()?))
    }

    /// Takes the counts a reader read (and showed) off the global
    /// counters: what was counted since that read stays, for the next one.
    /// This is the reset for a reader that shows counters and then starts
    /// them again (`xdpguard-lb stats --reset`): [`reset_stats`](Self::reset_stats)
    /// would also drop what was counted while it showed them. What is
    /// counted within the one system call between the lookup and the
    /// write of a counter is still lost: user space cannot write a per-CPU
    /// counter atomically.
    ///
    /// # Errors
    ///
    /// [`LbError::Map`] when a counter cannot be read or written.
    pub fn subtract_stats(&self, read: &LbStats) -> Result<(), LbError> {
        let maps = self.maps();
        for (i, c) in (0..).zip(read.to_raw()) {
            let raw = xdpg_counter { packets: c.packets, bytes: c.bytes };
            maps.counters.subtract(i, raw).map_err(map_err("resetting the LB counters"))?;
        }
        Ok(())
    }

    /// As [`subtract_stats`](Self::subtract_stats), for a VIP's counters
    /// and its backends' ([`vip_stats`](Self::vip_stats),
    /// [`backend_stats`](Self::backend_stats) as read). A backend removed
    /// since is skipped.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::Map`] when a counter cannot be
    /// read or written.
    pub fn subtract_vip_stats(&self, vip: &Vip, read: &VipStats, backends: &[BackendStats]) -> Result<(), LbError> {
        let (index, ids): (u32, Vec<(BackendAddr, u32)>) = self
            .read(|st| st.vip(vip).map(|s| (s.index, s.backends.iter().map(|(a, slot)| (*a, slot.id)).collect())))??;
        let maps = self.maps();
        let raw = xdpg_lb_vip_stats {
            packets: read.traffic.packets,
            bytes: read.traffic.bytes,
            new_flows: read.new_flows,
            lru_hits: read.lru_hits,
            lru_misses: read.lru_misses,
        };
        maps.vip_counters.subtract(index, raw).map_err(map_err("resetting the VIP counters"))?;
        for b in backends {
            let Some(&(_, id)) = ids.iter().find(|(a, _)| *a == b.addr()) else { continue };
            let raw = xdpg_lb_backend_stats {
                packets: b.traffic.packets,
                bytes: b.traffic.bytes,
                no_neigh_packets: b.no_neighbour.packets,
                no_neigh_bytes: b.no_neighbour.bytes,
            };
            maps.backend_counters.subtract(id, raw).map_err(map_err("resetting the backend counters"))?;
        }
        Ok(())
    }

    /// Zeroes every counter: global, per VIP, per backend. What is counted
    /// between a read of them and this is lost: a reader that shows the
    /// counters and then resets them uses
    /// [`subtract_stats`](Self::subtract_stats) and
    /// [`subtract_vip_stats`](Self::subtract_vip_stats) instead.
    ///
    /// # Errors
    ///
    /// [`LbError::Map`] when a counter cannot be written.
    pub fn reset_stats(&self) -> Result<(), LbError> {
        let maps = self.maps();
        let cap = maps.capacity();
        for i in 0..XDPG_LB_COUNTER_COUNT {
            maps.counters.zero(i).map_err(map_err("resetting the LB counters"))?;
        }
        let (vips, backends): (Vec<u32>, Vec<u32>) = self.read(|st| {
            (
                st.vips.values().map(|s| s.index).collect(),
                st.vips.values().flat_map(|s| s.backends.values().map(|b| b.id)).collect(),
            )
        })?;
        for i in vips.into_iter().filter(|i| *i < cap.max_vips) {
            maps.vip_counters.zero(i).map_err(map_err("resetting the VIP counters"))?;
        }
        for id in backends {
            maps.backend_counters.zero(id).map_err(map_err("resetting the backend counters"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_every_counter_once() {
        let raw: Vec<Counter> =
            (0..XDPG_LB_COUNTER_COUNT).map(|i| Counter { packets: u64::from(i) + 1, bytes: 0 }).collect();
        let s = LbStats::from_raw(&raw);
        let rows = s.rows();
        assert_eq!(rows.len(), XDPG_LB_COUNTER_COUNT as usize);
        let mut seen: Vec<u64> = rows.iter().map(|(_, c)| c.packets).collect();
        seen.sort();
        assert_eq!(seen, (1..=u64::from(XDPG_LB_COUNTER_COUNT)).collect::<Vec<_>>());
        assert_eq!(s.dropped().packets, (1..=u64::from(XDPG_LB_PASS_NON_VIP)).sum::<u64>(), "drops come first");
        assert_eq!(s.since(&s), LbStats::default());
        assert_eq!(s.to_raw(), raw, "to_raw puts every counter back at its index");
    }
}
