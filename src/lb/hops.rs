//! Backends' next hops, kept resolved with managed neighbour entries in the
//! LB's network namespace (the netlink side is in `neigh.rs`), found by the
//! data plane's own route lookup (`route_probe.rs`).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::maps::LbMaps;
use super::neigh::{self, HopKey};
use super::route_probe::{self, Question, Route};
use super::settings::ipip_tunnels;
use super::state::LbState;
use super::LoadBalancer;
use crate::core::sys;
use crate::error::LbError;

/// Finds the backends' next hops as the data plane does: its own route
/// lookup, asked as for a packet received on each interface the LB receives
/// on, in the LB's namespace, so `ip rule iif` policy routing and VRFs
/// count as they do for VIP traffic. While it receives nowhere (not
/// attached yet), the main table's output lookup over rtnetlink stands in
/// (what this did before the probe: an `iif` rule's next hop was then never
/// made managed, and a cold flow's first packets waited for the stack to
/// resolve it); also where the probe cannot load or its answer cannot say,
/// beside the hops already recorded ([`Hops::indefinite`]).
pub(super) struct HopLookup<'a> {
    /// The rtnetlink socket in the LB's namespace.
    pub rtnl: neigh::Rtnl,
    ns: BorrowedFd<'a>,
    probe: &'a route_probe::ProbeCache,
    /// The interfaces it receives on, those it is attached to first.
    ingress: Vec<u32>,
}

/// The next hops of [`HopLookup::hops`]' questions.
pub(super) struct Hops {
    /// Each question's.
    pub each: Vec<Vec<HopKey>>,
    /// Per family of the backends (IPv4, IPv6): whether a question was not
    /// answered for what the LB receives, neither by the data plane's
    /// lookup nor by the main table while it receives nowhere, because a
    /// receiving interface's lookup could not say (forwarding off for that
    /// family) or the probe could not be loaded. The main table's answer
    /// then stands in, and the next hops the data plane used before are
    /// kept (their entries removed, cold flows would wait for the stack
    /// once forwarding is on again).
    pub indefinite: [bool; 2],
}

impl Hops {
    /// Whether the recorded next hop `hop` is kept whatever the answers:
    /// one of a family whose answers were not all definite (an IPv4
    /// backend's may be an IPv6 gateway).
    pub(super) fn keeps(&self, hop: &HopKey) -> bool {
        self.indefinite[usize::from(hop.addr.is_ipv6())] || self.indefinite[0]
    }
}

impl HopLookup<'_> {
    /// Each question's next hops: every one the data plane uses from some
    /// receiving interface (for the unspecified source, or an IPIP tunnel
    /// prefix's ends: of a multipath route, the path those hash to), none
    /// when no interface has a route. Where the lookup cannot say from any
    /// interface (forwarding off there, which the health check reports, or
    /// an LWT route), the main table's.
    pub(super) fn hops(&mut self, questions: &[Question]) -> io::Result<Hops> {
        let mut probed = None;
        if !self.ingress.is_empty() {
            let (ingress, probe) = (&self.ingress, self.probe);
            probed = neigh::run_in(self.ns, || {
                // A deleted interface: its lookups would fail.
                let present: Vec<u32> = ingress.iter().copied().filter(|i| sys::ifname_of(*i).is_some()).collect();
                if present.is_empty() {
                    return None;
                }
                let asked = route_probe::with_probe(probe, |probe| {
                    questions.iter().map(|q| data_plane_hops(probe, &present, q)).collect::<io::Result<Vec<_>>>()
                });
                asked.ok()?.ok()
            })
            .ok()
            .flatten();
        }
        let mut indefinite = [false; 2];
        let mut probed = probed.map(Vec::into_iter);
        let each = questions
            .iter()
            .map(|q| match probed.as_mut().and_then(Iterator::next).flatten() {
                Some(hops) => Ok(hops),
                None => {
                    indefinite[usize::from(q.dst.is_ipv6())] |= !self.ingress.is_empty();
                    Ok(self.rtnl.route(q.dst)?.into_iter().collect())
                }
            })
            .collect::<io::Result<_>>()?;
        Ok(Hops { each, indefinite })
    }
}

