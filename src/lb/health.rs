//! Whether a load balancer is serving: the health check behind `xdpguard-lb
//! status --exit-code`, which a routing daemon's agent polls to announce a
//! node's VIPs by BGP while it serves and withdraw them when it does not
//! (dist/bird/, docs/deployment.md).
//!
//! Serving means: attached to at least one interface, or chained behind a
//! filter that runs on one (`Filter::set_next`, a configuration's `next`:
//! what the filter passes reaches the LB), no attachment lost (an
//! interface it was attached to was deleted: the traffic that interface
//! received is no longer balanced, exit code 6; as for an interface a
//! filter chaining it lost, whose NAT replies go untranslated), and at
//! least one VIP with an active backend (weight above 0) whose share of new
//! flows is not lost, so a new flow to it gets a backend rather than a
//! drop. A backend's share is lost when IP forwarding of its family is off
//! where the LB receives (exit code 7 when that leaves no VIP serving),
//! when it is an L2 DSR VIP's and routed out of an interface that is not a
//! redirect interface (exit code 8, likewise), or when it has no route
//! (exit code 4). A deliberate `detach --iface IF` of one of several
//! interfaces is not a loss.
//!
//! Forwarding: `bpf_fib_lookup` answers `BPF_FIB_LKUP_RET_FWD_DISABLED`
//! when the receiving interface does not forward the packet's family
//! (`net.ipv4.conf.IF.forwarding`, `net.ipv6.conf.IF.forwarding`; what
//! `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` set on every
//! interface), and every VIP packet going to a backend of that family goes
//! to the stack (`passed_no_route`). A new network namespace starts with
//! forwarding off. Off for one family (IPv6 forwarding is often left off
//! as hardening) loses that family's backends only: VIPs served by the
//! other stay announced, with a warning (it withdrew the whole node). Read
//! from `/proc/sys` in the LB's namespace, for the interfaces it runs on
//! (attached, or a chaining filter's) and the families of its active
//! backends (the FIB lookup's family: an IPIP VIP's backend may be of the
//! other family than the VIP).
//!
//! Redirect interfaces: a backend whose route leaves by an interface that
//! is not in the LB's devmap (never added, `set --no-redirect`, or
//! deleted and made again: the kernel empties a deleted interface's devmap
//! slot, and the new one has another index) goes through the stack, and
//! an L2 DSR VIP's packets are dropped there (only XDP does L2 DSR). Out of
//! the interface a packet was received on needs no devmap (`XDP_TX`).
//! Repairing it by itself would need the interfaces' names recorded in a
//! pin (the devmap holds indexes only): `set --redirect IF` or `xdpguard
//! apply` does it.
//!
//! No route: an active backend (of any VIP's mode) the data plane has no
//! unicast route to gets its share of the VIP's new flows all the same, and
//! every one of them is lost: its `bpf_fib_lookup` fails, the packet goes
//! to the stack (`passed_no_route`), which has no route either. A warning
//! naming the backend ([`Health::unrouted`]). An unrouted or unredirected
//! backend's share is lost, and a VIP none of whose active backends has a
//! share left does not count as serving: with no VIP left, exit code 8
//! when an L2 DSR backend was lost for want of a redirect interface, else
//! 4. One backend's share, or one VIP's, withdraws nothing: withdrawing
//! the node (often every node at once, their configuration and routing
//! alike: one mistyped backend) would turn a fraction of the flows into all
//! of them.
//!
//! Both route checks ask the data plane's own lookup (`route_probe.rs`: the
//! same helper, with the same flags, run through `BPF_PROG_TEST_RUN` as if
//! received on each interface the LB receives on), so `ip rule iif` policy
//! routing and VRFs count as they do for VIP packets. The interfaces that
//! decide are those the LB is attached to, or every one it receives on when
//! it is attached nowhere (as for forwarding: a chaining filter's other
//! interfaces, a management interface it guards, say, may carry no VIP
//! traffic). A backend's share is lost when no deciding interface has a
//! route to it, or (L2 DSR) when every deciding interface that has one
//! routes it out of another interface that is not a redirect interface;
//! from only some, it is said (a note).
//!
//! The sources looked up with are an IPIP VIP's tunnel prefix's first and
//! last addresses (the data plane sets a flow's hash in its host bits:
//! routed only when both are). An L2 DSR or NAT VIP's packets keep their
//! clients' addresses, which the check does not know: it looks up with the
//! unspecified address. A "no route" that a packet's real source could
//! change (a tunnel prefix wider than one address, or a client's, where a
//! policy rule of the family selects by source, or the backend is IPv6,
//! whose routes may be source-specific) is only a warning
//! ([`Unrouted::may_depend_on_source`]). Not seen either: which path of a
//! multipath route a client's flow hashes to (the check sees the one the
//! unspecified source hashes to), and the member port a bond's XDP program
//! runs on (the check asks as the bond). A lookup that fails (rather than
//! answers) leaves both checks unmade, and so does a probe that cannot be
//! loaded; the status says so ([`Health::routes_unchecked`]).
//!
//! All three are read in the LB's network namespace, entered from a short-lived
//! thread when the caller is elsewhere (as the neighbour entries are); when
//! it cannot be entered (no CAP_SYS_ADMIN, or a namespace with no name
//! under `/run/netns` reopened from outside) they are not checked.
//!
//! Deliberately not part of it:
//!
//! - the backends' neighbour states. A node that is not announced gets no
//!   traffic, and the kernel keeps managed entries resolved by itself, but
//!   an unresolved next hop on a fresh node would keep it withdrawn, which
//!   is worse than a few packets through the stack. Backend liveness
//!   belongs to the backends' own health checks, which drain a dead one
//!   (weight 0) on every node through the shared configuration.
//! - per-VIP announcements. BGP announces addresses, and every VIP port of
//!   an address shares it; a node that serves some VIPs of an address but
//!   not others is a configuration error that the fleet digest shows, not
//!   something to route around.
//!
//! Optionally it also checks the fleet's configuration
//! ([`LoadBalancer::health_expecting`], `status --exit-code --config FILE`
//! or `--expect-digest HEX`): a node whose state digest differs from the
//! one the fleet's file promises (half-configured after a restart, a stale
//! or hand-edited node) would send flows that move to it to other backends
//! than the other nodes do, so it is not serving either (exit code 5).
//!
//! Cost: one read of the model the handle already keeps, the pinned
//! links' info (what [`LoadBalancer::open_pinned`] reads anyway; one
//! `bpf()` call per lost attachment), one pass over the kernel's programs
//! and links for the filters chaining it ([`LoadBalancer::chained_from`]),
//! one `/proc/sys` read per receiving interface and family, loading the
//! route probe, and one `BPF_PROG_TEST_RUN` per active backend address and
//! receiving interface (with a thread entering the LB's namespace when the
//! caller is elsewhere): the whole `status --exit-code` process takes about
//! 12 ms (AMD EPYC, five backends, two interfaces), cheap enough to poll ten
//! times a second. The digest check adds one SHA-256 pass over the Maglev
//! tables (about 0.3 ms per 65537-slot table).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use super::digest::Digest;
use super::neigh;
use super::route_probe::{self, Question, Route};
use super::types::{BackendAddr, ForwardingMode, Vip};
use super::LoadBalancer;
use crate::core::sys;
use crate::error::LbError;

