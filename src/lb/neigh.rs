//! Backends' next hops in the kernel's neighbour table.
//!
//! The data plane takes a backend's next hop (egress and MACs) from
//! `bpf_fib_lookup`, which finds only neighbours the kernel has already
//! resolved. So for every configured backend the library asks the kernel
//! for the route to it (the backend itself on-link, or the gateway towards
//! it) and creates a *managed* neighbour entry (`NTF_EXT_MANAGED`, Linux
//! 5.16+) for that next hop: the kernel resolves it at once and keeps it
//! `REACHABLE` by itself, probing as its reachable time runs out. An entry
//! is removed when no configured backend uses its next hop any more.
//!
//! Only entries the library created are ever changed or removed: they carry
//! the protocol [`NEIGH_PROTOCOL`] (`ip neigh show proto 88`), and each LB
//! records the ones it created in its pinned `xdpg_lb_nbrs` map. A dynamic
//! entry the kernel learnt from traffic is turned into a managed one;
//! permanent, `noarp`, externally learnt or otherwise tagged entries (an
//! operator's) are left alone, and count as resolved as they are.
//!
//! Netlink goes through `netlink-packet-route` and `netlink-sys`, in the
//! network namespace the LB was loaded in, whichever namespace the calling
//! thread is in: the socket is opened by a short-lived thread that enters
//! that namespace (a netlink socket stays bound to the namespace it was
//! opened in). Rejected: shelling out to `ip` (a program to install and a
//! text format to parse), and acting in the caller's namespace (handles are
//! shared between threads, and a CLI process starts in the root namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage, NeighbourState as Nud,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::types::{NeighbourState, NextHop};

/// The `NDA_PROTOCOL` value of the neighbour entries this crate creates
/// (unassigned in iproute2's `rt_protos`).
pub const NEIGH_PROTOCOL: u8 = 88;

/// A network namespace's identity: its nsfs device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsId {
    pub dev: u64,
    pub ino: u64,
}

fn ns_id(fd: BorrowedFd<'_>) -> io::Result<NsId> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok(NsId { dev: st.st_dev, ino: st.st_ino })
}

/// The calling thread's network namespace, opened.
pub(crate) fn current() -> io::Result<(OwnedFd, NsId)> {
    let f = File::open("/proc/thread-self/ns/net")?;
    let id = ns_id(f.as_fd())?;
    Ok((f.into(), id))
}

/// Moves the calling thread into network namespace `ns`.
pub(crate) fn enter(ns: BorrowedFd<'_>) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Opens the namespace `id`: the calling thread's, or one named under
/// `/run/netns` (where `ip netns add` puts them). None if neither.
pub(crate) fn find(id: NsId) -> Option<OwnedFd> {
    if let Ok((fd, here)) = current() {
        if here == id {
            return Some(fd);
        }
    }
    named(id).map(|(_, f)| f.into())
}

/// The name under `/run/netns` of namespace `id`, when it is not the
/// calling thread's and has one.
pub(crate) fn name_of(id: NsId) -> Option<String> {
    if current().is_ok_and(|(_, here)| here == id) {
        return None;
    }
    named(id).map(|(name, _)| name)
}

/// Namespace `id` among those named under `/run/netns`: its name, opened.
fn named(id: NsId) -> Option<(String, File)> {
    let dir = std::fs::read_dir(Path::new("/run/netns")).ok()?;
    dir.flatten().find_map(|e| {
        let f = File::open(e.path()).ok()?;
        (ns_id(f.as_fd()).ok()? == id).then(|| (e.file_name().to_string_lossy().into_owned(), f))
    })
}

/// A next hop as the neighbour table keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HopKey {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// One neighbour entry, as much as the library looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub state: u16,
    /// Carries NEIGH_PROTOCOL and the managed flag, and is not permanent.
    pub ours: bool,
    /// Learnt by the kernel from traffic: nobody's, safe to make managed.
    pub dynamic: bool,
}

#[cfg(test)]
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | NUD_NOARP | NUD_PERMANENT;

/// What a kernel neighbour state means for forwarding.
pub(crate) fn state_of(entry: Option<&Entry>) -> NeighbourState {
    match entry.map(|e| e.state) {
        Some(s) if s & NUD_VALID != 0 => NeighbourState::Resolved,
        Some(s) if s & NUD_FAILED != 0 => NeighbourState::Unreachable,
        // INCOMPLETE, NONE (a managed entry just made), or no entry yet.
        Some(_) | None => NeighbourState::Resolving,
    }
}

/// Why an rtnetlink socket could not be opened in a namespace.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The thread could not enter the namespace (`setns`: EPERM without
    /// CAP_SYS_ADMIN).
    Enter(io::Error),
    /// The socket itself failed.
    Io(io::Error),
}