/// The next hops the data plane finds for `q` from the `ingress`
/// interfaces; `None` when no interface's answer says.
fn data_plane_hops(probe: &route_probe::Probe<'_>, ingress: &[u32], q: &Question) -> io::Result<Option<Vec<HopKey>>> {
    let mut hops = Vec::new();
    let mut said = false;
    for &ifindex in ingress {
        for src in q.sources() {
            let (route, hop) = probe.next_hop(ifindex, src, q.dst, q.l4)?;
            said |= route != Route::Unknown;
            if let Some(hop) = hop.filter(|h| !hops.contains(h)) {
                hops.push(hop);
            }
        }
    }
    Ok(said.then_some(hops))
}

/// What the route lookup is asked for each backend of `vip` (of every VIP
/// when `None`), in order: draining ones too, whose tracked flows still go
/// to them.
pub(super) fn questions(st: &LbState, maps: &LbMaps, vip: Option<&super::Vip>) -> Vec<Question> {
    let tunnel = &ipip_tunnels(maps);
    st.vips
        .iter()
        .filter(|(v, _)| vip.is_none_or(|want| want == *v))
        .flat_map(|(vip, vs)| vs.backends.keys().map(move |b| Question::new(vip, vs.config.mode, b.ip, tunnel)))
        .collect()
}

impl LoadBalancer {
    /// The LB's network namespace when it is not the calling thread's:
    /// where connections to its backends must start (the health checks').
    /// `None` in the caller's own.
    #[cfg(feature = "health")]
    pub(crate) fn foreign_netns(&self) -> Result<Option<std::os::fd::BorrowedFd<'_>>, LbError> {
        let id = self.maps().netns();
        if neigh::current().is_ok_and(|(_, here)| here == id) {
            return Ok(None);
        }
        self.netns.as_ref().map(|f| Some(f.as_fd())).ok_or(LbError::ForeignNamespace { ino: id.ino })
    }

    /// An rtnetlink socket in the LB's network namespace.
    pub(super) fn rtnl(&self) -> Result<neigh::Rtnl, LbError> {
        self.rtnl_in_netns().map(|(rtnl, _)| rtnl)
    }

    /// An rtnetlink socket in the LB's network namespace, and that
    /// namespace.
    fn rtnl_in_netns(&self) -> Result<(neigh::Rtnl, BorrowedFd<'_>), LbError> {
        let ino = self.maps().netns().ino;
        let ns = self.netns.as_ref().ok_or(LbError::ForeignNamespace { ino })?.as_fd();
        let rtnl = neigh::Rtnl::open_in(ns).map_err(|e| match e {
            neigh::OpenError::Enter(error) => LbError::NamespaceNotEntered { ino, error },
            neigh::OpenError::Io(error) => LbError::NetlinkSocket { ino, error },
        })?;
        Ok((rtnl, ns))
    }

    /// An rtnetlink socket in the LB's network namespace, and what its
    /// backends' next hops are found with.
    pub(super) fn hop_lookup(&self) -> Result<HopLookup<'_>, LbError> {
        let (rtnl, ns) = self.rtnl_in_netns()?;
        let mut ingress = Vec::new();
        let own = self.attachments().into_iter().map(|a| a.ifindex);
        for ifindex in own.chain(self.chained_from().into_iter().flat_map(|c| c.ifindexes)) {
            if !ingress.contains(&ifindex) {
                ingress.push(ifindex);
            }
        }
        Ok(HopLookup { rtnl, ns, probe: &self.probe, ingress })
    }

    /// Reconciles the managed next hops of the load balancers among
    /// `programs` (kernel program ids; others are skipped), found as
    /// [`pin_of_program`](Self::pin_of_program) finds them, in `near` and
    /// under `/sys/fs/bpf`: a filter's changes call it, as the interfaces
    /// such an LB receives on changed. Best effort, as on open.
    pub(crate) fn reconcile_programs(programs: impl IntoIterator<Item = Option<u32>>, near: &[&Path]) {
        let mut done = Vec::new();
        for id in programs.into_iter().flatten() {
            if done.contains(&id) {
                continue;
            }
            done.push(id);
            if let Some(pin) = Self::pin_of_program(id, near) {
                // Reopening reconciles (open_pinned).
                let _ = Self::open_pinned(pin);
            }
        }
    }

    /// Makes sure every configured backend's next hop has a managed
    /// neighbour entry (created if missing, e.g. after `ip neigh flush`, or
    /// after a route change moved it to another gateway) and removes the
    /// entries this LB created that no backend uses any more. Backend
    /// changes and [`LoadBalancer::open_pinned`] do this by themselves.
    /// Returns the number of entries created.
    ///
    /// Kernel: Linux 5.16 or later (`NTF_EXT_MANAGED`).
    ///
    /// # Errors
    ///
    /// [`LbError::ForeignNamespace`] when the LB's network namespace cannot
    /// be reached from this thread; [`LbError::NamespaceNotEntered`] when
    /// this process may not enter it (without `CAP_SYS_ADMIN`);
    /// [`LbError::NetlinkSocket`] when no rtnetlink socket can be opened
    /// there (e.g. out of file descriptors);
    /// [`LbError::Neighbour`] when the kernel refuses a request (e.g.
    /// without `CAP_NET_ADMIN` there); [`LbError::Pin`] when the pin
    /// directory cannot be locked.
    pub fn refresh_neighbours(&self) -> Result<usize, LbError> {
        let mut look = self.hop_lookup()?;
        self.core.read(|st, maps| sync_hops(st, maps, &mut look))?.map(|s| s.created)
    }

    /// Removes every managed neighbour entry this LB created (when it is
    /// going away).
    pub(super) fn release_neighbours(&self) -> Result<(), LbError> {
        let recorded = self.maps().recorded_hops();
        if recorded.is_empty() {
            return Ok(());
        }
        let mut rtnl = self.rtnl()?;
        let records = Records::new(self.maps(), &rtnl);
        neigh::reconcile(&mut rtnl, &BTreeSet::new(), &recorded, &records)
            .map(drop)
            .map_err(neigh_err("removing the backends' managed neighbour entries"))
    }
}