/// A load balancer's health ([`LoadBalancer::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Interfaces the LB is attached to.
    pub attachments: usize,
    /// Attachments lost: interfaces it was attached to that were deleted
    /// (or the kernel otherwise took the program off), not detached
    /// ([`LoadBalancer::lost_attachments`]), and those of the filters
    /// that pass their packets on to it ([`ChainedFrom::lost`](crate::ChainedFrom::lost)).
    pub lost: usize,
    /// Interfaces running a filter that passes its packets on to the LB
    /// ([`LoadBalancer::chained_from`]).
    pub chained: usize,
    /// Its VIPs.
    pub vips: usize,
    /// VIPs with at least one active backend (weight above 0) whose share
    /// of new flows is not lost: one whose family is forwarded where the LB
    /// receives ([`forwarding_off`](Self::forwarding_off)), the data plane
    /// has a route to ([`unrouted`](Self::unrouted)) and, for an L2 DSR VIP, redirects
    /// ([`unredirected`](Self::unredirected)).
    pub serving_vips: usize,
    /// Whether the LB's overall state digest equals the expected one
    /// ([`LoadBalancer::health_expecting`]); `None` when none was given.
    pub digest_matches: Option<bool>,
    /// Interfaces the LB receives on that do not forward a family its
    /// active backends are of: the FIB lookup refuses, and VIP packets
    /// arriving there for a backend of that family go to the stack
    /// (`passed_no_route`). Off on an interface the LB is attached to
    /// itself, or on every interface it receives on
    /// ([`receiving`](Self::receiving)), the backends of that family lose
    /// their share (not counted in [`serving_vips`](Self::serving_vips);
    /// exit code 7 when no VIP is left serving); off on some of a chaining
    /// filter's interfaces only (a management interface the filter guards,
    /// with forwarding off as hardening) is noted.
    pub forwarding_off: Vec<ForwardingOff>,
    /// The interfaces the LB receives on (its own attachments and the
    /// filters' chaining it) found in its namespace; 0 when the namespace
    /// could not be entered (nothing read there).
    pub receiving: usize,
    /// Active backends of L2 DSR VIPs routed out of an interface the LB may
    /// not redirect to (not in its devmap): their packets go to the stack,
    /// which drops them (only XDP does L2 DSR). An IPIP or NAT VIP's
    /// packets the stack forwards as the LB rewrote them (slower, counted
    /// as `passed_no_devmap`), so those are not listed. One that
    /// [`withdraws`](Unredirected::withdraws) does not count towards its
    /// VIP's [`serving_vips`](Self::serving_vips); with no VIP left
    /// serving, exit code 8.
    pub unredirected: Vec<Unredirected>,
    /// Active backends (of VIPs of every mode) the data plane has no route
    /// to from an interface it receives on: their share of the VIP's new
    /// flows arriving there is lost (its FIB lookup fails, and the stack
    /// has no route either). A warning; one unrouted
    /// [`everywhere`](Unrouted::everywhere), and not
    /// [`may_depend_on_source`](Unrouted::may_depend_on_source), does not
    /// count towards its VIP's [`serving_vips`](Self::serving_vips).
    pub unrouted: Vec<Unrouted>,
    /// What was not checked, and why: the backends' routes (neither
    /// `unrouted` nor `unredirected`) when the route probe could not be
    /// loaded, say; those and IP forwarding when the LB's network
    /// namespace could not be entered. `None` when they were, or when
    /// there was nothing to check (no active backend, or no receiving
    /// interface found in the LB's namespace).
    pub routes_unchecked: Option<String>,
}

/// An interface the LB receives on whose IP forwarding is off for a family
/// it forwards ([`Health::forwarding_off`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardingOff {
    /// The interface's name in the LB's namespace.
    pub interface: String,
    /// Its index.
    pub ifindex: u32,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// The LB is attached to it itself (else it receives there only
    /// through a chaining filter).
    pub attached: bool,
}

