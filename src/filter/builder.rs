//! [`FilterBuilder`]: capacities, policy, interfaces and pinning of a new
//! [`Filter`].

use crate::core::pinned::{placement_methods, LoadPlan, Pinned, Placement};
use crate::error::{AttachError, Error, LoadError};
use crate::filter::guard::maps::{
    default_rule_records, default_rule_refs, GuardCapacity, RuleCapacities, DEFAULT_MAX_LIMIT_BUCKETS,
    DEFAULT_MAX_RULES, DEFAULT_MAX_SET_ENTRIES, DEFAULT_MAX_TIMED_BLOCKS, MAX_RULES, MAX_RULE_RECORDS, MAX_RULE_REFS,
};
use crate::filter::guard::Guard;
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
    /// None: when the kernel can run it.
    guard: Option<bool>,
    max_rules: usize,
    max_rule_records: Option<usize>,
    max_rule_refs: Option<usize>,
    max_set_entries: usize,
    max_timed_blocks: usize,
    max_limit_buckets: usize,
}

impl Default for FilterBuilder {
    fn default() -> Self {
        Self {
            place: Placement::default(),
            v4_capacity: DEFAULT_V4_CAPACITY,
            v6_capacity: DEFAULT_V6_CAPACITY,
            malformed: MalformedPolicy::Pass,
            guard: None,
            max_rules: DEFAULT_MAX_RULES,
            max_rule_records: None,
            max_rule_refs: None,
            max_set_entries: DEFAULT_MAX_SET_ENTRIES,
            max_timed_blocks: DEFAULT_MAX_TIMED_BLOCKS,
            max_limit_buckets: DEFAULT_MAX_LIMIT_BUCKETS,
        }
    }
}

impl FilterBuilder {
    placement_methods!("filter", "Filter::open_pinned");

    /// Maximum IPv4 entries, both lists together (default 1,048,576).
    ///
    /// It also sizes the IPv4 host table, which can fill first: a /24
    /// holding more than one verdict keeps one host slot per address that
    /// differs from its most common verdict, and the table has about 1.25
    /// slots per entry of this capacity. A /32 takes one slot, a /25-/31
    /// prefix one per address it covers (a /25 alone in its /24: 128, a
    /// /31: 2); prefixes of /24 and shorter take none (nor two /25s that
    /// make up a /24). So about 10,000 lone /25s fill the default capacity.
    /// For many /25-/31s give at least 0.8 times the host slots they need
    /// (about 103 per lone /25). Either table full: [`ListError::Full`]
    /// (its `what` [`V4_HOST_TABLE`](crate::V4_HOST_TABLE) for the host
    /// table), nothing of the edit applied; [`Filter::v4_host_slots`]
    /// shows the use.
    ///
    /// [`ListError::Full`]: crate::ListError::Full
    /// [`Filter::v4_host_slots`]: crate::Filter::v4_host_slots
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

    /// Whether to load the guard stage, which runs the rules
    /// ([`Filter::rules`]) and named sets ([`Filter::sets`]). It needs
    /// `bpf_loop` and the SYN cookie helpers (Linux 6.0 or later). By
    /// default it is loaded when the kernel has them and the filter is not
    /// offloaded; without it the
    /// filter runs from 5.15 on and holds lists only (the rule API then
    /// returns [`RuleError::NoGuard`](crate::RuleError::NoGuard)).
    /// An offloaded filter has none. `guard(true)` makes a kernel without
    /// it an error ([`LoadError::KernelFeature`]); `guard(false)` never
    /// loads it.
    pub fn guard(mut self, on: bool) -> Self {
        self.guard = Some(on);
        self
    }

    /// Maximum rules in the rule set (default 4,096). Each takes about 128
    /// bytes of the text store (twice: both halves), and there are two
    /// per-CPU counters per rule (a whole-set replace gives new rules ids
    /// the old set does not use).
    pub fn max_rules(mut self, rules: usize) -> Self {
        self.max_rules = rules;
        self
    }

    /// Maximum compiled rule records (default: 2 per rule): a rule takes
    /// one, or one per range of its `sport` condition. 64 bytes each, twice
    /// (the live and the idle half).
    pub fn max_rule_records(mut self, records: usize) -> Self {
        self.max_rule_records = Some(records);
        self
    }

    /// Maximum entries of the rule index's groups (default: 16 per rule).
    /// A rule is in every group of a port (or ICMP type) it can match: a
    /// rule with one destination port in one, a rule without a destination
    /// port in every group of its protocol, so many port rules plus a few
    /// rules without ports need more. 4 bytes each, twice.
    pub fn max_rule_refs(mut self, refs: usize) -> Self {
        self.max_rule_refs = Some(refs);
        self
    }

    /// Maximum prefixes in all named sets together (default 65,536); a
    /// whole-set replace needs room for the old and the new set.
    pub fn max_set_entries(mut self, entries: usize) -> Self {
        self.max_set_entries = entries;
        self
    }

    /// Maximum timed blocks (default 65,536): prefixes blocked for a while,
    /// by [`TimedBlocks::insert`](crate::TimedBlocks::insert) or a rate
    /// limit's auto-block. Kernel memory is taken as blocks are added (an
    /// LPM trie without preallocation), so a large capacity costs nothing
    /// until a flood fills it. When full, an auto-block fails (counted in
    /// [`LimiterStats::blocks_failed`](crate::LimiterStats::blocks_failed)) and an insert
    /// returns [`RuleError::Full`](crate::RuleError::Full). Expired blocks
    /// count until user space reclaims them (a list, an edit, a metrics
    /// scrape; see `blocks_failed`).
    pub fn max_timed_blocks(mut self, blocks: usize) -> Self {
        self.max_timed_blocks = blocks;
        self
    }

