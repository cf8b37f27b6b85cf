//! What a configuration file says, checked and normalised: the desired
//! state of each program, by pin directory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::error::ConfigError;
use crate::lb::digest;
use crate::{
    AttachMode, Backend, BackendAddr, EchoPolicy, FragmentPolicy, LbDigest, MalformedPolicy, NewFlowLimit,
    OptionsPolicy, Rule, SynPolicy, Vip, VipConfig,
};

/// A whole configuration file, checked: what [`Config::from_file`] returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from (list files are found relative to it).
    pub path: PathBuf,
    /// The `[[filter]]` sections, in file order.
    pub filters: Vec<FilterConfig>,
    /// The `[[lb]]` sections, in file order.
    pub lbs: Vec<LbConfig>,
    /// The `[[decap]]` sections, in file order.
    pub decaps: Vec<DecapConfig>,
}

/// A filter (`[[filter]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FilterConfig {
    /// Its pin directory (`pin`; default `/sys/fs/bpf/xdpguard`).
    pub pin: PathBuf,
    /// The interfaces it is attached to (`interfaces`).
    pub interfaces: Vec<String>,
    /// The attach mode (`mode`; default auto).
    pub mode: AttachMode,
    /// The named network namespace its interfaces are in (`netns`, under
    /// `/run/netns`; default: the one the caller runs in).
    pub netns: Option<String>,
    /// IPv4 capacity (`v4_capacity`).
    pub v4_capacity: usize,
    /// IPv6 capacity (`v6_capacity`).
    pub v6_capacity: usize,
    /// The rule stage's capacities (`max_rules`, `max_rule_records`,
    /// `max_rule_refs`, `max_set_entries`, `max_timed_blocks`,
    /// `max_limit_buckets`; the
    /// [`FilterBuilder`](crate::FilterBuilder) methods of the same names),
    /// defaults resolved.
    pub guard: crate::RuleCapacities,
    /// The malformed-packet policy (`malformed`).
    pub malformed: MalformedPolicy,
    /// The allowlist (`allowlist` and `allowlist_files`), normalised,
    /// without duplicates, sorted.
    pub allowlist: Vec<IpNetwork>,
    /// The blocklist (`blocklist` and `blocklist_files`), likewise.
    pub blocklist: Vec<IpNetwork>,
    /// Whether the blocklist and the named sets may hold `0.0.0.0/0` or `::/0`
    /// (`block_whole_family`; see
    /// [`PrefixList::permit_whole_family`](crate::PrefixList::permit_whole_family)).
    pub block_whole_family: bool,
    /// The pin directory of the LB (in the same file) it passes packets on
    /// to (`next`).
    pub next: Option<PathBuf>,
    /// Monitor (dry-run) mode for the whole filter (`monitor`; see
    /// [`Filter::set_monitor`](crate::Filter::set_monitor)).
    pub monitor: bool,
    /// The rule set, in priority order, normalised (`rules`, inline, or
    /// `rules_file`; see [`Filter::rules`](crate::Filter::rules)).
    pub rules: Vec<Rule>,
    /// The named sets rules can name (`[filter.sets]`): name -> prefixes,
    /// normalised, sorted.
    pub sets: BTreeMap<String, Vec<IpNetwork>>,
    /// The SYN guard's protected ports and their policies
    /// (`[[filter.syn]]`; see [`Filter::syn_guard`](crate::Filter::syn_guard)).
    pub syn: BTreeMap<u16, SynPolicy>,
}

