//! The load balancer's policies: ICMP echo, fragments, IPv4 options, and
//! the per-CPU bound on new flows, with the codes the data plane reads.

use crate::core::layout::consts::*;
use crate::core::names::named_values;

/// What the LB does with ICMP echo requests to a VIP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EchoPolicy {
    /// Answer in XDP (the VIP is pingable whatever its backends do). The
    /// answer goes back to the request's source MAC from its destination
    /// MAC, so a request from or to a multicast or broadcast MAC (no
    /// station sends from one) is dropped instead, counted as an echo drop.
    #[default]
    Answer,
    /// Hand them to the LB host's stack.
    Pass,
    /// Drop them (counted).
    Drop,
}

impl EchoPolicy {
    pub(crate) fn code(self) -> u8 {
        (match self {
            EchoPolicy::Answer => XDPG_LB_ECHO_ANSWER,
            EchoPolicy::Pass => XDPG_LB_ECHO_PASS,
            EchoPolicy::Drop => XDPG_LB_ECHO_DROP,
        }) as u8
    }

    pub(crate) fn from_code(c: u8) -> Self {
        match u32::from(c) {
            XDPG_LB_ECHO_PASS => EchoPolicy::Pass,
            XDPG_LB_ECHO_DROP => EchoPolicy::Drop,
            _ => EchoPolicy::Answer,
        }
    }
}

named_values! { EchoPolicy, "echo policy", {
    Answer => "answer",
    Pass => "pass",
    Drop => "drop",
} }

/// What the LB does with IP fragments addressed to a VIP address.
/// Fragments carry no ports after the first one, so they cannot be matched
/// to a single-port VIP or tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FragmentPolicy {
    /// Fragments to an all-ports L2 DSR or IPIP VIP are forwarded, hashed
    /// on addresses and protocol only (so all fragments of a datagram reach
    /// the same backend) and not tracked; every other fragment to a VIP
    /// address is dropped and counted. Under the VIP's default
    /// source-address hash ([`HashInput::default_for`](crate::HashInput::default_for))
    /// a fragment goes where its flow's whole packets go; under a
    /// five-tuple hash it usually goes to another backend, which sees a
    /// fragment of a flow it does not serve (a UDP datagram then reaches
    /// the wrong backend; TCP segments, which PMTU discovery keeps
    /// unfragmented, rarely are).
    #[default]
    ForwardAllPorts,
    /// Every fragment to a VIP address is dropped and counted.
    Drop,
}

impl FragmentPolicy {
    pub(crate) fn code(self) -> u8 {
        (match self {
            FragmentPolicy::ForwardAllPorts => XDPG_LB_FRAG_FORWARD,
            FragmentPolicy::Drop => XDPG_LB_FRAG_DROP,
        }) as u8
    }

    pub(crate) fn from_code(c: u8) -> Self {
        if u32::from(c) == XDPG_LB_FRAG_DROP {
            FragmentPolicy::Drop
        } else {
            FragmentPolicy::ForwardAllPorts
        }
    }
}

named_values! { FragmentPolicy, "fragment policy", {
    ForwardAllPorts => "forward" | "forward-all-ports",
    Drop => "drop",
} }

/// What the LB does with IPv4 TCP and UDP packets carrying options to a
/// VIP. Fragments follow the [`FragmentPolicy`] whatever their options, and
/// ICMP (echo, errors) is handled whatever its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OptionsPolicy {
    /// Forward them like any other packet (counted).
    #[default]
    Forward,
    /// Drop them (counted).
    Drop,
}

impl OptionsPolicy {
    pub(crate) fn code(self) -> u8 {
        (match self {
            OptionsPolicy::Forward => XDPG_LB_OPTIONS_FORWARD,
            OptionsPolicy::Drop => XDPG_LB_OPTIONS_DROP,
        }) as u8
    }

    pub(crate) fn from_code(c: u8) -> Self {
        if u32::from(c) == XDPG_LB_OPTIONS_DROP {
            OptionsPolicy::Drop
        } else {
            OptionsPolicy::Forward
        }
    }
}

named_values! { OptionsPolicy, "options policy", {
    Forward => "forward",
    Drop => "drop",
} }

/// The per-CPU bound on new connection-table entries, so a SYN flood
/// cannot evict live flows. Flows over the bound are still forwarded (by
/// Maglev), just not tracked, and counted as refused; except new flows to a
/// NAT VIP, which need their entry to translate replies back and are
/// dropped instead ([`LbDrops::nat_untracked`](crate::LbDrops::nat_untracked)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NewFlowLimit {
    /// No bound.
    Unlimited,
    /// At most `per_second` new entries per second on each CPU, with bursts
    /// of up to `burst` entries.
    PerCpu {
        /// Sustained rate.
        per_second: u32,
        /// Burst size (at least 1).
        burst: u32,
    },
}

impl Default for NewFlowLimit {
    fn default() -> Self {
        NewFlowLimit::PerCpu { per_second: 200_000, burst: 20_000 }
    }
}

impl NewFlowLimit {
    /// (interval ns, burst ns) as the data plane's GCRA wants them.
    pub(crate) fn gcra(self) -> (u64, u64) {
        match self {
            NewFlowLimit::Unlimited => (0, 0),
            NewFlowLimit::PerCpu { per_second, burst } => {
                let interval = (1_000_000_000u64 / u64::from(per_second.max(1))).max(1);
                (interval, interval * u64::from(burst.max(1) - 1))
            }
        }
    }

    pub(crate) fn from_gcra(interval: u64, burst_ns: u64) -> Self {
        if interval == 0 {
            return NewFlowLimit::Unlimited;
        }
        NewFlowLimit::PerCpu {
            per_second: (1_000_000_000 / interval).min(u64::from(u32::MAX)) as u32,
            burst: (burst_ns / interval + 1).min(u64::from(u32::MAX)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_round_trips() {
        let l = NewFlowLimit::PerCpu { per_second: 1000, burst: 50 };
        let (i, b) = l.gcra();
        assert_eq!(i, 1_000_000);
        assert_eq!(NewFlowLimit::from_gcra(i, b), l);
        assert_eq!(NewFlowLimit::Unlimited.gcra(), (0, 0));
    }
}
