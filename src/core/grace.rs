//! Waiting until no program still runs on what an edit just retired.
//!
//! The filter swaps whole tables by flipping one word its program reads
//! once per packet: a packet that read the word just before the flip still
//! walks the old table afterwards, for as long as its program runs (well
//! under a microsecond, unless the CPU under it is preempted, which a
//! virtual CPU can be for milliseconds). Rewriting the old table in that
//! window showed such a packet half of each version: a replace of two lists
//! that both block a source let one of its packets through (one in 72,000,
//! in CI). So the retired table is written only after [`wait`] returns.
//!
//! [`wait`] uses the kernel's own promise: updating an array of maps waits
//! for every running non-sleepable BPF program to finish (an RCU grace
//! period; XDP programs run inside RCU read-side sections), so that user
//! space knows none still uses the old value (the kernel's selftests once
//! waited this way too). The two maps it updates are this process's own,
//! created once, used by no program.
//!
//! Measured (kernel 6.18, 2 AMD vCPUs): 9-15 ms per wait, so it is paid
//! once per edit that swaps tables, never per entry. Rejected:
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for a grace period too, but
//! only as an implementation detail, and not at all on one CPU.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::maps::io_from_libbpf;

/// An array of one map, and the map it holds.
struct Waiter {
    outer: MapHandle,
    inner: MapHandle,
}

impl Waiter {
    fn new() -> io::Result<Self> {
        let none = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let inner = MapHandle::create(MapType::Array, Some("xdpg_grace_in"), 4, 4, 1, &none).map_err(io_from_libbpf)?;
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            inner_map_fd: inner.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        let outer =
            MapHandle::create(MapType::ArrayOfMaps, Some("xdpg_grace"), 4, 4, 1, &opts).map_err(io_from_libbpf)?;
        Ok(Waiter { outer, inner })
    }

    fn wait(&self) -> io::Result<()> {
        let fd = self.inner.as_fd().as_raw_fd() as u32;
        self.outer.update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(io_from_libbpf)
    }
}

static WAITER: Mutex<Option<Arc<Waiter>>> = Mutex::new(None);

/// How long [`wait`] sleeps when the kernel would not let it wait: many
/// grace periods.
const FALLBACK: Duration = Duration::from_millis(250);

/// Returns once every BPF program that was running when it was called has
/// finished: after a table swap, no packet still reads the old table.
///
/// Should the kernel refuse to create or update its two small maps (out of
/// memory), it sleeps [`FALLBACK`] instead, many grace periods: it never
/// returns early with an error an edit that is already live could not act
/// on.
pub(crate) fn wait() {
    if try_wait().is_err() {
        std::thread::sleep(FALLBACK);
    }
}

fn try_wait() -> io::Result<()> {
    let waiter = {
        let mut slot = WAITER.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(w) => Arc::clone(w),
            None => Arc::clone(slot.insert(Arc::new(Waiter::new()?))),
        }
    };
    // Outside the lock: edits of other filters or LBs in this process wait
    // at the same time, and the kernel lets their waits share one grace
    // period. Each update starts after its own caller's switch, so it
    // covers what that switch retired.
    waiter.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel lets this process wait (the fallback is never what the
    /// tests measure), and a wait blocks for a grace period: longer than
    /// the microsecond a plain map update takes. (Without CAP_BPF there is
    /// nothing to test; CI runs as root.)
    #[test]
    fn a_wait_takes_a_grace_period() {
        if !crate::core::sys::missing_capabilities().is_empty() {
            return;
        }
        for _ in 0..3 {
            let t = std::time::Instant::now();
            try_wait().expect("wait");
            let took = t.elapsed();
            assert!(took > Duration::from_micros(10), "a wait that took {took:?} cannot have waited");
        }
    }
}