/// A load balancer (`[[lb]]`), with its VIPs (`[[lb.vip]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LbConfig {
    /// Its pin directory (`pin`; default `/sys/fs/bpf/xdpguard-lb`).
    pub pin: PathBuf,
    /// The interfaces it is attached to (`interfaces`; none when it only
    /// runs behind a filter).
    pub interfaces: Vec<String>,
    /// The attach mode (`mode`; default auto).
    pub mode: AttachMode,
    /// The named network namespace its interfaces are in (`netns`).
    pub netns: Option<String>,
    /// Interfaces it may send out of without being attached (`redirect`);
    /// those it is attached to are added.
    pub redirect: Vec<String>,
    /// IPIP outer source prefixes, at most one per family (`ipip_sources`).
    pub ipip_sources: Vec<IpNetwork>,
    /// The flow hash seed (`hash_seed`; fixed at load).
    pub hash_seed: u32,
    /// Capacities (fixed at load): `max_vips`.
    pub max_vips: u32,
    /// `max_backends`.
    pub max_backends: u32,
    /// `connections`.
    pub connections: u32,
    /// `nat_connections` (default: as `connections`).
    pub nat_connections: u32,
    /// `max_interfaces`.
    pub max_interfaces: u32,
    /// `udp_timeout_secs`.
    pub udp_timeout: Duration,
    /// `next_hop_cache_ms`.
    pub next_hop_cache: Duration,
    /// `new_flow_limit`: `"unlimited"` or `{ per_second = N, burst = M }`.
    pub new_flow_limit: NewFlowLimit,
    /// `echo`.
    pub echo: EchoPolicy,
    /// `fragments`.
    pub fragments: FragmentPolicy,
    /// `options`.
    pub options: OptionsPolicy,
    /// `keep_drained`: a backend the health checker (`xdpguard-lb health`,
    /// which marks its drains) drained on this node, whose file weight is
    /// not 0, is left at 0, not restored by applying the file
    /// (which would send new flows to a backend the checker found dead
    /// until its next round); the checker restores it when it passes
    /// again, and the file's weight lands at the next apply after that. A 0
    /// set by hand or by the file is restored like any other weight.
    /// Default false: applying restores the file's weights.
    pub keep_drained: bool,
    /// The VIPs, in VIP order.
    pub vips: Vec<VipSpec>,
}

/// A VIP of a load balancer (`[[lb.vip]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VipSpec {
    /// The VIP (`vip = "tcp 203.0.113.10:80"`).
    pub vip: Vip,
    /// Its settings (`mode`, `table_size`, `hash`, `conntrack`).
    pub config: VipConfig,
    /// Its backends and weights (`backends`), in canonical order.
    pub backends: Vec<Backend>,
    /// Whether it may be at an address of the LB host itself
    /// (`permit_local`, default false; the CLI's `vip add --force`,
    /// [`LoadBalancer::add_vip_permit_local`](crate::LoadBalancer::add_vip_permit_local)):
    /// its packets then go to its backends, not to the host's own services
    /// there. Without it, planning refuses such a VIP it would add.
    pub permit_local: bool,
}

/// A decapsulator (`[[decap]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecapConfig {
    /// Its pin directory (`pin`; default `/sys/fs/bpf/xdpguard-decap`).
    pub pin: PathBuf,
    /// The interfaces it is attached to (`interfaces`).
    pub interfaces: Vec<String>,
    /// The attach mode (`mode`).
    pub mode: AttachMode,
    /// The named network namespace its interfaces are in (`netns`).
    pub netns: Option<String>,
    /// The tunnel endpoints it decapsulates for (`locals`), sorted.
    pub locals: Vec<IpAddr>,
}

impl LbConfig {
    /// The digests an LB built from this section shows
    /// ([`LoadBalancer::digest`](crate::LoadBalancer::digest)): what every
    /// node applying the same file must report, computed without an LB.
    pub fn expected_digest(&self) -> LbDigest {
        type Set = (Vip, VipConfig, Vec<(BackendAddr, u32)>);
        let sets: Vec<Set> = self
            .vips
            .iter()
            .map(|v| (v.vip, v.config, v.backends.iter().map(|b| (b.addr, b.weight)).collect()))
            .collect();
        digest::expected(self.hash_seed, sets.iter().map(|(v, c, b)| (*v, *c, b.as_slice())))
    }

    /// Every interface it may send out of: the ones it is attached to and
    /// the redirect ones, without duplicates.
    pub(crate) fn egress(&self) -> Vec<String> {
        let mut all: Vec<String> = self.interfaces.iter().chain(&self.redirect).cloned().collect();
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|i| seen.insert(i.clone()));
        all
    }
}

impl Config {
    /// The section with this pin directory, described for messages:
    /// `filter /sys/fs/bpf/xdpguard`.
    pub(crate) fn lb(&self, pin: &Path) -> Option<&LbConfig> {
        self.lbs.iter().find(|l| l.pin == pin)
    }
}

impl Config {
    /// Reads and checks a configuration file; list files it names are
    /// read relative to its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read;
    /// [`ConfigError::Invalid`] with every problem of the file (and of the
    /// list files it names), each with its file, line and column.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), error: source })?;
        Config::parse(&text, path)
    }

    /// Checks configuration text as if read from `path` (which names it in
    /// problems; list files are read relative to its directory).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`], as [`Config::from_file`].
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        super::parse::read(text, path.as_ref())
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    /// [`Config::parse`] of text not from a file: problems name it
    /// `<string>`, list files are read relative to the working directory.
    fn from_str(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "<string>")
    }
}
