//! Counter snapshots. The data plane keeps one slot per CPU (no atomics on
//! the hot path); these are the sums.

use std::ops::{Add, Sub};

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes, counting each frame from its Ethernet header.
    pub bytes: u64,
}

impl Add for Counter {
    type Output = Counter;
    fn add(self, o: Counter) -> Counter {
        Counter { packets: self.packets + o.packets, bytes: self.bytes + o.bytes }
    }
}

impl Sub for Counter {
    type Output = Counter;
    /// Saturating, so a counter reset between two snapshots reads as zero.
    fn sub(self, o: Counter) -> Counter {
        Counter { packets: self.packets.saturating_sub(o.packets), bytes: self.bytes.saturating_sub(o.bytes) }
    }
}