impl ForwardingOff {
    /// The sysctl to set to 1, e.g. `net.ipv4.conf.eth0.forwarding` (a `.`
    /// in the name, as in `eth0.100`, is written `/` there, as `sysctl`
    /// wants it).
    pub fn sysctl(&self) -> String {
        format!("net.ipv{}.conf.{}.forwarding", if self.ipv6 { 6 } else { 4 }, self.interface.replace('.', "/"))
    }
}

/// An active backend whose route leaves by an interface that is not one of
/// the LB's redirect interfaces ([`Health::unredirected`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unredirected {
    /// The VIP.
    pub vip: Vip,
    /// Its backend.
    pub backend: BackendAddr,
    /// The egress the kernel routes the backend out of.
    pub ifindex: u32,
    /// Its name in the LB's namespace (`#N` when it has none any more).
    pub interface: String,
    /// Whether its share of its VIP's flows is lost: every deciding
    /// interface that has a route to it (those the LB is attached to, or
    /// every one it receives on when it is attached nowhere) routes it so.
    /// Else only some, or only a chaining filter's other interfaces (a
    /// management interface the filter guards, where no VIP traffic may
    /// arrive): a note.
    pub withdraws: bool,
}

/// An active backend the data plane has no route to ([`Health::unrouted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unrouted {
    /// The VIP.
    pub vip: Vip,
    /// Its backend.
    pub backend: BackendAddr,
    /// Whether no deciding interface has a route to it (those the LB is
    /// attached to, or every one it receives on when it is attached
    /// nowhere); else only some do not.
    pub everywhere: bool,
    /// Whether a packet's source could route it all the same: the source
    /// is a client's for an L2 DSR or NAT VIP, which the check does not
    /// know, or one of an IPIP tunnel prefix's addresses (the flow's hash
    /// sets its host bits), and a policy rule of the backend's family
    /// selects by source (`ip rule from`), or the backend is IPv6 (whose
    /// routes may be source-specific).
    pub may_depend_on_source: bool,
}

impl Health {
    /// Serving: attached somewhere (or chained behind a filter that is), no
    /// attachment lost, at least one VIP has an active backend whose share
    /// of new flows is not lost (its family forwarded where the LB is
    /// attached, and somewhere it receives; routed; for L2 DSR, out of a
    /// redirect interface), and, when a digest was expected, the state
    /// matches it.
    pub fn is_serving(&self) -> bool {
        self.exit_code() == 0
    }

    /// The exit code of `xdpguard-lb status --exit-code`, the first thing
    /// missing: 0 serving, 3 not attached to any interface (nor chained
    /// behind a filter attached to one), 6 attached (or chained) but an
    /// interface it was attached to is lost (deleted, not detached:
    /// [`LoadBalancer::lost_attachments`]), 7 no VIP left serving (below)
    /// and IP forwarding off, for a family its active backends are of, on
    /// an interface it is attached to or on every interface it receives on
    /// ([`Health::forwarding_off`]), 8
    /// no VIP left serving (below) and an L2 DSR VIP's active backend lost
    /// for being routed out of an interface that is not a redirect
    /// interface ([`Health::unredirected`]: e.g. deleted and made again), 4
    /// no VIP with an active backend whose share of new flows is not lost
    /// ([`Health::serving_vips`]), 5 serving but its state digest differs
    /// from the expected one (only with an expected digest). (1 is any error, e.g. nothing
    /// pinned: the LB was detached or never attached; 2 a usage error.) An
    /// LB attached nowhere is 3, lost attachments or not.
    pub fn exit_code(&self) -> u8 {
        if self.attachments + self.chained == 0 {
            3
        } else if self.lost > 0 {
            6
        } else if self.serving_vips == 0 && self.forwarding_refused() {
            7
        } else if self.serving_vips == 0 && self.unredirected.iter().any(|u| u.withdraws) {
            8
        } else if self.serving_vips == 0 {
            4
        } else if self.digest_matches == Some(false) {
            5
        } else {
            0
        }
    }

    /// Whether forwarding is off where VIP traffic arrives, for some family.
    fn forwarding_refused(&self) -> bool {
        refused_families(&self.forwarding_off, self.receiving).contains(&true)
    }
}

