//! `BPF_PROG_TEST_RUN` on any XDP program fd, with the knobs benchmarks
//! and traffic generators need: repetitions, an ingress interface, and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel 5.18+), which sends each frame the
//! program returns `XDP_TX`/`XDP_REDIRECT` for out of a real interface. Plus
//! attaching any program natively through a BPF link, and reading per-CPU
//! counters and a map's memory.
//!
//! The [`Filter`](crate::Filter), [`LoadBalancer`](crate::LoadBalancer)
//! and [`Decap`](crate::Decap) have `test_run` methods of their own; this
//! is for programs the crate does not wrap (a bench's bare `XDP_DROP`, a
//! traffic generator) and for timing runs.
//!
//! ```no_run
//! use xdpguard::testing::frame::udp_from;
//! use xdpguard::testing::live::{test_run, RunOptions};
//! use xdpguard::Filter;
//!
//! let filter = Filter::builder().load()?;
//! let frame = udp_from("192.0.2.1".parse()?);
//! let out = test_run(filter.program_fd(), &frame, RunOptions::default().repeat(1_000_000))?;
//! println!("{:?}: {} ns per run (hot caches)", out.action(), out.duration_ns);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::XdpAction;

/// `XDP_FLAGS_DRV_MODE`: native mode only, fail rather than fall back.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// What went wrong in this module: the kernel call, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// A BPF system call failed.
    #[error("{op} failed: {error}{hint}")]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The kernel's error.
        error: io::Error,
        /// How to fix it, when known (starts with "; ").
        hint: &'static str,
    },
    /// A map could not be read.
    #[error("{op} failed: {error}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// libbpf's error.
        error: libbpf_rs::Error,
    },
}

fn kernel(op: &'static str) -> impl FnOnce(io::Error) -> LiveError {
    move |source| {
        let hint = match source.raw_os_error() {
            Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => "; run as root (CAP_BPF and CAP_NET_ADMIN)",
            Some(nix::libc::EINVAL) => {
                "; the kernel refused the arguments (frames under 14 bytes, live frames before 5.18, or a \
                 context it does not take)"
            }
            _ => "",
        };
        LiveError::Kernel { op, error: source, hint }
    }
}

/// How [`test_run`] runs a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Runs of the same frame (the kernel reports the mean time per run).
    pub repeat: u32,
    /// The interface the frame arrives on (`ingress_ifindex` in `struct
    /// xdp_md`; the FIB lookups of a forwarding program start there).
    pub ingress: Option<u32>,
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames the program transmits leave
    /// through the real interface; no output frame is read back.
    pub live_frames: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { repeat: 1, ingress: None, live_frames: false }
    }
}

impl RunOptions {
    /// `n` runs of the frame.
    pub fn repeat(mut self, n: u32) -> Self {
        self.repeat = n;
        self
    }

    /// Received on the interface with this index.
    pub fn ingress(mut self, ifindex: u32) -> Self {
        self.ingress = Some(ifindex);
        self
    }

    /// Live frames (see the field).
    pub fn live_frames(mut self) -> Self {
        self.live_frames = true;
        self
    }
}

/// One `BPF_PROG_TEST_RUN` call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The program's return value (live-frames runs report 0).
    pub retval: u32,
    /// The kernel's mean time per repetition, in ns.
    pub duration_ns: u32,
    /// The frame as the program left it (empty for live-frames runs).
    pub frame: Vec<u8>,
}

impl RunOutput {
    /// The return value as an action.
    pub fn action(&self) -> XdpAction {
        XdpAction::from(self.retval)
    }
}

/// The `struct xdp_md` a run gets: the frame spans `[0, len)` and arrives
/// on `ingress`, queue 0 (24 bytes, as the kernel lays it out).
pub fn xdp_md(len: usize, ingress: u32) -> [u32; 6] {
    [0, len as u32, 0, ingress, 0, 0]
}

/// Runs the XDP program `prog` on `frame` with `BPF_PROG_TEST_RUN`.
///
/// # Errors
/// When the kernel refuses the run (not root, a frame under 14 bytes, live
/// frames on a kernel before 5.18, ...).
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], options: RunOptions) -> Result<RunOutput, LiveError> {
    let mut ctx = xdp_md(frame.len(), options.ingress.unwrap_or(0));
    let needs_ctx = options.ingress.is_some() || options.live_frames;
    let flags = if options.live_frames { libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES } else { 0 };
    let ctx = needs_ctx.then(|| bytemuck::cast_slice_mut(&mut ctx[..]));
    let out = crate::core::sys::prog_test_run(prog, frame, ctx, options.repeat, flags)
        .map_err(kernel("BPF_PROG_TEST_RUN"))?;
    Ok(RunOutput { retval: out.retval, duration_ns: out.duration_ns, frame: out.data_out })
}

/// Attaches the XDP program `prog` natively (driver mode, no fallback) to
/// the interface `ifindex` of the calling thread's namespace, through a BPF
/// link. Dropping the returned link fd detaches it.
///
/// # Errors
/// When the kernel refuses (not root, the driver has no native XDP,
/// another program is attached).
pub fn attach_native(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd, LiveError> {
    crate::core::sys::xdp_link_create(prog, ifindex, XDP_FLAGS_DRV_MODE).map_err(kernel("attaching XDP natively"))
}

/// Sums a per-CPU slot's first 8 bytes (a `u64` counter) over every CPU.
///
/// # Errors
/// When the map cannot be read.
pub fn percpu_u64(map: &MapHandle, key: u32) -> Result<u64, LiveError> {
    let per_cpu = map
        .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
        .map_err(|source| LiveError::Map { op: "reading a per-CPU counter", error: source })?
        .unwrap_or_default();
    Ok(per_cpu.iter().map(|b| b.first_chunk::<8>().map_or(0, |v| u64::from_ne_bytes(*v))).sum())
}

/// Kernel memory charged to a map (`memlock:` of its fdinfo).
///
/// # Errors
/// When the fdinfo cannot be read.
pub fn map_memlock(map: BorrowedFd<'_>) -> Result<u64, LiveError> {
    crate::core::sys::map_memlock(map).map_err(|source| LiveError::Kernel {
        op: "reading a map's memlock",
        error: source,
        hint: "",
    })
}
