//! Thin, safe wrappers over the few system calls libbpf-rs does not cover:
//! XDP links with an explicit mode, object pinning, link and XDP queries,
//! capabilities and bpffs detection.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// Capability numbers from <linux/capability.h>.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Turns a libbpf return value (negative errno) into an `io::Result`.
fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Attaches an XDP program to `ifindex` through a BPF link. `xdp_flags` are
/// `XDP_FLAGS_{SKB,DRV,HW}_MODE`. The link detaches when its last reference
/// (fd or pin) goes away, so a crashed process never leaves a program behind.
pub(crate) fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, xdp_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_link_create_opts is the documented "no options" value.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = xdp_flags;
    // SAFETY: prog is a valid fd for the duration of the call and opts is a
    // properly sized, initialised struct.
    let fd =
        check(unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forces a link to detach, even while other fds or pins still hold it.
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: link is a valid fd for the duration of the call.
    check(unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) }).map(drop)
}

/// What a pinned XDP link points at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XdpLinkInfo {
    /// 0 once the link has been detached (its interface went away).
    pub ifindex: u32,
}

pub(crate) fn xdp_link_info(link: BorrowedFd<'_>) -> io::Result<XdpLinkInfo> {
    // SAFETY: bpf_link_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) })?;
    // SAFETY: for an XDP link the kernel fills the xdp member of the union;
    // for any other link type ifindex reads as some integer, which callers
    // only use to look the interface up.
    let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
    Ok(XdpLinkInfo { ifindex })
}

/// A program's kernel id (what prog arrays and `bpftool prog` show).
pub(crate) fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    Ok(info.id)
}

/// The XDP program attached to an interface, if any, and how.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct XdpQuery {
    pub prog_id: u32,
    /// `XDP_ATTACHED_{NONE,DRV,SKB,HW,MULTI}`.
    pub attach_mode: u8,
}

pub(crate) fn xdp_query(ifindex: u32) -> io::Result<XdpQuery> {
    // SAFETY: zero is the documented initial value of bpf_xdp_query_opts.
    let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
    // SAFETY: opts is a properly sized, writable struct.
    check(unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) })?;
    Ok(XdpQuery { prog_id: opts.prog_id, attach_mode: opts.attach_mode })
}

/// Pins any BPF object fd at `path` (which must be on bpffs).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: fd is valid and c is a NUL-terminated path.
    check(unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// Opens a pinned BPF object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: c is a NUL-terminated path.
    let fd = check(unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel ids of the maps a program uses.
pub(crate) fn prog_map_ids(prog: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut again: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    again.nr_map_ids = ids.len() as u32;
    again.map_ids = ids.as_mut_ptr() as u64;
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size,
    // and map_ids points at nr_map_ids writable u32s that outlive the call.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut again, &mut len) })?;
    ids.truncate(again.nr_map_ids.min(ids.len() as u32) as usize);
    Ok(ids)
}

/// A map's kernel id.
pub(crate) fn map_id(map: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: bpf_map_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_map_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_map_get_info_by_fd(map.as_raw_fd(), &mut info, &mut len) })?;
    Ok(info.id)
}

/// Kernel memory charged to a map, from `/proc/self/fdinfo` (`memlock:`).
pub(crate) fn map_memlock(map: BorrowedFd<'_>) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.as_raw_fd()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no memlock in fdinfo"))
}

/// Whether `path` (or, if it does not exist yet, its parent) lives on bpffs.
pub(crate) fn is_on_bpffs(path: &Path) -> bool {
    let mut probe = Some(path);
    while let Some(p) = probe {
        if p.exists() {
            return nix::sys::statfs::statfs(p).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false);
        }
        probe = p.parent();
    }
    false
}

/// The capabilities needed to load and attach XDP programs that this
/// process lacks, named for an error message; empty when all are present.
pub(crate) fn missing_capabilities() -> Vec<&'static str> {
    let Some(effective) = effective_capabilities() else {
        return Vec::new();
    };
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    // Before Linux 5.8, CAP_SYS_ADMIN stood in for CAP_BPF.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .or_else(|_| std::fs::read_to_string("/proc/self/status"))
        .ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Resolves an interface name in the calling thread's network namespace.
pub(crate) fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|&i| i != 0)
}

/// The name of an interface in the calling thread's network namespace.
pub(crate) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; nix::libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname may write.
    let ret = unsafe { nix::libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ret.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Runs a program once or `repeat` times over `data` with `BPF_PROG_TEST_RUN`.
pub(crate) struct TestRun {
    pub retval: u32,
    pub data_out: Vec<u8>,
    pub duration_ns: u32,
}

pub(crate) fn prog_test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&mut [u8]>,
    repeat: u32,
    flags: u32,
) -> io::Result<TestRun> {
    // XDP may grow the packet (encapsulation): leave room for it.
    let mut out = vec![0u8; data.len() + 256];
    // SAFETY: zero is the documented initial value of bpf_test_run_opts.
    let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = data.as_ptr().cast();
    opts.data_size_in = data.len() as u32;
    if flags == 0 {
        opts.data_out = out.as_mut_ptr().cast();
        opts.data_size_out = out.len() as u32;
    }
    if let Some(ctx) = ctx {
        opts.ctx_in = ctx.as_ptr().cast();
        opts.ctx_size_in = ctx.len() as u32;
    }
    opts.repeat = repeat as i32;
    opts.flags = flags;
    // SAFETY: all buffers referenced by opts outlive the call and their sizes
    // are the sizes given.
    check(unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) })?;
    out.truncate(opts.data_size_out as usize);
    Ok(TestRun { retval: opts.retval, data_out: out, duration_ns: opts.duration })
}