    /// Maximum exact buckets of the rate limiter (default 65,536): one per
    /// key (a source, a /24, ...) that the sketch found heavy, so that a
    /// rate limit holds it to its exact rate. When full, the least recently
    /// used bucket is evicted (a kernel LRU hash); an evicted key that comes
    /// back starts a fresh bucket, with a full burst. Size it above the
    /// heavy keys a flood brings at once. About 100 bytes each, allocated
    /// at load.
    pub fn max_limit_buckets(mut self, buckets: usize) -> Self {
        self.max_limit_buckets = buckets;
        self
    }

    /// All of the rule stage's capacities at once: `c`'s (for instance a
    /// pinned filter's, [`Filter::rule_capacities`], to load one like it).
    pub fn with_rule_capacities(self, c: &RuleCapacities) -> Self {
        self.max_rules(c.max_rules)
            .max_rule_records(c.max_rule_records)
            .max_rule_refs(c.max_rule_refs)
            .max_set_entries(c.max_set_entries)
            .max_timed_blocks(c.max_timed_blocks)
            .max_limit_buckets(c.max_limit_buckets)
    }

    /// The rule stage's capacities this builder would load (its settings,
    /// with the defaults applied and the rule index rounded as stored);
    /// compare them with a pinned filter's
    /// ([`Filter::rule_capacities`]). Not checked against their limits
    /// here: [`load`](Self::load) does that.
    pub fn rule_capacities(&self) -> RuleCapacities {
        self.guard_capacity().limits()
    }

    /// The rule records and rule-index entries asked for, defaults applied.
    fn records_and_refs(&self) -> (usize, usize) {
        (
            self.max_rule_records.unwrap_or(default_rule_records(self.max_rules)),
            self.max_rule_refs.unwrap_or(default_rule_refs(self.max_rules)),
        )
    }

    fn guard_capacity(&self) -> GuardCapacity {
        let (records, refs) = self.records_and_refs();
        GuardCapacity::new(&RuleCapacities {
            max_rules: self.max_rules,
            max_rule_records: records,
            max_rule_refs: refs,
            max_set_entries: self.max_set_entries,
            max_timed_blocks: self.max_timed_blocks,
            max_limit_buckets: self.max_limit_buckets,
        })
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
        let (records, refs) = self.records_and_refs();
        for (what, value, max, hint) in [
            ("max_rules", self.max_rules, MAX_RULES, "between 1 and 1,048,576"),
            ("max_rule_records", records, MAX_RULE_RECORDS, "between 1 and 8,388,608"),
            ("max_rule_refs", refs, MAX_RULE_REFS, "between 1 and 67,108,864"),
            ("max_set_entries", self.max_set_entries, MAX_CAPACITY, "between 1 and 16,777,216"),
            ("max_timed_blocks", self.max_timed_blocks, MAX_CAPACITY, "between 1 and 16,777,216"),
            ("max_limit_buckets", self.max_limit_buckets, MAX_CAPACITY, "between 1 and 16,777,216"),
        ] {
            if value == 0 || value > max {
                return Err(LoadError::InvalidCapacity { what, value, hint }.into());
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
        let with_guard = match self.guard {
            Some(false) => false,
            _ if offload_ifindex.is_some() => false,
            Some(true) => {
                if !guard_supported() {
                    return Err(LoadError::KernelFeature {
                        feature: "bpf_loop and the SYN cookie helpers, which the guard stage (rules) needs",
                        hint: "use Linux 6.0 or later, or load the filter without rules (FilterBuilder::guard(false))"
                            .into(),
                    }
                    .into());
                }
                true
            }
            None => guard_supported(),
        };
        // The guard is pinned in the filter's directory before the filter's
        // creation is marked finished (`create_within`): a process that dies
        // in between leaves an interrupted creation, not a filter that opens
        // without its guard (rules refused, SYN guard gone) as it did when
        // the guard was pinned after.
        Pinned::create_within(
            &self.place,
            targets,
            || {
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
                let core = Pinned::load(FilterSkelBuilder::default(), &plan, |maps: &FilterMaps| {
                    maps.cfg.set(0, cfg);
                    crate::filter::events::init(maps);
                })?;
                let guard = if with_guard {
                    Some(Guard::load(self.guard_capacity(), &Guard::shared_maps(&core.maps))?)
                } else {
                    None
                };
                Ok(Filter { core, guard })
            },
            |filter, dir| {
                #[cfg(feature = "testing")]
                crate::testing::crash::point("filter.pinned");
                let guard = match filter.guard {
                    Some(guard) => Some(guard.pin(dir)?),
                    None => None,
                };
                #[cfg(feature = "testing")]
                crate::testing::crash::point("filter.guard_pinned");
                Ok(Filter { core: filter.core, guard })
            },
        )
    }
}

/// Whether this kernel can run the guard stage: XDP programs may call
/// `bpf_loop` (Linux 5.17) and the SYN cookie helpers (Linux 6.0; the
/// guard calls them whatever its rules, so a kernel between the two
/// refuses the whole program). A failed probe counts as no.
fn guard_supported() -> bool {
    [libbpf_sys::BPF_FUNC_loop, libbpf_sys::BPF_FUNC_tcp_raw_gen_syncookie_ipv4]
        .into_iter()
        .all(|helper| libbpf_rs::ProgramType::Xdp.is_helper_supported(helper).unwrap_or(false))
}
