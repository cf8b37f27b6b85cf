//! The data plane's route lookup, asked from user space: the health check's
//! view of a backend's route ([`LoadBalancer::health`](super::LoadBalancer::health)),
//! and the next hops whose neighbour entries the LB keeps resolved
//! (`hops.rs`).
//!
//! `src/bpf/fib_probe.bpf.c` runs `bpf_fib_lookup` with the flags the LB's
//! data plane passes, on a question carried in its frame, through
//! `BPF_PROG_TEST_RUN` as if received on an interface the LB receives on.
//! So the answer is the one a VIP packet arriving there gets: an input
//! lookup, in which `ip rule iif` policy routing, a VRF the interface is
//! enslaved to and its forwarding setting all count. The rtnetlink route
//! lookup the check used before was an output lookup (no input interface):
//! it warned of a backend routed only by an `iif` rule, which the data
//! plane reached (`tests/lb_cli.rs`, `status_warns_of_a_backend_with_no_route`).
//! Asking the kernel's input route over rtnetlink (`RTA_IIF`) instead would
//! run the stack's checks the helper does not (martian and reverse-path
//! source checks), which refuse sources the data plane uses.
//!
//! Cost: loading the probe once per `LoadBalancer` handle ([`ProbeCache`];
//! one small program: `bpftool prog load` of it takes about 4 ms, its own
//! start-up included; AMD EPYC), and one `bpf()` call per backend, source
//! and interface.

use std::mem::{offset_of, size_of, MaybeUninit};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use ipnetwork::IpNetwork;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_sys::bpf_fib_lookup;

use super::layout::fib_probe_skel::FibProbeSkelBuilder;
use super::neigh::HopKey;
use super::types::{ForwardingMode, Vip};
use crate::core::layout::consts::{XDPG_FIB_PROBE_FIB_OFF, XDPG_FIB_PROBE_LEN, XDPG_FIB_PROBE_RC_OFF};
use crate::core::sys;

const FIB: usize = XDPG_FIB_PROBE_FIB_OFF as usize;
const RC: usize = XDPG_FIB_PROBE_RC_OFF as usize;
const LEN: usize = XDPG_FIB_PROBE_LEN as usize;
const AF_INET: u8 = nix::libc::AF_INET as u8;
const AF_INET6: u8 = nix::libc::AF_INET6 as u8;

// The question's fields, by the kernel's layout (linux/bpf.h, as
// libbpf-sys binds it): family, l4_protocol, ifindex, then the source
// (`ipv4_src` or `ipv6_src`) and destination unions.
const FAMILY: usize = offset_of!(bpf_fib_lookup, family);
const L4: usize = offset_of!(bpf_fib_lookup, l4_protocol);
const IFINDEX: usize = offset_of!(bpf_fib_lookup, ifindex);
const SRC: usize = offset_of!(bpf_fib_lookup, __bindgen_anon_3);
const DST: usize = offset_of!(bpf_fib_lookup, __bindgen_anon_4);
const _: () = {
    assert!(size_of::<bpf_fib_lookup>() == 64 && LEN == FIB + 64 && RC + 4 <= FIB);
    assert!(FAMILY == 0 && L4 == 1 && IFINDEX == 8 && SRC == 16 && DST == 32);
};

/// What the data plane's FIB lookup answers for a destination, as for a
/// packet received on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Routed out of this interface (its neighbour resolved or not: the
    /// data plane has the stack resolve it).
    Via(u32),
    /// No unicast route (none, blackhole, unreachable, prohibit, or a
    /// local or broadcast one): the data plane passes the packet to the
    /// stack (`passed_no_route`), which cannot forward it either.
    None,
    /// Forwarding is off on the interface (the check's `forwarding_off`
    /// reports it), an LWT route, or another answer: not known.
    Unknown,
}

/// The loaded probe.
pub(crate) struct Probe<'a> {
    prog: BorrowedFd<'a>,
}