/// Swaps the program a link runs for `prog`, atomically: every packet runs
/// either the old program or the new one (`BPF_LINK_UPDATE`, Linux 5.7;
/// XDP links 5.9). No `BPF_F_REPLACE`: callers hold the pin directory's
/// lock, and an upgrade that died after swapping must be able to run again.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: zero is the documented "no options" value of bpf_link_update_opts.
    let mut opts: libbpf_sys::bpf_link_update_opts = unsafe { zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_link_update_opts>() as _;
    // SAFETY: both fds are valid for the duration of the call; opts is sized and initialised.
    check(unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), &opts) }).map(drop)
}

/// The id of the program a link runs.
pub(crate) fn link_prog_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: bpf_link_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) })?;
    Ok(info.prog_id)
}

/// A loaded program's id, name and BTF object id (0: none).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgInfo {
    pub id: u32,
    pub name: String,
    pub btf_id: u32,
}

pub(crate) fn prog_info(prog: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    let name: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ok(ProgInfo { id: info.id, name: String::from_utf8_lossy(&name).into_owned(), btf_id: info.btf_id })
}

/// How many calls of kernel functions (kfuncs) a loaded program makes, in
/// the instructions the verifier left (`xlated`): a call of a weak kfunc
/// the kernel did not have when the program was loaded is not among them
/// (`bpf_ksym_exists` made it dead code, and the verifier removed it).
pub(crate) fn prog_kfunc_calls(prog: BorrowedFd<'_>) -> io::Result<usize> {
    // `BPF_JMP | BPF_CALL`, and the source register marking a kfunc.
    const CALL: u8 = 0x85;
    const PSEUDO_KFUNC_CALL: u8 = 2;
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    let count = info.xlated_prog_len as usize / size_of::<libbpf_sys::bpf_insn>();
    if count == 0 {
        // The kernel tells its instructions' length only to CAP_BPF.
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the kernel withholds the program's instructions"));
    }
    // SAFETY: bpf_insn is plain data; zero is a valid value.
    let mut insns: Vec<libbpf_sys::bpf_insn> = vec![unsafe { zeroed() }; count];
    // SAFETY: as above; the kernel writes at most xlated_prog_len bytes
    // (what it just reported, the length of `insns`) through the pointer.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    info.xlated_prog_len = (count * size_of::<libbpf_sys::bpf_insn>()) as u32;
    info.xlated_prog_insns = insns.as_mut_ptr() as u64;
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer of the right size;
    // info.xlated_prog_insns points at `insns`, as long as it says.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    if info.xlated_prog_insns == 0 {
        // The kernel withholds them (a blinded program: bpf_jit_harden,
        // with kernel.kptr_restrict).
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the kernel withholds the program's instructions"));
    }
    Ok(insns.iter().filter(|i| i.code == CALL && i.src_reg() == PSEUDO_KFUNC_CALL).count())
}

/// Opens a loaded program by id (needs CAP_SYS_ADMIN).
pub(crate) fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call on an integer id.
    let fd = check(unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel loads `BPF_PROG_TYPE_EXT` (freplace) programs, which
/// a libxdp dispatcher's components are: libbpf's probe loads a minimal
/// one. `None` when the probe itself fails for another reason.
pub(crate) fn kernel_loads_freplace() -> Option<bool> {
    // SAFETY: a probe with no options; it loads and frees a tiny program.
    let ret = unsafe { libbpf_sys::libbpf_probe_bpf_prog_type(libbpf_sys::BPF_PROG_TYPE_EXT, std::ptr::null()) };
    match ret {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// Whether the kernel BTF object `btf_id` (a program's) has a DATASEC
/// named `name`; false when it cannot be read.
pub(crate) fn btf_has_datasec(btf_id: u32, name: &str) -> bool {
    let Ok(c) = CString::new(name) else { return false };
    if btf_id == 0 {
        return false;
    }
    // SAFETY: loads a copy of a kernel BTF object; NULL on failure.
    let btf = unsafe { libbpf_sys::btf__load_from_kernel_by_id(btf_id) };
    if btf.is_null() {
        return false;
    }
    // SAFETY: btf is the valid object just loaded and c a NUL-terminated name.
    let found = unsafe { libbpf_sys::btf__find_by_name_kind(btf, c.as_ptr(), libbpf_sys::BTF_KIND_DATASEC) } >= 0;
    // SAFETY: btf was returned by btf__load_from_kernel_by_id and is freed once.
    unsafe { libbpf_sys::btf__free(btf) };
    found
}
