//! [`FilterBuilder`]: capacities, policy, interfaces and pinning of a new
//! [`Filter`].

use crate::core::pinned::{placement_methods, LoadPlan, Pinned, Placement};
use crate::error::{AttachError, Error, LoadError};
use crate::filter::layout::filter_skel::FilterSkelBuilder;
use crate::filter::layout::xdpg_filter_config;
use crate::filter::maps::{random_seed, Capacity, FilterMaps};
use crate::filter::{Filter, MalformedPolicy, DEFAULT_V4_CAPACITY, DEFAULT_V6_CAPACITY, MAX_CAPACITY};
use crate::AttachMode;

/// Builds and attaches a [`Filter`].
///
/// ```no_run
/// use xdpguard::{AttachMode, Filter, MalformedPolicy};
///
/// let filter = Filter::builder()
///     .interface("eth0")
///     .interface(7u32)                  // by index
///     .mode(AttachMode::Native)
///     .v4_capacity(4 << 20)            // room for 4M IPv4 prefixes
///     .malformed(MalformedPolicy::Drop)
///     .pin("/sys/fs/bpf/edge")
///     .attach()?;
/// # Ok::<(), xdpguard::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FilterBuilder {
    place: Placement,
    v4_capacity: usize,
    v6_capacity: usize,
    malformed: MalformedPolicy,
}

impl Default for FilterBuilder {
    fn default() -> Self {
        Self {
            place: Placement::default(),
            v4_capacity: DEFAULT_V4_CAPACITY,
            v6_capacity: DEFAULT_V6_CAPACITY,
            malformed: MalformedPolicy::Pass,
        }
    }
}

impl FilterBuilder {
    placement_methods!("filter", "Filter::open_pinned");

    /// Maximum IPv4 entries, both lists together (default 1,048,576).
    pub fn v4_capacity(mut self, entries: usize) -> Self {
        self.v4_capacity = entries;
        self
    }

    /// Maximum IPv6 entries, both lists together (default 262,144).
    pub fn v6_capacity(mut self, entries: usize) -> Self {
        self.v6_capacity = entries;
        self
    }

    /// What to do with malformed packets (default: pass).
    pub fn malformed(mut self, policy: MalformedPolicy) -> Self {
        self.malformed = policy;
        self
    }

    /// Loads the filter without attaching it anywhere (for chaining, or for
    /// [`Filter::test_run`]). A pin directory, if set, is still used.
    ///
    /// # Errors
    ///
    /// [`LoadError::InvalidCapacity`]; [`LoadError::MissingPrivileges`] and
    /// the other [`LoadError`]s when the kernel refuses the program or its
    /// maps; [`PinError`](crate::PinError)s for the pin directory.
    pub fn load(self) -> Result<Filter, Error> {
        self.build(false)
    }

    /// Loads the filter and attaches it to every interface given. If any
    /// step fails, nothing is left attached or pinned.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), and [`AttachError`]s: no interface given,
    /// an interface not found, another XDP program there, a mode the driver
    /// cannot do.
    pub fn attach(self) -> Result<Filter, Error> {
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<Filter, Error> {
        let targets = self.place.targets(attach)?;
        for (what, value) in [("v4_capacity", self.v4_capacity), ("v6_capacity", self.v6_capacity)] {
            if value == 0 || value > MAX_CAPACITY {
                return Err(LoadError::InvalidCapacity { what, value, hint: "between 1 and 16,777,216" }.into());
            }
        }
        let offload_ifindex = match (self.place.mode, attach) {
            (AttachMode::Offload, true) => {
                if targets.len() != 1 {
                    return Err(AttachError::ModeUnsupported {
                        interface: self.place.names(),
                        mode: AttachMode::Offload,
                        hint: "an offloaded program is loaded for one device: give exactly one interface",
                    }
                    .into());
                }
                Some(targets[0].resolve()?.0)
            }
            _ => None,
        };
        Pinned::create(&self.place, targets, || {
            let cap = Capacity::new(self.v4_capacity, self.v6_capacity);
            let plan = LoadPlan { sizes: &cap.map_sizes(), offload_ifindex };
            // Both v4 pairs and both v6 tables start empty; pair 0 and view 0 are live.
            let cfg = xdpg_filter_config {
                v4_bucket_mask: (cap.v4_buckets - 1) as u32,
                hash_seed: random_seed(),
                v6_bloom_mask: (cap.v6_bloom_words * 64 - 1) as u32,
                v6_bucket_mask: (cap.v6_buckets - 1) as u32,
                malformed_policy: self.malformed.code(),
                ..Default::default()
            };
            let core = Pinned::load(FilterSkelBuilder::default(), &plan, |maps: &FilterMaps| maps.cfg.set(0, cfg))?;
            Ok(Filter { core })
        })
    }
}