/// A load balancer handle's loaded probe: loaded on first use and kept
/// while the handle lives (each load is a verifier run and an audit record
/// where auditing is on, and a stats scrape asks once per VIP: `stats` of
/// 200 VIPs took 0.31 s loading it per VIP, 0.15 s with it kept).
/// A failed load is not kept: the next use tries again.
pub(crate) type ProbeCache = OnceLock<OwnedFd>;

/// Runs `f` with the probe of `cache`, loading it first if need be.
///
/// # Errors
///
/// Why the probe cannot be loaded (no `CAP_BPF`, an LSM policy, ...): the
/// caller then checks no route, and says so.
pub(crate) fn with_probe<R>(cache: &ProbeCache, f: impl FnOnce(&Probe<'_>) -> R) -> Result<R, String> {
    let prog = match cache.get() {
        Some(fd) => fd,
        None => {
            let loaded = load()?;
            // Loaded meanwhile by another thread: either copy serves.
            cache.get_or_init(|| loaded)
        }
    };
    Ok(f(&Probe { prog: prog.as_fd() }))
}

/// Loads the probe: its program's own descriptor, which keeps it loaded
/// once the skeleton is gone.
fn load() -> Result<OwnedFd, String> {
    let mut storage = MaybeUninit::uninit();
    let open = FibProbeSkelBuilder::default().open(&mut storage).map_err(|e| format!("opening it: {e}"))?;
    let skel = open.load().map_err(|e| format!("loading it: {e}"))?;
    skel.progs.xdpg_fib_probe.as_fd().try_clone_to_owned().map_err(|e| format!("keeping it: {e}"))
}

/// What the data plane's lookup is asked for one backend of a VIP: the
/// destination, the sources its packets may leave with, as far as they are
/// known, and their IP protocol (which `ip rule ipproto` may match).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Question {
    pub dst: IpAddr,
    /// An IPIP VIP's tunnel prefix's first and last address (one for a /32
    /// or /128); empty for the other modes, whose packets keep their
    /// clients' addresses (looked up with the unspecified one). One source
    /// is the one every packet has.
    pub srcs: Vec<IpAddr>,
    pub l4: u8,
}

impl Question {
    /// The question for backend `dst` of `vip` in `mode`; `tunnel` the
    /// IPIP tunnel prefix per family (IPv4, IPv6), if set.
    pub(crate) fn new(vip: &Vip, mode: ForwardingMode, dst: IpAddr, tunnel: &[Option<IpNetwork>; 2]) -> Question {
        let srcs = match tunnel[usize::from(dst.is_ipv6())] {
            // The data plane sets a flow's hash in the prefix's host bits.
            Some(net) if mode == ForwardingMode::Ipip => {
                let (first, last) = (net.network(), net.broadcast());
                if first == last {
                    vec![first]
                } else {
                    vec![first, last]
                }
            }
            _ => Vec::new(),
        };
        let l4 = match mode {
            // The outer header names the inner packet's family.
            ForwardingMode::Ipip if vip.addr.is_ipv4() => nix::libc::IPPROTO_IPIP as u8,
            ForwardingMode::Ipip => nix::libc::IPPROTO_IPV6 as u8,
            _ => vip.protocol.number(),
        };
        Question { dst, srcs, l4 }
    }

    /// The sources to ask with: each known one, or the unspecified one.
    pub(crate) fn sources(&self) -> impl Iterator<Item = Option<IpAddr>> + '_ {
        self.srcs.iter().map(|s| Some(*s)).chain(self.srcs.is_empty().then_some(None))
    }
}

/// The lookup's raw answer: its return code, the egress and the next hop
/// it names (the gateway, or the destination itself on-link; of the other
/// family for an IPv4 route via an IPv6 gateway).
struct Answer {
    rc: Option<u32>,
    egress: u32,
    hop: Option<IpAddr>,
}

impl Answer {
    /// Routed: resolved or not (the data plane has the stack resolve it).
    fn routed(&self) -> bool {
        matches!(self.rc, Some(libbpf_sys::BPF_FIB_LKUP_RET_SUCCESS | libbpf_sys::BPF_FIB_LKUP_RET_NO_NEIGH))
            && self.egress != 0
    }