/// The families (IPv4, IPv6) whose forwarding is off where VIP traffic
/// arrives: on an interface the LB is attached to itself (the operator put
/// it there for that traffic), or on every interface it receives on.
fn refused_families(forwarding_off: &[ForwardingOff], receiving: usize) -> [bool; 2] {
    [false, true].map(|ipv6| {
        let off: Vec<&ForwardingOff> = forwarding_off.iter().filter(|o| o.ipv6 == ipv6).collect();
        off.iter().any(|o| o.attached) || (!off.is_empty() && off.len() >= receiving)
    })
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_serving() { "serving" } else { "not serving" };
        write!(f, "{verdict}: attached to {} interface(s)", self.attachments)?;
        if self.lost > 0 {
            write!(f, ", lost {}", self.lost)?;
        }
        if self.chained > 0 {
            write!(f, ", behind a filter on {}", self.chained)?;
        }
        write!(f, ", {} of {} VIP(s) with a reachable active backend", self.serving_vips, self.vips)?;
        match self.digest_matches {
            None => {}
            Some(true) => write!(f, ", state digest as expected")?,
            Some(false) => write!(f, ", state digest differs from the expected one")?,
        }
        if !self.forwarding_off.is_empty() {
            let set: Vec<String> = self.forwarding_off.iter().map(|o| format!("{}=1", o.sysctl())).collect();
            let refused = refused_families(&self.forwarding_off, self.receiving);
            if refused.contains(&true) {
                let families = match refused {
                    [true, true] => "IPv4 and IPv6",
                    [true, false] => "IPv4",
                    _ => "IPv6",
                };
                write!(
                    f,
                    "; {}IP forwarding is off for {families} where it receives, so VIP packets for its {families} \
                     backends go to the stack (passed_no_route) and those backends' share of new flows is lost: \
                     set {} (`sysctl -w`, in the LB's namespace; net.ipv4.ip_forward=1 and \
                     net.ipv6.conf.all.forwarding=1 set every interface)",
                    if self.is_serving() { "warning: " } else { "" },
                    set.join(", ")
                )?;
            } else {
                write!(
                    f,
                    "; note: IP forwarding is off on some interfaces it receives on through a filter, so VIP \
                     packets arriving there go to the stack (passed_no_route): set {} (`sysctl -w`, in the LB's \
                     namespace) if VIP traffic arrives there",
                    set.join(", ")
                )?;
            }
        }
        // One line per egress: the backends it takes, and the repair.
        for withdraws in [true, false] {
            let egresses: BTreeSet<(&str, u32)> = self
                .unredirected
                .iter()
                .filter(|u| u.withdraws == withdraws)
                .map(|u| (u.interface.as_str(), u.ifindex))
                .collect();
            for (name, ifindex) in egresses {
                let backends: Vec<String> = self
                    .unredirected
                    .iter()
                    .filter(|u| u.ifindex == ifindex && u.withdraws == withdraws)
                    .map(|u| format!("{} of {}", u.backend, u.vip))
                    .collect();
                let backends = backends.join(", ");
                if withdraws {
                    write!(
                        f,
                        "; backend {backends} routed out of {name} (#{ifindex}), not a redirect interface (deleted \
                         and made again?), so its packets go through the stack and L2 DSR ones are dropped: \
                         `xdpguard-lb set --redirect {name}`, or `xdpguard apply` again"
                    )?;
                } else {
                    write!(
                        f,
                        "; note: for packets arriving on some of the interfaces it receives on, backend \
                         {backends} is routed out of {name} (#{ifindex}), not a redirect interface, so L2 DSR ones \
                         arriving there are dropped in the stack: `xdpguard-lb set --redirect {name}` if VIP traffic \
                         arrives there"
                    )?;
                }
            }
        }
        if !self.unrouted.is_empty() {
            let backends: Vec<String> = self
                .unrouted
                .iter()
                .map(|u| {
                    let some = if u.everywhere { "" } else { " (from some interfaces)" };
                    let maybe = if u.may_depend_on_source { " (a packet's source may route it)" } else { "" };
                    format!("{} of {}{some}{maybe}", u.backend, u.vip)
                })
                .collect();
            write!(
                f,
                "; warning: no route to backend {} from the interfaces the LB receives on (the data plane's own \
                 lookup), so its share of new flows is dropped (passed_no_route): add a route to it in the LB's \
                 namespace, or remove it (`xdpguard-lb backend del VIP BACKEND`)",
                backends.join(", ")
            )?;
        }
        if let Some(why) = &self.routes_unchecked {
            write!(f, "; note: {why}")?;
        }
        Ok(())
    }
}

/// What `health` reads in the LB's network namespace.
#[derive(Default)]
struct NsReport {
    forwarding_off: Vec<ForwardingOff>,
    receiving: usize,
    unredirected: Vec<Unredirected>,
    unrouted: Vec<Unrouted>,
    routes_unchecked: Option<String>,
}

/// An active backend, as the route check asks about it.
struct Active {
    vip: Vip,
    backend: BackendAddr,
    /// An L2 DSR VIP's (whose packets the stack drops: `unredirected`).
    l2_dsr: bool,
    /// What the data plane's lookup is asked for it.
    q: Question,
}

/// What one backend's answers (one per receiving interface present:
/// `(ingress, answer)`) say, given the interfaces the LB is attached to
/// itself and its redirect interfaces. The interfaces that decide are
/// those it is attached to when it is attached somewhere, else every one
/// it receives on (through filters); as for forwarding, what only some of
/// a chaining filter's other interfaces (a management interface the filter
/// guards) answer is a note at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Verdict {
    /// No route from a deciding interface: `Some(true)` when no deciding
    /// interface has one (its share is lost), `Some(false)` when some do.
    unrouted: Option<bool>,
    /// Routed out of an interface that is neither the receiving one
    /// (`XDP_TX`) nor a redirect one, from some interface: that egress,
    /// and whether every deciding interface that has a route routes it so
    /// (an L2 DSR VIP's share is then lost).
    unredirected: Option<(u32, bool)>,
}

fn classify(answers: &[(u32, Route)], attached: &BTreeSet<u32>, devmap: &BTreeSet<u32>) -> Verdict {
    let attached_here = answers.iter().any(|(i, _)| attached.contains(i));
    let deciding = |i: &u32| !attached_here || attached.contains(i);
    let off_devmap = |i: u32, out: u32| out != i && !devmap.contains(&out);
    let decided: Vec<&(u32, Route)> = answers.iter().filter(|(i, _)| deciding(i)).collect();
    let routed: Vec<(u32, u32)> =
        decided.iter().filter_map(|(i, r)| if let Route::Via(out) = r { Some((*i, *out)) } else { None }).collect();
    let unrouted = decided.iter().any(|(_, r)| *r == Route::None).then_some(routed.is_empty());
    let first_off = answers.iter().find_map(|(i, r)| match r {
        Route::Via(out) if off_devmap(*i, *out) => Some(*out),
        _ => None,
    });
    let every = !routed.is_empty() && routed.iter().all(|&(i, out)| off_devmap(i, out));
    Verdict { unrouted, unredirected: first_off.map(|out| (out, every)) }
}

