//! A bounded flood of raw Ethernet frames (built with the test kit) sent
//! from one namespace's interface through an AF_PACKET socket, round robin
//! over the frames given, until a frame budget is spent or the test stops
//! it. The program under test counts what arrives on the peer's XDP hook.
//!
//! Use it from tests with `mod common { pub mod flood; }`.

#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xdpguard::testing::netns::NetNs;

/// How long a frame may be refused with ENOBUFS (the interface's queue
/// full) before a sender gives up: the peer's NAPI drains a veth's queue in
/// well under a millisecond even on a loaded machine, so this only ends a
/// send that can never succeed.
pub const ENOBUFS_LIMIT: Duration = Duration::from_secs(10);

/// A raw AF_PACKET socket bound to one interface (send only: protocol 0
/// receives nothing).
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Binds a send-only packet socket to `ifname` in the current namespace.
    pub fn bind(ifname: &str) -> PacketSocket {
        use nix::libc;
        let ifindex = nix::net::if_::if_nametoindex(ifname).expect("ifindex");
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll and the length given is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        PacketSocket(fd)
    }

    /// Sends one whole frame.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: frame is a valid buffer of frame.len() bytes for the call.
        let r = unsafe { nix::libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if r == frame.len() as isize {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Sends one whole frame; on ENOBUFS (the interface's queue was full and
    /// the frame not sent: a busy CI machine, the peer's NAPI not yet run)
    /// lets the queue drain and sends it again. False if `stop` was set
    /// meanwhile (the frame not sent). Panics on any other error, or when the
    /// queue stays full for [`ENOBUFS_LIMIT`].
    pub fn send_retrying(&self, frame: &[u8], stop: &AtomicBool) -> bool {
        let mut refused_since = None;
        loop {
            let e = match self.send(frame) {
                Ok(()) => return true,
                Err(e) => e,
            };
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOBUFS), "send: {e}");
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let since = *refused_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < ENOBUFS_LIMIT,
                "send: ENOBUFS for {ENOBUFS_LIMIT:?}: the interface's queue never drained"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// A running flood.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: JoinHandle<Vec<u64>>,
}

impl Flood {
    /// Sends `frames` round robin out of `ifname` in `ns`, at most `budget`
    /// frames in all. Every `yield_every` frames the sender yields the CPU
    /// (a veth queues at most 256 frames for its peer's XDP: a sender that
    /// never yields on a busy 2-core machine overruns it).
    pub fn start(ns: &NetNs, ifname: &str, frames: Vec<Vec<u8>>, budget: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let ifname = ifname.to_owned();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            ns.spawn(move || {
                let sock = PacketSocket::bind(&ifname);
                let mut per_frame = vec![0u64; frames.len()];
                let mut n = 0u64;
                'outer: while n < budget {
                    for (i, f) in frames.iter().enumerate() {
                        if n >= budget || stop.load(Ordering::Relaxed) {
                            break 'outer;
                        }
                        if !sock.send_retrying(f, &stop) {
                            break 'outer;
                        }
                        per_frame[i] += 1;
                        n += 1;
                        sent.store(n, Ordering::Relaxed);
                        if n % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                }
                per_frame
            })
        };
        Flood { stop, sent, thread }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the sender has ended: its budget spent, stopped, or panicked
    /// (`finish` then says why).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops (or waits for the budget to be spent, if `stop` is false) and
    /// returns how many times each frame was sent.
    pub fn finish(self, stop: bool) -> Vec<u64> {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.thread.join().expect("flood thread")
    }
}
