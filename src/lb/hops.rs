//! Backends' next hops, kept resolved with managed neighbour entries in the
//! LB's network namespace (the netlink side is in `neigh.rs`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsFd;

use super::maps::LbMaps;
use super::neigh;
use super::state::LbState;
use super::LoadBalancer;
use crate::error::LbError;

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
        let ino = self.maps().netns().ino;
        let ns = self.netns.as_ref().ok_or(LbError::ForeignNamespace { ino })?;
        neigh::Rtnl::open_in(ns.as_fd()).map_err(|e| match e {
            neigh::OpenError::Enter(error) => LbError::NamespaceNotEntered { ino, error },
            neigh::OpenError::Io(error) => LbError::NetlinkSocket { ino, error },
        })
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
        let mut rtnl = self.rtnl()?;
        self.core.read(|st, maps| sync_hops(st, maps, &mut rtnl))?.map(|s| s.created)
    }

    /// Removes every managed neighbour entry this LB created (when it is
    /// going away).
    pub(super) fn release_neighbours(&self) -> Result<(), LbError> {
        let recorded = self.maps().recorded_hops();
        if recorded.is_empty() {
            return Ok(());
        }
        let mut rtnl = self.rtnl()?;
        neigh::reconcile(&mut rtnl, &BTreeSet::new(), &recorded, self.maps())
            .map(drop)
            .map_err(neigh_err("removing the backends' managed neighbour entries"))
    }
}

/// Makes the recorded managed neighbour entries match the next hops of
/// every configured backend.
pub(super) fn sync_hops(st: &LbState, maps: &LbMaps, rtnl: &mut neigh::Rtnl) -> Result<neigh::Synced, LbError> {
    let backends: BTreeSet<IpAddr> = st.vips.values().flat_map(|v| v.backends.keys().map(|b| b.ip)).collect();
    let recorded = maps.recorded_hops();
    if backends.is_empty() && recorded.is_empty() {
        return Ok(neigh::Synced::default());
    }
    neigh::reconcile(rtnl, &backends, &recorded, maps)
        .map_err(neigh_err("keeping the backends' next hops resolved (managed neighbour entries)"))
}

impl neigh::HopRecord for LbMaps {
    fn record(&self, hop: neigh::HopKey) -> std::io::Result<()> {
        self.record_hop(hop)
    }
    fn forget(&self, hop: neigh::HopKey) -> std::io::Result<()> {
        self.forget_hop(hop)
    }
    fn shared(&self, hop: neigh::HopKey) -> bool {
        self.hop_recorded_elsewhere(hop)
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