/// Reads the three: `ingress` the interfaces it receives on (`attached`
/// those the LB is attached to itself), `families` (IPv4, IPv6) those of
/// its active backends, `backends` its active backends, `devmap` its
/// redirect interfaces, asking the data plane's lookup through `probe`.
/// Runs in the LB's namespace.
fn read_in_ns(
    ns: BorrowedFd<'_>,
    probe: &route_probe::ProbeCache,
    ingress: &BTreeSet<u32>,
    attached: &BTreeSet<u32>,
    families: (bool, bool),
    backends: &[Active],
    devmap: &BTreeSet<u32>,
) -> NsReport {
    let mut report = NsReport::default();
    let mut present = Vec::new();
    for &ifindex in ingress {
        // Gone: a lost attachment, counted as that.
        let Some(interface) = sys::ifname_of(ifindex) else { continue };
        report.receiving += 1;
        present.push(ifindex);
        for (ipv6, used) in [(false, families.0), (true, families.1)] {
            let path = format!("/proc/sys/net/ipv{}/conf/{interface}/forwarding", if ipv6 { 6 } else { 4 });
            // Unreadable (IPv6 disabled at boot, say): not known to be off.
            if used && std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
                let attached = attached.contains(&ifindex);
                report.forwarding_off.push(ForwardingOff { interface: interface.clone(), ifindex, ipv6, attached });
            }
        }
    }
    if backends.is_empty() || present.is_empty() {
        return report;
    }
    // The data plane's own lookup, from each interface it receives on
    // (route_probe.rs).
    let checked = route_probe::with_probe(probe, |probe| {
        // Source-selecting policy rules, per family (unknown: assumed).
        let mut rtnl = neigh::Rtnl::open_in(ns).ok();
        let mut source_rules = |ipv6: bool| rtnl.as_mut().is_none_or(|r| r.source_rules(ipv6).unwrap_or(true));
        let source_rules = [source_rules(false), source_rules(true)];
        let mut verdicts = BTreeMap::<&Question, Verdict>::new();
        for a in backends {
            if let std::collections::btree_map::Entry::Vacant(slot) = verdicts.entry(&a.q) {
                let mut answers = Vec::new();
                for &ifindex in &present {
                    // Every source's answer: routed only when all are (out
                    // of the first's egress), unrouted when one is not.
                    let mut answer = None;
                    for src in a.q.sources() {
                        let r = probe.route(ifindex, src, a.q.dst, a.q.l4).map_err(|e| e.to_string())?;
                        answer = Some(match (answer, r) {
                            (None, r) => r,
                            (Some(Route::None), _) | (_, Route::None) => Route::None,
                            (Some(Route::Via(out)), Route::Via(_)) => Route::Via(out),
                            _ => Route::Unknown,
                        });
                    }
                    answers.push((ifindex, answer.unwrap_or(Route::Unknown)));
                }
                slot.insert(classify(&answers, attached, devmap));
            }
            let verdict = verdicts[&a.q];
            let ipv6 = a.backend.ip.is_ipv6();
            if let Some(everywhere) = verdict.unrouted {
                // A source the check does not know (a client's, or the
                // host bits of a tunnel prefix) may be routed by a rule, or
                // by an IPv6 source-specific route.
                let exact_src = a.q.srcs.len() == 1;
                let may_depend_on_source = !exact_src && (ipv6 || source_rules[usize::from(ipv6)]);
                report.unrouted.push(Unrouted { vip: a.vip, backend: a.backend, everywhere, may_depend_on_source });
            }
            if let (true, Some((ifindex, withdraws))) = (a.l2_dsr, verdict.unredirected) {
                let interface = sys::ifname_of(ifindex).unwrap_or_else(|| format!("#{ifindex}"));
                report.unredirected.push(Unredirected {
                    vip: a.vip,
                    backend: a.backend,
                    ifindex,
                    interface,
                    withdraws,
                });
            }
        }
        Ok::<(), String>(())
    });
    if let Err(why) = checked.and_then(|run| run.map_err(|e| format!("a lookup failed: {e}"))) {
        report.unrouted.clear();
        report.unredirected.clear();
        report.routes_unchecked = Some(format!("the backends' routes were not checked: the route probe: {why}"));
    }
    report
}