/// Makes the recorded managed neighbour entries match the next hops of
/// every configured backend.
pub(super) fn sync_hops(st: &LbState, maps: &LbMaps, look: &mut HopLookup<'_>) -> Result<neigh::Synced, LbError> {
    let mut questions = questions(st, maps, None);
    // A backend of several VIPs of one mode and protocol is asked once.
    questions.sort();
    questions.dedup();
    let recorded = maps.recorded_hops();
    if questions.is_empty() && recorded.is_empty() {
        return Ok(neigh::Synced::default());
    }
    let op = "keeping the backends' next hops resolved (managed neighbour entries)";
    let hops = look.hops(&questions).map_err(neigh_err(op))?;
    let mut wanted: BTreeSet<HopKey> = hops.each.iter().flatten().copied().collect();
    wanted.extend(recorded.iter().filter(|h| hops.keeps(h)));
    let records = Records::new(maps, &look.rtnl);
    neigh::reconcile(&mut look.rtnl, &wanted, &recorded, &records).map_err(neigh_err(op))
}

/// What an LB's records of its managed neighbour entries hold: the low 32
/// bits of its network namespace's cookie (`rtnl` is a socket there),
/// which the kernel never gives another namespace, so another LB's
/// reconciling tells the records of its own namespace from those of one
/// where the same interface index and address name another entry (an
/// inode number would not: a namespace made after one is gone gets its
/// inode). 0, what earlier builds' records hold, for "any namespace": also
/// what is written when the cookie cannot be read, and never a cookie's
/// low bits (made 1 then).
fn hop_owner(rtnl: &neigh::Rtnl) -> u32 {
    rtnl.netns_cookie().map_or(0, |c| (c as u32).max(1))
}

/// One LB's records, as `neigh::reconcile` keeps them.
struct Records<'a> {
    maps: &'a LbMaps,
    owner: u32,
}

impl<'a> Records<'a> {
    fn new(maps: &'a LbMaps, rtnl: &neigh::Rtnl) -> Self {
        Records { maps, owner: hop_owner(rtnl) }
    }
}

impl neigh::HopRecord for Records<'_> {
    fn record(&self, hop: neigh::HopKey) -> std::io::Result<()> {
        self.maps.record_hop(hop, self.owner)
    }
    fn forget(&self, hop: neigh::HopKey) -> std::io::Result<()> {
        self.maps.forget_hop(hop)
    }
    fn shared(&self, hop: neigh::HopKey) -> neigh::Shared {
        self.maps.hop_recorded_elsewhere(hop, self.owner)
    }
}

pub(super) fn neigh_err(op: &str) -> impl FnOnce(std::io::Error) -> LbError + '_ {
    move |source| LbError::Neighbour {
        op: op.to_owned(),
        error: source,
        hint: "check that the process has CAP_NET_ADMIN in the LB's network namespace; meanwhile the data path \
               resolves next hops from traffic",
    }
}