/// Runs `f` in namespace `ns`: on this thread when it is there, else on a
/// short-lived thread that enters it (a socket opened there, `/proc/sys/net`
/// and interface names read there, are that namespace's). Failing to enter
/// it is `OpenError::Enter`.
pub(crate) fn run_in<R: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> R + Send) -> Result<R, OpenError> {
    let want = ns_id(ns).map_err(OpenError::Io)?;
    if current().is_ok_and(|(_, here)| here == want) {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns).map_err(OpenError::Enter)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(OpenError::Io(io::Error::other("the namespace thread panicked"))))
    })
}

/// An rtnetlink socket in one namespace.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in namespace `ns`, from a thread that enters it when
    /// the calling thread is elsewhere. Failing to enter it is told apart
    /// (`OpenError::Enter`): it needs another capability (CAP_SYS_ADMIN)
    /// than the netlink requests (CAP_NET_ADMIN), and the fix differs.
    pub(crate) fn open_in(ns: BorrowedFd<'_>) -> Result<Rtnl, OpenError> {
        let sock = run_in(ns, || Socket::new(NETLINK_ROUTE))?.map_err(OpenError::Io)?;
        let mut rtnl = Rtnl { sock, seq: 0 };
        rtnl.sock.bind_auto().map_err(OpenError::Io)?;
        rtnl.sock.connect(&SocketAddr::new(0, 0)).map_err(OpenError::Io)?;
        Ok(rtnl)
    }

    /// The cookie of the network namespace the socket was opened in
    /// (`SO_NETNS_COOKIE`, Linux 5.14): a number the kernel gives each
    /// namespace once and never reuses, where a namespace's inode number
    /// goes to the next namespace made after it is gone.
    pub(crate) fn netns_cookie(&self) -> io::Result<u64> {
        /// include/uapi/asm-generic/socket.h (x86, arm64 and the others
        /// that use the generic numbers); SPARC numbers its own.
        #[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
        const SO_NETNS_COOKIE: nix::libc::c_int = 71;
        #[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
        const SO_NETNS_COOKIE: nix::libc::c_int = 0x50;
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
        // SAFETY: the fd is this socket's, open for the call; `cookie` and
        // `len` are live locals, `len` holding `cookie`'s size, which is
        // what the kernel writes (a u64) and no more.
        let rc = unsafe {
            nix::libc::getsockopt(
                self.sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }

    /// Sends one request and collects the messages answering it, up to the
    /// final ACK or end of dump. A negative ACK becomes an io::Error.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }

    /// Whether a policy rule of the family selects by source address (`ip
    /// rule from PREFIX`, `not from` too): then a route lookup's answer
    /// may depend on the packet's source.
    pub(crate) fn source_rules(&mut self, ipv6: bool) -> io::Result<bool> {
        let mut m = RuleMessage::default();
        m.header.family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let rules = self.request(RouteNetlinkMessage::GetRule(m), NLM_F_DUMP)?;
        Ok(rules.iter().any(|r| matches!(r, RouteNetlinkMessage::NewRule(r) if r.header.src_len > 0)))
    }

    /// The next hop the kernel routes `dst` through: the gateway, or `dst`
    /// itself on-link. None without a unicast route (unreachable, local,
    /// blackhole). Source-based policy rules are not considered.
    pub(crate) fn route(&mut self, dst: IpAddr) -> io::Result<Option<HopKey>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let answer = match self.request(RouteNetlinkMessage::GetRoute(m), 0) {
            Ok(a) => a,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENETUNREACH | nix::libc::EHOSTUNREACH | nix::libc::EACCES | nix::libc::EINVAL)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        for m in answer {
            let RouteNetlinkMessage::NewRoute(r) = m else { continue };
            if r.header.kind != RouteType::Unicast {
                return Ok(None);
            }
            let mut oif = None;
            let mut via = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(IpAddr::V4(*a)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => via = Some(IpAddr::V6(*a)),
                    RouteAttribute::Via(RouteVia::Inet(a)) => via = Some(IpAddr::V4(*a)),
                    RouteAttribute::Via(RouteVia::Inet6(a)) => via = Some(IpAddr::V6(*a)),
                    _ => {}
                }
            }
            return Ok(oif.map(|ifindex| HopKey { ifindex, addr: via.unwrap_or(dst) }));
        }
        Ok(None)
    }

    /// The interface (its label: the name, or `name:alias`) and subnet
    /// whose IPv4 broadcast address `ip` is, if any: the kernel routes no
    /// packet to it as to a host (its route is a broadcast one), so a
    /// backend there is never reached.
    pub(crate) fn broadcast_of(
        &mut self,
        ip: std::net::Ipv4Addr,
    ) -> io::Result<Option<(String, ipnetwork::Ipv4Network)>> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        for msg in self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewAddress(a) = msg else { continue };
            let (mut local, mut broadcast, mut label) = (None, None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(l)) => local = Some(*l),
                    AddressAttribute::Broadcast(b) => broadcast = Some(*b),
                    AddressAttribute::Label(l) => label = Some(l.clone()),
                    _ => {}
                }
            }
            let (Some(local), Some(label)) = (local, label) else { continue };
            let Ok(net) = ipnetwork::Ipv4Network::new(local, a.header.prefix_len) else { continue };
            // /31 and /32 have no broadcast address (RFC 3021).
            let computed = (a.header.prefix_len < 31).then(|| net.broadcast());
            if broadcast == Some(ip) || computed == Some(ip) {
                let subnet = ipnetwork::Ipv4Network::new(net.network(), a.header.prefix_len).unwrap_or(net);
                return Ok(Some((label, subnet)));
            }
        }
        Ok(None)
    }

    /// The interface (its name; for IPv4 its address label, the name or
    /// `name:alias`) holding `ip` as one of its own addresses, if any: the
    /// kernel delivers packets to it locally, so the LB host's own services
    /// answer there.
    pub(crate) fn local_of(&mut self, ip: IpAddr) -> io::Result<Option<String>> {
        let mut m = AddressMessage::default();
        m.header.family = family(ip);
        for msg in self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewAddress(a) = msg else { continue };
            // IFA_LOCAL is the host's own address (IFA_ADDRESS is the peer's
            // on a point-to-point IPv4 link); IPv6 gives only IFA_ADDRESS.
            let (mut local, mut address, mut label) = (None, None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(l) => local = Some(*l),
                    AddressAttribute::Address(l) => address = Some(*l),
                    AddressAttribute::Label(l) => label = Some(l.clone()),
                    _ => {}
                }
            }
            if local.or(address) == Some(ip) {
                let name = match label {
                    Some(l) => l,
                    None => self.link_name(a.header.index)?,
                };
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// The name of interface `index` in the socket's namespace (`#N` if it
    /// has none, or went away meanwhile).
    fn link_name(&mut self, index: u32) -> io::Result<String> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let answer = match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Vec::new(),
            Err(e) => return Err(e),
        };
        let name = answer.iter().find_map(|msg| match msg {
            RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
            _ => None,
        });
        Ok(name.unwrap_or_else(|| format!("#{index}")))
    }

    /// Every IPv4 and IPv6 neighbour entry.
    pub(crate) fn neighbours(&mut self) -> io::Result<BTreeMap<HopKey, Entry>> {
        let mut out = BTreeMap::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = NeighbourMessage::default();
            m.header.family = fam;
            for msg in self.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewNeighbour(n) = msg else { continue };
                let mut addr = None;
                let mut protocol = RouteProtocol::Unspec;
                let mut ext = NeighbourExtFlags::empty();
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(IpAddr::V4(*a)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => addr = Some(IpAddr::V6(*a)),
                        NeighbourAttribute::Protocol(p) => protocol = *p,
                        NeighbourAttribute::ExtFlags(f) => ext = *f,
                        _ => {}
                    }
                }
                let Some(addr) = addr else { continue };
                let state = u16::from(n.header.state);
                let managed = ext.contains(NeighbourExtFlags::Managed);
                let fixed = state & (NUD_PERMANENT | NUD_NOARP) != 0;
                let learnt = n.header.flags.contains(NeighbourFlags::ExtLearned);
                let entry = Entry {
                    state,
                    ours: protocol == RouteProtocol::Other(NEIGH_PROTOCOL) && managed && !fixed,
                    dynamic: protocol == RouteProtocol::Unspec && !managed && !fixed && !learnt,
                };
                out.insert(HopKey { ifindex: n.header.ifindex, addr }, entry);
            }
        }
        Ok(out)
    }

    /// Creates a managed entry for `hop` (or turns the kernel's dynamic
    /// entry into one, with `replace`), tagged as ours. The kernel starts
    /// resolving it at once.
    pub(crate) fn add_managed(&mut self, hop: HopKey, replace: bool) -> io::Result<()> {
        let mut m = neighbour_message(hop);
        // NUD_NONE: the kernel resolves the entry itself (NUD_PERMANENT
        // would need a MAC, and cannot be managed).
        m.header.state = Nud::None;
        m.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        m.attributes.push(NeighbourAttribute::Protocol(RouteProtocol::Other(NEIGH_PROTOCOL)));
        let how = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_ACK | NLM_F_CREATE | how).map(drop)
    }

    /// Deletes the entry for `hop`.
    pub(crate) fn delete(&mut self, hop: HopKey) -> io::Result<()> {
        match self.request(RouteNetlinkMessage::DelNeighbour(neighbour_message(hop)), NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neighbour_message(hop: HopKey) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(hop.addr);
    m.header.ifindex = hop.ifindex;
    m.attributes.push(NeighbourAttribute::Destination(match hop.addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    m
}

/// What one reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    pub created: usize,
    pub removed: usize,
}

/// The LB's side of a reconciliation: its record of the entries it
/// relies on, and whether another LB's record holds an entry.
pub(crate) trait HopRecord {
    /// Records that the LB relies on `hop`'s managed entry.
    fn record(&self, hop: HopKey) -> io::Result<()>;
    /// Forgets it.
    fn forget(&self, hop: HopKey) -> io::Result<()>;
    /// Whether another load balancer relies on it too (then it stays when
    /// this one no longer needs it).
    fn shared(&self, hop: HopKey) -> Shared;
}

/// Whether another load balancer relies on a managed entry too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shared {
    /// No other LB's record holds it.
    No,
    /// Another LB in this namespace records it.
    Yes,
    /// Only an earlier build's record, which names no namespace, holds
    /// it: maybe an LB of this namespace, maybe one of another whose next
    /// hop has the same interface index and address.
    Maybe,
}

/// Makes the managed entries the LB recorded (`recorded`) match the next
/// hops its backends need (`wanted`): creates (and records) the missing ones, removes
/// (and forgets) those no backend needs any more, unless another LB's
/// record holds them (the entries are tagged as xdpguard's, not as one
/// LB's: two LBs in a namespace share them).
pub(crate) fn reconcile(
    rtnl: &mut Rtnl,
    wanted: &BTreeSet<HopKey>,
    recorded: &BTreeSet<HopKey>,
    lb: &impl HopRecord,
) -> io::Result<Synced> {
    let table = rtnl.neighbours()?;
    let mut done = Synced::default();
    for hop in wanted {
        match table.get(hop) {
            None => match rtnl.add_managed(*hop, false) {
                Ok(()) => done.created += 1,
                // Made meanwhile by someone else: theirs.
                Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => continue,
                Err(e) => return Err(e),
            },
            Some(e) if e.dynamic => {
                rtnl.add_managed(*hop, true)?;
                done.created += 1;
            }
            Some(e) if e.ours => {}
            Some(_) => continue, // an operator's entry: left alone, not ours to remove
        }
        // Recorded again when it was already: a record of an earlier build
        // (no owner) takes this LB's.
        lb.record(*hop)?;
    }
    for hop in recorded.difference(wanted) {
        let ours = table.get(hop).is_some_and(|e| e.ours);
        match if ours { lb.shared(*hop) } else { Shared::No } {
            Shared::No => {
                if ours {
                    rtnl.delete(*hop)?;
                    done.removed += 1;
                }
                lb.forget(*hop)?;
            }
            // The other LB's record keeps it from here on.
            Shared::Yes => lb.forget(*hop)?,
            // Kept, and still recorded here: a later reconciling removes
            // it once the other record names its namespace (its LB's next
            // reconciling writes that), when it is another's.
            Shared::Maybe => {}
        }
    }
    Ok(done)
}

/// Each next hop (`None`: the backend has no route), with whether the
/// kernel has resolved that neighbour.
pub(crate) fn next_hops(rtnl: &mut Rtnl, hops: &[Option<HopKey>]) -> io::Result<Vec<NextHop>> {
    let table = rtnl.neighbours()?;
    Ok(hops
        .iter()
        .map(|hop| match hop {
            None => NextHop { via: None, ifindex: 0, state: NeighbourState::NoRoute },
            Some(hop) => NextHop { via: Some(hop.addr), ifindex: hop.ifindex, state: state_of(table.get(hop)) },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_states_map_to_what_forwarding_sees() {
        let e = |state| Entry { state, ours: false, dynamic: true };
        assert_eq!(state_of(None), NeighbourState::Resolving);
        assert_eq!(state_of(Some(&e(0))), NeighbourState::Resolving, "a managed entry just made");
        assert_eq!(state_of(Some(&e(NUD_INCOMPLETE))), NeighbourState::Resolving);
        assert_eq!(state_of(Some(&e(NUD_FAILED))), NeighbourState::Unreachable);
        for s in [0x02, 0x04, 0x08, 0x10, NUD_NOARP, NUD_PERMANENT] {
            assert_eq!(state_of(Some(&e(s))), NeighbourState::Resolved, "{s:#x}");
        }
    }
}