impl LoadBalancer {
    /// Whether this LB is serving (see [`Health`]): what a BGP speaker's
    /// health agent should announce the node's VIPs on. Linux 5.15 or later
    /// (as the LB).
    ///
    /// IP forwarding and the backends' egresses are read in the LB's
    /// network namespace (see [`Health`]); when it cannot be entered they
    /// are not checked.
    ///
    /// # Errors
    ///
    /// [`LbError::Pin`] when the pin directory cannot be locked;
    /// [`LbError::Map`] when another process's edit cannot be read back.
    pub fn health(&self) -> Result<Health, LbError> {
        let attached = self.attachments();
        let chains = self.chained_from();
        // A filter's lost interface is as much a loss: what it received no
        // longer reaches the LB (NAT replies there go untranslated).
        let lost = self.lost_attachments().len() + chains.iter().map(|c| c.lost.len()).sum::<usize>();
        let chained = chains.iter().map(|c| c.ifindexes.len()).sum();
        let tunnel = super::settings::ipip_tunnels(self.maps());
        let (vips, active) = self.read(|st| {
            // Weight 0 is draining (`Backend::state`): no new flows. Only L2
            // DSR's packets die in the stack when they leave by an interface
            // not in the devmap (see `unredirected`); every mode's die
            // without a route.
            let active: Vec<Active> = st
                .vips
                .iter()
                .flat_map(|(vip, vs)| {
                    let mode = vs.config.mode;
                    vs.backends.iter().filter(|(_, s)| s.weight > 0).map(move |(b, _)| Active {
                        vip: *vip,
                        backend: *b,
                        l2_dsr: mode == ForwardingMode::L2Dsr,
                        q: Question::new(vip, mode, b.ip, &tunnel),
                    })
                })
                .collect();
            (st.vips.len(), active)
        })?;
        let own: BTreeSet<u32> = attached.iter().map(|a| a.ifindex).collect();
        let ingress: BTreeSet<u32> =
            own.iter().copied().chain(chains.iter().flat_map(|c| c.ifindexes.iter().copied())).collect();
        let families = (active.iter().any(|a| a.backend.ip.is_ipv4()), active.iter().any(|a| a.backend.ip.is_ipv6()));
        let devmap: BTreeSet<u32> = self.redirect_interfaces().into_iter().collect();
        let report = self
            .in_netns(|ns| read_in_ns(ns, &self.probe, &ingress, &own, families, &active, &devmap))
            .unwrap_or_else(|| {
                let routes_unchecked = (!active.is_empty()).then(|| {
                    "IP forwarding and the backends' routes were not checked: the LB's network namespace could not be \
                 entered (neither this process's nor named under /run/netns, or entering it needs CAP_SYS_ADMIN)"
                        .to_owned()
                });
                NsReport { routes_unchecked, ..NsReport::default() }
            });
        // Serving VIPs: those with an active backend whose share of new
        // flows is not lost (every one, when the routes were not checked).
        let refused = refused_families(&report.forwarding_off, report.receiving);
        let lost_share = |a: &Active| {
            refused[usize::from(a.backend.ip.is_ipv6())]
                || report
                    .unrouted
                    .iter()
                    .any(|u| u.vip == a.vip && u.backend == a.backend && u.everywhere && !u.may_depend_on_source)
                || report.unredirected.iter().any(|u| u.vip == a.vip && u.backend == a.backend && u.withdraws)
        };
        let serving_vips = active.iter().filter(|a| !lost_share(a)).map(|a| a.vip).collect::<BTreeSet<Vip>>().len();
        Ok(Health {
            attachments: attached.len(),
            lost,
            chained,
            vips,
            serving_vips,
            digest_matches: None,
            forwarding_off: report.forwarding_off,
            receiving: report.receiving,
            unredirected: report.unredirected,
            unrouted: report.unrouted,
            routes_unchecked: report.routes_unchecked,
        })
    }