    fn route(&self) -> Route {
        match self.rc {
            _ if self.routed() => Route::Via(self.egress),
            Some(
                libbpf_sys::BPF_FIB_LKUP_RET_BLACKHOLE
                | libbpf_sys::BPF_FIB_LKUP_RET_UNREACHABLE
                | libbpf_sys::BPF_FIB_LKUP_RET_PROHIBIT
                | libbpf_sys::BPF_FIB_LKUP_RET_NOT_FWDED,
            ) => Route::None,
            _ => Route::Unknown,
        }
    }
}

impl Probe<'_> {
    /// The route to `dst` from `src` (the unspecified address when `None`
    /// or of the other family) for `l4` (an IP protocol number, which `ip
    /// rule ipproto` may match), as for a packet received on `ingress`, an
    /// interface of the calling thread's network namespace.
    ///
    /// # Errors
    ///
    /// The kernel refused the run (the interface gone meanwhile, say).
    pub(crate) fn route(&self, ingress: u32, src: Option<IpAddr>, dst: IpAddr, l4: u8) -> std::io::Result<Route> {
        Ok(self.ask(ingress, src, dst, l4)?.route())
    }

    /// As [`route`](Self::route), with the neighbour the data plane sends
    /// packets to `dst` to when routed: the gateway, or `dst` itself
    /// on-link, out of the egress.
    ///
    /// # Errors
    ///
    /// As [`route`](Self::route).
    pub(crate) fn next_hop(
        &self,
        ingress: u32,
        src: Option<IpAddr>,
        dst: IpAddr,
        l4: u8,
    ) -> std::io::Result<(Route, Option<HopKey>)> {
        let a = self.ask(ingress, src, dst, l4)?;
        let hop = a.hop.filter(|_| a.routed()).map(|addr| HopKey { ifindex: a.egress, addr });
        Ok((a.route(), hop))
    }

    fn ask(&self, ingress: u32, src: Option<IpAddr>, dst: IpAddr, l4: u8) -> std::io::Result<Answer> {
        let mut frame = [0u8; LEN];
        let q = &mut frame[FIB..];
        q[FAMILY] = if dst.is_ipv4() { AF_INET } else { AF_INET6 };
        q[L4] = l4;
        q[IFINDEX..IFINDEX + 4].copy_from_slice(&ingress.to_ne_bytes());
        match (src, dst) {
            (src, IpAddr::V4(d)) => {
                if let Some(IpAddr::V4(s)) = src {
                    q[SRC..SRC + 4].copy_from_slice(&s.octets());
                }
                q[DST..DST + 4].copy_from_slice(&d.octets());
            }
            (src, IpAddr::V6(d)) => {
                if let Some(IpAddr::V6(s)) = src {
                    q[SRC..SRC + 16].copy_from_slice(&s.octets());
                }
                q[DST..DST + 16].copy_from_slice(&d.octets());
            }
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u32; 6];
        ctx[1] = LEN as u32;
        ctx[3] = ingress;
        let out = sys::prog_test_run(self.prog, &frame, Some(bytemuck::cast_slice_mut(&mut ctx)), 1, 0)?;
        let bytes = |at: usize, n: usize| out.data_out.get(at..at + n);
        let word = |at: usize| bytes(at, 4).map(|b| <[u8; 4]>::try_from(b).expect("four bytes"));
        let (Some(rc), Some(egress)) = (word(RC), word(FIB + IFINDEX)) else {
            return Ok(Answer { rc: None, egress: 0, hop: None });
        };
        // The kernel writes the next hop over the destination, and the
        // family over the question's when the gateway is of the other one.
        let hop = match bytes(FIB + FAMILY, 1).map(|f| f[0]) {
            Some(AF_INET) => bytes(FIB + DST, 4).map(|b| IpAddr::from(<[u8; 4]>::try_from(b).expect("four bytes"))),
            Some(AF_INET6) => bytes(FIB + DST, 16).map(|b| IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))),
            _ => None,
        };
        Ok(Answer { rc: u32::try_from(i32::from_ne_bytes(rc)).ok(), egress: u32::from_ne_bytes(egress), hop })
    }
}
