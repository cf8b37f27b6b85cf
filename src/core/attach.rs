//! Attaching XDP programs to interfaces through BPF links, in a chosen mode.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::core::layout::names;
use crate::core::sys;
use crate::error::{missing_privileges, AttachError, Error, LoadError};

/// How to attach an XDP program. Exhaustive: the kernel's XDP attach
/// modes (driver, generic, offload) and the choice among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttachMode {
    /// Native (driver) mode: runs before the kernel allocates an skb. Fastest.
    Native,
    /// Generic (skb) mode: works on every interface, at a fraction of the speed.
    Generic,
    /// Hardware offload: runs on the NIC. Needs a NIC and driver with BPF
    /// offload; the program is loaded for that one device.
    Offload,
    /// Native where the driver supports it, generic otherwise. The mode used
    /// is reported in [`Attachment::mode`].
    #[default]
    Auto,
}

impl AttachMode {
    fn xdp_flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => libbpf_sys::XDP_FLAGS_HW_MODE,
            AttachMode::Auto => 0,
        }
    }
}

crate::core::names::named_values! { AttachMode, "XDP mode", {
    Native => "native" | "drv" | "driver",
    Generic => "generic" | "skb",
    Offload => "offload" | "hw",
    Auto => "auto",
} }

/// An interface, by name or by index, in the calling thread's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interface {
    /// By name, e.g. `"eth0"`.
    Name(String),
    /// By index, e.g. from `ip link`.
    Index(u32),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Interface::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Interface::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Interface::Index(index)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interface::Name(n) => f.write_str(n),
            Interface::Index(i) => write!(f, "#{i}"),
        }
    }
}

impl Interface {
    /// Resolves to (index, name).
    pub(crate) fn resolve(&self) -> Result<(u32, String), AttachError> {
        let not_found = || AttachError::InterfaceNotFound { interface: self.to_string() };
        match self {
            Interface::Name(n) => sys::ifindex_of(n).map(|i| (i, n.clone())).ok_or_else(not_found),
            Interface::Index(i) => sys::ifname_of(*i).map(|n| (*i, n)).ok_or_else(not_found),
        }
    }
}

/// One interface a program is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name (as resolved when attached or reopened).
    pub interface: String,
    /// The mode the kernel reports; never [`AttachMode::Auto`].
    pub mode: AttachMode,
}

impl Attachment {
    /// Whether the program `program_id` (as `program_id()` of the handle
    /// gives it) runs on this attachment's interface as the calling
    /// thread's network namespace sees it: the name resolves there to this
    /// index and the kernel reports that program on it. Names and indexes
    /// are per namespace: a container's `eth0` attached to is not the
    /// host's `eth0`, though both may even have index 2.
    pub fn runs_here(&self, program_id: u32) -> bool {
        sys::ifindex_of(&self.interface) == Some(self.ifindex) && runs_on(program_id, &self.interface, self.ifindex)
    }
}

/// A live attachment: the link keeps the program on the interface.
#[derive(Debug)]
pub(crate) struct Link {
    pub fd: OwnedFd,
    pub attachment: Attachment,
}

/// The mode the kernel reports for the program on `ifindex`.
pub(crate) fn attached_mode(ifindex: u32) -> Option<AttachMode> {
    match sys::xdp_query(ifindex).ok()?.attach_mode {
        m if m == libbpf_sys::XDP_ATTACHED_DRV as u8 => Some(AttachMode::Native),
        m if m == libbpf_sys::XDP_ATTACHED_SKB as u8 => Some(AttachMode::Generic),
        m if m == libbpf_sys::XDP_ATTACHED_HW as u8 => Some(AttachMode::Offload),
        _ => None,
    }
}

/// Attaches `prog` to `iface` in `mode` through a BPF link. What is on the
/// interface already is looked at first: another program there is an
/// [`AttachError::AlreadyAttached`] that names it, before anything is tried.
pub(crate) fn attach(prog: BorrowedFd<'_>, iface: &Interface, mode: AttachMode) -> Result<Link, Error> {
    let (ifindex, name) = iface.resolve()?;
    if let Some(taken) = occupant(&name, ifindex) {
        return Err(taken.into());
    }
    let try_mode = |m: AttachMode| sys::xdp_link_create(prog, ifindex, m.xdp_flags());
    let result = match mode {
        // Ask for native explicitly, so "auto" never silently means generic
        // on a driver that has native support.
        AttachMode::Auto => match try_mode(AttachMode::Native) {
            Err(e) if is_unsupported(&e) => try_mode(AttachMode::Generic),
            other => other,
        },
        m => try_mode(m),
    };
    let fd = result.map_err(|source| classify(source, &name, ifindex, mode))?;
    let reported = attached_mode(ifindex).unwrap_or(match mode {
        AttachMode::Auto => AttachMode::Native,
        m => m,
    });
    Ok(Link { fd, attachment: Attachment { ifindex, interface: name, mode: reported } })
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::EINVAL))
}

fn classify(source: io::Error, interface: &str, ifindex: u32, mode: AttachMode) -> Error {
    let interface = interface.to_owned();
    if let Some(nix::libc::EPERM | nix::libc::EACCES) = source.raw_os_error() {
        let missing = missing_privileges().unwrap_or_else(|| "CAP_NET_ADMIN".into());
        return LoadError::MissingPrivileges { missing }.into();
    }
    let err = match source.raw_os_error() {
        Some(nix::libc::EBUSY) | Some(nix::libc::EEXIST) => {
            occupant(&interface, ifindex).unwrap_or(AttachError::AlreadyAttached {
                interface,
                program_id: None,
                program: None,
                owner: None,
                libxdp: None,
            })
        }
        Some(nix::libc::ENODEV) => AttachError::InterfaceNotFound { interface },
        Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::EINVAL) if mode != AttachMode::Auto => {
            AttachError::ModeUnsupported {
                interface,
                mode,
                hint: match mode {
                    AttachMode::Native => "the driver has no native XDP; use generic or auto mode",
                    AttachMode::Offload => {
                        "offload needs a NIC whose driver offloads BPF (and maps this program can \
                         use there); use native or auto mode"
                    }
                    _ => "use auto mode",
                },
            }
        }
        _ => AttachError::Bpf { interface, error: source },
    };
    err.into()
}