    /// Runs `f` in the LB's network namespace: on this thread when it is
    /// there, else on a short-lived thread that enters it (`/proc/sys/net`
    /// and interface names are the reading thread's namespace's). `None`
    /// when it cannot be entered.
    fn in_netns<R: Send>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R + Send) -> Option<R> {
        let ns = self.netns.as_ref()?.as_fd();
        neigh::run_in(ns, move || f(ns)).ok()
    }

    /// As [`LoadBalancer::health`], and whether the LB's overall state
    /// digest ([`LoadBalancer::digest`]) is `expected`: what the fleet's
    /// configuration promises
    /// (`LbConfig::expected_digest` of the `config` feature, or
    /// `xdpguard-lb digest --config FILE`). A
    /// node that serves but differs is not serving ([`Health::exit_code`]
    /// 5). Linux 5.15 or later (as the LB).
    ///
    /// # Errors
    ///
    /// As [`LoadBalancer::health`] and [`LoadBalancer::digest`].
    pub fn health_expecting(&self, expected: &Digest) -> Result<Health, LbError> {
        let health = self.health()?;
        let matches = self.digest()?.overall == *expected;
        Ok(Health { digest_matches: Some(matches), ..health })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_name_the_first_thing_missing() {
        let h = |attachments, vips, serving_vips| Health {
            attachments,
            lost: 0,
            chained: 0,
            vips,
            serving_vips,
            digest_matches: None,
            forwarding_off: Vec::new(),
            receiving: 1,
            unredirected: Vec::new(),
            unrouted: Vec::new(),
            routes_unchecked: None,
        };
        assert_eq!(h(1, 2, 1).exit_code(), 0);
        assert!(h(1, 2, 1).is_serving());
        assert_eq!(h(0, 2, 2).exit_code(), 3);
        assert_eq!(h(0, 0, 0).exit_code(), 3);
        assert_eq!(h(2, 2, 0).exit_code(), 4);
        assert_eq!(h(2, 0, 0).exit_code(), 4);
        assert!(!h(2, 0, 0).is_serving());
        assert_eq!(
            h(1, 3, 2).to_string(),
            "serving: attached to 1 interface(s), 2 of 3 VIP(s) with a reachable active backend"
        );
        // Chained behind a filter that runs somewhere, not attached itself.
        let behind = Health { chained: 2, ..h(0, 2, 1) };
        assert_eq!(behind.exit_code(), 0);
        assert_eq!(
            behind.to_string(),
            "serving: attached to 0 interface(s), behind a filter on 2, 1 of 2 VIP(s) with a reachable active backend"
        );
        // The digest counts only once everything else is there.
        let d = |matches, serving_vips| Health { digest_matches: Some(matches), ..h(1, 2, serving_vips) };
        assert_eq!(d(true, 1).exit_code(), 0);
        assert_eq!(d(false, 1).exit_code(), 5);
        assert!(!d(false, 1).is_serving());
        assert_eq!(d(false, 0).exit_code(), 4);
        assert_eq!(Health { digest_matches: Some(false), ..h(0, 2, 2) }.exit_code(), 3);
        // An interface lost (deleted, not detached) while another serves:
        // 6, before the VIPs and the digest; attached nowhere stays 3.
        let lost = Health { lost: 1, ..h(1, 2, 1) };
        assert_eq!(lost.exit_code(), 6);
        assert!(!lost.is_serving());
        assert_eq!(Health { lost: 1, ..h(1, 2, 0) }.exit_code(), 6);
        assert_eq!(Health { lost: 1, digest_matches: Some(false), ..h(1, 2, 1) }.exit_code(), 6);
        assert_eq!(Health { lost: 2, ..h(0, 2, 1) }.exit_code(), 3);
        assert_eq!(Health { lost: 1, chained: 1, ..h(0, 2, 1) }.exit_code(), 6);
        assert_eq!(
            lost.to_string(),
            "not serving: attached to 1 interface(s), lost 1, 1 of 2 VIP(s) with a reachable active backend"
        );
        assert_eq!(
            d(false, 1).to_string(),
            "not serving: attached to 1 interface(s), 1 of 2 VIP(s) with a reachable active backend, \
             state digest differs from the expected one"
        );
        assert!(d(true, 2)
            .to_string()
            .ends_with("2 of 2 VIP(s) with a reachable active backend, state digest as expected"));
    }

    #[test]
    fn forwarding_off_and_unredirected_backends_are_not_serving() {
        let serving = Health {
            attachments: 1,
            lost: 0,
            chained: 0,
            vips: 1,
            serving_vips: 1,
            digest_matches: Some(true),
            forwarding_off: Vec::new(),
            receiving: 1,
            unredirected: Vec::new(),
            unrouted: Vec::new(),
            routes_unchecked: None,
        };
        assert_eq!(serving.exit_code(), 0);
        let off = |name: &str, ipv6| ForwardingOff { interface: name.into(), ifindex: 2, ipv6, attached: false };
        assert_eq!(off("eth0", false).sysctl(), "net.ipv4.conf.eth0.forwarding");
        assert_eq!(off("eth0.100", true).sysctl(), "net.ipv6.conf.eth0/100.forwarding");
        // Off for the only family its backends are of, where it receives:
        // `health` counts no VIP serving, and the reason is forwarding.
        let fwd = Health { forwarding_off: vec![off("eth0", false)], serving_vips: 0, ..serving.clone() };
        assert_eq!(fwd.exit_code(), 7);
        assert!(!fwd.is_serving());
        let text = fwd.to_string();
        assert!(text.starts_with("not serving: attached to 1 interface(s), 0 of 1 VIP(s)"), "{text}");
        assert!(
            text.contains(
                "; IP forwarding is off for IPv4 where it receives, so VIP packets for its IPv4 backends go to the \
                 stack (passed_no_route) and those backends' share of new flows is lost: set \
                 net.ipv4.conf.eth0.forwarding=1"
            ),
            "{text}"
        );
        // After a lost attachment and before the VIPs and the digest.
        assert_eq!(Health { lost: 1, ..fwd.clone() }.exit_code(), 6);
        assert_eq!(Health { serving_vips: 0, digest_matches: Some(false), ..fwd.clone() }.exit_code(), 7);
        // Off on one of two interfaces it receives on through a filter (a
        // management interface the filter guards, say): noted, still
        // serving; on one it is attached to itself, off on both, or IPv6
        // off on both while IPv4 is on: 7.
        let partly = Health { receiving: 2, serving_vips: 1, ..fwd.clone() };
        let own = ForwardingOff { attached: true, ..off("eth0", false) };
        assert_eq!(Health { forwarding_off: vec![own], serving_vips: 0, ..partly.clone() }.exit_code(), 7);
        assert_eq!(partly.exit_code(), 0);
        let text = partly.to_string();
        assert!(text.starts_with("serving: ") && text.contains("note: IP forwarding is off on some"), "{text}");
        assert!(text.contains("set net.ipv4.conf.eth0.forwarding=1"), "{text}");
        let both =
            Health { forwarding_off: vec![off("eth0", false), off("eth1", false)], serving_vips: 0, ..partly.clone() };
        assert_eq!(both.exit_code(), 7);
        // IPv6 off on both while IPv4 is on: the IPv6 backends' share is
        // lost; a VIP with IPv4 backends still serves (a warning), none
        // left is 7.
        let v6 = Health { forwarding_off: vec![off("eth0", false), off("eth0", true), off("eth1", true)], ..partly };
        assert_eq!(v6.exit_code(), 0);
        let text = v6.to_string();
        assert!(
            text.starts_with("serving: ")
                && text.contains(
                    "; warning: IP forwarding is off for IPv6 where it receives, so VIP packets for its IPv6"
                )
                && text.contains("set net.ipv4.conf.eth0.forwarding=1, net.ipv6.conf.eth0.forwarding=1"),
            "{text}"
        );
        assert_eq!(Health { serving_vips: 0, ..v6 }.exit_code(), 7);
        // Nothing read in the namespace (it could not be entered): nothing off.
        assert_eq!(Health { receiving: 0, forwarding_off: Vec::new(), serving_vips: 1, ..fwd.clone() }.exit_code(), 0);

        let vip = Vip::tcp("203.0.113.10:80".parse().unwrap());
        let un = |b: &str, ifindex, name: &str| Unredirected {
            vip,
            backend: b.parse().unwrap(),
            ifindex,
            interface: name.into(),
            withdraws: true,
        };
        // Every backend's share lost (health counts no VIP serving): 8.
        let lost = Health {
            unredirected: vec![un("198.51.100.11", 9, "eth1"), un("198.51.100.12", 9, "eth1")],
            serving_vips: 0,
            ..serving.clone()
        };
        assert_eq!(lost.exit_code(), 8);
        // One VIP's backends lost while another VIP serves: said, serving.
        assert_eq!(Health { vips: 2, serving_vips: 1, ..lost.clone() }.exit_code(), 0);
        let text = lost.to_string();
        assert!(
            text.contains(
                "backend 198.51.100.11 of tcp 203.0.113.10:80, 198.51.100.12 of tcp 203.0.113.10:80 routed out of \
                 eth1 (#9), not a redirect interface"
            ) && text.contains("`xdpguard-lb set --redirect eth1`"),
            "{text}"
        );
        assert_eq!(Health { forwarding_off: vec![off("eth0", true)], ..lost.clone() }.exit_code(), 7);
        assert_eq!(Health { digest_matches: Some(false), ..lost }.exit_code(), 8);
        // Only from some of a chaining filter's interfaces: a note.
        let note = Health {
            unredirected: vec![Unredirected { withdraws: false, ..un("198.51.100.11", 9, "eth1") }],
            ..serving.clone()
        };
        assert_eq!(note.exit_code(), 0);
        let text = note.to_string();
        assert!(
            text.starts_with("serving: ")
                && text.contains(
                    "; note: for packets arriving on some of the interfaces it receives on, backend \
                     198.51.100.11 of tcp 203.0.113.10:80 is routed out of eth1 (#9)"
                ),
            "{text}"
        );
        // Routes not checked: said.
        let why = "the backends' routes were not checked: the route probe: loading it: EPERM";
        let unchecked = Health { routes_unchecked: Some(why.into()), ..serving.clone() };
        assert_eq!(unchecked.exit_code(), 0);
        assert!(unchecked.to_string().ends_with(&format!("; note: {why}")));

        // An unrouted backend: a warning, the exit code unchanged while a
        // VIP is served (`health` counts a VIP whose every active backend
        // is unrouted out of serving_vips); the text names the backend and
        // both ways out.
        let unrouted = Health {
            unrouted: vec![Unrouted {
                vip,
                backend: "203.0.113.77".parse().unwrap(),
                everywhere: true,
                may_depend_on_source: false,
            }],
            ..serving.clone()
        };
        assert_eq!(unrouted.exit_code(), 0);
        assert!(unrouted.is_serving());
        let text = unrouted.to_string();
        assert!(
            text.starts_with("serving: ")
                && text.contains(
                    "; warning: no route to backend 203.0.113.77 of tcp 203.0.113.10:80 from the interfaces the LB \
                     receives on"
                )
                && text.contains(
                    "add a route to it in the LB's namespace, or remove it (`xdpguard-lb backend del VIP BACKEND`)"
                ),
            "{text}"
        );
        assert_eq!(Health { forwarding_off: vec![off("eth0", true)], ..unrouted.clone() }.exit_code(), 0);
        assert_eq!(Health { serving_vips: 0, ..unrouted.clone() }.exit_code(), 4);
        assert_eq!(Health { forwarding_off: vec![off("eth0", true)], serving_vips: 0, ..unrouted }.exit_code(), 7);
    }

    fn answers(v: &[(u32, Route)]) -> Vec<(u32, Route)> {
        v.to_vec()
    }

    /// The per-interface answers, classified: the LB attached to 2 and 3,
    /// a filter chaining it on 4 (a management interface), 9 a redirect
    /// interface.
    #[test]
    fn answers_are_decided_by_the_interfaces_the_lb_is_attached_to() {
        let attached: BTreeSet<u32> = [2, 3].into();
        let devmap: BTreeSet<u32> = [9].into();
        let c = |v: &[(u32, Route)]| classify(&answers(v), &attached, &devmap);
        let (via, none, unknown) = (Route::Via, Route::None, Route::Unknown);
        // Routed everywhere, out of a redirect interface or the receiving one.
        assert_eq!(c(&[(2, via(9)), (3, via(3)), (4, via(9))]), Verdict::default());
        // No route from either attached interface: lost, whatever the
        // filter's interface says; from one of them: said, not lost.
        assert_eq!(c(&[(2, none), (3, none), (4, via(9))]).unrouted, Some(true));
        assert_eq!(c(&[(2, none), (3, via(9)), (4, via(9))]).unrouted, Some(false));
        // No route from the filter's interface only: nothing to say.
        assert_eq!(c(&[(2, via(9)), (3, via(9)), (4, none)]).unrouted, None);
        // Forwarding off (unknown) on one: the other decides.
        assert_eq!(c(&[(2, unknown), (3, none)]).unrouted, Some(true));
        // Out of a non-redirect interface from every attached interface
        // that has a route (the one with forwarding off does not count):
        // lost; from one of two, or from the filter's only: a note.
        assert_eq!(c(&[(2, via(5)), (3, unknown), (4, via(9))]).unredirected, Some((5, true)));
        assert_eq!(c(&[(2, via(5)), (3, via(9))]).unredirected, Some((5, false)));
        assert_eq!(c(&[(2, via(9)), (3, via(9)), (4, via(5))]).unredirected, Some((5, false)));
        // Attached nowhere (behind a filter on 4 and 6): every interface
        // decides.
        let behind = |v: &[(u32, Route)]| classify(&answers(v), &BTreeSet::new(), &devmap);
        assert_eq!(behind(&[(4, via(5)), (6, via(6))]).unredirected, Some((5, false)));
        assert_eq!(behind(&[(4, via(5)), (6, via(5))]).unredirected, Some((5, true)));
        assert_eq!(behind(&[(4, none), (6, via(9))]).unrouted, Some(false));
        assert_eq!(behind(&[(4, none), (6, none)]).unrouted, Some(true));
    }
}
