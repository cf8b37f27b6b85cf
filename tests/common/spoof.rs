//! Spoofed floods that stay on the documentation ranges. `hping3
//! --rand-source` draws sources from all of IPv4; the network tests may use
//! only 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24. [`confine`]
//! installs, in the flooding namespace, an nftables rule on its output hook
//! (which hping3's raw sockets pass through) that rewrites every source
//! outside those ranges into 203.0.113.0/24, keeping its last octet (and the
//! checksums: nft updates the IP and the transport pseudo-header sums). The
//! flood still comes from 256 different sources, never from a real host's
//! address, and whatever answers it (the SYN guard's SYN-ACKs) is addressed
//! inside the range, to the flooding namespace, which drops it.
//!
//! Use it from tests with `mod common { pub mod spoof; }`.

use xdpguard::testing::netns::NetNs;

/// The range spoofed sources are rewritten into.
pub const SPOOFED: &str = "203.0.113.0/24";

/// Rewrites, in namespace `ns`, the source of every IPv4 packet sent from
/// outside the documentation ranges into [`SPOOFED`].
pub fn confine(ns: &NetNs) {
    let script = "add table ip xdpguard_test_spoof; \
        add chain ip xdpguard_test_spoof out { type filter hook output priority raw; policy accept; }; \
        add rule ip xdpguard_test_spoof out ip saddr != { 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 } \
        ip saddr set ip saddr & 0.0.0.255 | 203.0.113.0";
    let out = ns.exec(&["nft", script]);
    assert!(out.status.success(), "nft (spoofed sources into {SPOOFED}): {}", String::from_utf8_lossy(&out.stderr));
}