/// The program an attach to `interface` (of the calling thread's network
/// namespace) would meet there, as the error that attach would return,
/// unless it is one of `ours`; `None` for a free interface, or one that
/// does not exist.
#[cfg_attr(not(feature = "config"), allow(dead_code))]
pub(crate) fn occupied_by_another(interface: &str, ours: &[u32]) -> Option<AttachError> {
    let ifindex = nix::net::if_::if_nametoindex(interface).ok()?;
    match occupant(interface, ifindex)? {
        AttachError::AlreadyAttached { program_id: Some(id), .. } if ours.contains(&id) => None,
        e => Some(e),
    }
}

/// The program already on an interface, named, as the error attaching
/// there gives: `None` when the interface is free.
///
/// libxdp (xdp-tools' `xdp-filter` and `xdp-loader`, or a program using the
/// library) shares an interface between programs through a dispatcher whose
/// components are `BPF_PROG_TYPE_EXT` (freplace) programs. Where the kernel
/// refuses those (it answers EPERM; measured on this project's 6.18 CI
/// kernel), libxdp falls back to its legacy mode: one plain program per
/// interface, attached through netlink, which excludes every other. The
/// program is recognised as libxdp's by the `.xdp_run_config` section of
/// its BTF (where libxdp reads its run priority), a dispatcher by its name.
/// Joining a dispatcher as one of its components is not done: it needs the
/// EXT program type, and on Linux 6.13 and later (and stable kernels with
/// the backport) an extension that tail-calls or moves packet data (every
/// xdpguard program does) cannot replace libxdp 1.3's dispatcher slots.
/// Whether program `prog_id` is what runs on `ifindex` (of the calling
/// thread's network namespace).
pub(crate) fn runs_on(prog_id: u32, interface: &str, ifindex: u32) -> bool {
    matches!(occupant(interface, ifindex), Some(AttachError::AlreadyAttached { program_id: Some(id), .. }) if id == prog_id)
}

fn occupant(interface: &str, ifindex: u32) -> Option<AttachError> {
    let id = sys::xdp_query(ifindex).ok().map(|q| q.prog_id).filter(|&id| id != 0)?;
    let info = sys::prog_by_id(id).and_then(|fd| sys::prog_info(fd.as_fd())).ok();
    let name = info.as_ref().map(|i| i.name.clone()).filter(|n| !n.is_empty());
    let libxdp = info.as_ref().and_then(|i| {
        let freplace = match sys::kernel_loads_freplace() {
            Some(false) => {
                " This kernel refuses BPF_PROG_TYPE_EXT (freplace) programs, so libxdp cannot build a \
                 dispatcher here and fell back to its legacy mode: one program per interface."
            }
            _ => "",
        };
        if i.name == "xdp_dispatcher" {
            Some(format!(
                "it is a libxdp dispatcher (xdp-loader, xdp-filter), which xdpguard does not join: remove its \
                 programs (`xdp-loader unload {interface} --all`) or use another interface"
            ))
        } else if sys::btf_has_datasec(i.btf_id, ".xdp_run_config") {
            Some(format!(
                "it was loaded through libxdp (xdp-tools' xdp-filter or xdp-loader) as a single program.{freplace} \
                 Unload it (`xdp-filter unload {interface}` or `xdp-loader unload {interface} --all`) and run its \
                 job behind xdpguard instead (an XDP program of your own goes behind the filter with \
                 `Filter::set_next`)"
            ))
        } else {
            None
        }
    });
    let owner = match name.as_deref() {
        Some(file @ (names::XDPG_FILTER | names::XDPG_LB | names::XDPG_DECAP)) => crate::core::chain::pin_of(file, id),
        _ => None,
    };
    Some(AttachError::AlreadyAttached {
        interface: interface.to_owned(),
        program_id: Some(id),
        program: name,
        owner,
        libxdp,
    })
}

/// Link info for a pinned link: which interface it holds, if still attached.
pub(crate) fn link_attachment(fd: &OwnedFd) -> io::Result<Option<Attachment>> {
    let info = sys::xdp_link_info(fd.as_fd())?;
    if info.ifindex == 0 {
        return Ok(None);
    }
    Ok(Some(Attachment {
        ifindex: info.ifindex,
        interface: sys::ifname_of(info.ifindex).unwrap_or_else(|| format!("#{}", info.ifindex)),
        mode: attached_mode(info.ifindex).unwrap_or(AttachMode::Native),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [AttachMode::Native, AttachMode::Generic, AttachMode::Offload, AttachMode::Auto] {
            assert_eq!(m.to_string().parse::<AttachMode>().unwrap(), m);
        }
        assert_eq!("skb".parse::<AttachMode>().unwrap(), AttachMode::Generic);
        assert!("fast".parse::<AttachMode>().is_err());
    }

    #[test]
    fn missing_interface_is_typed() {
        let err = Interface::from("xdpg-nope0").resolve().unwrap_err();
        assert!(matches!(err, AttachError::InterfaceNotFound { .. }));
        assert!(err.to_string().contains("xdpg-nope0"));
    }
}
