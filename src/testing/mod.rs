//! A test kit (feature `testing`): test your own lists and VIPs the way
//! xdpguard tests itself.
//!
//! - [`frame`]: an etherparse-based frame builder (Ethernet, VLAN, IPv4
//!   with options and fragments, IPv6 with extension headers, TCP, UDP,
//!   ICMP/ICMPv6 incl. errors quoting a packet, IP in IP), frames that know
//!   where their headers are, and helpers to cut and break them.
//! - [`fixture`]: verdict fixtures (description, input frame, expected
//!   action, expected output frame or checks, counters) and a table runner
//!   over `BPF_PROG_TEST_RUN` for [`Filter`](crate::Filter),
//!   [`LoadBalancer`](crate::LoadBalancer) and [`Decap`](crate::Decap) that
//!   reports every failing row with a field-by-field [`diff`].
//! - [`netns`]: throwaway network namespaces and veth pairs, for tests that
//!   send real traffic; [`lb_topology`]: the load balancer's test bed
//!   (client, LB, backends) built from them.
//! - [`model`]: a reference model of the filter's whole verdict on a frame
//!   (lists, named sets, rules, monitor mode), for differential tests.
//! - [`gate`]: whether the filter skips its guard stage for a key.
//! - [`upgrade`]: rehearsing upgrades (layout stamps, the programs links run).
//! - [`crash`]: points where a process aborts on request, for repair tests.
//! - [`live`]: `BPF_PROG_TEST_RUN` on any XDP program (repetitions, live
//!   frames) and native attach by fd, for benchmarks and generators.
//! - [`kernel`]: what the running kernel supports (freplace programs).
//!
//! Enable it for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! xdpguard = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Running frames through a program needs root (CAP_BPF and CAP_NET_ADMIN);
//! building and diffing frames does not. etherparse is re-exported
//! ([`etherparse`]) so tests can read output frames with the same version.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use xdpguard::testing::fixture::{Fixture, FixtureTable};
//! use xdpguard::testing::frame::Frame;
//! use xdpguard::{Filter, XdpAction};
//!
//! let filter = Filter::builder().load()?;
//! filter.blocklist().insert("203.0.113.0/24".parse()?)?;
//! let from = |src: Ipv4Addr| {
//!     Frame::builder().ipv4(src, Ipv4Addr::new(192, 0, 2, 2)).tcp(40000, 443).build()
//! };
//! let mut t = FixtureTable::new(&filter, "blocklist");
//! t.run(Fixture::new("blocked", from(Ipv4Addr::new(203, 0, 113, 5))).action(XdpAction::Drop).unchanged());
//! t.run(Fixture::new("clean", from(Ipv4Addr::new(198, 51, 100, 5))).action(XdpAction::Pass).unchanged());
//! t.finish();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
pub mod crash;
pub mod diff;
pub mod fixture;
pub mod frame;
pub mod gate;
pub mod kernel;
pub mod lb_topology;
pub mod live;
pub mod model;
pub mod netns;
pub mod upgrade;
mod verify;

/// The pinned core of `filter` (its maps, its edit lock): what the test
/// kit's modules that reach inside a filter read.
fn filter_core(filter: &crate::Filter) -> &crate::core::pinned::Pinned<crate::filter::FilterKind> {
    std::borrow::Borrow::borrow(filter)
}

pub use etherparse;
